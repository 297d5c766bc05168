"""``python -m benchmarks.fidelity``: do generated large models work, and are they new?

Question (issue 20, Zeng et al. 2025): a chunk-wise generator of full MiniLM fine-tunes,
learning deltas D = w - w_base over the pinned pretrained MiniLM, conditioned on the task:
are its samples as accurate as the memorization baselines (the soup of the task's
checkpoints, a per-coordinate Gaussian fit to them), while new in function (their test
predictions differ from every training checkpoint's as much as two seeds differ) and
diverse?

Setting:
- Zoo (`paramgen.lora.finetune.build_finetune_zoo`): all-MiniLM-L6-v2 fully fine-tuned
  (six encoder blocks + a linear head over mean-pooled tokens, embeddings frozen) on tweet
  tasks x seeds; resumable, the pretrained MiniLM (+ a zero head) pinned as the base.
- Generator (`paramgen.pipelines.chunkwise`): chunks of D, a position-conditioned VAE, a
  latent DDPM conditioned on (chunk position, task), DDIM sampling; fitted on the zoo's
  deltas, ``--pipeline-seeds`` times (each seed its own tokenizer, prior and draws).
- Methods, on each task's test split: the frozen base + logistic regression fitted on the
  task's training split (C chosen on validation); the originals; the tokenizer's
  reconstruction; generated samples; the nearest training checkpoint + isotropic noise at
  L2 novelty 0.5, 1 and 4; the soup (mean of the task's deltas and heads); a per-coordinate
  Gaussian fit to the task's deltas; the per-tensor mean of the soup's weights; another
  task's delta with this task's head.
- Metrics per model: ``acc``; ``gain_recovered`` = (acc - frozen) / (mean original -
  frozen); ``novelty_l2`` (distance to the nearest of the task's checkpoints over their
  median pairwise distance; fooled by isotropic noise); ``novelty_fn`` (disagreement with the
  functionally nearest checkpoint over the checkpoints' median pairwise disagreement);
  ``diversity_fn`` (median pairwise disagreement of a method's own models, same scale);
  ``error_iou`` (wrong-prediction IoU with the functionally nearest checkpoint).
- Paired differences: generated minus soup, minus Gaussian, minus the better of the two,
  per task and pooled: a bootstrap over test items (each item's correctness averaged over
  a method's models and seeds) and a t-interval over pipeline seeds.
- Ablation (no base, absolute weights): a plain chunk VAE at 1x, 4x, 16x, 32x compression,
  its reconstruction's relative L2 and accuracy: the information limit.

Nothing is tuned on test: the zoo's steps and tasks were chosen on validation, the
logistic regression's C on validation. Every checkpoint is read one at a time (streaming
soup, Gaussian and distances), so nothing holds checkpoints x D in memory; the peak RSS is
in results.json.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Results, RunSetup

logger = logging.getLogger("benchmarks.fidelity")

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        zoo="quick", pipeline_seeds=(0,), samples=2, draws=1, chunk_size=4096, compression=16, latent_channels=4,
        tokenizer_steps=10, prior_steps=10, batch_size=32, sample_steps=2, noise_levels=(0.5, 1.0, 4.0),
        ablation=(32,), ablation_steps=5, boot=500,
    ),
    "default": dict(
        zoo="default", pipeline_seeds=(0, 1, 2), samples=5, draws=5, chunk_size=4096, compression=16, latent_channels=4,
        tokenizer_steps=600, prior_steps=600, batch_size=64, sample_steps=20, noise_levels=(0.5, 1.0, 4.0),
        ablation=(1, 4, 16, 32), ablation_steps=300, boot=2000,
    ),
}


# ----------------------------------------------------------------------------- helpers
def _cat(state: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[n].reshape(-1).double() for n in names])


def rel_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    """||a - b|| / ||b|| over ``names``, tensor by tensor (float64)."""
    num = sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names)
    den = sum(float(b[n].double().pow(2).sum()) for n in names)
    return (num / den) ** 0.5


def l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    return sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names) ** 0.5


def norm(a: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    return sum(float(a[n].double().pow(2).sum()) for n in names) ** 0.5


class Evaluator:
    """Test predictions of a state (the layout tensors as weights w) on each task."""

    def __init__(self, clf: Any, tasks: Mapping[str, Any], num_labels: Mapping[str, int]) -> None:
        self.clf = clf
        self.tasks = tasks
        self.num_labels = dict(num_labels)
        self.feats = {name: clf.features(list(t.test.x)) for name, t in tasks.items()}
        self.labels = {name: torch.as_tensor(t.test.y) for name, t in tasks.items()}

    @torch.no_grad()
    def predict(self, task: str, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.clf.predict(state, self.feats[task], num_labels=self.num_labels[task]).cpu()

    def correct(self, task: str, preds: torch.Tensor) -> torch.Tensor:
        return (preds == self.labels[task]).double()


class MethodModels:
    """The models one method produced for one task: predictions, novelty and distances."""

    def __init__(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.seeds: list[int] = []
        self.novelty_l2: list[float] = []
        self.rel_l2_delta: list[float] = []

    def add(self, preds: torch.Tensor, seed: int, novelty_l2: float, rel_delta: float) -> None:
        self.preds.append(preds)
        self.seeds.append(seed)
        self.novelty_l2.append(novelty_l2)
        self.rel_l2_delta.append(rel_delta)


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    def add_arguments(p: Any) -> None:
        p.add_argument("--device", default="cpu", help="where the generator fits and samples (cpu, cuda)")
        p.add_argument("--zoo", default=None, help="zoo folder (default: <out>/zoo; built or resumed there)")
        p.set_defaults(threads=2)  # MiniLM's matrices use both cores

    setup = RunSetup.from_args("fidelity", __doc__, SIZES, argv, add_arguments=add_arguments)
    size = setup.size
    res = setup.results(**size, device=setup.args.device)
    run(setup, size, res, res.items)  # res.items: predictions per test tweet, per model and seed
    print(res.table(skip_tasks=()))
    setup.write(res)
    return 0


def run(setup: RunSetup, size: dict[str, Any], res: Results, items: dict[str, Any]) -> None:
    from paramgen.base import PinnedBase
    from paramgen.lora import text_tasks
    from paramgen.lora.finetune import FINETUNE_PRESETS, MiniLMClassifier, build_finetune_zoo, frozen_logreg
    from paramgen.novelty import RunningMoments, median_pairwise_disagreement, nearest_l2_state, noise_at_distance, pairwise_l2_states, per_tensor_mean

    device = torch.device(setup.args.device)
    zoo_root = Path(setup.args.zoo) if setup.args.zoo else setup.out / "zoo"
    preset = dict(size["zoo"] if isinstance(size["zoo"], Mapping) else FINETUNE_PRESETS[size["zoo"]])
    res.config["zoo_preset"] = preset
    clf = MiniLMClassifier()
    start = time.perf_counter()
    zoo = build_finetune_zoo(zoo_root, clf=clf, **preset)
    res.add("zoo (full fine-tunes)", "all", "build_s", time.perf_counter() - start)
    base = PinnedBase.of(zoo_root / "base.safetensors")
    zoo.check_base(base)
    tasks = text_tasks(list(preset["tasks"]), train_per_label=preset["train_per_label"], eval_per_label=preset["eval_per_label"], seed=preset.get("data_seed", 0))
    num_labels = {name: len(t.label_names) for name, t in tasks.items()}
    ev = Evaluator(clf, tasks, num_labels)
    names = list(clf.names)
    by_task = {name: [i for i, c in enumerate(zoo.checkpoints) if c.task == name] for name in tasks}
    res.config["zoo_runs"] = [c.run_id for c in zoo.checkpoints]
    res.config["test_items"] = {t: len(ev.labels[t]) for t in tasks}
    items["labels"] = {t: ev.labels[t].tolist() for t in tasks}
    base_w = {n: base.tensor(n) for n in names}

    def state(i: int) -> dict[str, torch.Tensor]:
        sd = zoo.state_dict(i)
        return {n: sd[n] for n in names}

    def delta(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: sd[n].double() - base_w[n].double() for n in names}

    def weights(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: (base_w[n].double() + d[n].double()).float() for n in names}

    # ---- the references: frozen base + logistic regression (C on validation), the originals
    frozen: dict[str, float] = {}
    for t, task in tasks.items():
        probe = frozen_logreg(clf, task)
        frozen[t] = float(ev.correct(t, probe.test_predictions).mean())
        items.setdefault("frozen", {})[t] = probe.test_predictions.tolist()
        res.add("frozen base + logistic regression", t, "acc", frozen[t], c=probe.c)
        gains = [float(zoo.checkpoints[i].metrics["val_acc"]) - probe.val_acc for i in by_task[t]]
        res.add("original (fine-tuned)", t, "val_gain_over_frozen", gains)
    orig_preds = {t: torch.stack([ev.predict(t, state(i)) for i in by_task[t]]) for t in tasks}  # task -> (M, N)
    # the unit of novelty_fn / diversity_fn: how often two of the task's fine-tunes disagree
    # (floored at one test item: fine-tunes that never disagree leave it undefined)
    fn_scale = {t: max(median_pairwise_disagreement(orig_preds[t]), 1 / len(ev.labels[t])) for t in tasks}
    res.config["fn_scale"] = fn_scale
    pair_l2: dict[str, float] = {}
    for t in tasks:
        idx = by_task[t]
        pairs = pairwise_l2_states([functools.partial(state, i) for i in idx])  # (M, M), each checkpoint read M - 1 times at most
        dists = pairs[torch.triu(torch.ones_like(pairs, dtype=torch.bool), diagonal=1)].tolist()
        pair_l2[t] = float(torch.tensor(dists).median())
        res.add("original (fine-tuned)", t, "pairwise_l2", dists)
        res.add("original (fine-tuned)", t, "delta_norm_over_base_norm", [l2(state(i), base_w, names) / norm(base_w, names) for i in idx])
    acc_orig = {t: float(torch.stack([ev.correct(t, p) for p in orig_preds[t]]).mean()) for t in tasks}

    # ---- the memorization baselines, streamed over the task's checkpoints
    soups: dict[str, dict[str, torch.Tensor]] = {}
    moments: dict[str, Any] = {}
    for t in tasks:
        mom = RunningMoments()
        for i in by_task[t]:
            mom.update(delta(state(i)))
        moments[t] = mom
        soups[t] = {n: v.double() for n, v in mom.mean().items()}
    models: dict[tuple[str, str], MethodModels] = {}

    def score(method: str, t: str, sd: Mapping[str, torch.Tensor], seed: int) -> None:
        preds = ev.predict(t, sd)
        dist, _ = nearest_l2_state(sd, (state(i) for i in by_task[t]))  # one checkpoint at a time
        soup = soups[t]
        to_soup = l2(delta(sd), soup, names) / max(norm(soup, names), 1e-30)
        models.setdefault((method, t), MethodModels()).add(preds, seed, dist / pair_l2[t], to_soup)

    for k_t, t in enumerate(tasks):
        for i in by_task[t]:
            score("original (fine-tuned)", t, state(i), zoo.checkpoints[i].seed or 0)
        score("soup (mean of the task's deltas)", t, weights(soups[t]), 0)
        score("per-tensor mean (of the soup's weights)", t, per_tensor_mean(weights(soups[t])), 0)
        g = setup.g(10 + k_t)
        for k in range(size["draws"]):
            score("per-coordinate Gaussian", t, weights(moments[t].sample(generator=g)), k)
        for level in size["noise_levels"]:
            for k in range(size["draws"]):
                i = by_task[t][k % len(by_task[t])]
                score(f"nearest + noise (L2 novelty {level:g})", t, noise_at_distance(state(i), level * pair_l2[t], generator=g), k)
        head = [n for n in names if n.startswith("classifier.")]
        for other in tasks:
            if other != t:
                for k, (i, j) in enumerate(zip(by_task[other], by_task[t], strict=False)):
                    score("another task's delta + this head", t, {**state(i), **{n: state(j)[n] for n in head}}, k)
    logger.info("baselines scored")

    # ---- the generator, once per pipeline seed
    for ps in size["pipeline_seeds"]:
        fit_and_score(size, res, zoo, base, tasks, by_task, ps, device, score, names)

    write_rows(res, items, models, tasks, ev, frozen, acc_orig, fn_scale, size, setup)
    ablation(setup, size, res, zoo, tasks, by_task, ev, state, names, device, base_w)


def res_lookup(res: Results, method: str, task: str, metric: str) -> float:
    for r in res.rows:
        if (r["method"], r["task"], r["metric"]) == (method, task, metric):
            return float(r["value"])
    raise KeyError((method, task, metric))


def generator_for(zoo: Any, base: Any, size: dict[str, Any], seed: int, *, positional: bool = True, with_base: bool = True, compression: int | None = None) -> tuple[Any, Any]:
    """The chunk-wise generator and the zoo's chunk dataset (of D over ``base`` or of w)."""
    from paramgen.chunks import ChunkDataset, ChunkLayout
    from paramgen.pipelines.chunkwise import chunkwise

    layout = ChunkLayout(zoo.spec(), size["chunk_size"])
    data = ChunkDataset.from_zoo(layout, zoo, base=base) if with_base else ChunkDataset.from_zoo(layout, zoo, absolute=True)
    gen = chunkwise(
        layout, condition="task", tasks=list(zoo.tasks), seed=seed, compression=compression or size["compression"],
        latent_channels=size["latent_channels"], positional=positional, position_bias=positional, task_positions=positional,
        **({"base": base} if with_base else {}),
    )
    return gen, data


