"""End-to-end demo: ``python -m paramgen.demo`` (what ``make demo`` runs).

Builds a small zoo of ConvNets on digits class-subset tasks (resumable: a second run
reuses it), prints what it holds, vectorizes it in one call, checks the exact round trip
and shows that a stored checkpoint scores its recorded test accuracy. Then it fits a
task-conditioned latent diffusion generator (VAE + DDPM) on the zoo, samples new weights
for every task, reports their test accuracy next to the zoo's, and saves and reloads
the generator.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from paramgen.conditioners import IndexConditioner
from paramgen.data import get_task
from paramgen.generator import Generator
from paramgen.normalize import PerLayerZScore
from paramgen.priors import DiffusionPrior
from paramgen.tokenizers import VAETokenizer
from paramgen.vectorize import ChunkVectorizer, ModelVectorizer
from paramgen.zoo import build_zoo, evaluate, preset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paramgen.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per generator stage")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is fastest

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

    # Fit a task-conditioned generator on the zoo and sample new weights for each task.
    torch.manual_seed(0)  # module initialization; this script owns its process
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=4, latent_length=16, hidden_channels=32)
    gen = Generator(
        vectorizer=ModelVectorizer(spec),
        tokenizer=tok,
        prior=DiffusionPrior(shape=tok.latent_shape, cond_dim=16, base_channels=32, channel_mults=(1, 2), ema_decay=0.99),
        conditioner=IndexConditioner(zoo.tasks, dim=16),
        normalizer=PerLayerZScore(spec),
    )
    start = time.perf_counter()
    tasks = [c.task for c in zoo]
    gen.fit(flat, tasks, tasks=tasks, tokenizer_steps=args.steps, prior_steps=args.steps, batch_size=8, prior_lr=1e-3,
            generator=torch.Generator().manual_seed(0), progress=sys.stderr.isatty())
    print(f"fitted VAE + conditional DDPM in {time.perf_counter() - start:.1f} s")
    samples = gen.sample(zoo.tasks, 2, generator=torch.Generator().manual_seed(1), sampler="ddim", steps=50)
    print(f"{'task':<22} {'zoo test acc':>12} {'generated (2 samples)':>24}")
    for i, name in enumerate(zoo.tasks):
        test = get_task(name).test
        mine = []
        for sd in samples[2 * i : 2 * i + 2]:
            model = zoo.model(0)
            model.load_state_dict(sd, strict=True)
            mine.append(evaluate(model, test)[0])
        ref = [c.metrics["test_acc"] for c in zoo if c.task == name]
        print(f"{name:<22} {sum(ref) / len(ref):>12.3f} {mine[0]:>11.3f} {mine[1]:>11.3f}")
    saved = gen.save_pretrained(f"{args.out}/generator")
    again = Generator.from_pretrained(saved, spec=spec)
    a = gen.sample_flat(zoo.tasks[:1], 1, generator=torch.Generator().manual_seed(2), sampler="ddim", steps=20)
    b = again.sample_flat(zoo.tasks[:1], 1, generator=torch.Generator().manual_seed(2), sampler="ddim", steps=20)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)  # one architecture: one (n, D) tensor
    same = torch.equal(a, b)
    print(f"saved to {saved}; reloaded generator samples identical weights: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
