"""``python -m benchmarks.lora``: LoRA adapters for held-out text tasks, generated from words, against the baselines.

Question: can one generator, conditioned on a task's description plus two examples,
produce a LoRA adapter for a task that is not in its zoo, better than the simple ways of
reusing the zoo (Cond P-Diff table 1 and 4b, D2NWG table 5, Text-to-LoRA's comparison
with a multi-task LoRA)?

Setting: MiniLM (all-MiniLM-L6-v2) with a sequence-classification head; PEFT LoRA of rank
4 on the query and value projections of the last encoder layer, head saved with the
adapter. The 18 tasks of `paramgen.lora.many_tweet_tasks`: every binary pair, every
one-vs-rest task and the 3-way task, each in every label order, each description naming
every label's number. ``held_out`` tasks *and their label-reordered twins* are never in
the zoo. Per pipeline seed: ``runs_per_task`` LoRA runs per task (one initialization per
run index, shared by the tasks), the last ``keep_last`` steps of each kept; a Cond P-Diff
generator (per-layer z-score, 1D-conv VAE, conditional 1D-UNet diffusion prior) fitted
on the seen tasks' adapters, conditioned on `label_slot_condition` vectors (the MiniLM
embedding of description + two examples, plus one slot per label name in label order).

Protocol (Cond P-Diff): for each task ``samples`` adapters are generated and the best by
accuracy on a fixed subset of the task's *training* split is reported on its test split.
The baselines get the same training subset wherever they select or fit anything.

Rows on each held-out task (test accuracy; per seed, and per test item in ``items``):
- ``generated``: best of ``samples`` on the training subset; ``generated (all)``: every sample.
- ``nearest seen``: the seen task nearest by condition vector (cosine; no data of the
  held-out task), its best checkpoint by its *own* training subset.
- ``multi-task LoRA``: one LoRA trained on all seen tasks with one head per task; the
  held-out task takes the head of its nearest seen task.
- ``composition``: LoraHub-style weights over the seen tasks' selected adapters, fitted
  on the held-out task's training subset (`paramgen.lora.fit_composition`).
- memorization baselines (`paramgen.novelty`), best of ``samples`` on the training
  subset: ``seen + noise`` (the nearest task's checkpoints plus noise whose nearest-zoo
  distance matches the generated samples'), ``nearest soup`` (the mean of the nearest
  task's checkpoints), ``gaussian`` (independent per coordinate, the seen zoo's mean/std).
- ``original (oracle)``: the held-out task's own trained checkpoint (selected the same
  way); an upper reference, not a baseline.
- ``functional novelty``: disagreement with the functionally nearest seen checkpoint,
  over the held-out task's own checkpoints' median pairwise disagreement.
- summary: per method the mean over held-out tasks, and ``generated - <baseline>`` as a
  paired difference (clustered bootstrap over seeds x test items, each task weighted
  equally; and a t-interval over seeds); ``generated - best baseline`` against the
  baseline with the highest mean test accuracy (the comparison hardest for the generator).
Seen tasks: ``generated`` and ``original`` per task (the generator's fidelity).
PEFT round trip (first seed): the selected held-out adapters written as PEFT folders and
loaded with ``PeftModel.from_pretrained``; a zoo rebuilt from adapter folders on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import paramgen
from benchmarks.common import Results, RunSetup, clustered_bootstrap, paired_seed_ci
from paramgen.lora import (
    Features,
    LoRASetup,
    LoRAZoo,
    MiniLMLoRA,
    TextOrVectorConditioner,
    TextTask,
    fit_composition,
    label_slot_condition,
    label_twins,
    load_adapter,
    many_tweet_tasks,
    nearest_tasks,
    save_adapter,
    train_multitask_lora,
    unpad_head,
)
from paramgen.novelty import elementwise_gaussian, functional_novelty, matched_sigma, median_pairwise_disagreement, nearest_l2, noisy_checkpoints, tensor_scale
from paramgen.pipelines import cond_pdiff

__all__ = ["main", "SIZES", "HELD_OUT", "BASELINES", "seen_tasks"]

logger = logging.getLogger(__name__)

#: Held out by default: every task that separates neutral from one other class, in both
#: label orders (their twins are each other). The 3-way tasks keep neutral in the zoo.
HELD_OUT = ("negative-vs-neutral", "neutral-vs-negative", "neutral-vs-positive", "positive-vs-neutral", "neutral-vs-rest", "rest-vs-neutral")
#: The simple baselines that `generated` is compared with (the oracle is not one).
BASELINES = ("nearest seen", "multi-task LoRA", "composition", "seen + noise", "nearest soup", "gaussian")

_COMMON: dict[str, Any] = dict(
    tasks=None, held_out=HELD_OUT, lr=3e-3, vae_channels=32, prior_channels=32, n_pairs=4, lr_multitask=3e-3, composition_lr=0.05,
    composition_l1=0.01, peft_texts=16,
)  # fmt: skip
SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        _COMMON, seeds=1, train_per_label=100, eval_per_label=60, runs_per_task=2, steps=60, keep_last=10, selection_per_task=100,
        original_stride=2, vae_steps=200, prior_steps=300, samples=6, ddim_steps=25, multitask_steps=200, composition_steps=10,
        novelty_items=100, novelty_ref_stride=5,
    ),
    "default": dict(
        _COMMON, seeds=3, train_per_label=400, eval_per_label=300, runs_per_task=2, steps=300, keep_last=50, selection_per_task=300,
        original_stride=5, vae_steps=1500, prior_steps=3000, samples=20, ddim_steps=50, multitask_steps=2400, composition_steps=60,
        novelty_items=300, novelty_ref_stride=10,
    ),
}  # fmt: skip


def seen_tasks(names: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """The tasks a generator may see: all but the held-out ones and their label-reordered twins.

    Examples:
        >>> seen_tasks(["negative-vs-neutral", "neutral-vs-negative", "negative-vs-positive"], ["negative-vs-neutral"])
        ['negative-vs-positive']
    """
    banned = set(held_out) | {t for h in held_out for t in label_twins(h)}
    return [n for n in names if n not in banned]


class Evaluator:
    """Accuracies of adapters on the cached features of each task's splits.

    ``select`` is a fixed subset of the *training* split: everything that selects or
    fits on a task uses it; ``test`` is only scored.
    """

    def __init__(self, model: MiniLMLoRA, tasks: dict[str, TextTask], selection: int, seed: int) -> None:
        self.model = model
        texts = sorted({x for t in tasks.values() for s in (t.train, t.val, t.test) for x in s.x})
        feats = model.features(texts)
        row = {x: i for i, x in enumerate(texts)}
        pick = lambda xs: Features(tuple(feats.states[row[x]] for x in xs))  # noqa: E731
        g = torch.Generator().manual_seed(seed)
        self.data: dict[tuple[str, str], tuple[Features, torch.Tensor]] = {}
        for name, t in tasks.items():
            self.data[(name, "train")] = (pick(t.train.x), t.train.y)
            keep = torch.randperm(len(t.train), generator=g)[:selection].sort().values  # a fixed training subset
            self.data[(name, "select")] = (pick([t.train.x[i] for i in keep.tolist()]), t.train.y[keep])
            self.data[(name, "test")] = (pick(t.test.x), t.test.y)
        self.labels = {name: t.num_labels for name, t in tasks.items()}

    def predict(self, adapters: Sequence[dict[str, torch.Tensor]], task: str, split: str) -> torch.Tensor:
        feats, _ = self.data[(task, split)]
        return self.model.predict(adapters, feats, self.labels[task])  # (G, N)

    def correct(self, adapters: Sequence[dict[str, torch.Tensor]], task: str, split: str) -> torch.Tensor:
        return (self.predict(adapters, task, split) == self.data[(task, split)][1]).float()  # (G, N)

    def acc(self, adapters: Sequence[dict[str, torch.Tensor]], task: str, split: str) -> torch.Tensor:
        return self.correct(adapters, task, split).mean(1)  # (G,)

    def best(self, adapters: Sequence[dict[str, torch.Tensor]], task: str) -> int:
        """Index of the best adapter on the task's training subset (the first on ties)."""
        return int(self.acc(adapters, task, "select").argmax())