def fit_and_score(size: dict[str, Any], res: Results, zoo: Any, base: Any, tasks: Mapping[str, Any], by_task: Mapping[str, list[int]],
                  ps: int, device: torch.device, score: Callable[..., None], names: Sequence[str]) -> None:
    from paramgen.pipelines.chunkwise import fit_config

    gen, data = generator_for(zoo, base, size, ps)
    gen.to(device)
    conditions = [c.task for c in zoo.checkpoints]
    start = time.perf_counter()
    gen.fit(
        data, conditions=conditions,
        config=fit_config(tokenizer_steps=size["tokenizer_steps"], prior_steps=size["prior_steps"], batch_size=size["batch_size"], seed=ps, progress=False),
    )
    res.add("generated (chunk-wise D2NWG over the base)", "all", "fit_s", time.perf_counter() - start, seed=ps)
    logger.info("pipeline seed %d: generator fitted in %.0f s", ps, time.perf_counter() - start)
    for t in tasks:
        for i in by_task[t]:
            rec = gen.reconstruct(data, i, cond=t)
            score("tokenizer reconstruction", t, {n: rec[n] for n in names}, ps)
            del rec
    g = torch.Generator(device=device).manual_seed(ps * 1000 + 7)
    for t in tasks:
        for _ in range(size["samples"]):
            start = time.perf_counter()
            sd = gen.sample(t, generator=g, sampler="ddim", steps=size["sample_steps"])
            res.add("generated (chunk-wise D2NWG over the base)", t, "sample_s", time.perf_counter() - start, seed=ps)
            score("generated", t, {n: sd[n] for n in names}, ps)


