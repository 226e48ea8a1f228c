"""diffsim: a differentiable physics simulator (MPM, FEM, DEM) with learned components.

Layout: the `diffsim` package lives in `diffsim/`; its subpackages `diffsim.kernels`
(Taichi kernels) and `diffsim.learned` (torch modules) live in the top-level folders
`kernels/` and `learned/` and are mapped in with `package_dir`.
"""
from setuptools import setup

setup(
    name="diffsim",
    version="0.1.0",
    description="Differentiable MPM/FEM/DEM simulation with pluggable PyTorch materials",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["diffsim", "diffsim.core", "diffsim.mpm", "diffsim.fem", "diffsim.dem", "diffsim.coupling",
              "diffsim.tactile", "diffsim.tasks", "diffsim.geometry", "diffsim.kernels", "diffsim.learned"],
    package_dir={"diffsim": "diffsim", "diffsim.kernels": "kernels", "diffsim.learned": "learned"},
    install_requires=[
        "taichi==1.7.4",
        "torch==2.13.0",
        "numpy",
        "trimesh",
        "meshio",
        "scipy",
        "pillow",      # PNG read/write
        "matplotlib",  # plots (loss curves)
        "tqdm",        # progress bars
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],
        "video": ["imageio"],
        "cluster": ["ray"],  # diffsim sweep on Ray (local cores or a cluster)
        "mesh": ["tetgen"],  # tetrahedralize surface meshes (diffsim.tetrahedralize)
        "tasks": ["cma"],    # the CMA-ES baseline of diffsim optimize
        "rl": ["gymnasium", "stable-baselines3"],   # the PPO baseline of diffsim optimize
    },
    entry_points={"console_scripts": ["diffsim=diffsim.cli:main"]},
)
