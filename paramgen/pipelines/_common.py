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

__all__ = [
    "Source",
    "check_tokenizer",
    "conditioner_dim",
    "fit_config_for",
    "fit_config_with",
    "local_seed",
    "normalizer_of",
    "read_family",
    "read_source",
    "strict_options",
    "task_names",
]

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


def read_family(source: Source) -> tuple[dict[str, ParamSpec] | None, ParamSpec | None, tuple[str, ...] | None]:
    """``(family, spec, tasks)`` of ``source``: a family of several architectures, or one spec.

    A family is a mapping of architecture keys to specs, or a `paramgen.zoo.Zoo` of several
    architectures (keyed by spec id); anything else is read by `read_source`.

    Examples:
        >>> import torch
        >>> small, large = (ParamSpec.from_state_dict({"w": torch.zeros(n)}) for n in (2, 3))
        >>> family, spec, _ = read_family({"s": small, "l": large})
        >>> sorted(family), spec
        (['l', 's'], None)
    """
    if isinstance(source, Mapping) and source and all(isinstance(v, ParamSpec) for v in source.values()):
        return {str(k): v for k, v in source.items()}, None, None
    if hasattr(source, "spec_ids") and hasattr(source, "specs") and len(source.spec_ids) > 1:  # a paramgen.zoo.Zoo of a family
        return {i: source.specs[i] for i in source.spec_ids}, None, tuple(source.tasks)
    spec, tasks = read_source(source)
    return None, spec, tasks


def check_tokenizer(tokenizer: Any, rows: int, width: int, builder: str, layout: str) -> None:
    """Check that a ready ``tokenizer=`` of a builder fits its layout (``rows`` x ``width``).

    Args:
        tokenizer: What was passed.
        rows: Rows of the builder's vectorizer.
        width: Their width.
        builder: The builder's name, for the message.
        layout: The option that set the layout (e.g. ``"chunk_size=64"``), for the message.

    Raises:
        TypeError: ``tokenizer`` is not a tokenizer (it has no ``latent_shape``).
        ValueError: Its rows or width differ from the layout's.

    Examples:
        >>> check_tokenizer(object(), 1, 8, "d2nwg", "chunk_size=None")
        Traceback (most recent call last):
        ...
        TypeError: d2nwg: tokenizer= expects a tokenizer (e.g. a fitted VAETokenizer), got object
    """
    if not hasattr(tokenizer, "latent_shape"):
        raise TypeError(f"{builder}: tokenizer= expects a tokenizer (e.g. a fitted VAETokenizer), got {type(tokenizer).__name__}")
    found = (getattr(tokenizer, "rows", None), getattr(tokenizer, "width", None))
    if found != (rows, width):
        raise ValueError(f"{builder}: tokenizer= expects rows x width {rows} x {width} ({layout}), got {found[0]} x {found[1]}")


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


def fit_config_for(defaults: Mapping[str, Any], paper: str, module: str) -> Callable[..., FitConfig]:
    """The ``fit_config`` function of a pipeline whose training defaults are ``defaults``.

    Every pipeline module states its paper's training defaults once, as ``FIT_DEFAULTS``
    (only the `paramgen.training.FitConfig` fields that differ from FitConfig's own
    defaults), and gets its ``fit_config(**overrides)`` from here.

    Args:
        defaults: The pipeline's ``FIT_DEFAULTS``.
        paper: The method's name, for the docstring.
        module: The pipeline module's ``__name__`` (where the function is documented).

    Returns:
        ``fit_config(**overrides) -> FitConfig``; an unknown field raises `TypeError`
        naming the valid ones.

    Examples:
        >>> fit_config = fit_config_for({"prior_lr": 1e-3}, "X", __name__)
        >>> fit_config().prior_lr, fit_config(prior_lr=0.1).prior_lr
        (0.001, 0.1)
    """

    def fit_config(**overrides: Any) -> FitConfig:
        return fit_config_with(defaults, overrides)

    fit_config.__doc__ = (
        f"{paper}'s training defaults (``FIT_DEFAULTS``) as a `paramgen.training.FitConfig`.\n\n"
        "    Args:\n        **overrides: Any `FitConfig` field.\n\n"
        "    Returns:\n        The config.\n\n"
        "    Raises:\n        TypeError: An unknown field (the message lists the valid ones).\n"
    )
    fit_config.__module__ = module
    return fit_config
