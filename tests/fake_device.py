"""A fake accelerator for device-contract tests on a CPU-only machine.

`fake_device()` is a context manager under which tensors can be moved to a fake device
(reported as ``meta``) that still holds real CPU data, so data-dependent code (``.item()``,
``bool(x.any())``, validation) runs as usual. Every aten call is checked the way an
accelerator would check it, but more strictly:

- a fake-device tensor combined with a CPU tensor of one or more dimensions (index tensors
  included, which CUDA would silently copy over) raises `DeviceMismatch`;
- random draws onto the fake device from a CPU ``torch.Generator`` raise (CUDA: "Expected a
  'cuda' device type for generator").

0-dim CPU tensors may mix with device tensors, as on CUDA. ``.cpu()`` / ``.to("cpu")`` of a
fake tensor gives a plain CPU tensor. Plain ``meta`` tensors cannot hold data and are not
supported, nor is backward.

Examples:
    >>> import torch
    >>> with fake_device() as dev:
    ...     x = torch.ones(3).to(dev)
    ...     y = x + torch.zeros(3, device=x.device)
    ...     (y.device.type, float(y.sum()))
    ('meta', 3.0)
    >>> with fake_device() as dev:
    ...     torch.ones(3).to(dev) + torch.zeros(3)
    Traceback (most recent call last):
    ...
    fake_device.DeviceMismatch: aten.add.Tensor mixes tensors on the device with CPU tensors of shape [(3,)]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["DeviceMismatch", "FAKE", "FakeDeviceTensor", "fake_device", "tensors_in"]

FAKE = torch.device("meta")

# Ops that legitimately take tensors from another device.
_CROSS_DEVICE = {"aten._to_copy", "aten.copy_", "aten._copy_from", "aten._copy_from_and_resize", "aten.lift_fresh"}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a device tensor, or a CPU generator drew onto the device."""


class FakeDeviceTensor(torch.Tensor):
    """A CPU tensor ``inner`` that reports device `FAKE`."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> FakeDeviceTensor:
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, layout=inner.layout, device=FAKE, requires_grad=inner.requires_grad,
        )  # fmt: skip
        out.inner = inner
        return out

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"FakeDeviceTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _handle(func, args, kwargs or {})


def _name(func: Any) -> str:
    return f"aten.{func.__name__}" if not str(func).startswith("aten.") else str(func)


def _handle(func: Any, args: tuple, kwargs: dict) -> Any:
    name = _name(func)
    base = name.rsplit(".", 1)[0] if name.count(".") > 1 else name
    flat, _ = tree_flatten((args, kwargs))
    wrapped = [a for a in flat if isinstance(a, FakeDeviceTensor)]
    plain = [a for a in flat if isinstance(a, torch.Tensor) and not isinstance(a, FakeDeviceTensor)]
    if any(p.device.type == "meta" for p in plain):
        raise DeviceMismatch(f"{name} got a real meta tensor (no data); move tensors with .to(dev) inside fake_device()")
    device = kwargs.get("device")
    on_device = bool(wrapped) if device is None else torch.device(device) == FAKE
    if on_device and base not in _CROSS_DEVICE:
        cpu = [tuple(p.shape) for p in plain if p.ndim > 0]
        if cpu:
            raise DeviceMismatch(f"{name} mixes tensors on the device with CPU tensors of shape {cpu}")
        if any(isinstance(a, torch.Generator) and a.device.type == "cpu" for a in flat):
            raise DeviceMismatch(f"{name} draws onto the device from a CPU torch.Generator")
    if device is not None and torch.device(device) == FAKE:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    inners = {id(w.inner): w for w in wrapped}
    unwrap = lambda a: a.inner if isinstance(a, FakeDeviceTensor) else a  # noqa: E731
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    def wrap(o: Any) -> Any:
        if not isinstance(o, torch.Tensor) or not on_device:
            return o
        same = inners.get(id(o))  # in-place ops return their argument
        return FakeDeviceTensor(o) if same is None else same

    return tree_map(wrap, out)


# These build a CPU tensor in C++ and copy it to the device below the dispatch modes.
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}


class _DataMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func is torch.Tensor.tolist and isinstance(args[0], FakeDeviceTensor):  # no subclass support
            return args[0].inner.tolist()
        if func in _FROM_DATA and device is not None and torch.device(device) == FAKE:
            return func(*args, **{**kwargs, "device": "cpu"}).to(FAKE)
        return func(*args, **kwargs)


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _handle(func, args, kwargs or {})


@contextmanager
def fake_device() -> Iterator[torch.device]:
    """Check device handling inside the block; yields the fake device to move tensors to."""
    with _DataMode(), _Mode():
        yield FAKE


def tensors_in(out: Any) -> list[torch.Tensor]:
    """Every tensor in a component's output: a tensor, an attrs record, a dict, or nested lists of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if attrs.has(type(out)):
        out = attrs.asdict(out, recurse=False)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors_in(o)]
    return []
