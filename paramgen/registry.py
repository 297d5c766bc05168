"""Stable names for components, so that loading never imports what a file names.

A saved generator (`paramgen.Generator.save_pretrained`) records each component as a
registered name (``"vae"``, ``"diffusion"``, ...) with its constructor keywords. Loading
looks the name up here and builds only registered classes: a ``config.json`` cannot make
paramgen import a module or call anything else (diffusers' ``LOADABLE_CLASSES`` idea).

Built-in components are registered by name below, imported from paramgen itself only when
first needed. A user adds their own class once, before saving or loading:

Examples:
    >>> import torch
    >>> from paramgen.registry import Registry
    >>> class Toy:  # a stand-in component: config() and from_config() are all it needs
    ...     def __init__(self, *, scale: float = 1.0) -> None:
    ...         self.scale = scale
    ...     def config(self) -> dict:
    ...         return {"scale": self.scale}
    ...     @classmethod
    ...     def from_config(cls, config: dict) -> "Toy":
    ...         return cls(**config)
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

import importlib
from typing import Any

__all__ = ["Registry", "UnregisteredComponentError", "register", "registry", "BUILTINS"]

# name -> "module:qualname" inside paramgen. Only these strings are ever imported, and only
# by the library's own code; nothing read from a file reaches `importlib`.
BUILTINS: dict[str, str] = {
    # tokenizers
    "vae": "paramgen.tokenizers.vae:VAETokenizer",
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
