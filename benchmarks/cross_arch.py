"""``python -m benchmarks.cross_arch``: IGPG sections 4.4-4.5 / D2NWG C.1 scaled to this CPU.

Question: can *one* generator write weights for a whole family of architectures, given
the data and a text description of the architecture, and what happens for architectures
it never saw?

Setting: a family of ConvNets (and, at the default size, small ResNets) of several depths
and widths, trained on five-class subsets of digits and Fashion-MNIST (2 seeds x the last
epochs per task and architecture). The *seen* members' checkpoints fit one generator; the
*unseen* members (other depths and widths) are trained only to give their originals as a
reference. The generator is IGPG's: every model laid out as one row padded to the
longest member (model-wise, `paramgen.vectorize.FamilyVectorizer.modelwise`; ``--layout
layer`` cuts each layer into chunks instead), Gumbel VQ tokens, and a GPT over the token
sequence (window by window when it is longer than the context), conditioned on [MiniLM(task description), MiniLM(architecture
description)], where the architecture description is derived from the model itself
(`paramgen.models.describe_architecture`). The same harness runs with VAE + latent DDPM
components instead (``--components vae-ddpm``): only the components are swapped.

Rows (test accuracy; ``epoch`` 0 = as generated, 1 = after one epoch of fine-tuning):
- ``original``: the zoo's checkpoints of this architecture and task.
- ``generated``: plain samples (no per-model selection; the GPT's sampling temperature
  is chosen once, among ``temperatures``, by mean *validation* accuracy of the seen
  members); ``generated best-of-n (val)``: the best of the n samples by *validation* accuracy; ``reconstruction``: tokenizer alone (seen
  members only).
- ``random init``; ``other dataset``: this architecture's checkpoint trained on a task of
  the other dataset (labels are five classes either way), used as the initialization.
Aggregates: ``seen archs`` / ``unseen archs`` per method; ``acc_over_original`` per
architecture group.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

import paramgen
from benchmarks.common import Results, RunSetup, capped, parallel_map
from paramgen import Generator
from paramgen.conditioners import ArchitectureConditioner, ConcatConditioner, TextConditioner
from paramgen.data import Split, Task
from paramgen.models import build_model
from paramgen.normalize import GlobalScale
from paramgen.pipelines import d2nwg, igpg
from paramgen.zoo import RunConfig, TrainConfig, build_zoo, load_run_task, train_classifier
from paramgen.zoo.build import subset_runs
from paramgen.zoo.train import predict_many

__all__ = ["main", "SIZES", "FAMILY", "make_generator"]

logger = logging.getLogger(__name__)

# key -> (model name, kwargs, seen by the generator)
FAMILY: dict[str, tuple[str, dict[str, Any], bool]] = {
    "convnet-8-16": ("convnet", {"channels": [8, 16]}, True),
    "convnet-16-16": ("convnet", {"channels": [16, 16]}, True),
    "convnet-8-16-16": ("convnet", {"channels": [8, 16, 16]}, True),
    "convnet-12-24": ("convnet", {"channels": [12, 24]}, False),  # unseen width
    "convnet-8-16-16-16": ("convnet", {"channels": [8, 16, 16, 16]}, False),  # unseen depth
    "resnet8-4-8-16": ("resnet", {"depth": 8, "widths": [4, 8, 16], "in_channels": 1}, True),
    "resnet14-4-8-16": ("resnet", {"depth": 14, "widths": [4, 8, 16], "in_channels": 1}, False),  # unseen depth
}

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        archs=("convnet-8-16", "convnet-16-16", "convnet-12-24"),
        tasks_per_dataset=1,
        seeds=(0,),
        zoo_epochs=6,
        keep_epochs=(4, 5, 6),
        fashion_train_per_class=150,
        chunk_size=32,
        tokens_per_chunk=64,
        codebook_size=256,
        hidden=512,
        tokenizer_steps=1500,
        tokenizer_lr=3e-4,
        prior_steps=600,
        context=64,
        d_model=96,
        layers=2,
        samples=4,
        temperatures=(1.0, 0.7),
        eval_per_class=100,
        finetune_train_per_class=100,
    ),
    "default": dict(
        archs=tuple(FAMILY),
        tasks_per_dataset=2,
        seeds=(0, 1),
        zoo_epochs=10,
        keep_epochs=(6, 7, 8, 9, 10),
        fashion_train_per_class=300,
        chunk_size=32,
        tokens_per_chunk=64,
        codebook_size=512,
        hidden=512,
        tokenizer_steps=4000,
        tokenizer_lr=3e-4,
        prior_steps=5000,
        context=64,
        d_model=128,
        layers=3,
        samples=6,
        temperatures=(1.0, 0.8, 0.6),
        eval_per_class=200,
        finetune_train_per_class=200,
    ),
}


def plan(size: dict[str, Any]) -> list[RunConfig]:
    """Every architecture of the size on the same tasks of both datasets."""
    train = TrainConfig(epochs=size["zoo_epochs"], lr=5e-3, batch_size=64)
    runs = []
    for key in size["archs"]:
        arch, kwargs, _ = FAMILY[key]
        common: dict[str, Any] = dict(k=5, arch=arch, arch_kwargs=kwargs, seeds=size["seeds"], train=train, keep_epochs=size["keep_epochs"], max_eval_per_class=None)
        n = size["tasks_per_dataset"]
        runs += subset_runs("digits", n, max_train_per_class=None, **common)
        runs += subset_runs("fashion_mnist", n, max_train_per_class=size["fashion_train_per_class"], **common)
    return runs


def arch_key(arch: str, kwargs: dict[str, Any]) -> str:
    kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}  # recorded by the zoo
    for key, (a, kw, _) in FAMILY.items():
        if a == arch and dict(kw) == kwargs:
            return key
    raise KeyError(f"{arch} {kwargs} is not in the benchmark's family")


def make_generator(kind: str, spec_of: dict[str, Any], conditioner: Any, layout: str, size: dict[str, Any]) -> Generator:
    """The generator of one kind (``"vq-gpt"``: `paramgen.pipelines.igpg`; ``"vae-ddpm"``:
    `paramgen.pipelines.d2nwg` over the same family); the rest of the harness is shared.

    Module initialization draws from the process's generator (``seed=None``), seeded by the run setup.
    """
    normalizer = GlobalScale(log=("*running_var",), fan_in=size.get("fan_in", True))
    if kind == "vq-gpt":
        return igpg(
            spec_of, condition=conditioner, seed=None, chunk_size=None if layout == "model" else size["chunk_size"],
            codebook_size=size["codebook_size"], tokens_per_chunk=size["tokens_per_chunk"], code_dim=size.get("code_dim", 32),
            hidden=size.get("hidden", 256), anneal="exponential", anneal_steps=max(1, size["tokenizer_steps"] // 2), hard=size.get("hard", False),
            context=size["context"], d_model=size["d_model"], layers=size["layers"], heads=4, normalizer=normalizer,
        )  # fmt: skip
    if kind == "vae-ddpm":
        return d2nwg(
            spec_of, condition=conditioner, seed=None, chunk_size=None if layout == "model" else size["chunk_size"], layerwise=True,
            latent_channels=1, latent_length=8, hidden_channels=32, normalizer=normalizer,
        )  # fmt: skip
    raise ValueError(f"components must be 'vq-gpt' or 'vae-ddpm', got {kind!r}")


def _finetune_job(job: dict[str, Any]) -> list[float]:
    """Worker: test accuracy of one initialization at epoch 0 and after one epoch."""
    from paramgen.zoo import evaluate

    task, test = job["task"], job["test"]
    torch.manual_seed(job["seed"])  # the initialization of "random init"; overwritten otherwise
    model = build_model(job["arch"], num_classes=task.num_classes, **job["kwargs"])
    if job["state_dict"] is not None:
        model.load_state_dict(job["state_dict"], strict=True)
    acc0 = evaluate(model, test)[0]
    # The zoo's own training settings, for one epoch.
    snaps = train_classifier(model, task, TrainConfig(epochs=1, lr=5e-3, batch_size=64), seed=job["seed"], keep_epochs=[1], init=False, eval_splits={"test": test})
    return [acc0, snaps[0].metrics["test_acc"]]


def main(argv: Sequence[str] | None = None) -> int:
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--components", choices=("vq-gpt", "vae-ddpm"), default="vq-gpt", help="generator components (default: IGPG's VQ tokens + GPT)")
        p.add_argument("--layout", choices=("model", "layer"), default="model", help="model-wise rows (default) or layer-wise chunks of chunk_size")

    def variant(args: argparse.Namespace) -> str:
        return "".join(f"-{v}" for v, d in ((args.components, "vq-gpt"), (args.layout, "model")) if v != d)

    setup = RunSetup.from_args("cross_arch", __doc__, SIZES, argv, add_arguments=add_arguments, out_suffix=variant)
    args, size_name, size, out, g = setup.args, setup.size_name, setup.size, setup.out, setup.g
    timer = time.perf_counter
    started = setup.started

    # 1. The zoo: every member on every task (unseen members only as a reference).
    runs = plan(size)
    start = timer()
    zoo = build_zoo(out.parent / "zoos" / f"cross_arch-{size_name}", runs, workers=2, progress=False)
    zoo_s = timer() - start
    key_of = {c.spec_id: arch_key(str(c.arch), dict(c.arch_kwargs)) for c in zoo}
    keys = list(size["archs"])
    spec_of = {key_of[sid]: zoo.specs[sid] for sid in zoo.spec_ids}
    seen = [k for k in keys if FAMILY[k][2]]
    unseen = [k for k in keys if not FAMILY[k][2]]
    desc = {key_of[c.spec_id]: c.arch_description for c in zoo}
    task_desc = {c.task: c.task_description for c in zoo}
    datasets: dict[str, Task] = {}
    run_of = {r.task: r for r in runs}
    tasks = {name: load_run_task(run_of[name], datasets) for name in zoo.tasks}
    names = list(tasks)
    tests = {n: capped(t.test, size["eval_per_class"]) for n, t in tasks.items()}
    vals = {n: capped(t.val, size["eval_per_class"]) for n, t in tasks.items()}

    # 2. One generator for the whole family, fitted on the seen members only.
    flat_of = {c.id: zoo.specs[c.spec_id].flatten([zoo.state_dict(c)])[0][0] for c in zoo}  # each checkpoint read once
    train_cps = [c for c in zoo if key_of[c.spec_id] in seen]
    flats = [flat_of[c.id] for c in train_cps]
    archs = [key_of[c.spec_id] for c in train_cps]
    conds = [(c.task_description, c.arch_description) for c in train_cps]
    # Model-wise: tokens_per_chunk tokens per model; layer-wise: per chunk of chunk_size.
    conditioner = ConcatConditioner(TextConditioner(), ArchitectureConditioner())  # IGPG's task text + architecture
    gen = make_generator(args.components, spec_of, conditioner, args.layout, size)
    fam = gen.vectorizer
    start = timer()
    paramgen.fit(gen, flats, conds, archs=archs, tokenizer_steps=size["tokenizer_steps"], prior_steps=size["prior_steps"],
            batch_size=32, tokenizer_lr=size["tokenizer_lr"], prior_lr=1e-3, generator=g(1), progress=False)
    fit_s = timer() - start

    res = Results("cross_arch", start=started, config={"size": size_name, "seed": args.seed, "components": args.components, "layout": args.layout,
                                                        "zoo_checkpoints": len(zoo), "train_checkpoints": len(train_cps), "seen": seen, "unseen": unseen,
                                                        "rows": fam.rows, "chunk_size": fam.width, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})
    res.add("zoo", "all", "build_s", zoo_s)
    res.add("generator", "all", "fit_s", fit_s)

    templates = {k: zoo.model(next(c for c in zoo if key_of[c.spec_id] == k)) for k in keys}

    def accuracy(key: str, flat: torch.Tensor, split: Split) -> torch.Tensor:
        return (predict_many(templates[key], spec_of[key].unflatten_stacked(flat.float()), split) == split.y).float().mean(1)

    n = size["samples"]
    pairs = [(k, t) for k in keys for t in names]
    conds_of = [(task_desc[t], desc[k]) for k, t in pairs]
    archs_of = [k for k, _ in pairs]

    # 3a. The GPT's sampling temperature, chosen on the *validation* splits of seen members.
    # The VAE + DDPM variant samples with DDPM-1000, as its committed rows did.
    options: dict[str, Any] = {"sampler": "ddpm"} if args.components == "vae-ddpm" else {}
    if args.components == "vq-gpt" and len(size["temperatures"]) > 1:
        val_acc = {}
        seen_idx = [i for i, (k, _) in enumerate(pairs) if k in seen]
        for temp in size["temperatures"]:
            draws = gen.sample_flat([conds_of[i] for i in seen_idx], n, archs=[archs_of[i] for i in seen_idx], generator=g(3), temperature=temp)
            assert isinstance(draws, list)  # a family: one vector per sample
            accs = [float(accuracy(pairs[i][0], torch.stack(draws[j * n : (j + 1) * n]), vals[pairs[i][1]]).mean()) for j, i in enumerate(seen_idx)]
            val_acc[temp] = sum(accs) / len(accs)
            res.add("generated", "validation", "val_acc", accs, temperature=temp)
        options["temperature"] = max(val_acc, key=lambda t: val_acc[t])
        logger.info("sampling temperature %s (validation accuracy %s)", options["temperature"], val_acc)
        res.config["temperature"] = options["temperature"]

    # 3b. Generate for every (architecture, task); compare with the originals on test.
    start = timer()
    samples = gen.sample_flat(conds_of, n, archs=archs_of, generator=g(2), **options)
    assert isinstance(samples, list)  # a family: one vector per sample
    sample_s = timer() - start
    res.add("generated", "all", "sample_s_per_model", sample_s / len(samples))
    per: dict[tuple[str, str], list[float]] = {}
    chosen: dict[tuple[str, str], torch.Tensor] = {}
    for i, (k, t) in enumerate(pairs):
        group = "seen" if k in seen else "unseen"
        own = [c for c in zoo if key_of[c.spec_id] == k and c.task == t]
        own_flat = torch.stack([flat_of[c.id] for c in own])
        gen_flat = torch.stack(samples[i * n : (i + 1) * n])
        methods = {"original": own_flat, "generated": gen_flat}
        best = accuracy(k, gen_flat, vals[t]).argmax()
        methods["generated best-of-n (val)"] = gen_flat[best : best + 1]
        chosen[(k, t)] = gen_flat[0]
        if group == "seen":
            methods["reconstruction"] = torch.stack(gen.reconstruct(list(own_flat), archs=[k] * len(own_flat)))  # type: ignore[arg-type]
        for method, w in methods.items():
            acc = accuracy(k, w, tests[t])
            res.add(method, f"{k} | {t}", "test_acc", acc.tolist(), epoch=0, arch=k, group=group)
            per.setdefault((method, k), []).append(float(acc.mean()))
        logger.info("%s %s (%s): original %.3f generated %.3f", k, t, group, per[("original", k)][-1], per[("generated", k)][-1])

    # 4. Initializations fine-tuned for one epoch: generated, random init, other dataset.
    other = {t: next(o for o in names if o.split("/")[0] != t.split("/")[0]) for t in names}
    jobs = []
    for k, t in pairs:
        arch, kwargs, _ = FAMILY[k]
        donor = next(c for c in zoo if key_of[c.spec_id] == k and c.task == other[t] and c.epoch == max(size["keep_epochs"]))
        inits = {"generated": spec_of[k].unflatten(chosen[(k, t)][None].float())[0], "random init": None, "other dataset": zoo.state_dict(donor)}
        for method, sd in inits.items():
            task = load_run_task(attrs.evolve(run_of[t], max_train_per_class=size["finetune_train_per_class"]), datasets)
            jobs.append({"arch": arch, "kwargs": kwargs, "key": k, "task_name": t, "task": task, "test": tests[t], "state_dict": sd, "seed": args.seed, "method": method})
    curves = parallel_map(_finetune_job, jobs, workers=2)
    for job, curve in zip(jobs, curves, strict=True):
        for epoch, acc in zip((0, 1), curve, strict=True):
            group = "seen" if job["key"] in seen else "unseen"
            per.setdefault((f"{job['method']} @{epoch}", job["key"]), []).append(acc)
            res.add(job["method"], f"{job['key']} | {job['task_name']}", "test_acc_finetune", acc, epoch=epoch, arch=job["key"], group=group)

    # 5. Aggregates per architecture and per group (seen / unseen).
    for group, members in (("seen archs", seen), ("unseen archs", unseen)):
        if not members:
            continue
        for (method, k), accs in sorted(per.items()):
            if k in members:
                res.add(method, f"{group}: {k}", "mean_acc", accs)
        for method in sorted({m for m, _ in per}):
            vals_all = [a for (m, k), accs in per.items() if m == method and k in members for a in accs]
            if vals_all:
                res.add(method, group, "mean_acc", vals_all)
        for method in ("generated", "generated best-of-n (val)"):
            rel = [a / o for k in members for a, o in zip(per[(method, k)], per[("original", k)], strict=True)]
            res.add(method, group, "acc_over_original", rel)
            res.add(method, group, "worst_acc_over_original", min(rel))

    path = setup.write(res)
    print(res.table(skip_tasks=[f"{k} | {t}" for k, t in pairs]))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
