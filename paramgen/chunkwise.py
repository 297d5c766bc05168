"""Chunk-wise generation of large models (D2NWG section 5 and appendix A.4).

A model too large to be one latent is cut layer by layer into chunks of ``K`` values
(`paramgen.chunks.ChunkLayout`). Each chunk of each checkpoint is one training sample of
an ordinary `paramgen.Generator` over rows of width ``K``; the sample's condition is its
position — its global chunk index, its tensor and the tensor's type
(`ChunkPositionConditioner`) — optionally joined with a task or dataset condition.
Sampling asks for every chunk of the model in batches and writes them, batch by batch,
into a state dict, straight into a safetensors file (`paramgen.streaming.assemble`), into
a Hugging Face model folder that ``transformers.AutoModel`` loads
(`paramgen.streaming.assemble_model`) or into a PEFT adapter folder
(`paramgen.streaming.assemble_adapter`): one batch of rows and the tensor being written
are all that is held. The folder's ``config.json`` (or ``adapter_config.json``) is the
one the generator records: given to `ChunkwiseGenerator.build`, or read by
`ChunkwiseGenerator.fit` beside the checkpoints (``model.safetensors`` next to
``config.json``, as in a Hugging Face model folder), and saved with the generator.
The walk-through from MiniLM's checkpoint to ``AutoModel`` is the "Large models" page of
the docs (``docs/large-models.md``).

Given a pinned base checkpoint (``base=``, `paramgen.base.PinnedBase`), the generator
learns the chunks of the deltas ``D = w - w_base`` (a `paramgen.chunks.ChunkDataset` built
with the same ``base``) and `ChunkwiseGenerator.sample` streams ``base + D`` chunk by chunk,
the base's tensors outside the layout passed through unchanged. The base's record is
saved with the generator and checked when it is loaded.

Each tensor is standardized with its own mean and standard deviation over the zoo
(`paramgen.normalize.ChunkStats`, a normalizer fitted in one streaming pass), so that
LayerNorm scales near 1 and attention weights near 0.05 become one distribution of values.

A fitted chunk-wise generator saves in the registry format of `paramgen.Generator`
(`ChunkwiseGenerator.save_pretrained`): a ``config.json`` naming its format, the model's
spec, its normalizer (``"per_chunk"``, with the layout) and the configs of the folders it
writes, with SHA-256 digests of its definition and of ``weights.safetensors`` (the
normalizer's statistics); the inner generator is a `paramgen.Generator` folder,
``generator/``, as diffusers keeps a pipeline's models in subfolders.

Examples:
    >>> import torch
    >>> from paramgen.chunks import ChunkDataset, ChunkLayout
    >>> from paramgen.priors import DiffusionPrior
    >>> from paramgen.spec import ParamSpec
    >>> from paramgen.tokenizers import VAETokenizer
    >>> from paramgen.training import FitConfig
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    >>> layout = ChunkLayout(ParamSpec.from_module(net), 32)
    >>> tok = VAETokenizer(rows=1, width=32, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    >>> prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=16, base_channels=8, channel_mults=(1,), timesteps=50)
    >>> gen = ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, position_dim=16)
    >>> data = ChunkDataset.from_state_dicts(layout, [net.state_dict()])
    >>> gen = gen.fit(data, config=FitConfig(tokenizer_steps=3, prior_steps=3, batch_size=8, progress=False))
    >>> sd = gen.sample(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5)
    >>> net.load_state_dict(sd)
    <All keys matched successfully>
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.base import BaseMismatchError, PinnedBase
from paramgen.chunks import ChunkLayout
from paramgen.conditioners.architecture import ConcatConditioner
from paramgen.formats.hf import MODEL_CONFIG, MODEL_WEIGHTS, model_config_dict
from paramgen.formats.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config_dict
from paramgen.generator import Generator
from paramgen.interfaces import Conditioner, Prior, Tokenizer
from paramgen.io import file_sha256, json_sha256, read_json, save_safetensors, write_json
from paramgen.normalize import ChunkStats, _zscore, normalizer_from_config
from paramgen.pretrained import check_recorded_base
from paramgen.registry import Configurable
from paramgen.spec import ParamSpec
from paramgen.streaming import assemble, assemble_adapter, assemble_model
from paramgen.vectorize import ModelVectorizer

__all__ = ["ChunkPositionConditioner", "ChunkSamples", "ChunkwiseGenerator", "is_chunkwise_folder"]

logger = logging.getLogger(__name__)

FORMAT = "paramgen.ChunkwiseGenerator"
# 2: config.json + weights.safetensors (the normalizer's statistics) + generator/, with
#    digests, as a Generator's folder (the registry format).
# 1: chunkwise.json + stats.safetensors + generator/.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
CONFIG_FILE, WEIGHTS_FILE, GENERATOR_FOLDER = "config.json", "weights.safetensors", "generator"
_V1_META, _V1_STATS = "chunkwise.json", "stats.safetensors"
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # files chunk-wise sampling does not write


def _saved_format(path: Path) -> object:
    """The ``"format"`` a folder's ``config.json`` names (``None`` if it has none or is unreadable)."""
    try:
        config = read_json(path / CONFIG_FILE)
    except (OSError, ValueError):
        return None
    return config.get("format") if isinstance(config, dict) else None


