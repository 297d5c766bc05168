"""``python -m benchmarks.fewshot_tuning``: the validation-class ablations behind the `fewshot` generator choices.

Trains the quick-size backbone and zoo of `benchmarks.fewshot` once, then fits one head
generator per variant and scores it on 100 *validation-class* 5-way episodes (1 and 5
shots); novel classes are never touched. Prints one line per variant: nearest centroid,
logistic regression (C=10), a plain generated sample, the best of ``samples`` by support
accuracy, the mean of the samples, and the best one fine-tuned 20 steps; writes the same,
per episode, to ``results.json`` (the shared schema, rows per variant and shot, per-episode
values under ``items``) and MLflow. The variants (keys of `VARIANTS`, or a JSON object
given with ``--variants``) override the quick size; ``--quick`` compares whole heads and
the residual anchor only, at fewer steps and 30 episodes.

Example:
    python -m benchmarks.fewshot_tuning --variants '{"whole": {"residual": false}, "residual": {}}'
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from benchmarks import fewshot as fs
from benchmarks.common import RunSetup
from paramgen.data.episodes import fewshot_pool

__all__ = ["main", "VARIANTS", "SIZES"]

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
}


SIZES: dict[str, dict] = {
    # --quick: the whole-vs-residual comparison only, fewer steps and episodes (about 2 minutes here).
    "quick": {"variants": ["whole heads", "residual"], "episodes": 30, "overrides": {"vae_steps": 150, "prior_steps": 400, "episodes": 30}},
    "default": {"variants": list(VARIANTS), "episodes": 100, "overrides": {}},
}


def main(argv: Sequence[str] | None = None) -> int:
    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--variants", default=None, help="JSON object name -> overrides of the quick size (default: VARIANTS)")
        p.add_argument("--episodes", type=int, default=None, help="validation episodes per shot (default: 100; 30 at --quick)")

    setup = RunSetup.from_args("fewshot_tuning", __doc__, SIZES, argv, add_arguments=arguments)
    args, run = setup.args, setup.size
    variants = json.loads(args.variants) if args.variants else {k: VARIANTS[k] for k in run["variants"]}
    episodes = args.episodes or run["episodes"]
    seed = args.seed * 1000
    size = {**fs.SIZES["quick"], **run["overrides"]}
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
    print("variant | fit_s | per shot: NC / LR / 1 sample / best-of-n / mean-of-n / best + FT 20 (validation classes)")
    for name, over in variants.items():
        vs = {**size, **over}
        h = vs.get("zoo_holdout", 0)
        base, val = setups[h]
        datas = {s: fs._episode_data(val, pool.counts("val"), episodes, s, generator=torch.Generator().manual_seed(10 + s)) for s in fs.SHOTS}
        key = (vs["zoo_tasks"], vs["zoo_draws"], h)
        if key not in zoos:
            zoos[key] = fs.build_zoo(base, vs, seed=seed + 2)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        gen = fs.fit_generator(zoos[key], base[0].shape[1], vs, seed=seed + 3)
        fit_s = time.perf_counter() - start
        res.add(name, "all", "fit_s", fit_s)
        line = [name, f"{fit_s:.0f}"]
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
        print(" | ".join(line), flush=True)
    path = setup.write(res)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