def _train_zoo(model: MiniLMLoRA, setup: LoRASetup, ev: Evaluator, names: list[str], size: dict[str, Any], g: Any) -> LoRAZoo:
    adapters, records = [], []
    for r in range(size["runs_per_task"]):
        init = model.init_adapter(setup.max_labels, generator=g(1 + r))  # one starting point per run index
        for ti, name in enumerate(names):
            k = ev.labels[name]
            feats, y = ev.data[(name, "train")]
            kept, steps, losses = model.train_lora(feats, y, k, steps=size["steps"], keep_last=size["keep_last"], lr=size["lr"], generator=g(100 + 100 * r + ti), init=unpad_head(init, k))
            adapters += kept
            records += [{"task": name, "num_labels": k, "run": r, "step": s, "loss": losses[s - 1]} for s in steps]
        logger.info("trained run %d of %d tasks", r, len(names))
    return LoRAZoo.from_adapters(adapters, records, setup)


def _pipeline(
    ps: int, setup: LoRASetup, model: MiniLMLoRA, ev: Evaluator, tasks: dict[str, TextTask], seen: list[str], held: list[str],
    embed: Any, size: dict[str, Any], res: Results, out: Path, first: bool,
) -> dict[str, Any]:  # fmt: skip
    """One whole pipeline (zoo, generator, baselines) under pipeline seed ``ps``; returns per-item results."""
    g = lambda k: torch.Generator().manual_seed(ps * 1000 + k)  # noqa: E731 - one stream per use
    torch.manual_seed(ps)  # module initializations
    names = list(tasks)
    spec = setup.spec()
    timing: dict[str, float] = {}

    start = time.perf_counter()
    zoo_all = _train_zoo(model, setup, ev, names, size, g)
    timing["lora_train_s"] = time.perf_counter() - start
    rows_of = {n: [i for i, r in enumerate(zoo_all.records) if r["task"] == n] for n in names}
    seen_rows = [i for n in seen for i in rows_of[n]]
    flat, zoo_tasks = zoo_all.flat[seen_rows], [zoo_all.tasks[i] for i in seen_rows]
    if first:
        zoo_all.save(out / "zoo")

    def cond(task_names: Sequence[str], pairs: Sequence[int]) -> torch.Tensor:
        return label_slot_condition(embed, [tasks[t].condition(pair=p) for t, p in zip(task_names, pairs, strict=True)], [tasks[t].label_names for t in task_names])

    # Generator on the seen tasks; conditions vary the two examples over n_pairs pairs.
    start = time.perf_counter()
    pairs = [j % size["n_pairs"] for j in range(len(zoo_tasks))]
    conds = list(cond(zoo_tasks, pairs))
    gen = cond_pdiff(spec, seed=None, normalizer="per-layer", hidden_channels=size["vae_channels"], prior_channels=size["prior_channels"])
    paramgen.fit(gen, flat, conds, tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], prior_lr=1e-3, generator=g(2), progress=False)
    timing["generator_fit_s"] = time.perf_counter() - start
    if first:
        gen.save_pretrained(out / "generator")

    # Originals: every stride-th kept checkpoint of each run, the best on the training subset.
    def originals(name: str) -> list[dict[str, torch.Tensor]]:
        own = zoo_all.adapters(rows_of[name])
        per_run = len(own) // size["runs_per_task"]
        return [a for r in range(size["runs_per_task"]) for a in own[r * per_run : (r + 1) * per_run][:: -size["original_stride"]][::-1]]

    cands = {n: originals(n) for n in names}
    best_orig = {n: cands[n][ev.best(cands[n], n)] for n in names}

    # Generation: every task in one call.
    start = time.perf_counter()
    main_conds = list(cond(names, [0] * len(names)))
    flat_out = gen.sample_flat(main_conds, size["samples"], generator=g(4), sampler="ddim", steps=size["ddim_steps"])
    if not isinstance(flat_out, torch.Tensor):
        raise TypeError(f"expected one (B * n, D) tensor from sample_flat, got {type(flat_out).__name__}")
    sds = spec.unflatten(flat_out)
    generated = {n: sds[i * size["samples"] : (i + 1) * size["samples"]] for i, n in enumerate(names)}
    timing["sample_s_per_adapter"] = (time.perf_counter() - start) / (len(names) * size["samples"])

    # Multi-task LoRA on the seen tasks.
    start = time.perf_counter()
    mt, _ = train_multitask_lora(
        model, [ev.data[(n, "train")][0] for n in seen], [ev.data[(n, "train")][1] for n in seen], [ev.labels[n] for n in seen],
        steps=size["multitask_steps"], lr=size["lr_multitask"], generator=g(5), init=model.init_adapter(setup.max_labels, generator=g(1)),
    )  # fmt: skip
    multitask = dict(zip(seen, mt, strict=True))
    timing["multitask_train_s"] = time.perf_counter() - start

    seen_cond = torch.stack([main_conds[names.index(n)] for n in seen])
    scale = tensor_scale(spec, flat)
    gen_flat_all = torch.cat([spec.flatten(generated[h])[0].float() for h in held])
    target = float(nearest_l2(gen_flat_all, flat)[0].median())
    sigma = matched_sigma(flat, target, scale=scale, generator=g(6))
    ref_rows = [i for n in seen for i in rows_of[n][:: size["novelty_ref_stride"]]]
    ref_adapters = zoo_all.adapters(ref_rows)
    items: dict[str, Any] = {"held_out": {}, "seen": {}}
    start = time.perf_counter()
    for hi, h in enumerate(held):
        near = seen[int(nearest_tasks(main_conds[names.index(h)][None], seen_cond)[0, 0])]
        near_flat = zoo_all.flat[rows_of[near]]
        methods: dict[str, list[dict[str, torch.Tensor]]] = {
            "generated": generated[h],
            "nearest seen": [best_orig[near]],
            "multi-task LoRA": [multitask[near]],
            "seen + noise": spec.unflatten(noisy_checkpoints(near_flat, size["samples"], sigma=sigma, scale=scale, generator=g(20 + hi))[0]),
            "nearest soup": spec.unflatten(near_flat.mean(0, keepdim=True)),
            "gaussian": spec.unflatten(elementwise_gaussian(flat, size["samples"], generator=g(40 + hi))),
            "original (oracle)": [best_orig[h]],
        }
        feats, y = ev.data[(h, "select")]
        fit_kw = dict(steps=size["composition_steps"], lr=size["composition_lr"], l1=size["composition_l1"])
        weights, comp = fit_composition(model, [best_orig[n] for n in seen], feats, y, ev.labels[h], **fit_kw, generator=g(60 + hi))
        methods["composition"] = [comp]
        per_item: dict[str, list[int]] = {}
        for method, adapters in methods.items():
            i = ev.best(adapters, h)
            correct = ev.correct([adapters[i]], h, "test")[0]
            per_item[method] = correct.int().tolist()
            res.add(method, h, "test_acc", float(correct.mean()), group="held-out", seed=ps, selected_on="train" if len(adapters) > 1 else "-", of=len(adapters))
        res.add("generated (all)", h, "test_acc", ev.acc(generated[h], h, "test").tolist(), group="held-out", seed=ps)
        res.add("composition", h, "weight_on_nearest", float(weights[seen.index(near)]), seed=ps, l1_norm=float(weights.abs().sum()))
        # Functional novelty against the seen zoo, on the first novelty_items test items.
        feats_t = ev.data[(h, "test")][0]
        cut = Features(feats_t.states[: size["novelty_items"]])

        def pred(ads: Sequence[dict[str, torch.Tensor]], cut: Features = cut, task: str = h) -> torch.Tensor:
            return ev.model.predict(ads, cut, ev.labels[task])

        own = pred(cands[h])
        fn_scale = median_pairwise_disagreement(own) if own.shape[0] >= 2 else 0.0
        ref_preds = pred(ref_adapters)
        for method in ("generated", "seen + noise", "gaussian"):
            values, _ = functional_novelty(pred(methods[method]), ref_preds, scale=fn_scale if fn_scale > 0 else 1.0)
            res.add(method, h, "functional_novelty", values.tolist(), seed=ps, scale=fn_scale, scale_of="held-out task's own checkpoints" if fn_scale > 0 else "1 (its checkpoints agree)")
        items["held_out"][h] = {"nearest": near, "correct": per_item}
        logger.info("seed %d %s (nearest %s): %s", ps, h, near, " ".join(f"{m}={sum(v) / len(v):.3f}" for m, v in per_item.items()))
        if first:
            save_adapter(out / "adapters" / h, generated[h][ev.best(generated[h], h)], setup, num_labels=ev.labels[h])
    timing["held_out_eval_s"] = time.perf_counter() - start
    for n in seen:
        gi = ev.best(generated[n], n)
        cg, co = ev.correct([generated[n][gi]], n, "test")[0], ev.correct([best_orig[n]], n, "test")[0]
        items["seen"][n] = {"generated": cg.int().tolist(), "original": co.int().tolist()}
        res.add("generated", n, "test_acc", float(cg.mean()), group="seen", seed=ps, selected_on="train", of=size["samples"])
        res.add("original", n, "test_acc", float(co.mean()), group="seen", seed=ps, selected_on="train")
    for k, v in timing.items():
        res.add("timing", "all", k, v, seed=ps)
    if first:
        _peft_checks(model, setup, tasks, held, zoo_all, rows_of, res, out, size)
    return items


