"""Stable names for components, so that loading never imports what a file names, and the
one mechanism that records what a component was built with.

A saved generator (`paramgen.Generator.save_pretrained`) records each component as a
registered name (``"vae"``, ``"diffusion"``, ...) with its constructor keywords. Loading
looks the name up here and builds only registered classes: a ``config.json`` cannot make
paramgen import a module or call anything else (diffusers' ``LOADABLE_CLASSES`` idea).

A component gets ``config()`` and ``from_config(config)`` by subclassing `Configurable`:
its constructor's arguments are recorded once, when it is built (diffusers'
``register_to_config``), so nothing restates them by hand.

Built-in components are registered by name below, imported from paramgen itself only when
first needed. A user adds their own class once, before saving or loading:

Examples:
    >>> import torch
    >>> from paramgen.registry import Configurable, Registry
    >>> class Toy(Configurable):  # a stand-in component
    ...     def __init__(self, *, scale: float = 1.0, shape: tuple[int, ...] = (2, 3)) -> None:
    ...         self.scale = scale
    >>> Toy(scale=2.0).config()  # defaults filled in, tuples as JSON lists
    {'scale': 2.0, 'shape': [2, 3]}
    >>> reg = Registry()
    >>> reg.register("toy", Toy)
    >>> reg.name_of(Toy())
    'toy'
    >>> reg.build("toy", {"scale": 2.0}).scale
    2.0
    >>> reg.build("os:system", {})
    Traceback (most recent call last):
    ...
    paramgen.registry.UnregisteredComponentError: 'os:system' is not a registered component ...
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

__all__ = ["Configurable", "Registry", "UnregisteredComponentError", "register", "registry", "BUILTINS"]

# name -> "module:qualname" inside paramgen. Only these strings are ever imported, and only
# by the library's own code; nothing read from a file reaches `importlib`.
BUILTINS: dict[str, str] = {
    # tokenizers
    "vae": "paramgen.tokenizers.vae:VAETokenizer",
    "positional-vae": "paramgen.tokenizers.positional:PositionalVAETokenizer",
    "gumbel-vq": "paramgen.tokenizers.vq:GumbelVQTokenizer",
    "identity": "paramgen.tokenizers.identity:IdentityTokenizer",
    # priors
    "diffusion": "paramgen.priors.ddpm:DiffusionPrior",
    "gpt": "paramgen.priors.gpt:GPTPrior",
    "kde": "paramgen.priors.kde:KDEPrior",
    # conditioners
    "index": "paramgen.conditioners.index:IndexConditioner",
    "one-hot": "paramgen.conditioners.index:OneHotConditioner",
    "text": "paramgen.conditioners.text:TextConditioner",
    "image-set": "paramgen.conditioners.imageset:ImageSetConditioner",
    "ordered-set": "paramgen.conditioners.ordered:OrderedSetConditioner",
    "architecture": "paramgen.conditioners.architecture:ArchitectureConditioner",
    "concat": "paramgen.conditioners.architecture:ConcatConditioner",
    "text-or-vector": "paramgen.conditioners.text_or_vector:TextOrVectorConditioner",
    "descriptor": "paramgen.conditioners.descriptor:DescriptorConditioner",
    "aligned-descriptor": "paramgen.conditioners.descriptor:AlignedDescriptorConditioner",
    "chunk-position": "paramgen.chunkwise:ChunkPositionConditioner",
    # other saved parts
    "accuracy-predictor": "paramgen.predictor:AccuracyPredictor",
}


# Built-in classes that moved: the "module:qualname" a format-1 folder recorded -> their name.
MOVED: dict[str, str] = {
    "paramgen.lora:TextOrVectorConditioner": "text-or-vector",  # paramgen/lora.py became a package
    "paramgen.lora.conditioner:TextOrVectorConditioner": "text-or-vector",  # then moved to conditioners/
}


class UnregisteredComponentError(KeyError):
    """A name or class that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class Registry:
    """Name -> component class, with the built-ins preloaded by name.

    Args:
        builtins: ``name -> "module:qualname"`` of classes this registry may import itself.
    """

    def __init__(self, builtins: dict[str, str] | None = None) -> None:
        self._builtins = dict(BUILTINS if builtins is None else builtins)
        self._classes: dict[str, type] = {}

    def register(self, name: str, cls: type, *, replace: bool = False) -> None:
        """Register ``cls`` under ``name``.

        Args:
            name: Stable name written into saved configs (letters, digits, ``-``, ``_``, ``.``).
            cls: A class with ``config()`` and a classmethod ``from_config(config)``.
            replace: Allow re-binding a name to another class.

        Raises:
            ValueError: A malformed name, or a name already bound to another class.
            TypeError: ``cls`` is not a class with ``config`` / ``from_config``.
        """
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ValueError(f"a component name is a non-empty string of letters, digits, '-', '_' or '.', got {name!r}")
        if not isinstance(cls, type) or not callable(getattr(cls, "from_config", None)) or not callable(getattr(cls, "config", None)):
            raise TypeError(f"register({name!r}, ...) expects a class with config() and from_config(config), got {cls!r}")
        current = self._classes.get(name)
        builtin = self._builtins.get(name)
        if not replace and ((current is not None and current is not cls) or (builtin is not None and builtin != _path(cls))):
            raise ValueError(f"the name {name!r} is already registered for {builtin or _path(current)}; pass replace=True to re-bind it")  # type: ignore[arg-type]
        self._classes[name] = cls

    def get(self, name: str) -> type:
        """The class registered under ``name``.

        Raises:
            UnregisteredComponentError: ``name`` is not registered (nothing is imported).
        """
        if not isinstance(name, str):
            raise UnregisteredComponentError(f"a component name must be a string, got {type(name).__name__}")
        if name in self._classes:
            return self._classes[name]
        if name in self._builtins:
            module, _, qualname = self._builtins[name].partition(":")
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            self._classes[name] = obj
            return obj
        raise UnregisteredComponentError(
            f"{name!r} is not a registered component (known: {', '.join(sorted(self.names()))}); "
            "loading builds registered classes only. If you wrote this component, call "
            "paramgen.register(name, cls) before loading"
        )

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self._classes))

    def name_of(self, obj: Any) -> str:
        """The registered name of ``obj``'s class.

        Raises:
            UnregisteredComponentError: the class is not registered, so it could not be loaded back.
        """
        cls = obj if isinstance(obj, type) else type(obj)
        for name, known in self._classes.items():
            if known is cls:
                return name
        path = _path(cls)
        for name, known_path in self._builtins.items():
            if known_path == path:
                return name
        raise UnregisteredComponentError(
            f"{cls.__name__} is not a registered component, so a saved generator could not be loaded "
            f"back; register it first: paramgen.register('my-name', {cls.__name__})"
        )

    def name_for_path(self, path: str) -> str:
        """The registered name of a class given as ``"module:qualname"`` (format 1 folders).

        Only registered classes match; the path is compared as a string, never imported.
        """
        if path in MOVED and MOVED[path] in self._builtins:
            return MOVED[path]
        for name, known_path in self._builtins.items():
            if known_path == path:
                return name
        for name, cls in self._classes.items():
            if _path(cls) == path:
                return name
        raise UnregisteredComponentError(
            f"the saved config names the class {path!r}, which is not a registered component; "
            "paramgen does not import classes named by a file. If you trust this folder and the "
            "class is yours, register it with paramgen.register('my-name', TheClass) and load "
            "again (saving it again writes the current format, which stores the name)"
        )

    def build(self, name: str, config: dict[str, Any]) -> Any:
        """``get(name).from_config(config)``."""
        if not isinstance(config, dict):
            raise TypeError(f"the config of component {name!r} must be a JSON object, got {type(config).__name__}")
        cls: Any = self.get(name)  # a registered class with a from_config classmethod
        return cls.from_config(config)


