"""Test session setup: one Taichi runtime per process, in float64 (gradient checks need it)."""
import os
import sys
import tempfile

import pytest

# the tests live in per-package folders (tests/mpm, tests/fem, ...); shared helpers
# (_helpers.py, random_scenes.py) stay here
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TI_LOG_LEVEL", "warn")
# signed distance grids are cached on disk: the tests use (and exercise) a cache of their own
os.environ.setdefault("DIFFSIM_CACHE", tempfile.mkdtemp(prefix="diffsim-test-cache-"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long physics validation (run with -m slow)")


@pytest.fixture(scope="session", autouse=True)
def runtime():
    import diffsim
    return diffsim.init(arch="cpu", precision="f64", threads=2, seed=0)
