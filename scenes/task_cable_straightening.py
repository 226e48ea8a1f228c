"""Task: cable straightening. A soft cable (FEM, 30 x 2 x 2 mm, E = 5e4 Pa) lies on a rigid
floor with friction, bent into a quarter circle; a gripper holds one end (the end's nodes
follow the gripper's pose rigidly) and drags it over the floor so that the floor's friction
pulls the cable straight.

Objective: the cable straight when the gripper stops: its centreline (the mean of each
cross-section's nodes) on the line through its two ends. Controls: the gripper's x and y
velocities and its rotation rate about z, a cubic spline of 6 waypoints each (0.2 m/s and
10 rad/s per unit) added to the nominal profile (hold still: the cable stays bent).
Loss: mean squared distance of the centreline from the end-to-end line, over (1 mm)^2,
at the end and (weight 0.3) over the final hold.
Success: every centreline point within 1 mm of that line at the end (3% of the length;
the bent cable's arc is 5.6 mm off its chord), and the cable stretched less than 5% end
to end. (The free end straightens last: friction builds the tension from it.)

Options: friction (cable-floor, 0.3), E (Pa, 5e4), waypoints (6), duration (s of dragging,
0.06), dt (s, 5e-5).
"""
import numpy as np
import torch

import diffsim as ds
from diffsim.fem.tetmesh import TetMesh
from diffsim.tasks import SplineControls, Task

LENGTH, WIDTH, CELLS = 0.03, 0.002, 15
EVERY, HOLD_RECORDS = 50, 4


def bent_cable(radius: float) -> TetMesh:
    """The straight cable (x along its length, from the origin) bent into an arc of
    ``radius`` curving towards +y (orientation-preserving: the map's Jacobian is 1 - y/R)."""
    m = ds.box_tet_mesh((LENGTH, WIDTH, WIDTH), (CELLS, 1, 1), origin=(0.0, -WIDTH / 2, 1e-6))
    s, y, z = m.vertices.T
    th = s / radius
    v = np.stack([radius * np.sin(th) - y * np.sin(th), radius * (1 - np.cos(th)) + y * np.cos(th), z], 1)
    return TetMesh(v, m.tets.copy())


def _setup(friction, E, dt, duration):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, -9.81), tape_substeps=500)
    sim.add_collider(ds.PlaneCollider(point=(0, 0, 0), normal=(0, 0, 1), size=0.08, name="floor"))
    radius = LENGTH / (np.pi / 2)
    straight = ds.box_tet_mesh((LENGTH, WIDTH, WIDTH), (CELLS, 1, 1), origin=(0.0, -WIDTH / 2, 1e-6)).vertices
    cable = sim.add_body(bent_cable(radius), ds.FEMMaterial(E=E, nu=0.4, density=1200, mass_damping=50),
                         contact=ds.PenaltyContact(stiffness=1e9, friction=friction), name="cable")
    held = np.flatnonzero(straight[:, 0] < 1e-9) + cable.start
    gripper = sim.add_driver(cable, held, name="gripper")
    records = int(round(duration / (EVERY * dt))) + HOLD_RECORDS
    # centreline stations: the nodes of each cross-section of the straight cable
    stations = [np.flatnonzero(np.abs(straight[:, 0] - x) < 1e-9) + cable.start for x in np.unique(straight[:, 0])]
    return sim, cable, gripper, records, stations


class CableStraightening(Task):
    name = "cable_straightening"

    def __init__(self, friction=0.3, E=5e4, waypoints=6, duration=0.06, dt=5e-5):
        self.system, self.cable, gripper, records, stations = _setup(friction, E, dt, duration)
        self.steps, self.record_every = records * EVERY, EVERY
        self.stations = torch.as_tensor(np.stack(stations))              # (S, nodes per section)
        self.controls = SplineControls(dofs=[(gripper.name, 0), (gripper.name, 1), (gripper.name, 5)],
                                       records=records, waypoints=int(waypoints), scale=[0.2, 0.2, 10.0],
                                       nominal={gripper.name: np.zeros((records, 6))})

    def observe(self, rollout):
        dev, stretch = [], []
        for _, s in rollout.records:
            c = s.x[self.stations].mean(1)[:, :2]                          # (S, 2) centreline in the floor plane
            chord = c[-1] - c[0]
            length = torch.linalg.vector_norm(chord)
            u = chord / length
            rel = c - c[0]
            dev.append(rel[:, 0] * u[1] - rel[:, 1] * u[0])               # signed distance from the chord
            stretch.append(length / LENGTH - 1)
        return {"deviation": torch.stack(dev), "stretch": torch.stack(stretch)}

    def loss(self, run):
        d = run.observed["deviation"] * 1e3
        return (d[-1] ** 2).mean() + 0.3 * (d[-HOLD_RECORDS:] ** 2).mean()

    def success(self, run):
        ob = run.observed
        return bool(ob["deviation"][-1].detach().abs().max() < 1e-3 and ob["stretch"][-1].detach() < 0.05)

    def metrics(self, run):
        ob = run.observed
        return {"max_deviation_m": float(ob["deviation"][-1].detach().abs().max()),
                "stretch": float(ob["stretch"][-1])}


def task(friction=0.3, E=5e4, waypoints=6, duration=0.06, dt=5e-5):
    return CableStraightening(friction, E, waypoints, duration, dt)


def build(friction=0.3, E=5e4, duration=0.06, dt=5e-5):
    """The nominal (gripper still) scene, for ``diffsim run``."""
    sim, cable, gripper, records, _ = _setup(friction, E, dt, duration)
    steps = records * EVERY
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(60.0, -90.0),
                    view_bounds=(np.array([-0.01, -0.01, 0.0]), np.array([0.04, 0.03, 0.01])),
                    options=dict(friction=friction, E=E, duration=duration, dt=dt))
