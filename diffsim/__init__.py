"""diffsim: a differentiable physics simulator (MLS-MPM, FEM soft bodies and DEM) with
pluggable PyTorch materials.

Public API (everything a scene script or a user needs)::

    import diffsim as ds
    ds.init(arch="cpu", precision="f32")
    sim = ds.MPMSolver(domain_max=(1, 1, 1), grid=64, dt=2e-4)
    sim.add_body(ds.Box((0.5, 0.5, 0.3), 0.2), ds.FixedCorotated(E=1e5, nu=0.3))
    out = ds.rollout(sim, 100, params={"E": E})           # differentiable, any system
    loss = out.final.x[:, 2].mean(); loss.backward()

Every system (MPMSolver, FEMSolver, DEMSolver, FEMMPMCoupling, FEMModuleCoupling, a StepModule) implements
one protocol (:mod:`diffsim.core`, ``docs/architecture.md``).

Units are SI (m, kg, s, Pa), z is up, angles in radians.
"""
import os as _os

_os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")  # no banner on import
_os.environ.setdefault("TI_LOG_LEVEL", "warn")

from .runtime import init
from .errors import (DiffsimError, GradientNotFinite, InvalidMaterial, InvalidMesh, InvalidScene, SimulationDiverged,
                     UnstableTimeStep)
from .materials import (DruckerPrager, FixedCorotated, Material, NeoHookean, NeuralMaterial,
                        NewtonianFluid, ViscoplasticFluid, VonMises, lame)
from .geometry import Box, Cylinder, MeshShape, Sphere, load_mesh, mesh_sdf_grid
from .colliders import (BoxCollider, Collider, CylinderCollider, MeshCollider, PlaneCollider,
                        SphereCollider)
from .mpm.solver import MPMSolver
from .dem import BoxWall, CylinderWall, DEMMaterial, DEMSolver, MeshWall, PlaneWall, Pour, Wall as DEMWall
from .core import Rollout, State, StepModule, System, rollout
from .mpm.rollout import MPMState, parameter_tensor
from .fem.tetmesh import (TetMesh, box_tet_mesh, check_tet_mesh, dome_pad, flat_pad, grid_tet_mesh,
                          load_tet_mesh, tetrahedralize, voxel_tet_mesh)
from .fem.solver import Driver, FEMBody, FEMMaterial, FEMSolver, PenaltyContact
from .tactile.cameras import FisheyeCamera, PinholeCamera, look_at
from .tactile.optical import OpticalTactile
from .tactile.sensor import TactileSensor, mount_sensor
from .coupling.module import FEMModuleCoupling, ParticleContact
from .coupling.system import FEMMPMCoupling
from .tactile.markers import detect_markers, grid_markers
from .tactile.drawing import marker_flow_image
from .io import read_png
from .scene import Scene, build_scene
from .runner import run_scene
from .trajectory import InvalidTrajectory, Trajectory, load_trajectory, record as record_trajectory
from .fitting import Fitter
from .sweep import sweep

__version__ = "0.1.0"

__all__ = [
    "init", "DiffsimError", "GradientNotFinite", "InvalidMaterial", "InvalidMesh", "InvalidScene", "SimulationDiverged",
    "UnstableTimeStep", "Material", "FixedCorotated", "NeoHookean", "VonMises", "DruckerPrager",
    "NewtonianFluid", "ViscoplasticFluid", "NeuralMaterial", "lame", "Box", "Sphere", "Cylinder",
    "MeshShape", "load_mesh", "mesh_sdf_grid", "Collider", "PlaneCollider", "BoxCollider",
    "SphereCollider", "CylinderCollider", "MeshCollider", "MPMSolver", "MPMState", "State", "System", "Rollout", "StepModule",
    "rollout", "parameter_tensor", "DEMSolver", "DEMMaterial", "DEMWall", "PlaneWall",
    "CylinderWall", "BoxWall", "MeshWall", "Pour", "TetMesh", "box_tet_mesh",
    "check_tet_mesh", "dome_pad", "flat_pad", "grid_tet_mesh", "load_tet_mesh", "tetrahedralize", "voxel_tet_mesh",
    "FEMSolver", "FEMMaterial", "FEMBody", "PenaltyContact", "Driver", "PinholeCamera",
    "FisheyeCamera", "look_at", "TactileSensor", "OpticalTactile", "mount_sensor", "FEMMPMCoupling", "FEMModuleCoupling", "ParticleContact", "detect_markers", "grid_markers", "marker_flow_image", "read_png", "Scene", "build_scene", "run_scene", "Trajectory",
    "InvalidTrajectory", "load_trajectory", "record_trajectory", "Fitter", "sweep",
]