def _peft_checks(
    model: MiniLMLoRA, setup: LoRASetup, tasks: dict[str, TextTask], held: list[str], zoo_all: LoRAZoo, rows_of: dict[str, list[int]],
    res: Results, out: Path, size: dict[str, Any],
) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    diffs = []
    for name in held:
        base = AutoModelForSequenceClassification.from_pretrained(model.model_path, num_labels=tasks[name].num_labels)
        peft_model = PeftModel.from_pretrained(base, str(out / "adapters" / name)).eval()
        texts = list(tasks[name].test.x[: size["peft_texts"]])
        enc = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
        with torch.no_grad():
            ref = peft_model(**enc).logits
        mine = model.text_logits(load_adapter(out / "adapters" / name, setup)[0], texts)[:, : tasks[name].num_labels]
        diffs.append(float((ref - mine).abs().max()))
    res.add("generated", "PEFT round trip", "max_abs_logit_diff", max(diffs), n_tasks=len(diffs))
    names = list(tasks)
    folders = [save_adapter(out / "zoo_adapters" / n, zoo_all.adapters([rows_of[n][-1]])[0], setup, num_labels=tasks[n].num_labels) for n in names]
    rebuilt = LoRAZoo.from_folders(folders, names, setup)
    res.add("zoo", "from adapter folders", "max_abs_diff", float((rebuilt.flat - zoo_all.flat[[rows_of[n][-1] for n in names]]).abs().max()))


