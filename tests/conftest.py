"""Shared fixtures. Tests needing the real datasets read FITVISION_DATA_DIR and skip without it."""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("FITVISION_DATA_DIR", "")
    path = Path(value) if value else None
    if path is None or not (path / "cifar10-jpeg.tgz").is_file():
        pytest.skip("real datasets absent: set FITVISION_DATA_DIR to the folder holding cifar10-jpeg.tgz")
    return path


# Runs (in this process and the CLI subprocesses the tests start) use the default thread count,
# whatever else the machine is doing: results that tests compare bit for bit must not depend on
# how busy the CI machine happened to be (fitvision.train.device.share_cpu; its own test unsets it).
os.environ.setdefault("FITVISION_CPU_THREADS", "fixed")

# Under pytest-xdist (`make test`: one worker per core) each worker and the processes it starts
# compute on one thread: two workers of two spinning OpenMP threads each on two cores would slow
# both many times over. Tests that need a thread count set their own (and restore it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's cache unless a test asks for the shared one."""
    shared = os.environ.get("FITVISION_TEST_CACHE_DIR")
    cache = Path(shared) if shared else tmp_path_factory.getbasetemp() / "fitvision-cache"
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(cache))


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second intra-op thread, and on a loaded machine its
    spinning costs a lot (30x slower seen here). Modules opt in with
    pytestmark = pytest.mark.usefixtures("one_thread"); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
