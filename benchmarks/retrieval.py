"""``python -m benchmarks.retrieval``: D2NWG table 3 (model retrieval) scaled to this CPU.

Question: for each of many tasks, can one generator conditioned on the task's data hand
back a model as good as the one trained on it, in a fraction of the training time?

Zoos (full small models, every weight generated):
- images: the ``cnn-fashion-digits`` zoo (64 five-class tasks of digits and Fashion-MNIST,
  a 1.4k-parameter ConvNet, 2 seeds x last 5 epochs; shared with ``benchmarks.modelzoo``);
- signals: five-class MNIST-1D tasks, an MLP (40-32-32-5), last 5 epochs.
The two modalities have different architectures and inputs, so there is one generator per
modality (same recipe). The tweet corpus (text) is covered by ``benchmarks.lora``.

Generator (per modality): per-tensor z-scoring, D2NWG's weight VAE, the image-set encoder
(a Set Transformer of Set Transformers over 5 training examples per class; images through
frozen MobileNetV2 ImageNet features, MNIST-1D signals as their 40 raw values) aligned
contrastively with the latents (D2NWG Alg. 2), a latent DDPM sampled with 50 DDIM steps.
Each task is seen through ``draws`` different random sets of training examples (cycled
over its checkpoints); the generated models are conditioned on yet another draw.

Each task's generated models are conditioned on a fresh draw of its training examples (one
the generator was not fitted with). ``pipeline_seeds`` whole-pipeline runs (conditions,
generator fit with its alignment restarts, samples; the zoos are shared) are paired task by
task.

Residual anchor (``anchor="nearest_task"``, `paramgen.anchors.NearestTaskAnchor`, saved with
the generator): each task's best checkpoint by validation, keyed by the class means of its
draws (raw features, in class order); the generator learns each checkpoint minus its
task's anchor and adds back the anchor of the task nearest to the new condition.
``--set anchor=none`` fits on the weights themselves. ``fresh_draws``: every checkpoint
holds all its task's draws (`paramgen.draws.Draws`) and fitting picks a fresh one at each
alignment and prior step, instead of one draw per checkpoint, cycled.

Rows, per task and as the mean over tasks (test accuracy):
- ``original``: the task's trained checkpoints (the models being retrieved), their mean;
- ``best original (val)``: the task's checkpoint with the best validation accuracy;
- ``nearest task (1-NN)``: retrieval without generation: the fresh condition is embedded by
  the fitted (aligned, frozen) conditioner, its nearest zoo condition (cosine) names a task,
  and that task's best-by-validation checkpoint is returned (``hit``: the task is its own);
- ``nearest task (raw features)``: the same with the anchor's keys (class means of raw
  features, no learned encoder): the anchor alone, without the generated residual;
- ``generated``: every sample conditioned on the task; ``generated best-of-n (val)``: the
  sample with the best validation accuracy (D2NWG's sample selection, no test data);
- ``random init``: chance (1/5);
- ``generated / original``: the ratio per task;
- ``generated - <baseline>``: paired differences over seeds x tasks, with a crossed
  bootstrap interval (`benchmarks.common.clustered_bootstrap`) and the per-seed t-interval
  (``seed_ci_low``/``seed_ci_high``, `benchmarks.common.paired_seed_ci`); ``best simple
  baseline`` names the baseline with the highest mean;
- ``alignment``: the final training loss of each alignment restart, per seed;
- time: ``train_s`` (one training run of the task's recipe, measured here on one thread,
  for ``timed_tasks`` tasks per dataset), ``generate_s`` (conditioning features + one
  sample, per model), and their ratio.

``results.json`` holds per-item values under ``items``: every sample's and baseline's test
accuracy per seed and task.
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
from benchmarks.modelzoo import AlignLosses, accuracies, capped, make_generator, tensor
from benchmarks.modelzoo import plan as image_plan
from paramgen.anchors import NearestTaskAnchor
from paramgen.conditioners import mobilenet_features, set_features
from paramgen.draws import Draws
from paramgen.models import build_model
from paramgen.zoo import RunConfig, TrainConfig, build_zoo, load_run_task
from paramgen.zoo.build import subset_runs
from paramgen.zoo.train import train_classifier

__all__ = ["main", "SIZES", "signal_plan", "task_condition", "nearest_tasks"]

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        image=dict(zoo="modelzoo-quick", tasks_per_dataset=2, seeds=(0, 1), zoo_epochs=8, keep_epochs=(6, 7, 8), fashion_train_per_class=200),
        signal=dict(zoo="retrieval-mnist1d-quick", tasks=4, seeds=(0,), epochs=8, keep=4),
        shots=5,
        draws=3,
        vae_steps=300,
        vae_channels=32,
        align_steps=150,
        align_restarts=3,
        prior_steps=600,
        samples=4,
        eval_per_class=100,
        timed_tasks=1,
        pipeline_seeds=1,  # the 3-seed evidence: --quick --set pipeline_seeds=3
        anchor="nearest_task",
        fresh_draws=False,
    ),
    "default": dict(
        image=dict(zoo="cnn-fashion-digits"),
        signal=dict(zoo="retrieval-mnist1d", tasks=24, seeds=(0,), epochs=15, keep=5),
        shots=5,
        draws=5,
        vae_steps=2000,
        vae_channels=64,
        align_steps=800,
        align_restarts=3,
        prior_steps=6000,
        samples=8,
        eval_per_class=200,
        timed_tasks=2,
        pipeline_seeds=3,
        anchor="nearest_task",
        fresh_draws=False,
    ),
}


def signal_plan(size: dict[str, Any]) -> list[RunConfig]:
    """Five-class MNIST-1D tasks, an MLP, the last ``keep`` epochs of each run."""
    train = TrainConfig(epochs=size["epochs"], lr=3e-3, batch_size=64)
    keep = range(size["epochs"] - size["keep"] + 1, size["epochs"] + 1)
    return subset_runs("mnist1d", size["tasks"], k=5, arch="mlp", arch_kwargs={"in_features": 40, "hidden": [32, 32]}, seeds=size["seeds"], train=train,
                       keep_epochs=keep, max_train_per_class=None, max_eval_per_class=None)


def task_condition(task: Any, extractor: Any, shots: int, generator: torch.Generator) -> torch.Tensor:
    """``(K, shots, F)``: features of ``shots`` training examples per class, nothing else of the task."""
    x, _ = task.support_set(shots, split="train", generator=generator)
    x = x.reshape(task.num_classes, shots, *x.shape[1:])
    if extractor is None:  # signals: their raw values
        return x.reshape(task.num_classes, shots, -1).float()
    return set_features(extractor, x)


def _train_time(run: RunConfig, datasets: dict) -> float:
    """Seconds of one training run of ``run``'s recipe (from scratch, on this thread)."""
    task = load_run_task(run, datasets)
    model = build_model(run.arch, num_classes=task.num_classes, **run.arch_kwargs)
    start = time.perf_counter()
    train_classifier(model, task, run.train, seed=run.seed + 100, keep_epochs=(run.train.epochs,), eval_splits={})
    return time.perf_counter() - start


