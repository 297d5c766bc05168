"""Autoregressive token prior (IGPG sec. 2.3 and Alg. 1): a small GPT with the condition as a prefix.

`GPTPrior` is a nanoGPT-style causal transformer over the discrete tokens of one model
(e.g. the VQ indices of all its chunks, flattened to one sequence of ``length`` tokens).
The condition vector (IGPG: dataset embedding and architecture embedding, concatenated by
the caller) is mapped to ``cond_tokens`` prefix embeddings; an unconditional prior starts
from a learned BOS embedding instead. ``loss`` is next-token cross-entropy; ``sample``
decodes token by token with a KV cache, with temperature and top-k.

Long sequences (``length > context``) are modelled by windows of ``context`` tokens
(IGPG Alg. 1): see `GPTPrior` for the window grid shared by training and sampling.

Examples:
    >>> import torch
    >>> prior = GPTPrior(vocab_size=16, length=10, cond_dim=3, context=6, d_model=16, layers=1, heads=2)
    >>> g = torch.Generator().manual_seed(0)
    >>> tokens = torch.randint(0, 16, (4, 10), generator=g)
    >>> prior.loss(tokens, torch.randn(4, 3), generator=g).backward()
    >>> prior.sample(5, torch.randn(5, 3), generator=g).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from paramgen._random import rand, randint
from paramgen.priors._checks import check_cond, reject_unknown_options
from paramgen.registry import Configurable

__all__ = ["GPTPrior"]


def _int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}")
    return float(value)


def _top_k(value: Any, vocab_size: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= vocab_size:
        raise ValueError(f"top_k must be None or an int in [1, vocab_size={vocab_size}], got {value!r}")
    return value


def _own_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator``, or a fresh non-deterministically seeded one: the global RNG is never read."""
    if generator is not None:
        return generator
    try:
        g = torch.Generator(device=device)
    except RuntimeError:  # a device without generators of its own (e.g. meta): draw on the CPU
        g = torch.Generator()
    g.seed()
    return g


