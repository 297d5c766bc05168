"""``--no-progress`` for every library the command line runs, not only paramgen's own bars.

paramgen's loops take a ``progress`` switch. Hugging Face libraries draw bars of their own
(transformers' "Loading weights" when sentence-transformers loads MiniLM, huggingface_hub's
downloads), and child processes start from the environment. The command line is the
application, so it may switch those off; it does so for one command only and puts the
process back as it was afterwards (tests run many commands in one process).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["progress_bars", "ENVIRONMENT"]

#: What child processes inherit while bars are off: huggingface_hub (and transformers,
#: which follows it) and any tqdm bar whose caller does not pass ``disable=``.
ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def _hub() -> Any:
    """huggingface_hub's progress switches, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("huggingface_hub.utils")
    except ImportError:
        return None


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Leave progress bars as they are (``enabled``), or switch every known kind off for
    the duration of the block.

    Off means: huggingface_hub's bars (`huggingface_hub.utils.disable_progress_bars`),
    transformers' (`transformers.utils.logging.disable_progress_bar`; a transformers
    imported inside the block starts with them off, as it follows huggingface_hub), and
    `ENVIRONMENT` for child processes. paramgen's own bars follow each command's
    ``progress`` argument. On exit the environment and both libraries' switches are
    restored.

    Examples:
        >>> import os
        >>> with progress_bars(False):
        ...     os.environ["HF_HUB_DISABLE_PROGRESS_BARS"]
        '1'
    """
    if enabled:
        yield
        return
    # huggingface_hub reads HF_HUB_DISABLE_PROGRESS_BARS once, at import: import it before
    # the variable changes, so that it keeps the user's setting and can be switched back.
    hub = _hub()
    hub_was_disabled = hub.are_progress_bars_disabled() if hub is not None else None
    tf: Any = sys.modules.get("transformers.utils.logging")
    tf_was_enabled = tf.is_progress_bar_enabled() if tf is not None else None
    saved = {k: os.environ.get(k) for k in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    if hub is not None:
        hub.disable_progress_bars()
    if tf is not None:
        tf.disable_progress_bar()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tf = sys.modules.get("transformers.utils.logging")
        if tf is not None:  # first: switching transformers on switches huggingface_hub on too
            on = tf_was_enabled if tf_was_enabled is not None else not hub_was_disabled
            if on:
                tf.enable_progress_bar()
            else:
                tf.disable_progress_bar()
        if hub is not None and hub_was_disabled:
            hub.disable_progress_bars()
        elif hub is not None:
            hub.enable_progress_bars()