def nearest_tasks(queries: torch.Tensor, keys: torch.Tensor, key_tasks: Sequence[str]) -> list[str]:
    """The task of each query's nearest key by cosine similarity (1-NN over condition embeddings).

    Args:
        queries: ``(Q, D)`` condition embeddings to look up.
        keys: ``(M, D)`` embeddings of the zoo's conditions.
        key_tasks: The task of each key.

    Examples:
        >>> nearest_tasks(torch.tensor([[1.0, 0.1], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"])
        ['a', 'b']
    """
    if keys.shape[0] != len(key_tasks) or queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"nearest_tasks: expected queries (Q, D) and keys (M, D) with M = {len(key_tasks)} tasks, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    sim = torch.nn.functional.normalize(queries.float(), dim=1) @ torch.nn.functional.normalize(keys.float(), dim=1).T  # (Q, M)
    return [key_tasks[j] for j in sim.argmax(dim=1).tolist()]


def _embed(gen: Any, conds: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, D)``: the fitted conditioner's vectors of raw conditions."""
    c = gen.condition(list(conds))
    assert c is not None  # a conditioned generator
    return c


BASELINES = ("original", "best original (val)", "nearest task (1-NN)", "nearest task (raw features)")
GENERATED = ("generated", "generated best-of-n (val)")