registry = Registry()
"""The registry `paramgen.Generator` saves and loads through."""


def register(name: str, cls: type, *, replace: bool = False) -> None:
    """Register a component class in the default registry (see `Registry.register`).

    Examples:
        >>> from paramgen.priors import KDEPrior
        >>> register("kde", KDEPrior)  # already a built-in under this name: a no-op
    """
    registry.register(name, cls, replace=replace)


_C = TypeVar("_C", bound="Configurable")
_RECORDED = "_config_record"  # the instance attribute that holds what __init__ was given


class Configurable:
    """Records the arguments a component is built with; gives it ``config`` and ``from_config``.

    A subclass's ``__init__`` is wrapped when the class is defined. When it returns, its
    arguments are recorded: every parameter of its signature, defaults filled in (so a saved
    config is complete), ``**kwargs`` as given. `config` returns them as JSON and
    `from_config` calls the constructor with them again (diffusers' ``register_to_config``;
    no ``config`` method is written by hand). A value is recorded as JSON when it is built:
    tuples become lists, paths strings, numpy numbers Python numbers, and a registered
    component (an argument that is itself a component, e.g. the parts of
    `paramgen.conditioners.ConcatConditioner`) is written as ``{"name": ..., "config": ...}``
    and rebuilt through the registry, never by importing what a file names. Anything else
    raises a `TypeError` at construction, not at save time.

    Three class attributes cover constructors that do more than store their arguments:

    Attributes:
        config_ignore: Arguments that are not recorded: objects that cannot be JSON, such as
            a frozen feature extractor or the spec a factory passes in; pass them again to
            `from_config` by keyword.
        config_canonical: Arguments recorded as the instance's attribute of the same name,
            i.e. as the constructor canonicalized them (keys mapped with ``str``, an int
            dropout stored as a float), so equal components have equal configs.
        config_constants: Entries written first into every config of the class, e.g. the
            ``{"type": "model"}`` a factory dispatches on; `from_config` checks and drops them.

    Examples:
        >>> class Scaled(Configurable):
        ...     config_canonical = ("factor",)
        ...     def __init__(self, *, factor: float = 1.0, name: str = "x") -> None:
        ...         self.factor = float(factor)
        >>> Scaled(factor=2).config()
        {'factor': 2.0, 'name': 'x'}
        >>> Scaled.from_config({"factor": 3.0}).factor
        3.0
        >>> Scaled.from_config({"factr": 3.0})
        Traceback (most recent call last):
        ...
        ValueError: Scaled.from_config: unknown key 'factr' (Scaled takes factor, name)
    """

    config_ignore: ClassVar[tuple[str, ...]] = ()
    config_canonical: ClassVar[tuple[str, ...]] = ()
    config_constants: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            setattr(cls, "__init__", _recording(init))  # noqa: B010  (mypy refuses assigning to a method)
        params = _parameters(cls)
        for attr in ("config_ignore", "config_canonical"):
            names = getattr(cls, attr)
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise TypeError(f"{cls.__name__}.{attr} must be a tuple of argument names, got {names!r}")
            unknown = [n for n in names if n not in params]
            if unknown:
                raise TypeError(f"{cls.__name__}.{attr} names {unknown}, which are not arguments of {cls.__name__}.__init__")
        if not isinstance(cls.config_constants, Mapping):
            raise TypeError(f"{cls.__name__}.config_constants must be a mapping, got {cls.config_constants!r}")
        _plain(cls.config_constants, f"{cls.__name__}.config_constants")  # JSON, or a TypeError now
        clash = [k for k in cls.config_constants if k in params]
        if clash:
            raise TypeError(f"{cls.__name__}.config_constants uses the names of arguments of {cls.__name__}.__init__: {clash}")

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-serializable (a fresh copy)."""
        try:
            recorded = self.__dict__[_RECORDED]
        except KeyError:
            raise RuntimeError(
                f"no constructor arguments were recorded for this {type(self).__name__}: its __init__ has not returned "
                "yet, or is not defined by a Configurable subclass"
            ) from None
        return {**_encode(dict(self.config_constants)), **_encode(recorded)}

    @classmethod
    def from_config(cls: type[_C], config: Mapping[str, Any], **objects: Any) -> _C:
        """Build a component (untrained: load weights separately) from `config`.

        Args:
            config: What `config` returned (e.g. read back from a ``config.json``).
            **objects: The arguments in ``config_ignore``, if the component needs them.

        Raises:
            ValueError: A key the constructor does not take, a required one missing, or a
                keyword in ``objects`` that is not in ``config_ignore``.
            UnregisteredComponentError: A nested component that is not registered.
        """
        name = cls.__name__
        if not isinstance(config, Mapping):
            raise TypeError(f"{name}.from_config expects a mapping (a JSON object), got {type(config).__name__}")
        for key, value in cls.config_constants.items():
            if key in config and config[key] != value:
                raise ValueError(f"{name}.from_config: expected {key}={value!r}, got {config[key]!r}")
        config = {k: v for k, v in config.items() if k not in cls.config_constants}
        params = _parameters(cls)
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for key in config:
            if not isinstance(key, str) or (key not in named and not takes_kwargs) or key in cls.config_ignore:
                raise ValueError(f"{name}.from_config: unknown key {key!r} ({name} takes {', '.join(n for n in named if n not in cls.config_ignore)})")
        for key in objects:
            if key not in cls.config_ignore:
                raise ValueError(f"{name}.from_config: {key}= is not an argument left out of the config (those are: {list(cls.config_ignore)})")
        positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
        args: list[Any] = []
        kwargs: dict[str, Any] = dict(objects)
        for key, p in params.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update({k: _decode(v) for k, v in config.items() if k not in params})
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(_decode(v) for v in config.get(key, ()))
            elif key in objects:
                continue
            elif key not in config:
                if p.default is inspect.Parameter.empty:
                    raise ValueError(f"{name}.from_config: the config lacks {key!r}")
                if p.kind is inspect.Parameter.POSITIONAL_ONLY or (positional and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD):
                    args.append(p.default)  # so that the arguments after it keep their places
            elif p.kind is inspect.Parameter.POSITIONAL_ONLY or (positional and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD):
                args.append(_decode(config[key]))
            else:
                kwargs[key] = _decode(config[key])
        return cls(*args, **kwargs)


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters of ``cls.__init__`` without ``self`` (the signature of the wrapped one)."""
    params = list(inspect.signature(cls.__init__).parameters.values())  # type: ignore[misc]  # __init__ on a class
    return {p.name: p for p in params[1:]}


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is not __init__:  # a subclass's own __init__ records its arguments
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cls = type(self)
        recorded: dict[str, Any] = {}
        for key, p in list(signature.parameters.items())[1:]:
            if key in cls.config_ignore:
                continue
            value = getattr(self, key) if key in cls.config_canonical else bound.arguments[key]
            where = f"{cls.__name__}({key}=...)"
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update({k: _plain(v, f"{cls.__name__}({k}=...)") for k, v in value.items()})
            else:
                recorded[key] = _plain(list(value) if p.kind is inspect.Parameter.VAR_POSITIONAL else value, where)
        object.__setattr__(self, _RECORDED, recorded)  # plain attribute, also on an nn.Module

    return __init__


