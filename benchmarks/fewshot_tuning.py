"""``python -m benchmarks.fewshot_tuning``: the validation-class ablations behind the `fewshot` generator choices.

Trains the quick-size backbone and zoo of `benchmarks.fewshot` once, then fits one head
generator per variant and scores it on 100 *validation-class* 5-way episodes (1 and 5
shots); novel classes are never touched. Prints one line per variant: nearest centroid,
logistic regression (C=10), a plain generated sample, the best of ``samples`` by support
accuracy, the mean of the samples, and the best one fine-tuned 20 steps. The variants
(keys of `VARIANTS`, or a JSON object given with ``--variants``) override the quick size.

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
from paramgen.data.episodes import fewshot_pool

__all__ = ["main", "VARIANTS"]

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fewshot_tuning", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=None, help="JSON object name -> overrides of the quick size (default: VARIANTS)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    variants = json.loads(args.variants) if args.variants else VARIANTS
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    seed = args.seed * 1000
    size = dict(fs.SIZES["quick"])
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
    zoos: dict[tuple[int, int, int], dict] = {}
    print("variant | fit_s | per shot: NC / LR / 1 sample / best-of-n / mean-of-n / best + FT 20 (validation classes)")
    for name, over in variants.items():
        vs = {**size, **over}
        h = vs.get("zoo_holdout", 0)
        base, val = setups[h]
        datas = {s: fs._episode_data(val, pool.counts("val"), args.episodes, s, generator=torch.Generator().manual_seed(10 + s)) for s in fs.SHOTS}
        key = (vs["zoo_tasks"], vs["zoo_draws"], h)
        if key not in zoos:
            zoos[key] = fs.build_zoo(base, vs, seed=seed + 2)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        gen = fs.fit_generator(zoos[key], base[0].shape[1], vs, seed=seed + 3)
        line = [name, f"{time.perf_counter() - start:.0f}"]
        for shot, data in datas.items():
            accs, _ = fs.evaluate(data, gen, vs, hp, seed=5)
            n = vs["samples"]
            keys = ["nearest centroid", "logistic regression C=10", "generated (1 sample)", f"generated (best of {n} by support)", f"generated (mean of {n})", "generated + fine-tune 20 steps"]
            line.append(f"{shot}-shot " + " / ".join(f"{float(accs[k].mean()):.3f}" for k in keys))
        print(" | ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