def summarize(res: Results, items: dict[str, dict[str, Any]], held: list[str], seeds: list[int]) -> None:
    """Means over held-out tasks per method and the paired differences ``generated - baseline``.

    Each task weighs the same: an item of task ``t`` counts ``N / (T N_t)`` in the
    clustered bootstrap over seeds x items, so its mean is the mean over tasks.
    """
    keys = [str(s) for s in seeds]
    methods = list(items[keys[0]]["held_out"][held[0]]["correct"])
    sizes = [len(items[keys[0]]["held_out"][h]["correct"]["generated"]) for h in held]
    total = sum(sizes)
    weight = torch.cat([torch.full((n,), total / (len(held) * n), dtype=torch.float64) for n in sizes])  # (N,)

    def matrix(method: str) -> torch.Tensor:  # (K, N) weighted correctness
        return torch.stack([torch.cat([torch.tensor(items[k]["held_out"][h]["correct"][method], dtype=torch.float64) for h in held]) for k in keys]) * weight

    per_seed = {m: [float(torch.tensor([sum(items[k]["held_out"][h]["correct"][m]) / len(items[k]["held_out"][h]["correct"][m]) for h in held]).mean()) for k in keys] for m in methods}
    for m in methods:
        res.add(m, "mean over held-out tasks", "test_acc", per_seed[m], n_tasks=len(held), over="seeds")
    baselines = [b for b in BASELINES if b in methods]
    best = max(baselines, key=lambda b: sum(per_seed[b]))
    gen = matrix("generated")
    for b in [*baselines, "original (oracle)"]:
        d, lo, hi = clustered_bootstrap(gen, matrix(b), n_boot=2000, seed=0)
        sd, slo, shi = paired_seed_ci(per_seed["generated"], per_seed[b])
        label = f"generated - {b}"
        res.add(label, "mean over held-out tasks", "diff_points", 100 * d, n_seeds=len(keys), ci="clustered bootstrap over seeds x items", seed_ci=[100 * slo, 100 * shi])
        res.rows[-1].update(ci_low=100 * lo, ci_high=100 * hi)
        if b == best:
            hardest = "highest mean test accuracy (the hardest comparison)"
            res.add("generated - best baseline", "mean over held-out tasks", "diff_points", 100 * d, baseline=b, chosen_by=hardest, seed_ci=[100 * slo, 100 * shi])
            res.rows[-1].update(ci_low=100 * lo, ci_high=100 * hi)
    seen_names = list(items[keys[0]]["seen"])
    if seen_names:
        gaps = [100 * (sum(items[k]["seen"][n]["generated"]) - sum(items[k]["seen"][n]["original"])) / len(items[k]["seen"][n]["original"]) for k in keys for n in seen_names]
        res.add("generated - original", "seen tasks (all seeds)", "diff_points", gaps, n_tasks=len(seen_names))


