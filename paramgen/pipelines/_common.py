"""What the pipeline builders share: reading the source, the local seed, strict options."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import torch

from paramgen.normalize import GlobalScale, Normalizer, PerLayerZScore, PerTaskZScore
from paramgen.spec import ParamSpec
from paramgen.training import FitConfig

__all__ = ["Source", "conditioner_dim", "fit_config_with", "local_seed", "normalizer_of", "read_source", "strict_options", "task_names"]

P = typing.ParamSpec("P")
R = TypeVar("R")

#: What a builder reads the architecture from.
Source = Any  # ParamSpec | paramgen.zoo.Zoo | Sequence[Mapping[str, torch.Tensor]] (| a family for igpg)


def strict_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Make an unknown keyword to the builder ``fn`` a `TypeError` that lists the valid ones.

    The signature stays ``fn``'s (``inspect.signature`` follows ``__wrapped__``), so tools
    that read the options from it (the command line's config check) still see them.

    Examples:
        >>> @strict_options
        ... def build(source, *, width=4, depth=2): return width * depth
        >>> build(None, widht=3)
        Traceback (most recent call last):
        ...
        TypeError: build() got an unknown option 'widht'; valid options: width, depth
    """
    params = inspect.signature(fn).parameters
    valid = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            s = "s" if len(unknown) > 1 else ""
            names = ", ".join(repr(k) for k in unknown)
            raise TypeError(f"{fn.__name__}() got an unknown option{s} {names}; valid options: {', '.join(valid)}")
        return fn(*args, **kwargs)

    return wrapper


@contextmanager
def local_seed(seed: int | None) -> Iterator[None]:
    """Run the block on a CPU random state seeded with ``seed``; the global one is restored after.

    Module initialization (``nn.Linear``, ``nn.Embedding``, ...) draws from torch's global
    generator; under this context it draws from ``seed`` instead, and the caller's global
    state is neither read nor changed. ``seed=None`` draws from the global generator as
    plain module construction does (for a script that owns its process's RNG).

    Examples:
        >>> import torch
        >>> before = torch.get_rng_state()
        >>> with local_seed(0):
        ...     a = torch.randn(2)
        >>> with local_seed(0):
        ...     b = torch.randn(2)
        >>> torch.equal(a, b), torch.equal(before, torch.get_rng_state())
        (True, True)
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def read_source(source: Source) -> tuple[ParamSpec, tuple[str, ...] | None]:
    """The architecture of ``source`` and, for a zoo, its task names.

    Args:
        source: A `paramgen.ParamSpec`, a `paramgen.zoo.Zoo` of one architecture, or a
            non-empty sequence of state dicts (the spec of the first).

    Returns:
        ``(spec, tasks)``; ``tasks`` is ``None`` unless ``source`` is a zoo.

    Raises:
        TypeError: ``source`` is none of these.
        ValueError: An empty sequence, or a zoo of several architectures.

    Examples:
        >>> import torch
        >>> spec, tasks = read_source([{"w": torch.zeros(2, 3), "b": torch.zeros(2)}])
        >>> spec.numel, tasks
        (8, None)
    """
    if isinstance(source, ParamSpec):
        return source, None
    if hasattr(source, "spec") and hasattr(source, "tasks") and hasattr(source, "spec_ids"):  # a paramgen.zoo.Zoo
        return source.spec(), tuple(source.tasks)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if len(source) == 0:
            raise ValueError("expected a non-empty sequence of state dicts, got an empty one")
        first = source[0]
        if not isinstance(first, Mapping) or not all(isinstance(v, torch.Tensor) for v in first.values()):
            raise TypeError(f"expected a sequence of state dicts (name -> tensor), got a sequence of {type(first).__name__}")
        return ParamSpec.from_state_dict(first), None
    raise TypeError(f"expected a ParamSpec, a paramgen.zoo.Zoo or a sequence of state dicts, got {type(source).__name__}")


def task_names(tasks: Sequence[str] | None, from_source: Sequence[str] | None, builder: str) -> list[str]:
    """The task names of ``condition="task"``: ``tasks`` if given, else the zoo's."""
    names = tasks if tasks is not None else from_source
    if names is None:
        raise ValueError(f"{builder}(condition='task') needs the task names: pass tasks=[...] or a paramgen.zoo.Zoo as source")
    if isinstance(names, str) or len(names) == 0 or not all(isinstance(t, str) for t in names):
        raise ValueError(f"{builder}: expected tasks as a non-empty sequence of str, got {names!r}")
    return list(names)


def conditioner_dim(condition: Any, builder: str) -> int:
    """``condition.dim`` of a ready conditioner, checked."""
    dim = getattr(condition, "dim", None)
    if not callable(condition) or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TypeError(f"{builder}: condition must be one of the names listed in its docstring, None, or a Conditioner (a module with an int .dim >= 1), got {condition!r}")
    return dim


def normalizer_of(normalizer: str | Normalizer | None, spec: ParamSpec | None, builder: str) -> Normalizer | None:
    """A normalizer by name (``"per-layer"``, ``"per-task"``, ``"global"``), a ready one, or ``None``."""
    if normalizer is None or not isinstance(normalizer, str):
        return normalizer
    if normalizer == "per-layer":
        if spec is None:
            raise ValueError(f"{builder}: normalizer='per-layer' needs one architecture; use 'global' for a family")
        return PerLayerZScore(spec)
    if normalizer == "per-task":
        return PerTaskZScore(unknown="global")
    if normalizer == "global":
        return GlobalScale()
    raise ValueError(f"{builder}: normalizer must be 'per-layer', 'per-task', 'global', a Normalizer or None, got {normalizer!r}")


def fit_config_with(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> FitConfig:
    """``FitConfig(**defaults | overrides)``; an unknown field raises naming the valid ones."""
    fields = [f.name for f in attrs.fields(FitConfig)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise TypeError(f"fit_config() got an unknown field {unknown[0]!r}; valid fields: {', '.join(fields)}")
    return FitConfig(**{**defaults, **overrides})
