"""``python -m benchmarks.cross_arch_layers``: weights for architectures the generator never saw, layer by layer.

Question (issue 23): can a generator that writes each *layer* from a descriptor of it
(layer kind, in / out channels, kernel, relative depth, position in the layer,
architecture text) give better initializations for unseen depths and widths than random
init or than growing the nearest seen member (Net2Net)?

Setting: random depth / width members of the ConvNet family (and, at the default size,
the ResNet family), drawn once from a box of depths and widths: *seen* members (the box's
smallest corner always among them) train the generator; *interpolation* members lie inside
the box of seen depths and widths but were not seen; *extrapolation* members lie outside it
(deeper or wider). Every member is trained on five-class tasks of digits (and, at the
default size, Fashion-MNIST) with `paramgen.zoo` (resumable); held-out members' own
checkpoints are only a reference (``original``).

Layout: `paramgen.layerwise.LayerRowLayout`, rows of ``width`` values in output-channel
order (tokens or latents per layer in proportion to its size), scaled by
`paramgen.layerwise.normalize_rows` (weights times sqrt(fan-in), running variances logged).
Generator: one row at a time, conditioned on ``(task, descriptor)`` through
``ConcatConditioner(OneHotConditioner(tasks), DescriptorConditioner(text=...))``, built by
`paramgen.pipelines.d2nwg` (VAE + latent DDPM, ``--components vae-ddpm``, the default) or
`paramgen.pipelines.igpg` (VQ tokens + GPT, ``--components vq-gpt``) over a one-row
spec: only the components differ.

Initializations of each held-out (member, task), per pipeline seed:
- ``generated``: every row sampled from its descriptor at noise level ``noise_scale``
  (`sample_rows`: deterministic DDIM from ``x_T`` times ``noise_scale``, or the GPT's
  softmax temperature, greedy at 0); ``random init``: PyTorch's
  default initialization; ``net2net``: the nearest seen member that can grow into the
  target (its last checkpoint on the same task and seed), grown with
  `paramgen.models.net2net` (function-preserving, no noise).
- each also ``+ bn-recal``: `paramgen.models.batchnorm.recalibrate_batchnorm` on
  ``recal_batches`` training batches.
Test accuracy at epoch 0 (both) and after one epoch of fine-tuning (the ``+ bn-recal``
initializations; the zoo's optimizer settings). With ``align`` the seen ConvNets'
channels are lined up first (`paramgen.models.permute.align_convnets`; functions
unchanged). Diagnostics on the seen members: ``reconstruction`` (tokenizer alone) and
``generated`` (sampled for a member the generator saw), the latter also on the tasks'
*validation* split at every noise level of ``val_noise_scales`` (rows ``generated tau=...``,
metric ``val_acc``: the kind of evidence that chose ``noise_scale``, docs/cross_arch.md).
Paired differences ``generated - random init`` and ``generated - net2net`` (same
recalibration) per group, with a seed x item clustered bootstrap interval and a t-interval
over per-seed means. Nothing is selected on test data: every setting is fixed in `SIZES`
(chosen on validation splits of seen members in quick-size trials), no split is used to
choose among samples.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

import paramgen
from benchmarks.common import Results, RunSetup, capped, clustered_bootstrap, paired_seed_ci, parallel_map
from paramgen.conditioners import ConcatConditioner
from paramgen.conditioners.descriptor import AlignedDescriptorConditioner, DescriptorConditioner
from paramgen.conditioners.index import OneHotConditioner
from paramgen.data import Task
from paramgen.layerwise import LayerRowLayout, denormalize_rows, normalize_rows
from paramgen.models import build_model
from paramgen.models.batchnorm import recalibrate_batchnorm
from paramgen.models.net2net import can_grow, grow_convnet, grow_resnet
from paramgen.models.permute import align_convnets
from paramgen.pipelines import d2nwg, igpg
from paramgen.priors import DiffusionPrior
from paramgen.spec import ParamSpec
from paramgen.zoo import RunConfig, TrainConfig, build_zoo, evaluate, load_run_task
from paramgen.zoo.build import subset_runs

__all__ = ["main", "SIZES", "Member", "plan_members", "nearest_seen", "make_generator", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("generated", "random init", "net2net")

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        families={"convnet": dict(box_depths=(2, 3), box_widths=(4, 6, 8), extra_depths=(4,), extra_widths=(12,), seen=4, interpolation=2, extrapolation=2)},
        plan_seed=0,
        datasets=("digits",),
        tasks_per_dataset=1,
        seeds=(0, 1),
        zoo_epochs=6,
        keep_epochs=(5, 6),
        fashion_train_per_class=150,
        width=32,
        align=True,
        pack=False,
        aligned_features=True,
        text=False,
        tokens_per_chunk=16,
        codebook_size=256,
        hidden=256,
        tokenizer_steps=800,
        prior_steps=2000,
        d_model=64,
        layers=2,
        latent_length=8,
        vae_hidden=32,
        unet_channels=32,
        noise_scale=0.0,
        val_noise_scales=(0.0, 0.3, 1.0),
        recal_batches=10,
        eval_per_class=100,
        finetune_train_per_class=100,
    ),
    "default": dict(
        # ConvNets only (the family that is channel-aligned), 20 members. A first default with 26
        # ConvNet and ResNet members, a 64-channel VAE / UNet and 2000 + 6000 steps left the
        # generator underfit: its seen members were generated at chance on the validation split
        # (docs/results/cross_arch_layers-default-run1.json, docs/cross_arch.md).
        families={
            "convnet": dict(box_depths=(2, 3), box_widths=(4, 5, 6, 7, 8), extra_depths=(4,), extra_widths=(10, 12), seen=6, interpolation=4, extrapolation=10),
        },
        plan_seed=0,
        datasets=("digits", "fashion_mnist"),
        tasks_per_dataset=1,
        seeds=(0, 1, 2),
        zoo_epochs=6,
        keep_epochs=(4, 5, 6),
        fashion_train_per_class=150,
        zoo_eval_per_class=200,
        width=32,
        align=True,
        pack=False,
        aligned_features=True,
        text=False,
        tokens_per_chunk=16,
        codebook_size=256,
        hidden=256,
        tokenizer_steps=1500,
        prior_steps=5000,
        d_model=64,
        layers=2,
        latent_length=8,
        vae_hidden=32,
        unet_channels=32,
        noise_scale=0.0,
        val_noise_scales=(0.0, 0.3, 1.0),
        recal_batches=10,
        eval_per_class=200,
        finetune_train_per_class=200,
    ),
}


@attrs.frozen
class Member:
    """One architecture of the space: its family, depth, base width and split."""

    family: str
    depth: int
    width: int
    split: str  # "seen", "interpolation" or "extrapolation"

    @property
    def key(self) -> str:
        return f"{self.family}-d{self.depth}-w{self.width}"

    @property
    def arch(self) -> str:
        return self.family

    @property
    def kwargs(self) -> dict[str, Any]:
        if self.family == "convnet":
            return {"channels": [self.width] + [2 * self.width] * (self.depth - 1)}
        return {"depth": self.depth, "widths": [self.width, 2 * self.width, 4 * self.width], "in_channels": 1}


def plan_members(families: dict[str, dict[str, Any]], *, seed: int) -> list[Member]:
    """Seen, interpolation and extrapolation members of each family, drawn once with ``seed``.

    Inside the box of ``box_depths`` x ``box_widths``: the smallest corner and ``seen - 1``
    random others are seen, ``interpolation`` of the rest are held out; ``extrapolation``
    members are drawn from the grid extended by ``extra_depths`` / ``extra_widths``, outside the box.
    """
    rng = random.Random(seed)
    out: list[Member] = []
    for family, f in families.items():
        box = list(itertools.product(f["box_depths"], f["box_widths"]))
        corner = (min(f["box_depths"]), min(f["box_widths"]))
        rest = [c for c in box if c != corner]
        rng.shuffle(rest)
        if f["seen"] - 1 + f["interpolation"] > len(rest):
            raise ValueError(f"{family}: the box holds {len(box)} members, asked for {f['seen']} seen + {f['interpolation']} interpolation")
        seen = [corner, *rest[: f["seen"] - 1]]
        interp = rest[f["seen"] - 1 : f["seen"] - 1 + f["interpolation"]]
        outside = [c for c in itertools.product((*f["box_depths"], *f["extra_depths"]), (*f["box_widths"], *f["extra_widths"])) if c not in box]
        rng.shuffle(outside)
        extrap = outside[: f["extrapolation"]]
        for split, cells in (("seen", seen), ("interpolation", interp), ("extrapolation", extrap)):
            out += [Member(family, d, w, split) for d, w in sorted(cells)]
    return out


def nearest_seen(target: Member, members: Sequence[Member]) -> Member:
    """The largest seen member of ``target``'s family that grows into it (Net2Net widen / deepen)."""

    def grows(src: Member) -> bool:
        if src.family != target.family:
            return False
        if src.family == "convnet":
            return can_grow(src.kwargs["channels"], target.kwargs["channels"])
        return src.depth <= target.depth and src.width <= target.width

    options = [m for m in members if m.split == "seen" and grows(m)]
    if not options:
        raise ValueError(f"no seen member grows into {target.key}")
    return max(options, key=lambda m: (m.depth * m.width, m.depth, m.key))