def _dropout(h: torch.Tensor, p: float, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (``nn.Dropout`` reads the global RNG)."""
    if not training or p == 0.0:
        return h
    g = _own_generator(generator, h.device)
    keep = rand(h.shape, generator=g, device=h.device) >= p
    return h * keep.to(h.dtype) / (1.0 - p)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no dropout) and restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class _KVCache:
    """Keys and values of one attention layer, preallocated for ``size`` positions."""

    def __init__(self, batch: int, heads: int, size: int, head_dim: int, *, device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.empty(batch, heads, size, head_dim, device=device, dtype=dtype)  # (B, H, S, D)
        self.v = torch.empty_like(self.k)  # (B, H, S, D)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, H, T, D) after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cache: _KVCache | None, generator: torch.Generator | None) -> torch.Tensor:
        t = x.shape[1]
        q, k, v = (rearrange(a, "b t (h d) -> b h t d", h=self.heads) for a in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, D)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.append(k, v)  # (B, H, start + T, D)
        # Attention weights are not dropped: SDPA's dropout would read the global RNG.
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:  # one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # several new tokens after a cached prompt: causal with an offset
            mask = torch.arange(start + t, device=x.device)[None, :] <= torch.arange(start, start + t, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
        y = rearrange(y, "b h t d -> b t (h d)")
        return _dropout(self.proj(y), self.dropout, self.training, generator)


class _Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cache: _KVCache | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, generator)
        h = self.proj(F.gelu(self.fc(self.ln_2(x))))
        return x + _dropout(h, self.dropout, self.training, generator)


class GPTPrior(nn.Module, Configurable):
    """Causal transformer over token sequences ``(B, length)``, conditioned by a prefix.

    The input of the transformer is ``[prefix, tokens]``: the prefix is ``cond_tokens``
    embeddings made by a linear map of the condition vector (``cond_dim > 0``), or one
    learned BOS embedding (``cond_dim = 0``). The last prefix position predicts token 0,
    token ``i`` predicts token ``i + 1``. The output head is not tied to the token
    embedding, so the state dict has no shared tensors and saves to safetensors as is.

    Windows. With ``length <= context`` the whole sequence is one window and generation is
    one pass. Otherwise the sequence is covered by a fixed grid of windows of ``context``
    tokens: with ``keep = context // 2`` (the prompt carried from one window to the next)
    and ``stride = context - keep``, window ``j`` starts at
    ``min(j * stride, length - context)`` for ``j = 0 .. ceil((length - context) / stride)``.
    The transformer sees one window at a time; each token's embedding is the token
    embedding plus a learned position embedding *within the window* (``0 .. context - 1``)
    plus a learned embedding of the window index ``j``, which is also added to the prefix,
    so every position knows where in the long sequence the window lies.

    - Training (`loss`) draws one window of the grid per row, uniformly, and scores all its
      ``context`` tokens given the prefix and the window's earlier tokens; the window's
      first token is predicted from the prefix (condition plus window embedding) alone.
    - Sampling (`sample`, IGPG Alg. 1) generates window 0 from the prefix; each later
      window is the latest grid window that starts at or before ``done - keep`` (``done``:
      tokens generated so far), so its prompt is the prefix plus at least the last ``keep``
      generated tokens, and it generates the rest of the window.

    Training and sampling thus use exactly the same windows and the same window embeddings;
    with ``context >= length`` there is one window (index 0) and sampling is plain
    one-pass generation. Every generated token costs one forward call: the first token of a
    window comes from one forward over prefix and prompt, every other token from a
    single-token step against the per-layer key/value cache.

    Randomness: window choice and dropout in `loss`, and all of `sample`, draw from the
    ``generator`` argument only; with ``generator=None`` a fresh, non-deterministically
    seeded generator is used, so the global RNG is never read or advanced.

    Args:
        vocab_size: Number of distinct tokens (a VQ tokenizer's ``codebook_size``).
        length: Tokens per model ``L`` (the prior's ``shape`` is ``(length,)``).
        cond_dim: Size of condition vectors; 0 for an unconditional prior.
        cond_tokens: Prefix embeddings made from one condition vector.
        context: Most tokens attended at once (``None``: ``length``); values above
            ``length`` act as ``length``.
        d_model: Embedding width.
        layers: Transformer blocks.
        heads: Attention heads; must divide ``d_model``.
        dropout: Dropout on the embeddings and the residual branches while training.
        temperature: Default sampling temperature.
        top_k: Default top-k filter at sampling (``None``: the whole vocabulary).

    Attributes:
        shape: ``(length,)``, checked by `paramgen.Generator` against the tokenizer.
        cond_dim: Size of condition vectors (0: unconditional).
        context: Effective window length, ``min(context, length)``.
        keep: Prompt tokens carried into the next window, ``context // 2``.
        prefix_len: Prefix positions (``cond_tokens``, or 1 for BOS).
        window_starts: Start of each window of the grid.

    Examples:
        >>> import torch
        >>> prior = GPTPrior(vocab_size=8, length=12, context=4, d_model=16, layers=1, heads=2)
        >>> prior.shape, prior.window_starts
        ((12,), (0, 2, 4, 6, 8))
        >>> x = prior.sample(3, None, generator=torch.Generator().manual_seed(0), top_k=2)
        >>> x.shape, x.dtype
        (torch.Size([3, 12]), torch.int64)
        >>> GPTPrior.from_config(prior.config()).config() == prior.config()
        True
    """

    #: The keyword options of `sample` (see there).
    SAMPLE_OPTIONS: ClassVar[tuple[str, ...]] = ("temperature", "top_k")
    config_canonical = ("dropout", "temperature")  # recorded as floats, however given

    def __init__(
        self,
        *,
        vocab_size: int,
        length: int,
        cond_dim: int = 0,
        cond_tokens: int = 1,
        context: int | None = None,
        d_model: int = 128,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> None:
        super().__init__()
        _int("vocab_size", vocab_size)
        _int("length", length)
        _int("cond_dim", cond_dim, 0)
        _int("cond_tokens", cond_tokens)
        if context is not None:
            _int("context", context)
        _int("d_model", d_model)
        _int("layers", layers)
        _int("heads", heads)
        if d_model % heads:
            raise ValueError(f"heads must divide d_model, got d_model={d_model}, heads={heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        _top_k(top_k, vocab_size)
        self.shape = (length,)
        self.vocab_size = vocab_size
        self.length = length
        self.cond_dim = cond_dim
        self.context = length if context is None else min(context, length)
        self.keep = self.context // 2
        self.prefix_len = cond_tokens if cond_dim > 0 else 1
        self.dropout = float(dropout)
        self.temperature = _temperature(temperature)
        self.top_k = top_k
        stride = self.context - self.keep
        windows = 1 + math.ceil((length - self.context) / stride)
        self.window_starts: tuple[int, ...] = tuple(min(j * stride, length - self.context) for j in range(windows))

        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(self.context, d_model)  # position within the window
        self.window_emb = nn.Embedding(windows, d_model)  # which window of the grid
        self.bos = nn.Parameter(torch.zeros(1, 1, d_model)) if cond_dim == 0 else None
        self.cond_proj = nn.Linear(cond_dim, cond_tokens * d_model) if cond_dim > 0 else None
        self.blocks = nn.ModuleList(_Block(d_model, heads, self.dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        # GPT-2: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * layers).
        for name, p in self.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                continue
            std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") and name.startswith("blocks") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- checks ------------------------------------------------------------------------
    def _check_cond(self, cond: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        cond = check_cond(cond, rows, self.cond_dim)
        return None if cond is None else cond.to(device=self.head.weight.device, dtype=self.head.weight.dtype)

    def _check_tokens(self, tokens: Any, name: str, *, length: int | None, rows: int | None = None) -> torch.Tensor:
        want = f"({'B' if rows is None else rows}, {'T' if length is None else length})"
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"expected {name} of shape {want}, got {got}")
        if (length is not None and tokens.shape[1] != length) or (rows is not None and tokens.shape[0] != rows) or tokens.shape[0] < 1:
            raise ValueError(f"expected {name} of shape {want} with B >= 1, got {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            raise TypeError(f"expected {name} of dtype torch.int64 (token indices), got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"{name} must lie in [0, vocab_size={self.vocab_size}), got values in [{int(tokens.min())}, {int(tokens.max())}]")
        return tokens.to(self.head.weight.device)

    def _check_window(self, window: int | torch.Tensor, rows: int) -> torch.Tensor:
        device = self.head.weight.device
        if isinstance(window, torch.Tensor):
            if window.shape != (rows,) or window.dtype != torch.long:
                raise ValueError(f"expected window indices of shape ({rows},) and dtype torch.int64, got {tuple(window.shape)} {window.dtype}")
        elif isinstance(window, bool) or not isinstance(window, int):
            raise ValueError(f"window must be an int or a (B,) long tensor, got {type(window).__name__}")
        window = torch.as_tensor(window, device=device).expand(rows)  # (B,)
        if int(window.min()) < 0 or int(window.max()) >= len(self.window_starts):
            raise ValueError(f"window must lie in [0, {len(self.window_starts)}), got {window.tolist()}")
        return window.to(device)

    # --- the network -------------------------------------------------------------------
    def _prefix(self, cond: torch.Tensor | None, window: torch.Tensor) -> torch.Tensor:
        """Prefix embeddings ``(B, P, C)``: the condition (or BOS) plus the window embedding."""
        b = window.shape[0]
        if self.cond_proj is None:
            assert self.bos is not None  # unconditional: a BOS embedding
            h = self.bos.expand(b, -1, -1)  # (B, 1, C)
        else:
            h = rearrange(self.cond_proj(cond), "b (p c) -> b p c", p=self.prefix_len)  # (B, P, C)
        return h + self.window_emb(window)[:, None, :]

    def _embed(self, tokens: torch.Tensor, start: int, window: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, T, C)`` of tokens at window positions ``start .. start + T - 1``."""
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)  # (T,)
        return self.tok_emb(tokens) + self.pos_emb(pos)[None] + self.window_emb(window)[:, None, :]

    def _run(self, h: torch.Tensor, caches: list[_KVCache] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transformer blocks and final LayerNorm: ``(B, T, C) -> (B, T, C)``."""
        h = _dropout(h, self.dropout, self.training, generator)
        for i, block in enumerate(self.blocks):
            h = block(h, None if caches is None else caches[i], generator)
        return self.ln_f(h)

    def forward(
        self,
        tokens: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        window: int | torch.Tensor = 0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Next-token logits for the first ``T`` tokens of a window, without a cache.

        Args:
            tokens: ``(B, T)`` long tokens at window positions ``0 .. T - 1``, ``T <= context``
                (``T = 0`` gives the prefix's prediction only).
            cond: ``(B, cond_dim)`` condition vectors, ``None`` for an unconditional prior.
            window: Window index (an int or ``(B,)`` long) into `window_starts`.
            generator: Randomness of dropout while training.

        Returns:
            ``(B, T + 1, vocab_size)`` logits; entry ``i`` predicts window token ``i``.

        Examples:
            >>> import torch
            >>> prior = GPTPrior(vocab_size=8, length=5, d_model=16, heads=2)
            >>> prior(torch.zeros(2, 3, dtype=torch.long)).shape
            torch.Size([2, 4, 8])
        """
        tokens = self._check_tokens(tokens, "tokens", length=None)
        if tokens.shape[1] > self.context:
            raise ValueError(f"expected at most context={self.context} tokens, got {tokens.shape[1]}")
        b = tokens.shape[0]
        cond = self._check_cond(cond, b)
        window = self._check_window(window, b)
        h = torch.cat([self._prefix(cond, window), self._embed(tokens, 0, window)], dim=1)  # (B, P + T, C)
        h = self._run(h, generator=generator)[:, self.prefix_len - 1 :]  # (B, T + 1, C)
        return self.head(h)  # (B, T + 1, V)

    # --- Prior protocol ----------------------------------------------------------------
    def loss(self, latents: torch.Tensor, cond: torch.Tensor | None = None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next-token cross-entropy over one window per row (the prefix predicts the first token).

        Args:
            latents: ``(B, length)`` long tokens (named ``latents`` after the `Prior` protocol).
            cond: ``(B, cond_dim)`` condition vectors, ``None`` for an unconditional prior.
            generator: Randomness of the window choice (``length > context``) and dropout.

        Returns:
            Scalar mean cross-entropy (nats per token).

        Examples:
            >>> import torch
            >>> prior = GPTPrior(vocab_size=8, length=5, d_model=16, heads=2)
            >>> prior.loss(torch.zeros(3, 5, dtype=torch.long)).ndim
            0
        """
        tokens = self._check_tokens(latents, "tokens", length=self.length)
        b = tokens.shape[0]
        cond = self._check_cond(cond, b)
        device = tokens.device
        g = _own_generator(generator, device)
        if len(self.window_starts) == 1:
            window = torch.zeros(b, dtype=torch.long, device=device)  # (B,)
            targets = tokens  # (B, L)
        else:
            window = randint(len(self.window_starts), (b,), generator=g, device=device)  # (B,)
            starts = torch.tensor(self.window_starts, device=device)[window]  # (B,)
            targets = tokens.gather(1, starts[:, None] + torch.arange(self.context, device=device))  # (B, context)
        logits = self(targets[:, :-1], cond, window=window, generator=g)  # (B, context, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def _pick(self, logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
        """Draw one token per row ``(B,)`` from ``(B, V)`` logits."""
        logits = logits.float() / temperature
        if top_k is not None and top_k < self.vocab_size:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1).to(generator.device)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)

    def _window_for(self, done: int) -> int:
        """The latest grid window starting at or before ``done - keep`` (window 0 at first)."""
        return max(j for j, s in enumerate(self.window_starts) if s <= max(done - self.keep, 0))

    @torch.no_grad()
    def generate(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        *,
        prompt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Complete ``n`` sequences to ``length`` tokens, window by window, with a KV cache.

        Args:
            n: Number of sequences.
            cond: ``(n, cond_dim)`` condition vectors, ``None`` for an unconditional prior.
            prompt: ``(n, k)`` long tokens that every sequence starts with, ``k < length``.
            generator: The only source of randomness.
            temperature: Softmax temperature (``None``: the constructor's).
            top_k: Keep the ``top_k`` most likely tokens (``None``: the constructor's).

        Returns:
            ``(n, length)`` long tokens; the first ``k`` are the prompt.

        Examples:
            >>> import torch
            >>> prior = GPTPrior(vocab_size=8, length=6, d_model=16, heads=2)
            >>> x = prior.generate(2, prompt=torch.tensor([[1, 2], [3, 4]]), generator=torch.Generator().manual_seed(0))
            >>> x[:, :2].tolist()
            [[1, 2], [3, 4]]
        """
        _int("n", n)
        cond = self._check_cond(cond, n)
        temperature = self.temperature if temperature is None else _temperature(temperature)
        top_k = self.top_k if top_k is None else _top_k(top_k, self.vocab_size)
        device, dtype = self.head.weight.device, self.head.weight.dtype
        out = torch.zeros(n, self.length, dtype=torch.long, device=device)  # (n, L)
        done = 0
        if prompt is not None:
            prompt = self._check_tokens(prompt, "prompt", length=None, rows=n)
            if prompt.shape[1] >= self.length:
                raise ValueError(f"expected a prompt shorter than length={self.length}, got {prompt.shape[1]} tokens")
            done = prompt.shape[1]
            out[:, :done] = prompt
        g = _own_generator(generator, device)
        block = cast(_Block, self.blocks[0]).attn
        with _eval_mode(self):
            while done < self.length:
                j = self._window_for(done)
                start = self.window_starts[j]
                stop = min(start + self.context, self.length)
                window = torch.full((n,), j, dtype=torch.long, device=device)  # (n,)
                size = self.prefix_len + self.context  # positions this window can hold
                caches = [_KVCache(n, block.heads, size, self.head.in_features // block.heads, device=device, dtype=dtype) for _ in self.blocks]
                # One forward over prefix and prompt gives the window's first new token ...
                h = torch.cat([self._prefix(cond, window), self._embed(out[:, start:done], 0, window)], dim=1)  # (n, P + k, C)
                logits = self.head(self._run(h, caches)[:, -1])  # (n, V)
                while True:
                    token = self._pick(logits, temperature, top_k, g)  # (n,)
                    out[:, done] = token
                    done += 1
                    if done == stop:
                        break
                    # ... and each further token one single-token step against the cache.
                    h = self._embed(token[:, None], done - 1 - start, window)  # (n, 1, C)
                    logits = self.head(self._run(h, caches)[:, -1])  # (n, V)
        return out

    def sample(
        self,
        n: int,
        cond: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Draw ``n`` token sequences (`generate` without a prompt).

        The sampling options (`SAMPLE_OPTIONS`) are ``temperature`` and ``top_k``;
        `paramgen.Generator.sample` passes its extra keywords here.

        Args:
            n: Number of samples.
            cond: ``(n, cond_dim)`` condition vectors, ``None`` for an unconditional prior.
            generator: The only source of randomness; a seeded one gives identical samples.
            temperature: Softmax temperature, a finite number > 0 (``None``: the constructor's).
            top_k: Keep the ``top_k`` most likely tokens, an int in ``[1, vocab_size]``
                (``None``: the constructor's).
            **unknown: Any other keyword raises.

        Returns:
            ``(n, length)`` long tokens in ``[0, vocab_size)``.

        Raises:
            TypeError: An option this prior does not take (e.g. ``steps=``, a
                `paramgen.priors.DiffusionPrior` option); the message lists the valid ones.
            ValueError: An option of the wrong type or out of range.

        Examples:
            >>> import torch
            >>> prior = GPTPrior(vocab_size=8, length=5, cond_dim=2, d_model=16, heads=2)
            >>> prior.sample(3, torch.eye(2)[[0, 1, 1]], generator=torch.Generator().manual_seed(0)).shape
            torch.Size([3, 5])
            >>> prior.sample(3, torch.eye(2)[[0, 1, 1]], sampler="ddim")
            Traceback (most recent call last):
            ...
            TypeError: GPTPrior.sample got sampler='ddim'; valid options: temperature, top_k
        """
        reject_unknown_options("GPTPrior.sample", unknown, self.SAMPLE_OPTIONS)
        try:
            if temperature is not None:
                _temperature(temperature)
            _top_k(top_k, self.vocab_size)
        except ValueError as e:
            raise ValueError(f"GPTPrior.sample: {e}") from None
        return self.generate(n, cond, generator=generator, temperature=temperature, top_k=top_k)
