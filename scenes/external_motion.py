"""External motion: the body of a motion file written by another simulator (or measured),
simulated by diffsim: its particles at frame 0, their volumes and masses, its domain,
walls and gravity (format: `diffsim.external`). The material is a fixed-corotated
placeholder of Young's modulus `stiffness`; a law trained on the motion replaces it.

Options: data (the motion .npz, required), grid (24 cells along the longest side of the
box whose faces are the walls; the MPM domain adds its wall layers outside), substeps
(per frame; default from the stiffness' wave speed), stiffness (Pa, 1e4), nu (0.3).

    diffsim import-motion motion.npz --out data.npz
    diffsim train-law --data data.npz --kind potential
"""
import diffsim as ds
from diffsim.external import FACES, cell_size, initial_velocity, load_motion, substeps_per_frame


def build(data=None, grid=24, substeps=None, stiffness=1e4, nu=0.3):
    if not data:
        raise ds.InvalidScene("external_motion needs --set data=MOTION.npz (see diffsim.external for the format)")
    motion = load_motion(data)
    substeps = int(substeps or substeps_per_frame(motion, grid, stiffness, nu))
    dx, bound = cell_size(motion, grid), ds.MPMSolver.BOUND   # the wall layers lie outside the walls' box
    sim = ds.MPMSolver(domain_min=motion.domain[0] - bound * dx, domain_max=motion.domain[1] + bound * dx,
                       grid=int(grid) + 2 * bound,
                       dt=motion.frame_dt / substeps, gravity=motion.gravity,
                       walls={f: motion.walls.get(f, "separate") for f in FACES},
                       wall_friction={f: motion.wall_friction.get(f, 0.0) for f in FACES})
    material = ds.FixedCorotated(E=float(stiffness), nu=float(nu), density=motion.density)
    sim.add_particles(motion.positions[0], material, name="body", volume=motion.volume,
                      velocity=initial_velocity(motion, substeps),
                      spacing=motion.spacing)
    frames = motion.positions.shape[0] - 1
    return ds.Scene(sim, description=__doc__, steps=frames * substeps, every=substeps)
