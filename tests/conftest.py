"""Shared test configuration: hypothesis profiles and fixtures."""

import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests build real torch modules: no per-example deadline (xarray's habit).
settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The suite's models are tiny: one intra-op thread is fastest, and two threads on two
# shared cores slow small ops down by orders of magnitude.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tmp_out(tmp_path):
    """A fresh output folder."""
    return tmp_path


@pytest.fixture
def disk_full_at_write(monkeypatch):
    """``disk_full_at_write(n)``: the n-th ``os.pwrite`` from now on fails with ENOSPC (a full
    disk midway through a streamed file); returns the list of write offsets seen."""
    import errno

    def arm(n: int) -> list[int]:
        real_pwrite, calls = os.pwrite, []

        def pwrite(fd, data, pos):
            calls.append(pos)
            if len(calls) == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_pwrite(fd, data, pos)

        monkeypatch.setattr(os, "pwrite", pwrite)
        return calls

    return arm
