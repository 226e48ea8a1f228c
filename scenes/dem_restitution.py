"""DEM restitution check: a Hertz-Mindlin sphere (R = 1 mm) drops onto a plane wall and two
spheres collide head-on, gravity off, dt = 1e-6 s; the summary's scene_setup and the
velocity trace show the rebound (e_out = |v_after| / |v_before|, which matches e within
~2e-3).

Options: restitution (e, default 0.5), speed (m/s, 0.5), E (Pa, 5e6), model ("hertz" or
"linear"), stiffness (N/m, linear model, 2e3).
"""
import diffsim as ds


def build(restitution=0.5, speed=0.5, E=5e6, model="hertz", stiffness=2e3, dt=1e-6):
    r = 1e-3
    mat = ds.DEMMaterial(E=E, nu=0.3, restitution=restitution, friction=0.5, density=2500.0, model=model,
                         stiffness=stiffness if model == "linear" else 0.0)
    sim = ds.DEMSolver((-0.004, -0.004, -0.004), (0.012, 0.004, 0.004), mat, dt=dt, gravity=(0, 0, 0), skin=2e-3,
                       name="spheres")
    sim.add_wall(ds.PlaneWall(point=(0, 0, -0.002), normal=(0, 0, 1), name="floor"))
    gap = 2e-5
    sim.add_particles([[0.0, 0.0, -0.002 + r + gap]], r, velocity=(0, 0, -speed))          # onto the wall
    sim.add_particles([[0.006, 0, 0], [0.006 + 2 * r + gap, 0, 0]], r,
                      velocity=[[speed, 0, 0], [-speed, 0, 0]])                          # head-on pair
    return ds.Scene(sim, description=__doc__, steps=3000, every=100, camera=(10.0, -90.0),
                    options=dict(restitution=restitution, speed=speed, E=E, model=model))
