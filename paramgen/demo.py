"""End-to-end demo: ``python -m paramgen.demo`` (what ``make demo`` runs).

Builds a small zoo of ConvNets on digits class-subset tasks (resumable: a second run
reuses it), prints what it holds, vectorizes it in one call, checks the exact round trip
and shows that a stored checkpoint scores its recorded test accuracy. Generators are
fitted and sampled here as they land.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from paramgen.data import get_task
from paramgen.normalize import PerLayerZScore
from paramgen.vectorize import ChunkVectorizer
from paramgen.zoo import build_zoo, evaluate, preset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paramgen.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    runs = preset("tiny")
    start = time.perf_counter()
    zoo = build_zoo(f"{args.out}/zoo", runs, workers=args.workers, progress=sys.stderr.isatty())
    print(f"built {zoo} in {time.perf_counter() - start:.1f} s")
    print(f"{'task':<22} {'epoch':>5} {'val acc':>8} {'test acc':>8}")
    for c in zoo:
        print(f"{c.task:<22} {c.epoch:>5} {c.metrics['val_acc']:>8.3f} {c.metrics['test_acc']:>8.3f}")
    print(f"task description: {zoo[0].task_description}")
    print(f"architecture:     {zoo[0].arch_description}")

    spec = zoo.spec()
    start = time.perf_counter()
    flat, extras = zoo.flatten()
    vec = ChunkVectorizer(spec, chunk_size=64)
    norm = PerLayerZScore(spec).fit(flat)
    batch = vec.from_flat(norm.transform(flat), extras)
    took = time.perf_counter() - start
    print(f"vectorized {len(zoo)} checkpoints x {spec.numel} weights -> rows {tuple(batch.values.shape)} in {took:.3f} s")

    restored = spec.unflatten(norm.inverse(vec.unpack(batch.values)), extras=extras)
    worst = max(float((restored[i][t.name].float() - zoo.state_dict(i)[t.name].float()).abs().max()) for i in range(len(zoo)) for t in spec.vector_tensors)
    print(f"normalize + vectorize round trip: max abs error {worst:.2e}")

    best = max(zoo, key=lambda c: c.metrics["val_acc"])
    acc, _ = evaluate(zoo.model(best), get_task(best.task).test)
    print(f"best checkpoint by val acc: {best.id}: recorded test acc {best.metrics['test_acc']:.3f}, re-evaluated {acc:.3f}")
    torch.testing.assert_close(torch.tensor(acc), torch.tensor(best.metrics["test_acc"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
