"""End-to-end demo: ``python -m paramgen.demo`` (what ``make demo`` and ``paramgen demo`` run).

Builds a small zoo of ConvNets on digits class-subset tasks (resumable: a second run
reuses it), prints what it holds, vectorizes it in one call, checks the exact round trip
and shows that a stored checkpoint scores its recorded test accuracy. Then it fits a
task-conditioned latent diffusion generator (VAE + DDPM, `paramgen.pipelines.d2nwg`) on
the zoo, samples new weights for every task, reports their test accuracy next to the
zoo's, and saves and reloads the generator.

The generator is the recipe `DEMO` fitted by `paramgen.cli.recipe.fit_recipe`, the
function behind ``paramgen fit``: ``examples/demo.toml`` holds the same values, so

    paramgen fit examples/demo.toml --threads 1
    paramgen sample runs/demo/generator -n 2 --seed 1 --sampler ddim --steps 50 --out runs/demo/samples \\
        --cond digits/0-2-4-6-7 --cond digits/0-4-5-8-9 --cond digits/1-2-3-7-8 --cond digits/1-4-5-7-9

reproduce the demo's generator and its samples bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from paramgen.cli._formatter import HelpFormatter

if TYPE_CHECKING:
    from paramgen.cli.recipe import Recipe

__all__ = ["main", "run", "add_arguments", "DEMO", "SAMPLING", "recipe"]

#: The demo's fit recipe (``examples/demo.toml``, whose paths resolve against ``examples/``).
DEMO: dict[str, Any] = {
    "zoo": "../runs/demo/zoo",
    "out": "../runs/demo/generator",
    "generator": {
        "pipeline": "d2nwg",
        "condition": "task",
        "seed": 0,
        "latent_channels": 4,
        "latent_length": 16,
        "hidden_channels": 32,
        "input_noise": 0.0,
        "latent_noise": 0.0,
        "cond_dim": 16,
        "base_channels": 32,
        "channel_mults": [1, 2],
        "ema_decay": 0.99,
    },
    "fit": {"tokenizer_steps": 600, "align_steps": 0, "prior_steps": 600, "batch_size": 8, "prior_lr": 1e-3, "seed": 0},
}

#: How the demo samples (``paramgen sample ... -n 2 --seed 1 --sampler ddim --steps 50``).
SAMPLING: dict[str, Any] = {"n": 2, "seed": 1, "sampler": "ddim", "steps": 50}


def recipe(zoo: str, out: str, *, steps: int | None = None) -> Recipe:
    """The demo's recipe with its zoo and output folders (and ``steps`` per stage if given).

    Examples:
        >>> r = recipe("runs/demo/zoo", "runs/demo/generator", steps=20)
        >>> r.pipeline, r.fit.tokenizer_steps, r.fit.batch_size
        ('d2nwg', 20, 8)
    """
    from paramgen.cli.recipe import Recipe

    data = {**DEMO, "zoo": zoo, "out": out, "fit": dict(DEMO["fit"])}
    if steps is not None:
        data["fit"].update(tokenizer_steps=steps, prior_steps=steps)
    return Recipe.from_dict(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (standard library only: ``paramgen demo --help`` imports no torch)."""
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--workers", type=int, default=2, help="zoo-building worker processes")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per generator stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m paramgen.demo") -> int:
    """Parse the demo's options and `run` it."""
    from paramgen.cli.progress import progress_bars

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with progress_bars(not args.no_progress):
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Build the zoo, fit, sample and report (the options of `add_arguments`)."""
    import torch

    from paramgen.cli.recipe import fit_recipe
    from paramgen.data import get_task
    from paramgen.generator import Generator
    from paramgen.normalize import PerLayerZScore
    from paramgen.vectorize import ChunkVectorizer
    from paramgen.zoo import build_zoo, evaluate, preset

    progress = sys.stderr.isatty() and not args.no_progress
    torch.set_num_threads(1)  # tiny models: one thread is fastest

    runs = preset("tiny")
    start = time.perf_counter()
    zoo = build_zoo(f"{args.out}/zoo", runs, workers=args.workers, progress=progress)
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

    # Fit a task-conditioned generator on the zoo (the recipe `paramgen fit` reads from
    # examples/demo.toml) and sample new weights for each task.
    start = time.perf_counter()
    gen = fit_recipe(recipe(f"{args.out}/zoo", f"{args.out}/generator", steps=args.steps), progress=progress)
    print(f"fitted VAE + conditional DDPM in {time.perf_counter() - start:.1f} s")
    n, kwargs = SAMPLING["n"], {"sampler": SAMPLING["sampler"], "steps": SAMPLING["steps"]}
    samples = gen.sample(zoo.tasks, n, generator=torch.Generator().manual_seed(SAMPLING["seed"]), **kwargs)
    print(f"{'task':<22} {'zoo test acc':>12} {'generated (2 samples)':>24}")
    for i, name in enumerate(zoo.tasks):
        test = get_task(name).test
        mine = []
        for sd in samples[n * i : n * i + n]:
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
