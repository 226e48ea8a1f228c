"""The Taichi runtime: the one place in diffsim that calls ``ti.init``.

``diffsim.init`` may be called once per process with explicit settings; later calls with the
same settings are no-ops, and calls with different settings raise (Taichi cannot be safely
re-initialised while fields are alive). Solvers call :func:`ensure_init` which initialises
with the defaults (CPU, f32) when the user did not.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np

from .errors import RuntimeNotInitialized


@dataclass(frozen=True)
class RuntimeConfig:
    arch: str = "cpu"          # "cpu" or "gpu"
    precision: str = "f32"     # "f32" or "f64"
    threads: int | None = None  # CPU threads (None: all cores)
    seed: int = 0
    deterministic: bool = False  # one CPU thread and fixed seeds: bitwise-reproducible runs
    debug: bool = False        # Taichi debug mode (bounds checks, autodiff validation)


_config: RuntimeConfig | None = None


OFFLINE_CACHE_BYTES = 1 << 30  # Taichi's compiled-kernel cache on disk (~/.cache/taichi)


def init(arch: str = "cpu", precision: str = "f32", threads: int | None = None, seed: int = 0,
         deterministic: bool = False, debug: bool = False) -> RuntimeConfig:
    """Initialise the Taichi runtime (once per process).

    Args:
        arch: ``"cpu"`` (default) or ``"gpu"`` (CUDA/Vulkan/Metal, whatever Taichi finds).
        precision: ``"f32"`` (default, fast) or ``"f64"`` (gradient checks).
        threads: number of CPU threads; None uses every core. Ignored on GPU.
        seed: seed for numpy, Python, torch and Taichi random numbers.
        deterministic: run on one CPU thread so that atomic additions happen in a fixed
            order and every run is bitwise identical.
        debug: Taichi debug mode (array bounds checks; slow).

    Returns the active :class:`RuntimeConfig`. Calling again with the same settings is a
    no-op; different settings raise :class:`RuntimeNotInitialized`.
    """
    global _config
    if arch not in ("cpu", "gpu"):
        raise ValueError(f"arch must be 'cpu' or 'gpu', got {arch!r}")
    if precision not in ("f32", "f64"):
        raise ValueError(f"precision must be 'f32' or 'f64', got {precision!r}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if deterministic:
        threads = 1
    cfg = RuntimeConfig(arch, precision, threads, int(seed), bool(deterministic), bool(debug))
    if _config is not None:
        if cfg != _config:
            raise RuntimeNotInitialized(
                f"diffsim.init was already called with {_config}; it cannot be re-initialised "
                f"with {cfg} in the same process (start a new process instead)")
        return _config
    os.environ.setdefault("TI_LOG_LEVEL", "warn")
    import taichi as ti

    kwargs = dict(default_fp=ti.f64 if precision == "f64" else ti.f32, default_ip=ti.i32,
                  random_seed=int(seed), debug=debug, offline_cache=True,
                  # Taichi's default 100 MB cache is smaller than diffsim's compiled kernels
                  # (every solver x material mask x precision x adjoint): least recently
                  # used files were evicted whenever it filled, and a new process recompiled
                  # them (~55 s for the DEM hopper's kernels)
                  offline_cache_max_size_of_files=OFFLINE_CACHE_BYTES,
                  ad_stack_size=256)  # reverse-mode loops over DEM neighbours/triangles
    if arch == "cpu":
        kwargs["arch"] = ti.cpu
        if threads is not None:
            kwargs["cpu_max_num_threads"] = int(threads)
    else:
        backend = probe_gpu()
        if backend is None:
            raise RuntimeNotInitialized("arch='gpu' (--arch gpu): no usable GPU backend on this machine (Taichi "
                                        "found no CUDA or Vulkan device); run on the CPU (--arch cpu)")
        kwargs["arch"] = ti.gpu
        kwargs["device_memory_fraction"] = 0.5
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # "[Taichi] Starting on arch=..."
        ti.init(**kwargs)
    if arch == "gpu" and ti.lang.impl.current_cfg().arch == ti.cpu:
        raise RuntimeError("arch='gpu' was requested but Taichi found no usable GPU backend")
    _seed_everything(int(seed))
    _config = cfg
    return cfg


def probe_gpu(timeout: float = 180.0) -> str | None:
    """The GPU backend Taichi would use here ("cuda", "vulkan", ...), or None. Probed in a
    child process: on machines without a GPU driver ``ti.init(arch=ti.gpu)`` can crash the
    process (a segmentation fault in Taichi 1.7.4) instead of falling back to the CPU.
    ``DIFFSIM_GPU_BACKEND`` set in the environment skips the probe (its value is returned)."""
    known = os.environ.get("DIFFSIM_GPU_BACKEND")
    if known:
        return known
    import subprocess
    import sys
    code = ("import contextlib, io, taichi as ti\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    ti.init(arch=ti.gpu, offline_cache=False)\n"
            "print('BACKEND', ti.lang.impl.current_cfg().arch.name)")
    env = dict(os.environ, TI_LOG_LEVEL="error", ENABLE_TAICHI_HEADER_PRINT="False")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines():
        if line.startswith("BACKEND ") and r.returncode == 0:
            name = line.split()[1]
            return None if name in ("x64", "arm64", "cpu") else name
    return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def ensure_init() -> RuntimeConfig:
    """Initialise with defaults unless the user already called :func:`init`."""
    if _config is None:
        return init()
    return _config


def ensure_f64() -> bool:
    """Start the runtime in float64 unless it is running already; True when it runs in
    float64 (gradient fits and checks need it)."""
    if not initialized():
        init(precision="f64")
    return config().precision == "f64"


def initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _config is not None


def config() -> RuntimeConfig:
    """The active configuration (initialising with defaults if needed)."""
    return ensure_init()


def real_dtype():
    """Taichi float type of the active precision."""
    import taichi as ti
    return ti.f64 if ensure_init().precision == "f64" else ti.f32


def torch_dtype():
    """torch float dtype matching the active precision."""
    import torch
    return torch.float64 if ensure_init().precision == "f64" else torch.float32


def np_dtype():
    """numpy float dtype matching the active precision."""
    return np.float64 if ensure_init().precision == "f64" else np.float32


_quiet_compiled: set = set()


def call_quietly_once(key, kernel, *args):
    """Call ``kernel(*args)``; the first call for ``key`` (when Taichi compiles it) runs with
    Taichi's log at ERROR. Taichi's autodiff warns about never-read adjoint temporaries
    (small matrix products, branch-local values) while compiling reverse-mode kernels;
    harmless (the gradients are checked against finite differences in the tests)."""
    if key in _quiet_compiled:
        return kernel(*args)
    import taichi as ti
    ti.set_logging_level(ti.ERROR)
    try:
        return kernel(*args)
    finally:
        ti.set_logging_level(ti.WARN)
        _quiet_compiled.add(key)
