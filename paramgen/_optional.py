"""Optional dependencies: import one where it is needed, or say which extra installs it.

The core (`paramgen.Generator`, the tokenizers, priors, vectorizers, zoos) needs torch and
a few small packages. Text conditions and the LoRA path need ``transformers``,
``sentence-transformers`` and ``peft``, installed with the extras ``paramgen[text]`` and
``paramgen[lora]``; the modules that use them call `require` inside the function that
needs them, so that importing paramgen never imports them.

Examples:
    >>> require("json", extra="text", feature="this example").__name__
    'json'
    >>> require("not_a_package_xyz", extra="text", feature="TextConditioner")
    Traceback (most recent call last):
    ...
    ImportError: TextConditioner needs the package 'not_a_package_xyz', which is not installed: pip install 'paramgen[text]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise an ``ImportError`` that names the extra to install.

    Args:
        module: A module name, e.g. ``"peft"`` or ``"transformers"``.
        extra: The paramgen extra that installs it, e.g. ``"lora"``.
        feature: What needs it, for the message (a class or function name).

    Returns:
        The imported module.

    Raises:
        ImportError: The module (or one of its own dependencies) is missing.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{feature} needs the package {module.split('.')[0]!r}, which is not installed: pip install 'paramgen[{extra}]'") from err