def main(argv: Sequence[str] | None = None) -> int:
    setup = RunSetup.from_args("retrieval", __doc__, SIZES, argv)  # arguments, threads, seed, output folder, logging
    args, size_name, size, out, g = setup.args, setup.size_name, setup.size, setup.out, setup.g
    started = setup.started
    seeds = list(range(size["pipeline_seeds"]))
    res = Results("retrieval", start=started, config={"size": size_name, "seed": args.seed,
                                                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items() if not isinstance(v, dict)},
                                                       "image_zoo": size["image"]["zoo"], "signal_zoo": size["signal"]["zoo"]})
    per_task: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    extractor = mobilenet_features(resize=64)

    def gs(p: int, k: int) -> torch.Generator:
        """Stream ``k`` of pipeline seed ``p`` (seed 0: the streams of the single-seed harness)."""
        return g(k + 10_000_000 * p)

    for mi, (modality, runs) in enumerate((("image", image_plan(size["image"])), ("signal", signal_plan(size["signal"])))):
        start = time.perf_counter()
        zoo = build_zoo(out.parent / "zoos" / size[modality]["zoo"], runs, workers=2, progress=False)
        res.add(f"zoo ({modality})", "all", "build_s", time.perf_counter() - start, checkpoints=len(zoo))
        spec = zoo.spec()
        flat, _ = zoo.flatten()
        tasks_of = [c.task for c in zoo]
        run_of = {r.task: r for r in runs if r.seed == runs[0].seed}
        datasets: dict = {}
        tasks = {name: load_run_task(run_of[name], datasets) for name in zoo.tasks}
        names = list(tasks)
        ext = extractor if modality == "image" else None
        tests = {name: capped(task.test, size["eval_per_class"]) for name, task in tasks.items()}
        vals = {name: capped(task.val, size["eval_per_class"]) for name, task in tasks.items()}  # selection only
        rows_of = {name: [i for i, t in enumerate(tasks_of) if t == name] for name in names}
        # The seed-free baselines: the task's checkpoints, and the one best on validation.
        orig = {name: accuracies(zoo, flat[rows_of[name]], tests[name])[0] for name in names}
        best_row = {name: rows_of[name][int(accuracies(zoo, flat[rows_of[name]], vals[name])[0].argmax())] for name in names}
        items.extend({"modality": modality, "task": name, "method": "original checkpoint", "checkpoint": i, "test_acc": float(a)}
                     for name in names for i, a in zip(rows_of[name], orig[name].tolist(), strict=True))

        # Training time replaced: a few tasks per dataset retrained from scratch, timed.
        train_s: dict[str, list[float]] = {}
        for ds in sorted({n.split("/")[0] for n in names}):
            for name in [n for n in names if n.startswith(ds + "/")][: size["timed_tasks"]]:
                train_s.setdefault(ds, []).append(_train_time(run_of[name], datasets))
            res.add("training", ds, "train_s", train_s[ds])

        # scores[method][p][ti]: mean test accuracy of the method for task ti in pipeline seed p.
        scores: dict[str, list[list[float]]] = {m: [] for m in (*BASELINES, *GENERATED)}
        hits: list[float] = []
        raw_hits: list[float] = []
        gen_val: list[float] = []
        gen_time: dict[str, list[float]] = {name: [] for name in names}
        for p in seeds:
            # Conditions of the zoo: `draws` different random sets of training examples per task,
            # cycled over its checkpoints, so the encoder learns the task, not one image set.
            draws = {name: [task_condition(task, ext, size["shots"], gs(p, 100_000 * (mi + 1) + 100 * ti + r)) for r in range(size["draws"])]
                     for ti, (name, task) in enumerate(tasks.items())}
            seen: dict[str, int] = {}
            row_conds: list[Any] = []
            for t in tasks_of:
                if size["fresh_draws"]:  # every checkpoint holds all its task's draws: a fresh one at every fitting step
                    row_conds.append(Draws(*draws[t]))
                else:  # the draws cycled over the task's checkpoints
                    row_conds.append(draws[t][seen.get(t, 0) % size["draws"]])
                seen[t] = seen.get(t, 0) + 1
            key_conds = [c for t in names for c in draws[t]]  # every draw of every task, for 1-NN retrieval
            key_tasks = [t for t in names for _ in draws[t]]

            torch.manual_seed(setup.seed * 1000 + 100 * p + mi)  # the generator's initialization, per pipeline seed
            gen = make_generator(spec, key_conds[0].shape[-1], size, residuals=size["anchor"] != "none")
            # The residual anchor: each task's best checkpoint by validation, keyed by its draws'
            # class means (raw features); the generator learns checkpoints minus their task's anchor.
            anchor = NearestTaskAnchor.from_zoo(draws, {name: flat[best_row[name]] for name in names})
            if size["anchor"] == "nearest_task":
                gen = gen.with_anchor(anchor)
            elif size["anchor"] != "none":
                raise ValueError(f"retrieval: anchor must be 'nearest_task' or 'none', got {size['anchor']!r}")
            align = AlignLosses()
            start = time.perf_counter()
            paramgen.fit(gen, flat, row_conds, tasks=tasks_of, tokenizer_steps=size["vae_steps"], align_steps=size["align_steps"], prior_steps=size["prior_steps"],
                    prior_lr=1e-3, align_restarts=size["align_restarts"], generator=gs(p, 100 * mi + 2), progress=False, tracker=align)
            res.add(f"generator ({modality})", f"seed {p}", "fit_s", time.perf_counter() - start, parameters=spec.numel)
            align.report(res, f"{modality}, seed {p}")
            with torch.no_grad():  # the zoo's conditions in the fitted conditioner's space, for 1-NN retrieval
                keys = torch.cat([_embed(gen, key_conds[i : i + 64]) for i in range(0, len(key_conds), 64)])  # (tasks x draws, D)

            for m in scores:
                scores[m].append([])
            n = size["samples"]
            for ti, name in enumerate(names):
                task = tasks[name]
                # Generation time: the condition's features from raw examples (a fresh draw, not
                # one the generator was fitted with), then sampling.
                start = time.perf_counter()
                c = task_condition(task, ext, size["shots"], gs(p, 100_000 * (mi + 1) + 100 * ti + 99))
                sample = tensor(gen.sample_flat([c], n, generator=gs(p, 10_000 * (mi + 1) + ti), sampler="ddim", steps=50))  # (n, D)
                gen_time[name].append((time.perf_counter() - start) / n)
                acc = accuracies(zoo, sample, tests[name])[0]
                val_acc = accuracies(zoo, sample, vals[name])[0]
                best = int(val_acc.argmax())  # selection on the validation split
                gen_val.append(float(val_acc.mean()))  # what settings are chosen on (never the test split)
                with torch.no_grad():
                    found = nearest_tasks(_embed(gen, [c]), keys, key_tasks)[0]
                retrieved = accuracies(zoo, flat[best_row[found] : best_row[found] + 1], tests[name])[0]
                hits.append(float(found == name))
                raw_found = anchor.nearest([c])[0]  # the anchor alone: the nearest task by raw class means
                raw_hits.append(float(raw_found == name))
                raw_acc = accuracies(zoo, flat[best_row[raw_found] : best_row[raw_found] + 1], tests[name])[0]
                values = {"original": float(orig[name].mean()), "best original (val)": float(orig[name][rows_of[name].index(best_row[name])]),
                          "nearest task (1-NN)": float(retrieved[0]), "nearest task (raw features)": float(raw_acc[0]),
                          "generated": float(acc.mean()), "generated best-of-n (val)": float(acc[best])}
                for m, v in values.items():
                    scores[m][p].append(v)
                items.extend({"modality": modality, "seed": p, "task": name, "method": "generated", "sample": i, "test_acc": float(a)} for i, a in enumerate(acc))
                items.extend({"modality": modality, "seed": p, "task": name, "method": m, "test_acc": v} for m, v in values.items() if m != "generated")
                items.append({"modality": modality, "seed": p, "task": name, "method": "nearest task (1-NN)", "retrieved": found})
                items.append({"modality": modality, "seed": p, "task": name, "method": "nearest task (raw features)", "retrieved": raw_found})
                logger.info("%s seed %d %s: original %.3f best-val %.3f 1-NN %.3f (%s) generated %.3f best %.3f", modality, p, name, values["original"],
                            values["best original (val)"], values["nearest task (1-NN)"], found, values["generated"], values["generated best-of-n (val)"])

        # Per task: means over seeds.
        mine = []
        for ti, name in enumerate(names):
            ds = name.split("/")[0]
            row: dict[str, Any] = {"modality": modality, "task": name, **{m: sum(scores[m][p][ti] for p in seeds) / len(seeds) for m in scores},
                   "generate_s": sum(gen_time[name]) / len(seeds), "train_s": sum(train_s[ds]) / len(train_s[ds])}
            row["best"] = row["generated best-of-n (val)"]
            mine.append(row)
            res.add("original", name, "test_acc", orig[name].tolist(), modality=modality)
            for m in ("best original (val)", "nearest task (1-NN)", "nearest task (raw features)", "generated best-of-n (val)", "generated"):
                res.add(m, name, "test_acc", [scores[m][p][ti] for p in seeds], modality=modality)
            res.add("generated", name, "generate_s", row["generate_s"], modality=modality)
        per_task.extend(mine)

        group = f"mean over tasks ({modality})"
        for m in scores:
            res.add(m, group, "test_acc", [r[m] for r in mine])
            res.add(m, group, "test_acc per seed", [sum(v) / len(v) for v in scores[m]])
        res.add("nearest task (1-NN)", group, "hit rate", hits)
        res.add("nearest task (raw features)", group, "hit rate", raw_hits)
        res.add("generated", group, "val_acc", gen_val, note="validation split: what the anchor setting is chosen on")
        res.add("random init", group, "test_acc", 1.0 / tasks[names[0]].num_classes, note="chance")
        res.add("generated", group, "acc_over_original", [r["generated"] / r["original"] for r in mine])
        res.add("generated best-of-n (val)", group, "acc_over_original", [r["best"] / r["original"] for r in mine])
        res.add("generated", group, "tasks >= 0.9 original", [float(r["generated"] >= 0.9 * r["original"]) for r in mine])
        res.add("generated", group, "generate_s", [r["generate_s"] for r in mine])
        res.add("generated", group, "train_s_over_generate_s", [r["train_s"] / r["generate_s"] for r in mine])

        # Generated minus each baseline, paired over seeds x tasks; the best simple baseline is
        # the one with the highest mean (the strongest comparison, not a selection of a model).
        strongest = max(BASELINES, key=lambda m: sum(map(sum, scores[m])))
        paired = f"paired over seeds x tasks ({modality})"
        for gm in GENERATED:
            for bm in BASELINES:
                d, lo, hi = clustered_bootstrap(scores[gm], scores[bm], seed=setup.seed)
                _, slo, shi = paired_seed_ci([sum(v) / len(v) for v in scores[gm]], [sum(v) / len(v) for v in scores[bm]])
                label = f"{gm} - {bm}"
                row = res.add(label, paired, "test_acc_diff", d, seeds=len(seeds), tasks=len(names), seed_ci_low=slo, seed_ci_high=shi,
                              best_simple_baseline=bm == strongest)
                row.update(ci_low=lo, ci_high=hi, n=len(seeds) * len(names))
                if bm == strongest:
                    best_row_ = res.add(f"{gm} - best simple baseline", paired, "test_acc_diff", d, baseline=bm, seeds=len(seeds), tasks=len(names),
                                        seed_ci_low=slo, seed_ci_high=shi)
                    best_row_.update(ci_low=lo, ci_high=hi, n=len(seeds) * len(names))
    res.items = {"test_acc": items}

    artifact = plot(per_task, out)
    path = setup.write(res, artifacts=[artifact])
    print(res.table(skip_tasks=[r["task"] for r in per_task]))
    print(f"{'task':<28} {'original':>9} {'best-val':>9} {'1-NN':>7} {'generated':>10} {'best(val)':>10} {'train_s':>8} {'gen_s':>7}")
    for r in per_task:
        print(f"{r['task']:<28} {r['original']:>9.3f} {r['best original (val)']:>9.3f} {r['nearest task (1-NN)']:>7.3f} {r['generated']:>10.3f} "
              f"{r['best']:>10.3f} {r['train_s']:>8.1f} {r['generate_s']:>7.3f}")
    print(f"results: {path}")
    return 0


def plot(per_task: list[dict[str, Any]], out: Path) -> Path:
    """``retrieval.png``: generated vs original accuracy, one point per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    for modality, marker in (("image", "o"), ("signal", "s")):
        for ds in sorted({r["task"].split("/")[0] for r in per_task if r["modality"] == modality}):
            rows = [r for r in per_task if r["task"].startswith(ds + "/")]
            ax.scatter([r["original"] for r in rows], [r["generated"] for r in rows], marker=marker, s=18, label=ds)
    lo = min(0.2, *(r["generated"] for r in per_task))
    ax.plot([lo, 1], [lo, 1], "k:", lw=0.8)
    ax.axhline(0.2, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("original (trained) test accuracy")
    ax.set_ylabel("generated test accuracy (mean of samples)")
    ax.set_title("retrieval: generated vs original, per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "retrieval.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