GENERATED = "generated"
BASELINES = ("soup (mean of the task's deltas)", "per-coordinate Gaussian")


def write_rows(res: Results, items: dict[str, Any], models: Mapping[tuple[str, str], MethodModels], tasks: Mapping[str, Any], ev: Evaluator,
               frozen: Mapping[str, float], acc_orig: Mapping[str, float], fn_scale: Mapping[str, float], size: dict[str, Any], setup: RunSetup) -> None:
    """Per method and task: acc, gain_recovered, novelty, diversity, error IoU; then paired differences."""
    from benchmarks.common import clustered_bootstrap, paired_bootstrap
    from paramgen.novelty import functional_diversity, functional_novelty, nearest_error_iou

    originals = {t: torch.stack(models[("original (fine-tuned)", t)].preds) for t in tasks}
    pooled: dict[str, dict[str, list[float]]] = {}
    for (method, t), mm in models.items():
        preds = torch.stack(mm.preds)  # (S, N)
        correct = torch.stack([ev.correct(t, p) for p in preds])  # (S, N)
        acc = correct.mean(1).tolist()
        gain = [(a - frozen[t]) / (acc_orig[t] - frozen[t]) for a in acc]
        nov, nearest = functional_novelty(preds, originals[t], scale=fn_scale[t])
        iou = nearest_error_iou(preds, originals[t], ev.labels[t], nearest).tolist()
        extra = dict(seeds=sorted(set(mm.seeds)))
        res.add(method, t, "acc", acc, **extra)
        res.add(method, t, "gain_recovered", gain, **extra)
        res.add(method, t, "novelty_l2", mm.novelty_l2, **extra)
        res.add(method, t, "novelty_fn", nov.tolist(), **extra)
        res.add(method, t, "error_iou", iou, **extra)
        res.add(method, t, "rel_l2_to_soup_delta", mm.rel_l2_delta, **extra)
        if len(preds) >= 2:
            res.add(method, t, "diversity_fn", functional_diversity(preds, scale=fn_scale[t]), **extra)
        items.setdefault("models", {}).setdefault(method, {})[t] = {"seeds": mm.seeds, "preds": [p.tolist() for p in preds]}
        for k, v in (("acc", acc), ("gain_recovered", gain), ("novelty_fn", nov.tolist())):
            pooled.setdefault(method, {}).setdefault(k, []).extend(v)
    for method, metrics in pooled.items():
        for k, v in metrics.items():
            res.add(method, "pooled", k, v)
    if not any(m == GENERATED for m, _ in models):
        return

    # Paired differences, generated minus each baseline. Per pipeline seed and test item:
    # generated = the item's correctness averaged over that seed's samples; a baseline = its
    # correctness averaged over its draws (the same for every seed: baselines do not depend
    # on the generator). Intervals: items only (seeds averaged), seeds x items (clustered), seeds only.
    seeds = list(size["pipeline_seeds"])

    def per_seed_items(method: str, t: str) -> torch.Tensor:  # (K, N)
        mm = models[(method, t)]
        correct = torch.stack([ev.correct(t, p) for p in mm.preds])
        if method != GENERATED:
            return correct.mean(0, keepdim=True).expand(len(seeds), -1)
        return torch.stack([correct[[j for j, s in enumerate(mm.seeds) if s == ps]].mean(0) for ps in seeds])

    pooled_acc = {b: float(torch.cat([per_seed_items(b, t) for t in tasks], 1).mean()) for b in BASELINES}
    best = max(BASELINES, key=lambda b: pooled_acc[b])
    res.config["best_simple_baseline"] = best  # the higher bar of the two, by pooled test accuracy (conservative)
    for label, b in [*((f"generated - {x}", x) for x in BASELINES), ("generated - best of soup and Gaussian", best)]:
        for scope in [*tasks, "pooled"]:
            ts = list(tasks) if scope == "pooled" else [scope]
            a = torch.cat([per_seed_items(GENERATED, t) for t in ts], 1)  # (K, N)
            c = torch.cat([per_seed_items(b, t) for t in ts], 1)
            extra = dict(baseline=b)
            mean, lo, hi = paired_bootstrap(a.mean(0), c.mean(0), n_boot=size["boot"], seed=setup.seed)
            res.rows.append({"method": label, "task": scope, "metric": "acc_diff_items", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.shape[1], **extra})
            if len(seeds) > 1:
                mean, lo, hi = clustered_bootstrap(a, c, n_boot=size["boot"], seed=setup.seed)
                res.rows.append({"method": label, "task": scope, "metric": "acc_diff_seeds_x_items", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.numel(), **extra})
            res.add(label, scope, "acc_diff_seeds", (a.mean(1) - c.mean(1)).tolist(), **extra)


