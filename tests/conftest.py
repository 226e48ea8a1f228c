"""Test session setup: one Taichi runtime per process, in float64 (gradient checks need it)."""
import os

import pytest

os.environ.setdefault("TI_LOG_LEVEL", "warn")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long physics validation (run with -m slow)")


@pytest.fixture(scope="session", autouse=True)
def runtime():
    import diffsim
    return diffsim.init(arch="cpu", precision="f64", threads=2, seed=0)