def make_generator(kind: str, conditioner: Any, size: dict[str, Any]) -> paramgen.Generator:
    """The row generator (``"vq-gpt"``: `paramgen.pipelines.igpg`; ``"vae-ddpm"``: `paramgen.pipelines.d2nwg`) over a one-row spec."""
    row = ParamSpec.from_state_dict({"row": torch.zeros(size["width"])})
    if kind == "vq-gpt":
        return igpg(
            row, condition=conditioner, seed=None, chunk_size=None, codebook_size=size["codebook_size"], tokens_per_chunk=size["tokens_per_chunk"],
            code_dim=size.get("code_dim", 16), hidden=size["hidden"], anneal_steps=max(1, size["tokenizer_steps"] // 2), context=None, d_model=size["d_model"],
            layers=size["layers"], heads=4, normalizer=None,
        )  # fmt: skip
    if kind == "vae-ddpm":
        return d2nwg(
            row, condition=conditioner, seed=None, latent_channels=2, latent_length=size["latent_length"], hidden_channels=size["vae_hidden"],
            base_channels=size["unet_channels"], channel_mults=(1, 2), normalizer=None,
        )  # fmt: skip
    raise ValueError(f"components must be 'vq-gpt' or 'vae-ddpm', got {kind!r}")


def sample_rows(gen: paramgen.Generator, conds: Sequence[Any], *, noise_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One row per condition, ``(B, C)``, sampled at a lowered noise level.

    A latent DDPM (`paramgen.priors.DiffusionPrior`): deterministic DDIM (``eta = 0``, the
    prior's steps) from ``x_T`` scaled by ``noise_scale`` (the prior's ``noise_scale``
    option; 0: every row from ``x_T = 0``, close to the mode of its condition; 1: an
    ordinary sample). A GPT prior: softmax
    temperature ``noise_scale``, greedy (``top_k=1``) at 0.

    Rows of one member are sampled independently; a lower noise level makes them agree
    with each other more (each is nearer its condition's typical row).
    """
    if not 0.0 <= noise_scale <= 1.0:
        raise ValueError(f"noise_scale must lie in [0, 1], got {noise_scale!r}")
    if gen.discrete:
        kw: dict[str, Any] = {"top_k": 1} if noise_scale == 0 else {"temperature": noise_scale}
        out = gen.sample_flat(list(conds), 1, generator=generator, **kw)
        assert isinstance(out, torch.Tensor)
        return out
    if not isinstance(gen.prior, DiffusionPrior):
        raise TypeError(f"sample_rows: expected a GPT or a paramgen.priors.DiffusionPrior prior, got {type(gen.prior).__name__}")
    # One prior call for every row (batch_size): the rows share one draw of x_T, scaled by the prior.
    out = gen.sample_flat(list(conds), 1, generator=generator, batch_size=len(conds), sampler="ddim", eta=0.0, noise_scale=noise_scale)
    assert isinstance(out, torch.Tensor)
    if not torch.isfinite(out).all():
        raise FloatingPointError("the prior produced NaN or Inf rows")
    return out


def _train_batches(task: Task, n: int, seed: int, batch_size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(task.train.y), generator=g)
    x = task.train.x
    assert isinstance(x, torch.Tensor)
    return [x[order[i : i + batch_size]] for i in range(0, min(len(order), n * batch_size), batch_size)]


def _finetune_job(job: dict[str, Any]) -> list[float]:
    """Worker: test accuracy of one initialization at epoch 0 and (with ``finetune``) after one epoch.

    In training mode BatchNorm normalizes with batch statistics, so fine-tuning a network
    with or without recalibrated running statistics differs only in where the running
    averages start: only the recalibrated initializations are fine-tuned.
    """
    from paramgen.zoo import evaluate, train_classifier

    model = build_model(job["arch"], num_classes=job["task"].num_classes, **job["kwargs"])
    model.load_state_dict(job["state_dict"], strict=True)
    acc0 = evaluate(model, job["test"])[0]
    if not job["finetune"]:
        return [acc0]
    snaps = train_classifier(model, job["task"], TrainConfig(epochs=1, lr=5e-3, batch_size=64), seed=job["seed"], keep_epochs=[1], init=False, eval_splits={"test": job["test"]})
    return [acc0, snaps[0].metrics["test_acc"]]


def main(argv: Sequence[str] | None = None) -> int:
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--components", choices=("vae-ddpm", "vq-gpt"), default="vae-ddpm", help="generator components (default: D2NWG's VAE + latent DDPM; vq-gpt: IGPG's VQ tokens + GPT)")
        p.add_argument("--workers", type=int, default=2, help="processes for the zoo and fine-tuning")
        p.add_argument("--holdout-seen", default=None, metavar="MEMBER",
                       help="validation: leave this seen member (e.g. convnet-d2-w6) out of the generator's training and report its generated "
                            "accuracy on the validation split at every noise level (rows 'validation member'); the settings were chosen so")  # fmt: skip

    setup = RunSetup.from_args(
        "cross_arch_layers",
        __doc__,
        SIZES,
        argv,
        add_arguments=add_arguments,
        out_suffix=lambda a: ("" if a.components == "vae-ddpm" else f"-{a.components}") + ("" if a.holdout_seen is None else "-holdout"),
    )
    args, size_name, size, out = setup.args, setup.size_name, setup.size, setup.out
    timer = time.perf_counter
    members = plan_members(size["families"], seed=size["plan_seed"])
    by_key = {m.key: m for m in members}
    held = [m for m in members if m.split != "seen"]
    holdout = args.holdout_seen
    if holdout is not None and (holdout not in by_key or by_key[holdout].split != "seen"):
        raise ValueError(f"--holdout-seen must name a seen member, one of {[m.key for m in members if m.split == 'seen']}, got {holdout!r}")
    logger.info("members: %s", {s: [m.key for m in members if m.split == s] for s in ("seen", "interpolation", "extrapolation")})

    # 1. The zoo: every member on every task and seed (held-out members only as a reference).
    train = TrainConfig(epochs=size["zoo_epochs"], lr=5e-3, batch_size=64)
    runs: list[RunConfig] = []
    for m in members:
        common: dict[str, Any] = dict(k=5, arch=m.arch, arch_kwargs=m.kwargs, seeds=size["seeds"], train=train, keep_epochs=size["keep_epochs"], max_eval_per_class=size.get("zoo_eval_per_class"))
        for ds in size["datasets"]:
            cap = size["fashion_train_per_class"] if ds == "fashion_mnist" else None
            runs += subset_runs(ds, size["tasks_per_dataset"], max_train_per_class=cap, **common)
    start = timer()
    zoo = build_zoo(out.parent / "zoos" / f"cross_arch_layers-{size_name}", runs, workers=args.workers, progress=False)
    zoo_s = timer() - start

    def key_of(c: Any) -> str:
        return next(m.key for m in members if m.arch == c.arch and {k: v for k, v in c.arch_kwargs.items() if k != "num_classes"} == m.kwargs)

    ckpt_key = {c.id: key_of(c) for c in zoo}
    names = sorted(zoo.tasks)
    datasets: dict[str, Task] = {}
    run_of = {r.task: r for r in runs}
    tasks = {t: load_run_task(run_of[t], datasets) for t in names}
    tests = {t: capped(tasks[t].test, size["eval_per_class"]) for t in names}
    vals = {t: capped(tasks[t].val, size["eval_per_class"]) for t in names}
    ft_tasks = {t: load_run_task(attrs.evolve(run_of[t], max_train_per_class=size["finetune_train_per_class"]), datasets) for t in names}
    templates = {m.key: build_model(m.arch, num_classes=5, **m.kwargs) for m in members}
    layouts = {k: LayerRowLayout(t, width=size["width"], pack=size["pack"]) for k, t in templates.items()}

    res = Results("cross_arch_layers", start=setup.started, config={
        "size": size_name, "seed": args.seed, "components": args.components, "holdout_seen": holdout, "zoo_checkpoints": len(zoo),
        "members": {m.key: {"split": m.split, "kwargs": m.kwargs} for m in members}, "tasks": names,
        "rows_per_member": {k: v.rows for k, v in layouts.items()},
        **{k: v for k, v in size.items() if k != "families"}, "families": size["families"],
    })  # fmt: skip
    res.add("zoo", "all", "build_s", zoo_s)
    last = max(size["keep_epochs"])
    # acc[(method, variant, epoch)][(seed, member, task)] = accuracy
    acc: dict[tuple[str, str, int], dict[tuple[int, str, str], float]] = {}
    # val_acc[label][(seed, member, task)]: seen members generated at each noise level, validation split
    val_acc: dict[str, dict[tuple[int, str, str], float]] = {}
    fit_times, sample_times = [], []
    for seed in size["seeds"]:
        # 2. One row generator per pipeline seed, fitted on the seen members' checkpoints of that seed.
        torch.manual_seed(args.seed * 1000 + seed)  # module initialization of the components
        g = torch.Generator().manual_seed(args.seed * 1000 + seed)
        train_cps = [c for c in zoo if c.seed == seed and by_key[ckpt_key[c.id]].split == "seen" and ckpt_key[c.id] != holdout]
        states = {c.id: zoo.state_dict(c) for c in train_cps}
        if size["align"]:
            # Line up the channels of the seen ConvNets (a permutation: same functions), narrowest
            # first, so that channel c of a layer means much the same in every member.
            order = sorted((c for c in train_cps if c.arch == "convnet"), key=lambda c: (by_key[ckpt_key[c.id]].depth, by_key[ckpt_key[c.id]].width, c.id))
            for c, net in zip(order, align_convnets([zoo.model(c) for c in order]), strict=True):  # type: ignore[misc]
                states[c.id] = net.state_dict()
        rows, conds = [], []
        for c in train_cps:
            lay = layouts[ckpt_key[c.id]]
            rows.append(normalize_rows(lay.flatten(states[c.id]).values.float(), lay.descriptors, lay.mask))
            conds += [(c.task, d) for d in lay.descriptors]
        flat = torch.cat(rows)  # (M_rows, C)
        descriptor = (AlignedDescriptorConditioner if size["aligned_features"] else DescriptorConditioner)(text=size["text"])
        conditioner = ConcatConditioner(OneHotConditioner(names), descriptor)
        gen = make_generator(args.components, conditioner, size)
        start = timer()
        paramgen.fit(gen, flat, conds, tokenizer_steps=size["tokenizer_steps"], prior_steps=size["prior_steps"], batch_size=64,
                     tokenizer_lr=1e-3, prior_lr=1e-3, generator=g, progress=False)  # fmt: skip
        fit_times.append(timer() - start)
        logger.info("seed %d: generator fitted on %d rows in %.1f s", seed, flat.shape[0], fit_times[-1])
        # What the tokenizer alone keeps: seen members' last checkpoints, encoded and decoded.
        for c in train_cps:
            if c.epoch != last:
                continue
            k = ckpt_key[c.id]
            lay, m = layouts[k], by_key[k]
            z = normalize_rows(lay.flatten(states[c.id]).values.float(), lay.descriptors, lay.mask)
            rec = gen.reconstruct(z)
            assert isinstance(rec, torch.Tensor)
            model = build_model(m.arch, num_classes=5, **m.kwargs)
            model.load_state_dict(lay.unflatten(denormalize_rows(rec, lay.descriptors, lay.mask), extras=lay.flatten(states[c.id]).extras))
            acc.setdefault(("reconstruction", "", 0), {})[(seed, k, c.task)] = evaluate(model, tests[c.task])[0]
            acc.setdefault(("original", "", 0), {})[(seed, k, c.task)] = evaluate(zoo.model(c), tests[c.task])[0]
            # Generated for a *seen* member: can row-by-row sampling give a working network at all?
            # On the task's validation split at every noise level of the sweep (what chose
            # ``noise_scale``), and on its test split at ``noise_scale``.
            batches = _train_batches(tasks[c.task], size["recal_batches"], seed)
            for tau in size["val_noise_scales"]:
                sampled = sample_rows(gen, [(c.task, d) for d in lay.descriptors], noise_scale=tau, generator=torch.Generator().manual_seed(seed))
                model.load_state_dict(lay.unflatten(denormalize_rows(sampled.float(), lay.descriptors, lay.mask)))
                val_acc.setdefault(f"generated tau={tau:g}", {})[(seed, k, c.task)] = evaluate(model, vals[c.task])[0]
                val_acc.setdefault(f"generated tau={tau:g} + bn-recal", {})[(seed, k, c.task)] = evaluate(recalibrate_batchnorm(model, batches), vals[c.task])[0]
            sampled = sample_rows(gen, [(c.task, d) for d in lay.descriptors], noise_scale=size["noise_scale"], generator=g)
            model.load_state_dict(lay.unflatten(denormalize_rows(sampled.float(), lay.descriptors, lay.mask)))
            acc.setdefault(("generated", "", 0), {})[(seed, k, c.task)] = evaluate(model, tests[c.task])[0]
            acc.setdefault(("generated", "+ bn-recal", 0), {})[(seed, k, c.task)] = evaluate(recalibrate_batchnorm(model, batches), tests[c.task])[0]

        # Validation (--holdout-seen): a seen member left out of training, generated at every noise level.
        for c in (c for c in zoo if c.seed == seed and ckpt_key[c.id] == holdout and c.epoch == last):
            m = by_key[holdout]
            lay, model = layouts[holdout], build_model(m.arch, num_classes=5, **m.kwargs)
            batches = _train_batches(tasks[c.task], size["recal_batches"], seed)
            val_acc.setdefault("validation member: original", {})[(seed, holdout, c.task)] = evaluate(zoo.model(c), vals[c.task])[0]
            for tau in size["val_noise_scales"]:
                sampled = sample_rows(gen, [(c.task, d) for d in lay.descriptors], noise_scale=tau, generator=torch.Generator().manual_seed(seed))
                model.load_state_dict(lay.unflatten(denormalize_rows(sampled.float(), lay.descriptors, lay.mask)))
                val_acc.setdefault(f"validation member: generated tau={tau:g}", {})[(seed, holdout, c.task)] = evaluate(model, vals[c.task])[0]
                val_acc.setdefault(f"validation member: generated tau={tau:g} + bn-recal", {})[(seed, holdout, c.task)] = evaluate(recalibrate_batchnorm(model, batches), vals[c.task])[0]

        # 3. Initializations of every held-out (member, task).
        jobs = []
        start = timer()
        for m in held:
            lay = layouts[m.key]
            for t in names:
                own = next(c for c in zoo if ckpt_key[c.id] == m.key and c.task == t and c.seed == seed and c.epoch == last)
                src = nearest_seen(m, members)
                donor = zoo.model(next(c for c in zoo if ckpt_key[c.id] == src.key and c.task == t and c.seed == seed and c.epoch == last))
                grow_g = torch.Generator().manual_seed(seed)
                grown = grow_convnet(donor, m.kwargs["channels"], generator=grow_g) if m.family == "convnet" else grow_resnet(donor, depth=m.depth, widths=m.kwargs["widths"], generator=grow_g)  # type: ignore[arg-type]
                sampled = sample_rows(gen, [(t, d) for d in lay.descriptors], noise_scale=size["noise_scale"], generator=g)
                generated = lay.unflatten(denormalize_rows(sampled.float(), lay.descriptors, lay.mask).to(torch.float32))
                torch.manual_seed(args.seed * 1000 + seed)
                random_init = build_model(m.arch, num_classes=5, **m.kwargs).state_dict()
                batches = _train_batches(tasks[t], size["recal_batches"], seed)
                inits = {"generated": generated, "random init": random_init, "net2net": grown.state_dict()}
                acc.setdefault(("original", "", 0), {})[(seed, m.key, t)] = evaluate(zoo.model(own), tests[t])[0]  # the member's own checkpoint
                for method, sd in inits.items():
                    model = build_model(m.arch, num_classes=5, **m.kwargs)
                    model.load_state_dict(sd)
                    recal = recalibrate_batchnorm(model, batches).state_dict()
                    for variant, state in (("", sd), ("+ bn-recal", recal)):
                        jobs.append({"arch": m.arch, "kwargs": m.kwargs, "task": ft_tasks[t], "test": tests[t], "state_dict": {k: v.clone() for k, v in state.items()},
                                     "seed": seed, "item": (seed, m.key, t), "method": method, "variant": variant,
                                     "finetune": variant == "+ bn-recal"})  # fmt: skip
        sample_times.append(timer() - start)
        for job, curve in zip(jobs, parallel_map(_finetune_job, jobs, workers=args.workers), strict=True):
            for epoch, a in enumerate(curve):
                acc.setdefault((job["method"], job["variant"], epoch), {})[job["item"]] = a

    res.add("generator", "all", "fit_s", fit_times)
    res.add("generator", "all", "init_s_per_seed", sample_times)
    res.items = {f"{m} {v}".strip() + f" @{e}": [{"seed": s, "member": k, "task": t, "split": by_key[k].split, "acc": a} for (s, k, t), a in v_.items()] for (m, v, e), v_ in acc.items()}
    res.items.update({f"{label} (val)": [{"seed": s, "member": k, "task": t, "split": "seen", "acc": a} for (s, k, t), a in v_.items()] for label, v_ in val_acc.items()})

    # 4. Rows per group: means over items, and paired differences over seeds x items.
    seeds = list(size["seeds"])
    seen_items = [(s, k, t) for (s, k, t) in acc[("reconstruction", "", 0)]]
    for method, variant in (("original", ""), ("reconstruction", ""), ("generated", ""), ("generated", "+ bn-recal")):
        res.add(f"{method} {variant}".strip(), "seen", "test_acc", [acc[(method, variant, 0)][i] for i in seen_items], epoch=0)
    for label, vals_by_item in val_acc.items():
        if label.startswith("validation member: "):
            res.add(label.removeprefix("validation member: "), f"validation member {holdout}", "val_acc", list(vals_by_item.values()), epoch=0)
        else:
            res.add(label, "seen", "val_acc", [vals_by_item[i] for i in seen_items], epoch=0)
    for split in ("interpolation", "extrapolation"):
        keys = [(k, t) for k in (m.key for m in held if m.split == split) for t in names]
        if not keys:
            continue
        for (method, variant, epoch), by_item in sorted(acc.items()):
            if method == "reconstruction":
                continue
            res.add(f"{method} {variant}".strip(), split, "test_acc", [by_item[(s, k, t)] for s in seeds for k, t in keys], epoch=epoch)
        for variant, epochs in (("", (0,)), ("+ bn-recal", (0, 1))):
            for epoch in epochs:
                gen_v = acc[("generated", variant, epoch)]
                for base in ("random init", "net2net"):
                    base_v = acc[(base, variant, epoch)]
                    a = [[gen_v[(s, k, t)] for k, t in keys] for s in seeds]  # (K, N)
                    b = [[base_v[(s, k, t)] for k, t in keys] for s in seeds]
                    d, lo, hi = clustered_bootstrap(a, b, seed=args.seed)
                    ds, slo, shi = paired_seed_ci([sum(r) / len(r) for r in a], [sum(r) / len(r) for r in b])
                    row = res.add(f"generated - {base} {variant}".strip(), split, "paired_diff", d, epoch=epoch, seed_ci=[slo, shi], n_items=len(keys), n_seeds=len(seeds))
                    row["ci_low"], row["ci_high"] = lo, hi  # the seed x item bootstrap interval
    path = setup.write(res)
    print(res.table())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