def main(argv: Sequence[str] | None = None) -> int:
    run = RunSetup.from_args("lora", __doc__, SIZES, argv)
    size = run.size
    seeds = [run.seed + k for k in range(size["seeds"])]
    res = run.results(size=run.size_name, seed=run.seed, pipeline_seeds=seeds, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()})
    setup = LoRASetup()
    tasks = many_tweet_tasks(size["tasks"], train_per_label=size["train_per_label"], eval_per_label=size["eval_per_label"], seed=run.seed)
    names = list(tasks)
    held = [t for t in size["held_out"] if t in tasks]
    seen = seen_tasks(names, held)
    if not held or not seen:
        raise ValueError(f"benchmarks.lora: expected held-out and seen tasks, got held out {held}, seen {seen}")
    model = MiniLMLoRA(setup)
    start = time.perf_counter()
    ev = Evaluator(model, tasks, size["selection_per_task"], run.seed)  # one data split for every pipeline seed: items pair
    res.add("features", "all", "build_s", time.perf_counter() - start)
    embed = TextOrVectorConditioner().text.embed
    items: dict[str, Any] = {}
    for k, ps in enumerate(seeds):
        items[str(ps)] = _pipeline(ps, setup, model, ev, tasks, seen, held, embed, size, res, run.out, first=k == 0)
    summarize(res, items, held, seeds)
    res.items = {"pipeline_seeds": items, "held_out": held, "seen": seen, "test_labels": {h: ev.data[(h, "test")][1].tolist() for h in held}}
    path = run.write(res)
    print(res.table(skip_tasks=tuple(seen)))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
