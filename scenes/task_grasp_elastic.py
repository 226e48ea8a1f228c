"""Task: grasp and lift an elastic object gently and without slip. Two flat tactile pads
(FEM fingers, 10 x 10 x 3 mm, facing each other along x) close on a soft elastic cube (FEM,
12 mm, E = 3e4 Pa, 1.7 g, resting on a rigid floor under gravity), squeeze, lift it 3 mm
and hold.

Objective: the object's centre of mass ends `lift` above where it started, held by
friction without slipping, with each finger's grip force at a target (a gentle grasp:
not crushing a soft object). Controls: each finger's closing velocity (along its facing), a
cubic spline of 4 waypoints per finger (0.02 m/s per unit) added to the nominal profile
(close until the pads just touch the object, 0.02 mm in, then lift at 0.15 m/s: far too
light a grip, the object slides out).
Loss: ((rise - lift) / lift)^2 + mean over the lift of relu(slip ratio - 0.7)^2 per finger,
with the slip ratio |shear| / (friction x normal force) from each finger's sensor
(DiffTactile's slip measure), + mean over the final hold of ((F_n - grip) / grip)^2 per
finger.
Success: the rise at the end is at least 90% of the lift, the slip ratio stays below 1
for both fingers at every record interval of the lift and hold, and both fingers' normal
forces are within 20% of `grip` over the final hold.

Options: lift (m, 3e-3), grip (N, 0.2), friction (0.5), E_object (Pa, 3e4), density
(kg/m^3, 1000), E_sensor (Pa, 1e5), waypoints (4), dt (s, 2e-5).
"""
import numpy as np
import torch

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor
from diffsim.tasks import SplineControls, Task, finger_slip_ratios, finger_traces

SIZE, GAP, TOUCH = 0.012, 1e-4, 2e-5        # cube edge, finger gap at rest, nominal squeeze (m)
CLOSE_SPEED, LIFT_SPEED, EVERY = 0.05, 0.15, 50
HOLD_RECORDS = 3


def _setup(lift, friction, E_object, density, E_sensor, dt):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, -9.81), tape_substeps=400)
    sim.add_collider(ds.PlaneCollider(point=(0, 0, 0), normal=(0, 0, 1), size=0.05, name="floor"))
    contact = ds.PenaltyContact(stiffness=1e9, friction=friction)
    obj = sim.add_body(ds.box_tet_mesh((SIZE,) * 3, (6, 6, 6), origin=(-SIZE / 2, -SIZE / 2, 1e-6)),
                       ds.FEMMaterial(E=E_object, nu=0.4, density=density, mass_damping=100), contact=contact,
                       name="object")
    period = EVERY * dt
    close = int(np.ceil((GAP + TOUCH) / CLOSE_SPEED / period))
    rise = int(np.ceil(lift / LIFT_SPEED / period))
    records = close + HOLD_RECORDS + rise + HOLD_RECORDS
    sensors, nominal = [], {}
    for name, s in (("left", 1.0), ("right", -1.0)):
        prof = np.zeros((records, 6))
        prof[:close, 0] = s * (GAP + TOUCH) / (close * period)
        prof[close + HOLD_RECORDS:close + HOLD_RECORDS + rise, 2] = lift / (rise * period)
        pad, plate, sensor = mount_sensor(
            sim, ds.flat_pad(width=0.010, depth=0.010, thickness=0.003, resolution=0.0015),
            ds.FEMMaterial(E=E_sensor, nu=0.45, density=1100, mass_damping=300), contact,
            apex=(-s * (SIZE / 2 + GAP), 0.0, SIZE / 2), facing=(s, 0.0, 0.0), name=name, markers="grid",
            marker_grid=(6, 6), map_resolution=(8, 8),
            velocity=lambda t, p=prof: tuple(p[min(int(t / period), records - 1), :3]))
        sensors.append(sensor)
        nominal[plate.name] = prof
    return sim, obj, sensors, nominal, close + HOLD_RECORDS


class GraspElastic(Task):
    name = "grasp_elastic"

    def __init__(self, lift=3e-3, grip=0.2, friction=0.5, E_object=3e4, density=1000.0, E_sensor=1e5, waypoints=4,
                 dt=2e-5):
        self.lift, self.grip, self.friction = float(lift), float(grip), float(friction)
        self.system, self.object, self.sensors, nominal, self.lift_start = _setup(
            lift, friction, E_object, density, E_sensor, dt)
        records = len(next(iter(nominal.values())))
        self.steps, self.record_every = records * EVERY, EVERY
        # closing is +x for the left finger, -x for the right: one sign per dof
        self.controls = SplineControls(dofs=[(s.driver.name, 0) for s in self.sensors], records=records,
                                       waypoints=int(waypoints), scale=[0.02, -0.02], nominal=nominal)
        self.z0 = self.system.initial_state().x[self.object.start:self.object.stop, 2].mean()   # at rest

    def observe(self, rollout):
        rise = torch.stack([s.x[self.object.start:self.object.stop, 2].mean() for _, s in rollout.records]) - self.z0
        return {"rise": rise, **finger_traces(rollout, self.sensors)}

    def slip_ratio(self, run):
        """(fingers, records of the lift and hold) |shear| / (friction x normal force)."""
        return finger_slip_ratios(run.observed, self.sensors, self.friction, self.lift_start)

    def grip_error(self, run):
        """(fingers, final hold records) (F_n - grip) / grip."""
        return torch.stack([run.observed[f"{s.name}_normal"][-HOLD_RECORDS:] for s in self.sensors]) / self.grip - 1

    def loss(self, run):
        rise = run.observed["rise"][-1]
        return (((rise - self.lift) / self.lift) ** 2 + (torch.relu(self.slip_ratio(run) - 0.7) ** 2).mean()
                + (self.grip_error(run) ** 2).mean())

    def success(self, run):
        return bool(run.observed["rise"][-1].detach() >= 0.9 * self.lift and
                    self.slip_ratio(run).detach().max() < 1.0 and self.grip_error(run).detach().abs().max() < 0.2)

    def metrics(self, run):
        return {"rise_m": float(run.observed["rise"][-1]), "max_slip_ratio": float(self.slip_ratio(run).max()),
                "grip_force_n": float(run.observed["left_normal"][-1]),
                "max_grip_error": float(self.grip_error(run).detach().abs().max())}


def task(lift=3e-3, grip=0.2, friction=0.5, E_object=3e4, density=1000.0, E_sensor=1e5, waypoints=4, dt=2e-5):
    return GraspElastic(lift, grip, friction, E_object, density, E_sensor, waypoints, dt)


def build(lift=3e-3, friction=0.5, E_object=3e4, density=1000.0, E_sensor=1e5, dt=2e-5):
    """The nominal (too light) grasp, for ``diffsim run``."""
    sim, obj, sensors, nominal, _ = _setup(lift, friction, E_object, density, E_sensor, dt)
    steps = len(next(iter(nominal.values()))) * EVERY
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(20.0, -70.0),
                    view_bounds=(np.array([-0.02, -0.012, 0.0]), np.array([0.02, 0.012, 0.02])),
                    options=dict(lift=lift, friction=friction, E_object=E_object, density=density,
                                 E_sensor=E_sensor, dt=dt))
