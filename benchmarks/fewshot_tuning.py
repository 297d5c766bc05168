"""``python -m benchmarks.fewshot_tuning``: the validation-class ablations behind the `fewshot` generator choices.

Trains the quick-size backbone and zoo of `benchmarks.fewshot` once, then fits one head
generator per variant and scores it on 100 *validation-class* 5-way episodes (1 and 5
shots); novel classes are never touched. Prints one line per variant: nearest centroid,
logistic regression (C=10), a plain generated sample, the best of ``samples`` by support
accuracy, the mean of the samples, and the best one fine-tuned 20 steps; writes the same,
per episode, to ``results.json`` (the shared schema, rows per variant and shot, per-episode
values under ``items``) and MLflow. The variants (keys of `VARIANTS`, or a JSON object
given with ``--variants``) override the quick size; ``--quick`` compares whole heads, the
residual anchor and the residual anchor with support guidance (the same fit, sampled
again), at fewer steps and 30 episodes.

A variant with ``guidance_scales`` also samples the same generator, from the same noise,
with support-set loss guidance (`paramgen.guidance.SupportCrossEntropy`: the cross-entropy
of each head on its own support set, through the decoder, at every DDIM step) at each
scale, and reports a plain sample, the best of ``samples`` by support and their mean per
scale, with the paired per-episode difference from the unguided samples (95 % bootstrap
interval over episodes) and the support cross-entropy of the plain samples.

Example:
    python -m benchmarks.fewshot_tuning --variants '{"whole": {"residual": false}, "residual": {}}'
    python -m benchmarks.fewshot_tuning --quick --combine runs/s0/results.json runs/s1/results.json runs/s2/results.json
    python -m benchmarks.fewshot_tuning --quick --variants '{"residual + guidance": {"residual": true, "guidance_scales": [10, 100]}}'
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from benchmarks import fewshot as fs
from benchmarks.common import Results, RunSetup, clustered_bootstrap, paired_bootstrap, paired_seed_ci
from paramgen.data.episodes import fewshot_pool
from paramgen.generator import Generator
from paramgen.guidance import Guidance, SupportCrossEntropy
from paramgen.heads import head_accuracy, head_cross_entropy

__all__ = ["main", "VARIANTS", "SIZES", "GUIDANCE_SCALES", "guided_samples", "combine_seeds"]

#: Scales of support-set loss guidance (`paramgen.guidance`); chosen from the size of the
#: latent gradients and the support cross-entropy on separate validation episodes, no query
#: (median latent gradient norm 0.004-0.05 per step; scale 10 lowered the support
#: cross-entropy by about 20 %, scale 100 by about 50 %).
GUIDANCE_SCALES = (10.0, 100.0)

# What was compared (docs/fewshot.md): whole heads vs residual, condition width, CFG,
# D2NWG's frozen contrastive encoder, longer training, a larger zoo.
VARIANTS: dict[str, dict] = {
    "whole heads": {"residual": False},
    "whole, 64-d class codes": {"residual": False, "cond_per_class": 64},
    "whole, CFG 2.0": {"residual": False, "cond_dropout": 0.1, "guidance": 2.0},
    "whole, aligned + frozen encoder": {"residual": False, "align_steps": 300},
    "whole, 3.3x longer": {"residual": False, "vae_steps": 1000, "prior_steps": 3000},
    "residual": {"residual": True},
    "residual, 3.3x longer": {"residual": True, "vae_steps": 1000, "prior_steps": 3000},
    "residual, zoo 1200 x 4": {"residual": True, "zoo_tasks": 1200, "zoo_draws": 4},
    "residual, zoo on 8 classes unseen by the backbone": {"residual": True, "zoo_holdout": 2},
    "whole, zoo on 8 classes unseen by the backbone": {"residual": False, "zoo_holdout": 2},
    # Support-set loss guidance at sampling time (paramgen.guidance), on the residual generator.
    "residual + support guidance": {"residual": True, "guidance_scales": list(GUIDANCE_SCALES)},
}


SIZES: dict[str, dict] = {
    # --quick: whole vs residual (and residual + support guidance, no second fit), fewer steps and episodes.
    "quick": {"variants": ["whole heads", "residual", "residual + support guidance"], "episodes": 30, "overrides": {"vae_steps": 150, "prior_steps": 400, "episodes": 30}},
    "default": {"variants": list(VARIANTS), "episodes": 100, "overrides": {}},
}


def guided_samples(data: dict[str, torch.Tensor], gen: Generator, n: int, scale: float, *, seed: int) -> dict[str, torch.Tensor]:
    """``n`` heads per episode sampled with support cross-entropy guidance at ``scale``, scored.

    The sampling stream is seeded as `benchmarks.fewshot.evaluate` seeds it, so with
    deterministic DDIM each guided head starts from the noise of its unguided twin. The
    guidance loss and the selection see only the support set; the queries score the result.

    Returns:
        Per episode ``(E,)``: ``"1 sample"`` (mean query accuracy of the ``n`` samples),
        ``"best"`` (the best by support accuracy), ``"mean"`` (the samples' mean head),
        ``"support_ce"`` (mean support cross-entropy of the samples).
    """
    sup, q, qy = data["support"], data["query"], data["query_y"]
    e, k, s, f = sup.shape
    guidance = Guidance(SupportCrossEntropy(), scale=scale)
    flat = gen.sample_flat(list(sup), n, generator=torch.Generator().manual_seed(seed), sampler="ddim", steps=50, guidance=guidance)  # (E * n, D)
    assert isinstance(flat, torch.Tensor)
    heads = gen.spec.unflatten_stacked(flat)
    w, b = heads["weight"].view(e, n, k, f), heads["bias"].view(e, n, k)
    best_w, best_b, _ = fs.select_by_support(w, b, sup)
    per_sample = head_accuracy(w.reshape(e * n, k, f), b.reshape(e * n, k), q.repeat_interleave(n, 0), qy.repeat_interleave(n, 0)).view(e, n)
    sup_x = sup.reshape(e, 1, k * s, f).expand(e, n, k * s, f).reshape(e * n, k * s, f)
    sup_y = torch.arange(k).repeat_interleave(s).expand(e * n, -1)
    ce = head_cross_entropy(w.reshape(e * n, k, f), b.reshape(e * n, k), sup_x, sup_y).view(e, n)
    return {"1 sample": per_sample.mean(1), "best": head_accuracy(best_w, best_b, q, qy), "mean": head_accuracy(w.mean(1), b.mean(1), q, qy), "support_ce": ce.mean(1)}


def _minus_baselines(res: Results, label: str, values: torch.Tensor, accs: dict[str, torch.Tensor], name: str, task: str, scale: float, shot: int) -> None:
    """Rows ``label - baseline`` for the simple baselines on the same episodes (paired bootstrap over episodes)."""
    for baseline in ("nearest centroid", "logistic regression C=10"):
        d, lo, hi = paired_bootstrap(values, accs[baseline], seed=shot)
        res.rows.append({"method": f"{label} - {baseline}", "task": task, "metric": "acc_diff", "value": d, "ci_low": lo, "ci_high": hi,
                         "n": len(values), "variant": name, "guidance_scale": scale, "ci": "paired bootstrap over episodes"})  # fmt: skip


def _add_guided(res: Results, name: str, shot: int, data: dict[str, torch.Tensor], gen: Generator, n: int, scales: Sequence[float], accs: dict[str, torch.Tensor], seed: int) -> list[str]:
    """Rows and items of the guided samples at every scale, beside the unguided ones (``accs``)."""
    task = f"val 5-way {shot}-shot"
    plain = guided_samples(data, gen, n, 0.0, seed=seed)  # scale 0: the unguided samples, bit for bit
    res.add("generated (1 sample)", task, "support_ce", plain["support_ce"].tolist(), variant=name, guidance_scale=0.0)
    unguided = {"1 sample": accs["generated (1 sample)"], "best": accs[f"generated (best of {n} by support)"], "mean": accs[f"generated (mean of {n})"]}
    for kind in unguided:
        if not torch.equal(plain[kind], unguided[kind]):
            raise AssertionError(f"guidance at scale 0 changed the {kind} accuracies: the guided path is not the unguided one")
    _minus_baselines(res, "generated (best of n by support)", unguided["best"], accs, name, task, 0.0, shot)
    out = []
    for scale in scales:
        got = guided_samples(data, gen, n, float(scale), seed=seed)
        res.add("generated (1 sample)", task, "support_ce", got["support_ce"].tolist(), variant=name, guidance_scale=float(scale))
        items = res.items[name][task]
        parts = []
        for kind, label in (("1 sample", "generated (1 sample)"), ("best", "generated (best of n by support)"), ("mean", "generated (mean of n)")):
            res.add(f"{label}, guidance {scale:g}", task, "acc", got[kind].tolist(), variant=name, guidance_scale=float(scale))
            d, lo, hi = paired_bootstrap(got[kind], unguided[kind], seed=shot)
            res.rows.append({"method": f"{label}, guidance {scale:g} - unguided", "task": task, "metric": "acc_diff", "value": d, "ci_low": lo, "ci_high": hi,
                             "n": len(got[kind]), "variant": name, "guidance_scale": float(scale), "ci": "paired bootstrap over episodes"})  # fmt: skip
            items[f"{label}, guidance {scale:g}"] = got[kind].tolist()
            parts.append(f"{float(got[kind].mean()):.3f} ({d:+.3f} [{lo:+.3f}, {hi:+.3f}])")
        items[f"support_ce, guidance {scale:g}"] = got["support_ce"].tolist()
        _minus_baselines(res, f"generated (best of n by support), guidance {scale:g}", got["best"], accs, name, task, float(scale), shot)
        out.append(f"  guidance {scale:g}, {shot}-shot: 1 sample / best / mean (minus unguided) " + " / ".join(parts)
                   + f"; support CE {float(plain['support_ce'].mean()):.3f} -> {float(got['support_ce'].mean()):.3f}")  # fmt: skip
    items = res.items[name][task]
    items["support_ce, guidance 0"] = plain["support_ce"].tolist()
    return out


def combine_seeds(runs: Sequence[dict], variant: str = "residual + support guidance", *, boot: int = 2000) -> list[dict]:
    """Paired differences of the guided variant over several whole-pipeline seeds (results.json dicts).

    Every run must hold the variant's per-episode items on the same validation episodes (the
    harness draws them independently of ``--seed``). For each shot, each scale, and each of
    1 sample / best of n / mean of n: guided minus unguided; and the guided and unguided best
    of n minus nearest centroid and logistic regression. Intervals: seeds x episodes
    (`clustered_bootstrap`) and seeds (`paired_seed_ci`, a t-interval over the seeds' means).

    Raises:
        ValueError: Fewer than two runs, a run without the variant, or runs of other episodes.
    """
    if len(runs) < 2:
        raise ValueError(f"combine_seeds needs the results of 2 or more seeds, got {len(runs)}")
    items = []
    for i, r in enumerate(runs):
        if variant not in r.get("items", {}):
            raise ValueError(f"run {i} (seed {r.get('config', {}).get('seed')}) has no items of the variant {variant!r}")
        items.append(r["items"][variant])
    if any(sorted(it) != sorted(items[0]) or any(len(it[t]["nearest centroid"]) != len(items[0][t]["nearest centroid"]) for t in it) for it in items):
        raise ValueError("the runs hold other tasks or numbers of episodes; combine runs of one harness size")
    rows = []
    for task in sorted(items[0]):
        labels = items[0][task]
        scales = sorted({lab.rsplit("guidance ", 1)[1] for lab in labels if lab.startswith("generated") and ", guidance " in lab}, key=float)
        pairs = []
        for sc in scales:
            for kind in ("generated (1 sample)", "generated (best of n by support)", "generated (mean of n)"):
                pairs.append((f"{kind}, guidance {sc}", kind, sc))
            for baseline in ("nearest centroid", "logistic regression C=10"):
                pairs.append((f"generated (best of n by support), guidance {sc}", baseline, sc))
        for baseline in ("nearest centroid", "logistic regression C=10"):
            pairs.append(("generated (best of n by support)", baseline, "0"))
        for a_label, b_label, sc in pairs:
            a = torch.tensor([it[task][a_label] for it in items], dtype=torch.float64)  # (seeds, episodes)
            b = torch.tensor([it[task][b_label] for it in items], dtype=torch.float64)
            d, lo, hi = clustered_bootstrap(a, b, n_boot=boot, seed=0)
            _, slo, shi = paired_seed_ci(a.mean(1).tolist(), b.mean(1).tolist())
            rows.append({"method": f"{a_label} - {b_label}", "task": task, "metric": "acc_diff", "value": d, "ci_low": lo, "ci_high": hi, "n": a.numel(),
                         "seed_ci_low": slo, "seed_ci_high": shi, "seeds": len(items), "guidance_scale": float(sc), "variant": variant,
                         "a_mean": float(a.mean()), "b_mean": float(b.mean()), "ci": "clustered bootstrap over seeds x episodes; seed_ci: t over seeds"})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--variants", default=None, help="JSON object name -> overrides of the quick size (default: VARIANTS)")
        p.add_argument("--episodes", type=int, default=None, help="validation episodes per shot (default: 100; 30 at --quick)")
        p.add_argument("--combine", nargs="+", default=None, metavar="RESULTS_JSON",
                       help="only pool the guided variant of these runs (one per seed) into paired differences over seeds x episodes")  # fmt: skip

    setup = RunSetup.from_args("fewshot_tuning", __doc__, SIZES, argv, add_arguments=arguments)
    args, run = setup.args, setup.size
    if args.combine:
        from paramgen.io import read_json

        runs = [read_json(p) for p in args.combine]
        res = setup.results(combined=list(args.combine), seeds=[r["config"].get("seed") for r in runs])
        res.rows.extend(combine_seeds(runs))
        for r in res.rows:
            print(f"{r['task']} | {r['method']}: {r['a_mean']:.3f} - {r['b_mean']:.3f} = {r['value']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                  f"(seeds: [{r['seed_ci_low']:+.4f}, {r['seed_ci_high']:+.4f}])")  # fmt: skip
        print(f"results: {setup.write(res)}")
        return 0
    variants = json.loads(args.variants) if args.variants else {k: VARIANTS[k] for k in run["variants"]}
    episodes = args.episodes or run["episodes"]
    seed = args.seed * 1000
    # Variants are compared unguided (support guidance is a variant of its own, sampled beside its unguided twin).
    size = {**fs.SIZES["quick"], "support_guidance": 0.0, **run["overrides"]}
    pool = fewshot_pool(per_class=size["per_class"])
    holdouts = sorted({over.get("zoo_holdout", 0) for over in variants.values()})
    setups = {}
    for h in holdouts:  # one backbone per base split
        torch.manual_seed(args.seed)
        bb_classes, zoo_classes = fs.split_base(pool, h)
        backbone, _ = fs.train_backbone(pool, size, seed=seed + 1, progress=False, classes=bb_classes)
        feats = fs.class_features(backbone, pool, bb_classes)
        setups[h] = ([feats[c] for c in zoo_classes], [feats[c] for c in pool.splits["val"]])
    hp = {"lr_c": 10.0, "ft_steps": 100, "gen_ft_steps": 20}
    res = setup.results(size=setup.size_name, seed=args.seed, episodes=episodes, variants=variants, hp=hp, base_size=size)
    zoos: dict[tuple[int, int, int], dict] = {}
    gens: dict[str, tuple[Generator, float]] = {}  # variants that differ only in how they sample share one fit
    print("variant | fit_s | per shot: NC / LR / 1 sample / best-of-n / mean-of-n / best + FT 20 (validation classes)")
    for name, over in variants.items():
        vs = {**size, **over}
        h = vs.get("zoo_holdout", 0)
        base, val = setups[h]
        datas = {s: fs._episode_data(val, pool.counts("val"), episodes, s, generator=torch.Generator().manual_seed(10 + s)) for s in fs.SHOTS}
        key = (vs["zoo_tasks"], vs["zoo_draws"], h)
        if key not in zoos:
            zoos[key] = fs.build_zoo(base, vs, seed=seed + 2)
        fit_key = json.dumps({k: v for k, v in vs.items() if k != "guidance_scales"}, sort_keys=True, default=str)
        if fit_key not in gens:
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            gens[fit_key] = (fs.fit_generator(zoos[key], base[0].shape[1], vs, seed=seed + 3), time.perf_counter() - start)
        gen, fit_s = gens[fit_key]
        res.add(name, "all", "fit_s", fit_s)
        line = [name, f"{fit_s:.0f}"]
        guided_lines: list[str] = []
        for shot, data in datas.items():
            accs, _ = fs.evaluate(data, gen, vs, hp, seed=5)
            n = vs["samples"]
            keys = {"nearest centroid": "nearest centroid", "logistic regression C=10": "logistic regression C=10", "generated (1 sample)": "generated (1 sample)",
                    f"generated (best of {n} by support)": "generated (best of n by support)", f"generated (mean of {n})": "generated (mean of n)",
                    "generated + fine-tune 20 steps": "generated best + fine-tune 20 steps"}  # fmt: skip
            for k, label in keys.items():
                res.add(label, f"val 5-way {shot}-shot", "acc", accs[k].tolist(), variant=name)
            res.items.setdefault(name, {})[f"val 5-way {shot}-shot"] = {label: accs[k].tolist() for k, label in keys.items()}  # per episode
            line.append(f"{shot}-shot " + " / ".join(f"{float(accs[k].mean()):.3f}" for k in keys))
            if vs.get("guidance_scales"):
                guided_lines += _add_guided(res, name, shot, data, gen, n, vs["guidance_scales"], accs, seed=5)
        print(" | ".join(line), flush=True)
        for guided_line in guided_lines:
            print(guided_line, flush=True)
    path = setup.write(res)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
