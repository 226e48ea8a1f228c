"""Task: lid opening. A deformable lid (FEM plate, 32 x 16 x 2 mm, light foam, E = 2e5 Pa)
lies on a rigid box, hinged along its far edge (those nodes are pinned) and overhanging the
box by 8 mm; a small flat tactile pad (FEM, 6 x 8 x 3 mm, facing up) under the overhang
pushes it open to a target angle and holds it there.

Objective: the lid's angle (the chord from the hinge to its free edge, against the box
top) at the target when the pad stops, held. Controls: the back plate's x and z
velocities, a cubic spline of 6 waypoints each (0.05 m/s per unit) added to the nominal
profile (straight up at 0.2 m/s for 4 mm, then hold; as the lid turns, its edge slides
along the pad and the angle falls short).
Loss: ((angle - target) / 1 degree)^2 averaged over the hold.
Success: |angle - target| < 1.5 degrees over the whole hold.

Options: target (degrees, 20), friction (pad-lid, 0.5), E_lid (Pa, 2e5), waypoints (6),
dt (s, 1.4e-5).
"""
import numpy as np
import torch

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor
from diffsim.tasks import SplineControls, Task

LID = (0.032, 0.016, 0.002)
BOX_HALF = 0.012                            # the box spans x in [-12, 12] mm; the lid from -12 to 20 mm
HINGE_X, TIP_X = -BOX_HALF, -BOX_HALF + LID[0]
PAD_X, GAP = 0.0165, 5e-5
RISE, SPEED, EVERY, HOLD_RECORDS = 4e-3, 0.2, 50, 5


def _setup(friction, E_lid, dt):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, -9.81), tape_substeps=300)
    sim.add_collider(ds.BoxCollider(center=(0.0, 0.0, -0.005), half_size=(BOX_HALF, 0.012, 0.005), name="box"))
    contact = ds.PenaltyContact(stiffness=1e9, friction=friction)
    lid = sim.add_body(ds.box_tet_mesh(LID, (16, 8, 2), origin=(HINGE_X, -LID[1] / 2, 1e-6)),
                       ds.FEMMaterial(E=E_lid, nu=0.3, density=300, mass_damping=200), contact=contact, name="lid")
    sim.fix_nodes(lid, lid.nodes_where(lambda X: X[:, 0] < HINGE_X + 1e-9), name="hinge")
    period = EVERY * dt
    rise = int(np.ceil(RISE / SPEED / period))
    records = rise + HOLD_RECORDS
    nominal = np.zeros((records, 6))
    nominal[:rise, 2] = (RISE + GAP) / (rise * period)
    pad, plate, sensor = mount_sensor(
        sim, ds.flat_pad(width=0.006, depth=0.008, thickness=0.003, resolution=0.0015),
        ds.FEMMaterial(E=2e5, nu=0.45, density=1100, mass_damping=300), contact,
        apex=(PAD_X, 0.0, -GAP), facing=(0.0, 0.0, 1.0), name="sensor", markers="grid", marker_grid=(5, 6),
        map_resolution=(8, 8), velocity=lambda t: tuple(nominal[min(int(t / period), records - 1), :3]))
    return sim, lid, sensor, nominal, rise


class LidOpening(Task):
    name = "lid_opening"

    def __init__(self, target=20.0, friction=0.5, E_lid=2e5, waypoints=6, dt=1.4e-5):
        self.target = float(target)
        self.system, self.lid, self.sensor, nominal, self.hold_start = _setup(friction, E_lid, dt)
        self.steps, self.record_every = len(nominal) * EVERY, EVERY
        X = self.lid.mesh.vertices
        self.hinge = np.flatnonzero(X[:, 0] < HINGE_X + 1e-9) + self.lid.start
        self.tip = np.flatnonzero(X[:, 0] > TIP_X - 1e-9) + self.lid.start
        name = self.sensor.driver.name
        self.controls = SplineControls(dofs=[(name, 0), (name, 2)], records=len(nominal), waypoints=int(waypoints),
                                       scale=0.05, nominal={name: nominal})

    def observe(self, rollout):
        angles = []
        for _, s in rollout.records:
            d = s.x[self.tip].mean(0) - s.x[self.hinge].mean(0)
            angles.append(torch.rad2deg(torch.atan2(d[2], d[0])))
        return {"angle": torch.stack(angles)}

    def _miss(self, run):
        return run.observed["angle"][self.hold_start:] - self.target

    def loss(self, run):
        return (self._miss(run) ** 2).mean()

    def success(self, run):
        return bool(self._miss(run).detach().abs().max() < 1.5)

    def metrics(self, run):
        return {"final_angle_deg": float(run.observed["angle"][-1]),
                "max_miss_deg": float(self._miss(run).detach().abs().max())}


def task(target=20.0, friction=0.5, E_lid=2e5, waypoints=6, dt=1.4e-5):
    return LidOpening(target, friction, E_lid, waypoints, dt)


def build(friction=0.5, E_lid=2e5, dt=1.4e-5):
    """The nominal straight push, for ``diffsim run``."""
    sim, lid, sensor, nominal, _ = _setup(friction, E_lid, dt)
    steps = len(nominal) * EVERY
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(20.0, -70.0),
                    view_bounds=(np.array([-0.015, -0.012, -0.01]), np.array([0.025, 0.012, 0.015])),
                    options=dict(friction=friction, E_lid=E_lid, dt=dt))