def _is_component(value: Any) -> bool:
    return callable(getattr(value, "config", None)) and callable(getattr(type(value), "from_config", None))


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data, components kept as objects (encoded by `_encode` at save time)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple, range)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: a recorded mapping needs string keys (JSON), got {list(value)[:5]!r}")
        return {k: _plain(v, where) for k, v in value.items()}
    if _is_component(value) or isinstance(value, nn.Module):
        return value  # a part (e.g. of ConcatConditioner): it must be a registered component to be saved
    raise TypeError(
        f"{where}: expected a JSON value (None, bool, number, str, path, or lists and dicts of them) or a "
        f"component, got {type(value).__name__}; an argument that cannot be saved belongs in config_ignore"
    )


def _encode(value: Any) -> Any:
    """Recorded data -> JSON: components as ``{"name": ..., "config": ...}`` (a deep copy)."""
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if _is_component(value) or isinstance(value, nn.Module):
        return {"name": registry.name_of(value), "config": value.config()}  # name_of refuses an unregistered class
    return copy.deepcopy(value)


def _decode(value: Any) -> Any:
    """JSON -> arguments: ``{"name" | "class": ..., "config": ...}`` entries built by the registry."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, Mapping):
        if set(value) in ({"name", "config"}, {"class", "config"}):
            # Older configs named a class path: matched against the registry as a string, never imported.
            name = value["name"] if "name" in value else registry.name_for_path(value["class"])
            return registry.build(name, value["config"])
        return {k: _decode(v) for k, v in value.items()}
    return value