def ablation(setup: RunSetup, size: dict[str, Any], res: Results, zoo: Any, tasks: Mapping[str, Any], by_task: Mapping[str, list[int]],
             ev: Evaluator, state: Callable[[int], dict[str, torch.Tensor]], names: Sequence[str], device: torch.device, base_w: Mapping[str, torch.Tensor]) -> None:
    """A plain chunk VAE on absolute weights (no base) at several compressions: reconstruction only."""
    from paramgen.pipelines.chunkwise import fit_config

    for comp in size["ablation"]:
        gen, data = generator_for(zoo, None, size, setup.seed, positional=False, with_base=False, compression=comp)
        gen.to(device)
        start = time.perf_counter()
        gen.fit(data, conditions=[c.task for c in zoo.checkpoints],
                config=fit_config(tokenizer_steps=size["ablation_steps"], prior_steps=0, batch_size=size["batch_size"], seed=setup.seed, progress=False))
        method = f"absolute weights, plain VAE {comp}x"
        res.add(method, "all", "tokenizer_fit_s", time.perf_counter() - start)
        for t in tasks:
            accs, rels, rels_d = [], [], []
            for i in by_task[t]:
                orig = state(i)
                rec = tokenizer_reconstruction(gen, data, i)
                rec = {n: rec[n] for n in names}
                rels.append(rel_l2(rec, orig, names))
                rels_d.append(l2(rec, orig, names) / l2(orig, base_w, names))
                accs.append(float(ev.correct(t, ev.predict(t, rec)).mean()))
            res.add(method, t, "acc", accs, compression=comp)
            res.add(method, t, "rel_l2_to_original", rels, compression=comp)
            res.add(method, t, "error_over_delta_norm", rels_d, compression=comp)
        del gen, data


@torch.no_grad()
def tokenizer_reconstruction(gen: Any, data: Any, index: int, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Checkpoint ``index`` through a fitted tokenizer alone (posterior means; no prior was fitted)."""
    from paramgen.chunkwise import ChunkSamples
    from paramgen.streaming import assemble

    rows, n, tok = ChunkSamples(data, gen.stats), gen.layout.num_chunks, gen.generator.tokenizer
    tok.eval()

    def batches() -> Any:
        for s in range(0, n, batch_size):
            ids = torch.arange(s, min(s + batch_size, n))
            x = torch.stack([rows[index * n + c]["x"] for c in ids.tolist()]).to(gen.device)  # (B, 1, K)
            out = tok.decode(tok.encode(x).latents)  # (B, 1, K) standardized
            yield ids, gen.stats.inverse_chunks(out[:, 0], ids).cpu()

    out = assemble(gen.layout, batches())
    assert isinstance(out, dict)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