def is_chunkwise_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by `ChunkwiseGenerator.save_pretrained`: its
    ``config.json`` names the chunk-wise format (or, saved before format 2, it holds
    ``chunkwise.json``).

    Examples:
        >>> import tempfile
        >>> is_chunkwise_folder(tempfile.mkdtemp())
        False
    """
    path = Path(path)
    return (path / _V1_META).is_file() or _saved_format(path) == FORMAT


def _definition_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of what defines a saved chunk-wise generator (its config but the digests)."""
    return json_sha256({k: v for k, v in config.items() if k not in ("config_sha256", "weights_sha256")})


class ChunkPositionConditioner(nn.Module, Configurable):
    """The condition of a chunk: where it sits in the model.

    A chunk id ``i`` becomes ``MLP(E_chunk[i] + E_tensor[tensor(i)] + E_type[type(i)])``:
    D2NWG's chunk-index embedding, plus the chunk's tensor and the tensor's type (e.g.
    ``attention.self.query.weight``) so that chunks of similar layers share statistics.
    Raw conditions are chunk ids (ints or an int tensor).

    Args:
        num_chunks: Chunks of the layout.
        num_tensors: Tensors of the layout.
        num_types: Tensor types of the layout.
        dim: Output width.

    Examples:
        >>> import torch
        >>> from paramgen.chunks import ChunkLayout
        >>> from paramgen.spec import ParamSpec
        >>> layout = ChunkLayout(ParamSpec.from_module(torch.nn.Linear(8, 4)), 8)
        >>> cond = ChunkPositionConditioner.from_layout(layout, dim=6)
        >>> cond([0, 4]).shape
        torch.Size([2, 6])
    """

    tensor_of: torch.Tensor
    type_of: torch.Tensor

    def __init__(self, *, num_chunks: int, num_tensors: int, num_types: int, dim: int = 64) -> None:
        super().__init__()
        if min(num_chunks, num_tensors, num_types, dim) < 1:
            raise ValueError("num_chunks, num_tensors, num_types and dim must be positive")
        self.dim = dim
        self.chunk = nn.Embedding(num_chunks, dim)
        self.tensor = nn.Embedding(num_tensors, dim)
        self.kind = nn.Embedding(num_types, dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))
        for emb in (self.chunk, self.tensor, self.kind):
            nn.init.normal_(emb.weight, std=0.02)
        # Lookup tables chunk -> tensor / type: saved with the weights (they fix the layout).
        self.register_buffer("tensor_of", torch.zeros(num_chunks, dtype=torch.long))
        self.register_buffer("type_of", torch.zeros(num_chunks, dtype=torch.long))

    @classmethod
    def from_layout(cls, layout: ChunkLayout, *, dim: int = 64) -> ChunkPositionConditioner:
        cond = cls(num_chunks=layout.num_chunks, num_tensors=len(layout.tensors), num_types=layout.num_types, dim=dim)
        cond.tensor_of.copy_(layout.tensor_ids)
        cond.type_of.copy_(layout.type_ids)
        return cond

    def forward(self, raw: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` conditions of ``B`` chunk ids."""
        ids = torch.as_tensor(raw if isinstance(raw, torch.Tensor) else list(raw), dtype=torch.long)
        if ids.ndim != 1 or ids.numel() == 0:
            raise ValueError(f"ChunkPositionConditioner: expected a non-empty sequence of chunk ids, got shape {tuple(ids.shape)}")
        n = self.chunk.num_embeddings
        if int(ids.min()) < 0 or int(ids.max()) >= n:
            raise ValueError(f"ChunkPositionConditioner: chunk ids must lie in [0, {n}), got {int(ids.min())}..{int(ids.max())}")
        ids = ids.to(self.chunk.weight.device)
        h = self.chunk(ids) + self.tensor(self.tensor_of[ids]) + self.kind(self.type_of[ids])  # (B, dim)
        return self.mlp(h)


class ChunkSamples(torch.utils.data.Dataset):
    """A `paramgen.chunks.ChunkDataset` as training samples for `paramgen.training.fit`.

    Item ``i``: ``"x"`` the chunk standardized by its tensor's statistics
    (`paramgen.normalize.ChunkStats.transform_chunks`), ``(1, K)``, zero on padding;
    ``"mask"`` ``(1, K)``; ``"cond"`` its chunk id, or ``(chunk id, task condition)`` when
    ``conditions`` gives one raw condition per checkpoint; ``"position"`` its chunk id (what
    a positional tokenizer is given, plus ``offsets[checkpoint]`` when given: per-task
    positions) and ``"checkpoint"`` the index of its checkpoint.
    """

    def __init__(self, data: Any, stats: ChunkStats, conditions: Sequence[Any] | None = None, offsets: Sequence[int] | None = None) -> None:
        if conditions is not None and len(conditions) != data.num_checkpoints:
            raise ValueError(f"expected one condition per checkpoint ({data.num_checkpoints}), got {len(conditions)}")
        if offsets is not None and len(offsets) != data.num_checkpoints:
            raise ValueError(f"expected one position offset per checkpoint ({data.num_checkpoints}), got {len(offsets)}")
        self.data, self.stats, self.conditions, self.offsets = data, stats, conditions, offsets
        # transform_chunks's float32 statistics, made once: an item is one chunk, and the
        # per-call checks of the batch API would cost more than the z-score itself.
        self._mean, self._std = stats.mean.float().cpu(), stats.std.float().cpu()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.data[i]
        x = _zscore(item["values"].float(), self._mean, self._std, item["tensor"]) * item["mask"]  # (K,), as transform_chunks
        cond = item["chunk"] if self.conditions is None else (item["chunk"], self.conditions[item["checkpoint"]])
        position = item["chunk"] + (0 if self.offsets is None else self.offsets[item["checkpoint"]])
        return {"x": x[None], "mask": item["mask"][None], "cond": cond, "position": position, "checkpoint": item["checkpoint"]}


def _chunk_means(samples: ChunkSamples, num_chunks: int, num_checkpoints: int, num_positions: int) -> torch.Tensor:
    """``(num_positions, K)`` mean of each position's standardized chunk over the checkpoints
    that have it (float64 sums, one chunk read at a time; zero where none does): the start
    of a position-bias table."""
    total = torch.zeros(num_positions, samples.data.layout.chunk_size, dtype=torch.float64)  # (P, K)
    count = torch.zeros(num_positions, 1, dtype=torch.float64)
    for c in range(num_checkpoints):
        for k in range(num_chunks):
            item = samples[c * num_chunks + k]
            total[item["position"]] += item["x"][0].double()
            count[item["position"]] += 1
    return total / count.clamp_min(1)


def _chunk_spec(chunk_size: int) -> ParamSpec:
    return ParamSpec.from_state_dict({"chunk": torch.zeros(chunk_size)})


class ChunkwiseGenerator:
    """A generator of whole large models, chunk by chunk (see the module docstring).

    Args:
        layout: Which tensors and how they are cut.
        generator: The `paramgen.Generator` over rows ``(1, K)``, conditioned on chunk
            positions (and a task condition if ``task_conditioned``).
        task_conditioned: Whether raw conditions are ``(chunk id, task condition)`` pairs.
        model_config: The Hugging Face ``config.json`` of the generated model (a mapping,
            a ``transformers`` config, or the path of the file or of its folder; see
            `paramgen.formats.hf.model_config_dict`): `sample` into a folder then writes a
            model folder that ``transformers.AutoModel`` loads.
        adapter_config: The ``adapter_config.json`` of generated PEFT adapters (a
            ``peft`` config or its mapping): `sample` into a folder writes an adapter folder.
            At most one of the two.
        base: A pinned base checkpoint (`paramgen.base.PinnedBase`, or a safetensors
            path, state dict or module) holding every layout tensor with its shape: the
            generator learns deltas over it and `sample` streams ``base + D``.
        position_tasks: Task names (the raw task conditions) whose models each get their
            own chunk positions: a positional tokenizer is then given ``task index x
            num_chunks + chunk id`` and takes ``num_chunks x len(position_tasks)``
            positions, so that what is specific to a (task, chunk) pair (e.g. a task's
            head, or with a position-bias table each task's mean chunk) need not pass
            through the latent. ``None``: positions are chunk ids.

    Attributes:
        stats: The normalizer (`paramgen.normalize.ChunkStats`, each tensor's mean and
            std over the zoo), ``None`` until `fit` or `from_pretrained`.
        model_config: The recorded ``config.json`` data, or ``None``.
        adapter_config: The recorded ``adapter_config.json`` data, or ``None``.
        base: The `paramgen.base.PinnedBase`, or ``None``.
    """

    def __init__(
        self,
        layout: ChunkLayout,
        generator: Generator,
        *,
        task_conditioned: bool = False,
        model_config: Any = None,
        adapter_config: Any = None,
        base: Any = None,
        position_tasks: Sequence[str] | None = None,
    ) -> None:
        if (generator.vectorizer.rows, generator.vectorizer.width) != (1, layout.chunk_size):
            raise ValueError(f"the generator must make rows (1, {layout.chunk_size}), it makes ({generator.vectorizer.rows}, {generator.vectorizer.width})")
        if generator.conditioner is None:
            raise ValueError("a chunk-wise generator is conditioned on chunk positions; the generator has no conditioner")
        self.layout = layout
        self.generator = generator
        self.task_conditioned = task_conditioned
        self.stats: ChunkStats | None = None
        self.model_config: dict[str, Any] | None = None
        self.adapter_config: dict[str, Any] | None = None
        self._record(model_config, adapter_config)
        if generator.base is not None:
            raise ValueError("the inner generator of a chunk-wise generator makes chunks; pin the base on the chunk-wise generator (base=), not on it")
        self.base: PinnedBase | None = None
        if base is not None:
            self.base = PinnedBase.of(base)
            self.base.check_covers(layout, what="the chunk layout")
        self.position_tasks: tuple[str, ...] | None = None
        positions = getattr(generator.tokenizer, "num_chunks", None) if generator.positional else None
        if position_tasks is not None:
            self.position_tasks = tuple(str(t) for t in position_tasks)
            if not task_conditioned or not generator.positional:
                raise ValueError("position_tasks= gives a positional tokenizer one position per (task, chunk): it needs a task-conditioned generator with a positional tokenizer")
            if not self.position_tasks or len(set(self.position_tasks)) != len(self.position_tasks):
                raise ValueError(f"position_tasks must be distinct task names, at least one, got {list(self.position_tasks)}")
        want = layout.num_chunks * (1 if self.position_tasks is None else len(self.position_tasks))
        if positions is not None and positions != want:
            raise ValueError(
                f"the positional tokenizer takes {positions} positions; this layout has {layout.num_chunks} chunks"
                + ("" if self.position_tasks is None else f" x {len(self.position_tasks)} tasks = {want}")
            )

    def _offset(self, cond: Any) -> int:
        """The first position of ``cond``'s chunks: 0, or its task's index x chunks with ``position_tasks``."""
        if self.position_tasks is None:
            return 0
        if not isinstance(cond, str) or cond not in self.position_tasks:
            raise ValueError(f"this chunk-wise generator has positions per task; the condition must be one of {list(self.position_tasks)}, got {cond!r}")
        return self.position_tasks.index(cond) * self.layout.num_chunks

    def _record(self, model_config: Any, adapter_config: Any) -> None:
        if model_config is not None and adapter_config is not None:
            raise ValueError("a chunk-wise generator makes whole models (model_config=) or PEFT adapters (adapter_config=), not both")
        self.model_config = None if model_config is None else model_config_dict(model_config)
        self.adapter_config = None if adapter_config is None else adapter_config_dict(adapter_config)

    @classmethod
    def build(
        cls,
        layout: ChunkLayout,
        *,
        tokenizer: Tokenizer,
        prior: Prior,
        task_conditioner: Conditioner | None = None,
        position_dim: int = 64,
        model_config: Any = None,
        adapter_config: Any = None,
        base: Any = None,
        position_tasks: Sequence[str] | None = None,
    ) -> ChunkwiseGenerator:
        """Compose the inner generator: rows of one chunk, a position conditioner (joined
        with ``task_conditioner`` if given); ``prior.cond_dim`` must equal
        ``position_dim`` (+ the task conditioner's ``dim``). ``model_config`` /
        ``adapter_config``: see the class (`fit` can also read them beside the checkpoints);
        ``base``: the pinned base (see the class); ``position_tasks``: task names whose
        chunks each get their own positions (see the class)."""
        position = ChunkPositionConditioner.from_layout(layout, dim=position_dim)
        conditioner: Conditioner = position if task_conditioner is None else ConcatConditioner(position, task_conditioner)  # type: ignore[arg-type]
        inner = Generator(vectorizer=ModelVectorizer(_chunk_spec(layout.chunk_size)), tokenizer=tokenizer, prior=prior, conditioner=conditioner)
        return cls(
            layout, inner, task_conditioned=task_conditioner is not None, model_config=model_config, adapter_config=adapter_config, base=base,
            position_tasks=position_tasks,
        )  # fmt: skip

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ChunkwiseGenerator:
        """Move the inner generator (and cast its weights to ``dtype``) and the statistics
        (which stay float64) to ``device``."""
        self.generator.to(device, dtype)
        if self.stats is not None:
            self.stats.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.generator.device

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Any, *, conditions: Sequence[Any] | None = None, config: Any = None, **kwargs: Any) -> ChunkwiseGenerator:
        """Fit on a `paramgen.chunks.ChunkDataset` (its layout must be this one's).

        When the generator records no ``config.json`` / ``adapter_config.json`` yet and
        every checkpoint is a ``model.safetensors`` beside a ``config.json`` (a Hugging Face
        model folder) or an ``adapter_model.safetensors`` beside an ``adapter_config.json``
        (a PEFT folder), the config is recorded from there, if all checkpoints agree on it.

        A tokenizer with a position-bias table (`paramgen.tokenizers.PositionalVAETokenizer`
        with ``position_bias=True``) starts from each chunk's mean over the checkpoints
        (standardized), computed in one pass before training.

        With a pinned base, ``data`` must serve the deltas over the same base
        (``ChunkDataset(..., base=)``, compared by digest): the statistics and the inner
        generator then learn ``D``. A dataset with a base is refused by a generator without one.

        Args:
            data: The chunks of the zoo, read lazily.
            conditions: One raw task condition per checkpoint (a task-conditioned generator).
            config: A `paramgen.training.FitConfig`.
            **kwargs: Passed to `paramgen.training.fit` (``tracker``, ``resume``, ...).

        Raises:
            paramgen.base.BaseMismatchError: The dataset's base is not the generator's
                (or only one of them has a base).
        """
        from paramgen.training import fit

        if data.layout.config() != self.layout.config() or data.layout.spec.fingerprint != self.layout.spec.fingerprint:
            raise ValueError("the dataset's chunk layout differs from the generator's")
        if self.task_conditioned != (conditions is not None):
            raise ValueError("a task-conditioned chunk-wise generator needs conditions= (one per checkpoint); an unconditioned one takes none")
        self._check_data_base(getattr(data, "base", None))
        if self.model_config is None and self.adapter_config is None and getattr(data, "paths", None):
            self._record(*_configs_beside(data.paths))
        self.stats = ChunkStats(self.layout).fit_chunks(data)
        offsets = None if self.position_tasks is None or conditions is None else [self._offset(c) for c in conditions]
        samples = ChunkSamples(data, self.stats, conditions, offsets)
        tok = self.generator.tokenizer
        if getattr(tok, "bias", None) is not None and hasattr(tok, "init_position_bias"):
            tok.init_position_bias(_chunk_means(samples, self.layout.num_chunks, data.num_checkpoints, int(getattr(tok, "bias").shape[0])))  # noqa: B009  # checked above
        fit(self.generator, samples, config=config, **kwargs)
        return self

    def _check_data_base(self, found: Any) -> None:
        """Refuse a dataset whose base is not this generator's (digest), or a base on one side only."""
        mine = self.base
        if mine is None and found is None:
            return
        if mine is None:
            raise BaseMismatchError(
                f"the dataset serves deltas over a base (sha256 {found.sha256}), this chunk-wise generator has none: build it with base= that base"
            )
        if found is None:
            raise BaseMismatchError(f"this chunk-wise generator learns deltas over a base (sha256 {mine.sha256}); build the ChunkDataset with base= that base")
        if found.sha256 != mine.sha256:
            found.check(mine.record(), what="the dataset's base")  # names a differing tensor when there is one
            raise BaseMismatchError(f"the dataset's base has sha256 {found.sha256}, the generator's {mine.sha256}")  # pragma: no cover - check raised

    # ------------------------------------------------------------------ sampling
    def _check_ready(self, cond: Any) -> None:
        if self.stats is None or not self.generator.fitted:
            raise RuntimeError("this chunk-wise generator is not fitted: call fit() or from_pretrained()")
        if self.task_conditioned and cond is None:
            raise ValueError("this chunk-wise generator is task-conditioned: pass cond")
        if not self.task_conditioned and cond is not None:
            raise ValueError("this chunk-wise generator is not task-conditioned: pass cond=None")

    @torch.no_grad()
    def sample_chunks(
        self, chunk_ids: Sequence[int] | torch.Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **sample_kwargs: Any
    ) -> torch.Tensor:
        """Sample the given chunks: ``(B, K)`` values in weight scale, on the generator's device
        (past a tensor's end, the padding holds whatever was generated). With a pinned
        base these are the deltas ``D`` (`base_chunks` gives what to add). A positional
        tokenizer is given the chunk ids as positions.

        Examples:
            >>> # e.g. the chunks of one tensor: gen.sample_chunks(gen.layout.chunks_of("0.weight"))
        """
        self._check_ready(cond)
        ids = torch.as_tensor(chunk_ids if isinstance(chunk_ids, torch.Tensor) else list(chunk_ids), dtype=torch.long).cpu()  # (B,)
        if ids.ndim != 1 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.layout.num_chunks:
            raise ValueError(f"chunk_ids must be a non-empty 1-D sequence of ids in [0, {self.layout.num_chunks})")
        raw: list[Any] = ids.tolist() if not self.task_conditioned else [(i, cond) for i in ids.tolist()]
        positions = ids + self._offset(cond) if self.generator.positional else None
        z = self.generator.sample_flat(raw, 1, generator=generator, batch_size=len(raw), positions=positions, **sample_kwargs)  # (B, K) standardized
        assert self.stats is not None and isinstance(z, torch.Tensor)
        return self.stats.inverse_chunks(z, ids)

    def base_chunks(self, chunk_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float64 chunks of the pinned base, zero past a tensor's end, on the CPU.

        Chunks read in layout order read each base tensor once (the last one is kept).

        Raises:
            ValueError: The generator has no base.
        """
        if self.base is None:
            raise ValueError("this chunk-wise generator has no pinned base")
        layout = self.layout
        ids = torch.as_tensor(chunk_ids if isinstance(chunk_ids, torch.Tensor) else list(chunk_ids), dtype=torch.long).reshape(-1).cpu()
        out = torch.zeros(ids.numel(), layout.chunk_size, dtype=torch.float64)  # (B, K)
        for row, c in enumerate(ids.tolist()):
            t = layout.tensors[int(layout.tensor_ids[c])]
            start, n = int(layout.offsets[c]), int(layout.lengths[c])
            out[row, :n] = self.base.read_flat(t.name, start, start + n).to(torch.float64)
        return out

    @torch.no_grad()
    def reconstruct(self, data: Any, index: int, *, cond: Any = None, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Checkpoint ``index`` of ``data`` encoded and decoded by the tokenizer alone (no
        prior): what the latent keeps. Every chunk's latent is its posterior mean; with a
        pinned base the decoded deltas are added to it. Returns the layout's tensors.

        Args:
            data: A `paramgen.chunks.ChunkDataset` of this layout (with this generator's
                base when it has one).
            index: Which checkpoint of ``data``.
            cond: Its task condition, for a generator with ``position_tasks`` (its chunks'
                positions depend on the task), else ``None``.
            batch_size: Chunks encoded at once.

        Raises:
            RuntimeError: The generator is not fitted.
            IndexError: ``index`` is not a checkpoint of ``data``.
        """
        if self.stats is None or not self.generator.fitted:
            raise RuntimeError("this chunk-wise generator is not fitted: call fit() or from_pretrained()")
        if data.layout.config() != self.layout.config():
            raise ValueError("the dataset's chunk layout differs from the generator's")
        self._check_data_base(getattr(data, "base", None))
        if not 0 <= index < data.num_checkpoints:
            raise IndexError(f"checkpoint {index} of a dataset of {data.num_checkpoints}")
        if (self.position_tasks is None) != (cond is None):
            raise ValueError("reconstruct: pass cond= (the checkpoint's task) exactly when the generator has position_tasks")
        offset = self._offset(cond)
        rows = ChunkSamples(data, self.stats)
        n = self.layout.num_chunks
        device = self.generator.device

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, n, batch_size):
                ids = torch.arange(start, min(start + batch_size, n))  # (B,)
                x = torch.cat([rows[index * n + c]["x"] for c in ids.tolist()]).to(device)  # (B, K) standardized
                positions = ids + offset if self.generator.positional else None
                z = self.generator.reconstruct(x, positions=positions, batch_size=batch_size)
                assert isinstance(z, torch.Tensor) and self.stats is not None
                values = self.stats.inverse_chunks(z, ids).cpu()
                if self.base is not None:
                    values = values.to(torch.float64) + self.base_chunks(ids)
                yield ids, values

        out = assemble(self.layout, batches())
        assert isinstance(out, dict)  # no out= path: a state dict
        return out

    def _batches(self, cond: Any, batch_size: int, generator: torch.Generator | None, kwargs: Mapping[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.layout.num_chunks, batch_size):
            ids = torch.arange(start, min(start + batch_size, self.layout.num_chunks))  # (B,)
            values = self.sample_chunks(ids, cond, generator=generator, **kwargs).cpu()  # (B, K)
            if self.base is not None:
                # base + D in float64; the writers cast each tensor once, to its dtype.
                values = values.to(torch.float64) + self.base_chunks(ids)
            yield ids, values

    @torch.no_grad()
    def sample(
        self,
        cond: Any = None,
        *,
        out: str | os.PathLike | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        batch_size: int = 128,
        generator: torch.Generator | None = None,
        adapter_config: Any = None,
        model_config: Any = None,
        **sample_kwargs: Any,
    ) -> dict[str, torch.Tensor] | Path:
        """Sample one model: every chunk, ``batch_size`` chunks at a time.

        Args:
            cond: The task condition (a task-conditioned generator), else ``None``.
            out: ``None`` returns a state dict whose tensors own compact storage. A path
                ending in ``.safetensors`` is a file to stream into (written atomically: a
                failure leaves no file). Any other path is a new (or empty) folder that
                receives, streamed, a Hugging Face model (``model.safetensors`` and
                ``config.json``, `paramgen.streaming.assemble_model`) or a PEFT adapter
                (``adapter_model.safetensors`` and ``adapter_config.json``,
                `paramgen.streaming.assemble_adapter`), from ``model_config`` /
                ``adapter_config`` or else from the config the generator records; a
                failure leaves no folder.
            base: A state dict giving the tensors the layout does not cover (a selection
                of layers over a base model); they are passed through unchanged. A
                generator with a pinned base takes them from it (the spec's tensors outside
                the layout) and refuses ``base=``: two sources of the same tensors would
                disagree silently.
            batch_size: Chunks sampled at once. Besides the output, sampling holds one batch's
                working set (for the default 4-channel VAE and 1D UNet, about 1 MB per chunk
                of 4096 values): 128 keeps the growth of a streamed 100M-parameter model
                near 0.12x its fp32 size (``benchmarks.scale``).
            generator: Randomness of sampling (on the CPU or the generator's device).
            adapter_config: A ``peft.PeftConfig`` or an ``adapter_config.json`` mapping: ``out``
                is an adapter folder written with it (instead of the recorded config). The
                layout's names must be the adapter file's.
            model_config: A Hugging Face model config (as for the class): ``out`` is a
                model folder written with it (instead of the recorded config). The
                layout's names must be the model file's.
            **sample_kwargs: Passed to the prior (e.g. ``sampler="ddim"``, ``steps=50``).

        Raises:
            ValueError: ``out`` names a folder and no config is given or recorded; a
                config with ``out=None`` or a ``.safetensors`` file; ``out`` ends in
                ``.pt``, ``.pth``, ``.bin`` or ``.ckpt``; ``base=`` with a pinned base.
            FileExistsError: The output folder exists and is not empty.
        """
        self._check_ready(cond)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        folder = self._folder_config(out, model_config, adapter_config)
        covered = set(self.layout.names)
        if self.base is not None:
            if base is not None:
                raise ValueError("this chunk-wise generator has a pinned base: the tensors outside its layout come from it; drop base=")
            # the model's tensors outside the layout (not whatever else the base file holds)
            base = self.base.state_dict([name for name in self.layout.spec.names if name not in covered and name in self.base.tensors])
        extras = None if base is None else {k: v for k, v in base.items() if k not in covered}
        missing = [t.name for t in self.layout.spec.tensors if t.name not in covered and (extras is None or t.name not in extras)]
        if self.layout.include is not None and missing:
            raise ValueError(f"the layout covers a selection of tensors; pass base= with the others (missing e.g. {missing[:3]})")
        batches = self._batches(cond, batch_size, generator, sample_kwargs)
        if folder is not None:
            assert out is not None
            kind, config = folder
            write = assemble_model if kind == "model" else assemble_adapter
            return write(self.layout, batches, out, config, extras=extras)
        return assemble(self.layout, batches, out=out, extras=extras)

    def _folder_config(self, out: str | os.PathLike | None, model_config: Any, adapter_config: Any) -> tuple[str, dict[str, Any]] | None:
        """``("model" | "adapter", config)`` when ``out`` is a folder; ``None`` for a dict or a file."""
        given = "model_config=" if model_config is not None else "adapter_config=" if adapter_config is not None else None
        if model_config is not None and adapter_config is not None:
            raise ValueError("pass model_config= (a model folder) or adapter_config= (a PEFT adapter folder), not both")
        if out is None:
            if given:
                raise ValueError(f"{given} writes a folder: pass out=FOLDER")
            return None
        suffix = Path(out).suffix.lower()
        if suffix == ".safetensors":
            if given:
                raise ValueError(f"out={str(out)!r} is a .safetensors file; {given} writes a folder: give out a folder's name")
            return None
        if suffix in _FILE_SUFFIXES:
            raise ValueError(f"out={str(out)!r}: chunk-wise sampling streams safetensors; give a .safetensors file or a folder")
        if model_config is not None:
            return "model", model_config_dict(model_config)
        if adapter_config is not None:
            return "adapter", adapter_config_dict(adapter_config)
        if self.model_config is not None:
            return "model", self.model_config
        if self.adapter_config is not None:
            return "adapter", self.adapter_config
        raise ValueError(
            f"out={str(out)!r} is a folder, but this chunk-wise generator records no {MODEL_CONFIG} (or {ADAPTER_CONFIG}) to write beside "
            "the weights: pass model_config= (a Hugging Face model) or adapter_config= (a PEFT adapter), or give out a .safetensors file name"
        )

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Save in the registry format of `paramgen.Generator`, ``config.json`` last.

        - ``generator/``: the inner generator (`paramgen.Generator.save_pretrained`);
        - ``weights.safetensors``: the normalizer's statistics (``normalizer.mean``,
          ``normalizer.std``);
        - ``config.json``: the format and its version, the model's spec, the components
          (the ``"per_chunk"`` normalizer, with the layout), whether the generator is
          task-conditioned, the recorded model or adapter config, the pinned base's record
          (``base``, when there is one), and SHA-256 digests of
          this definition (``config_sha256``) and of the weights (``weights_sha256``),
          which `from_pretrained` checks.
        """
        if self.stats is None:
            raise RuntimeError("this chunk-wise generator is not fitted: nothing to save")
        path = Path(path)
        self.generator.save_pretrained(path / GENERATOR_FOLDER)
        tensors = {f"normalizer.{k}": v.detach().cpu() for k, v in self.stats.state_dict().items()}
        save_safetensors(path / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
        config: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "spec": self.layout.spec.to_dict(),
            "spec_id": self.layout.spec.fingerprint,
            "task_conditioned": self.task_conditioned,
            "model_config": self.model_config,
            "adapter_config": self.adapter_config,
            "components": {"normalizer": {"config": self.stats.config()}},
            "generator": GENERATOR_FOLDER,
        }
        if self.base is not None:  # only then: folders without a base keep their config
            config["base"] = self.base.record()
        if self.position_tasks is not None:  # likewise
            config["position_tasks"] = list(self.position_tasks)
        config = json.loads(json.dumps(config, allow_nan=False))  # as the file holds it (tuples become lists)
        config["config_sha256"] = _definition_sha256(config)
        config["weights_sha256"] = file_sha256(path / WEIGHTS_FILE)
        write_json(path / CONFIG_FILE, config)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: torch.device | str | None = None, base: Any = None) -> ChunkwiseGenerator:
        """Load a folder written by `save_pretrained` (see `is_chunkwise_folder`), of this
        format or of format 1 (``chunkwise.json``).

        ``base``: the pinned base the generator was saved with (a
        `paramgen.base.PinnedBase`, or a safetensors path, state dict or module), required
        when the folder records one and checked against the record; refused otherwise.

        Loading is strict, as `paramgen.Generator.from_pretrained` is: the weights must match
        their digest, and the definition the digest recorded at saving (a hand-edited
        ``config.json`` is refused).

        Raises:
            FileNotFoundError: Not a chunk-wise generator's folder, or a file is missing.
            ValueError: Another format or version, an edited config, corrupted weights,
                statistics that do not match the layout.
            paramgen.base.BaseMismatchError: The recorded base is missing or another one,
                or a base is given to a folder that records none.

        Examples:
            >>> # gen = ChunkwiseGenerator.from_pretrained("minilm-generator"); gen.sample(out="minilm-sample")
        """
        path = Path(path)
        if not is_chunkwise_folder(path):
            raise FileNotFoundError(f"{path} holds no saved chunk-wise generator (no {CONFIG_FILE} of format {FORMAT!r})")
        if not (path / CONFIG_FILE).is_file():
            check_recorded_base({}, base, path / _V1_META)
            return cls._from_format_1(path, device)
        where = path / CONFIG_FILE
        config = read_json(where)
        version = config.get("version")
        if isinstance(version, bool) or version not in _READABLE_VERSIONS or version == 1:
            raise ValueError(f"{where} has format version {version!r}; this paramgen reads versions {_READABLE_VERSIONS} (1 as chunkwise.json)")
        missing = [k for k in ("spec", "task_conditioned", "components", "config_sha256", "weights_sha256") if k not in config]
        if missing:
            raise ValueError(f"{where} lacks the key {missing[0]!r} (a malformed or truncated config)")
        if config["config_sha256"] != _definition_sha256(config):
            raise ValueError(
                f"{where} was edited after saving: its spec, layout, components or recorded configs no longer match the digest "
                "recorded when it was saved (config_sha256). The weights belong to the saved configuration: restore it, or fit again"
            )
        pinned = check_recorded_base(config, base, where)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}")
        if file_sha256(weights) != config["weights_sha256"]:
            raise ValueError(f"{weights} does not match the SHA-256 digest recorded in {CONFIG_FILE} (weights_sha256): the file is corrupted or was replaced")
        state = load_file(str(weights))
        entry = config["components"].get("normalizer") if isinstance(config["components"], dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"{where}: 'components' needs the normalizer entry (an object with a 'config' object)")
        sub = {k.removeprefix("normalizer."): v for k, v in state.items() if k.startswith("normalizer.")}
        try:
            stats = normalizer_from_config(entry["config"], sub, spec=ParamSpec.from_dict(config["spec"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: the normalizer cannot be rebuilt from its entry in {CONFIG_FILE} and its statistics: {e!r}") from e
        if not isinstance(stats, ChunkStats):
            raise ValueError(f"{where}: a chunk-wise generator's normalizer is 'per_chunk', got {entry['config'].get('type')!r}")
        inner = Generator.from_pretrained(path / str(config.get("generator", GENERATOR_FOLDER)), device=device)
        return cls._assemble(path, where, stats, inner, config, device, pinned)

    @classmethod
    def _from_format_1(cls, path: Path, device: torch.device | str | None) -> ChunkwiseGenerator:
        """A folder of format 1: ``chunkwise.json`` (spec, layout, ...) and ``stats.safetensors``."""
        where = path / _V1_META
        meta = read_json(where)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != 1:
            raise ValueError(f"{where} is not a paramgen chunk-wise generator of version 1")
        layout = ChunkLayout(ParamSpec.from_dict(meta["spec"]), **meta["layout"])
        stats = ChunkStats(layout)
        try:
            stats.load_state_dict(load_file(str(path / _V1_STATS)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}/{_V1_STATS} does not hold the statistics of the layout's {len(layout.tensors)} tensors: {e}") from e
        inner = Generator.from_pretrained(path / GENERATOR_FOLDER, device=device)
        return cls._assemble(path, where, stats, inner, meta, device)

    @classmethod
    def _assemble(
        cls, path: Path, where: Path, stats: ChunkStats, inner: Generator, config: Mapping[str, Any], device: torch.device | str | None, base: PinnedBase | None = None
    ) -> ChunkwiseGenerator:
        try:  # folders saved before configs were recorded have neither key
            configs = {"model_config": config.get("model_config"), "adapter_config": config.get("adapter_config")}
            tasks = config.get("position_tasks")
            gen = cls(stats.layout, inner, task_conditioned=bool(config["task_conditioned"]), base=base, position_tasks=tasks, **configs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
        gen.stats = stats.to(device) if device is not None else stats
        return gen


def _configs_beside(paths: Sequence[Path]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(model_config, adapter_config)`` read beside checkpoints in Hugging Face or PEFT folders (or ``None``s)."""
    for weights, config_name in ((MODEL_WEIGHTS, MODEL_CONFIG), (ADAPTER_WEIGHTS, ADAPTER_CONFIG)):
        files = [Path(p).parent / config_name for p in paths]
        if not all(Path(p).name == weights and f.is_file() for p, f in zip(paths, files, strict=True)):
            continue
        convert = model_config_dict if config_name == MODEL_CONFIG else adapter_config_dict
        configs = [convert(read_json(f)) for f in files]
        other = next((i for i, c in enumerate(configs) if c != configs[0]), None)
        if other is not None:
            logger.warning("%s and %s differ; no %s recorded (pass one to ChunkwiseGenerator.build to sample into folders)", files[0], files[other], config_name)
            return None, None
        logger.info("recorded %s from %s", config_name, files[0])
        return (configs[0], None) if config_name == MODEL_CONFIG else (None, configs[0])
    return None, None
