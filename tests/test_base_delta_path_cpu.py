"""The GPU script's base/D path (`tests/gpu/test_cuda.py::base_delta_path`), run on the CPU so
that it is known to work before a GPU session spends its minutes on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_base_delta_path_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_test_cuda", Path(__file__).parent / "gpu" / "test_cuda.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.base_delta_path("cpu", tmp_path)
