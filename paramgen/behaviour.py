"""Behavioural losses for tokenizers: decoded weights must make the model behave like the original.

A weight autoencoder with a low reconstruction error can still rebuild a worse model
("Structure is not enough", ICLR 2025 workshop): the error it leaves lands on the
directions that matter. Their fix is a behavioural term: the rebuilt model's outputs on
a few calibration batches must match the original's. `paramgen.training.fit` takes such
a term as ``behaviour(decoded, batch) -> scalar loss``, weighted by
``FitConfig.behaviour_weight`` and computed every ``FitConfig.behaviour_every`` steps.

`ChunkBehaviour` is that term for a chunk-wise generator
(`paramgen.chunkwise.ChunkwiseGenerator`): each training row is one chunk of one
checkpoint; the decoded chunk is put back into its checkpoint (in weight scale) and the
checkpoint must still produce its own outputs on the calibration inputs. The outputs come
from ``forward(state)``, supplied by the caller (e.g. MiniLM's sentence embeddings of
fixed texts, run functionally with ``torch.func.functional_call``).

Examples:
    >>> import torch
    >>> from paramgen.chunks import ChunkDataset, ChunkLayout
    >>> from paramgen.normalize import ChunkStats
    >>> from paramgen.pipelines import chunkwise
    >>> from paramgen.spec import ParamSpec
    >>> net = torch.nn.Linear(6, 3)
    >>> layout = ChunkLayout(ParamSpec.from_module(net), 8)
    >>> data = ChunkDataset.from_state_dicts(layout, [net.state_dict()])
    >>> gen = chunkwise(layout, hidden_channels=8, base_channels=8, latent_length=2)
    >>> gen.stats = ChunkStats(layout).fit_chunks(data)  # fit() sets them before the tokenizer stage
    >>> inputs = torch.randn(16, 6)
    >>> forward = lambda state: torch.func.functional_call(net, dict(state), (inputs,))
    >>> behaviour = ChunkBehaviour(gen, data, forward, items=3)
    >>> items = [data[i] for i in range(3)]
    >>> batch = {"checkpoint": [it["checkpoint"] for it in items], "chunk": [it["chunk"] for it in items]}
    >>> exact = gen.stats.transform_chunks(torch.stack([it["values"] for it in items]), batch["chunk"])
    >>> float(behaviour(exact, batch)) < 1e-10  # the original chunks reproduce the outputs
    True
    >>> float(behaviour(exact + 1.0, batch)) > 0.01
    True
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["ChunkBehaviour"]

logger = logging.getLogger(__name__)


def _ids(batch: Mapping[str, Any], keys: tuple[str, ...], n: int) -> list[int]:
    """The first ``n`` values of the first of ``keys`` the batch holds, as ints."""
    for key in keys:
        if batch.get(key) is not None:
            values = batch[key]
            ids = values.reshape(-1).tolist() if isinstance(values, torch.Tensor) else list(values)
            if len(ids) < n:
                raise ValueError(f"ChunkBehaviour: the batch's {key!r} has {len(ids)} entries, expected one per decoded row (at least {n})")
            return [int(i) for i in ids[:n]]
    raise ValueError(
        f"ChunkBehaviour: the batch needs {' or '.join(map(repr, keys))} per row (items of paramgen.chunkwise.ChunkSamples carry them); "
        f"it has {sorted(batch)}"
    )


class ChunkBehaviour:
    """Behavioural loss for a chunk-wise tokenizer: a decoded chunk, put back into its
    checkpoint, must reproduce the checkpoint's outputs on calibration inputs.

    For the first ``items`` rows of a batch (row ``r`` is chunk ``batch["chunk"][r]`` of
    checkpoint ``batch["checkpoint"][r]``; ``"position"`` serves for ``"chunk"``):

    1. the decoded row goes back to weight scale: ``generator.stats.inverse_chunks`` (read
       at call time: `ChunkwiseGenerator.fit` computes them before the tokenizer stage),
       plus the base's chunk when ``data.base`` is set (the generator then learns deltas);
       the padding past the tensor's end is dropped;
    2. it replaces that chunk in the checkpoint's weights (``data.state_dict(checkpoint)``),
       differentiably;
    3. the row's loss is ``mean((forward(state') - target)**2) / target.var()``, where
       ``target = forward(original state)``: 1 for outputs off by their own spread.

    The loss is the mean over the rows. A checkpoint's weights (on the device of the decoded
    rows) and its target are kept for the ``cache`` most recently used checkpoints, so the
    cache holds up to ``cache`` copies of the model on that device; the base's tensors are
    kept there too once used.

    Args:
        generator: The `paramgen.chunkwise.ChunkwiseGenerator` being fitted (its ``stats``
            and ``layout``).
        data: Its `paramgen.chunks.ChunkDataset`: ``layout``, ``base`` (a
            `paramgen.base.PinnedBase` or ``None``) and ``state_dict(checkpoint)``.
        forward: ``forward(state) -> Tensor``: the model's outputs on fixed calibration
            inputs, functional in ``state`` (a mapping of the layout's tensor names to
            tensors; differentiable).
        items: Rows of each batch that are put back and run (each is one ``forward``).
        cache: Checkpoints whose weights and targets are kept.

    Raises:
        TypeError: ``forward`` is not callable, or ``generator`` / ``data`` lack what is read.
        ValueError: ``items`` or ``cache`` below 1; layouts that differ.
    """

    def __init__(self, generator: Any, data: Any, forward: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], *, items: int = 4, cache: int = 8) -> None:
        if not callable(forward):
            raise TypeError(f"ChunkBehaviour: forward must be a callable state -> outputs, got {type(forward).__name__}")
        for name, value in (("items", items), ("cache", cache)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChunkBehaviour: {name} must be a positive integer, got {value!r}")
        if not hasattr(generator, "stats"):
            raise TypeError(f"ChunkBehaviour: generator must be a ChunkwiseGenerator (it reads generator.stats), got {type(generator).__name__}")
        missing = [a for a in ("layout", "base", "state_dict") if not hasattr(data, a)]
        if missing:
            raise TypeError(f"ChunkBehaviour: data must be a ChunkDataset (layout, base, state_dict); {type(data).__name__} lacks {', '.join(missing)}")
        layout = getattr(generator, "layout", None)
        if layout is not None and layout.config() != data.layout.config():
            raise ValueError("ChunkBehaviour: the dataset's chunk layout differs from the generator's")
        self.generator, self.data, self.forward = generator, data, forward
        self.items, self.cache = items, cache
        self._checkpoints: OrderedDict[int, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = OrderedDict()
        self._base: dict[str, torch.Tensor] = {}

    def _reference(self, checkpoint: int, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """``(state, target, target variance)`` of a checkpoint, on ``device``, cached."""
        hit = self._checkpoints.get(checkpoint)
        if hit is not None and hit[1].device == device:
            self._checkpoints.move_to_end(checkpoint)
            return hit
        logger.debug("ChunkBehaviour: reading checkpoint %d and its outputs", checkpoint)
        state = {name: t.detach().to(device) for name, t in self.data.state_dict(checkpoint).items()}
        with torch.no_grad():
            target = self.forward(state)
        if not isinstance(target, torch.Tensor) or not target.is_floating_point():
            raise TypeError(f"ChunkBehaviour: forward(state) must return a floating tensor, got {type(target).__name__}")
        target = target.detach().float()
        var = target.var() if target.numel() > 1 else torch.zeros((), device=target.device)
        if not torch.isfinite(target).all() or not bool(var > 0):
            raise ValueError(
                f"ChunkBehaviour: forward(state) of checkpoint {checkpoint} gives outputs that are not finite or have no spread "
                f"(variance {float(var):.3g}); the loss is scaled by it: use calibration inputs on which the model's outputs vary"
            )
        entry = (state, target, var)
        self._checkpoints[checkpoint] = entry
        while len(self._checkpoints) > self.cache:
            self._checkpoints.popitem(last=False)
        return entry

    def _base_flat(self, name: str, device: torch.device) -> torch.Tensor:
        """The base's tensor ``name``, flat, on ``device`` (kept)."""
        flat = self._base.get(name)
        if flat is None or flat.device != device:
            flat = self.data.base.tensor(name).reshape(-1).to(device)
            self._base[name] = flat
        return flat

    def __call__(self, decoded: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The behavioural loss of the first ``items`` rows of ``decoded`` ``(B, chunk_size)``
        (normalized chunks, as the tokenizer decodes them): a 0-dim float32 tensor on
        ``decoded``'s device, differentiable in ``decoded``."""
        stats = self.generator.stats
        if stats is None:
            raise RuntimeError("ChunkBehaviour: the generator has no chunk statistics yet (ChunkwiseGenerator.fit computes them before the tokenizer stage)")
        layout = self.data.layout
        if decoded.ndim != 2 or decoded.shape[1] != layout.chunk_size or decoded.shape[0] == 0:
            raise ValueError(f"ChunkBehaviour: expected decoded chunks (B, {layout.chunk_size}), got {tuple(decoded.shape)}")
        n = min(self.items, decoded.shape[0])
        checkpoints = _ids(batch, ("checkpoint",), n)
        chunks = _ids(batch, ("chunk", "position"), n)
        weights = stats.inverse_chunks(decoded[:n], chunks)  # (n, K) float32: weights, or deltas over the base
        losses = []
        for r, (checkpoint, chunk) in enumerate(zip(checkpoints, chunks, strict=True)):
            state, target, var = self._reference(checkpoint, decoded.device)
            t = layout.tensors[int(layout.tensor_ids[chunk])]
            start, length = int(layout.offsets[chunk]), int(layout.lengths[chunk])
            values = weights[r, :length]  # the padding past the tensor's end dropped
            if self.data.base is not None:
                values = values + self._base_flat(t.name, decoded.device)[start : start + length]
            flat = state[t.name].reshape(-1)
            replaced = torch.cat([flat[:start], values.to(flat.dtype), flat[start + length :]]).reshape(t.shape)
            out = self.forward({**state, t.name: replaced})
            losses.append((out.float() - target).pow(2).mean() / var)
        return torch.stack(losses).mean()
