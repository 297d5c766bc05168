"""One measurement of ``benchmarks.scale`` in a fresh process (a warm process hides memory growth).

    python -m benchmarks.scale_child sample MODEL.safetensors OUT.json --mode file|dict [...]
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m benchmarks.scale_child fit OUT.json [...]

``sample``: build an *untrained* chunk-wise generator over MODEL's layout (speed only:
untrained weights cost the same to run), then time one whole-model ``sample`` and
measure its peak-RSS growth from just before the call (the generator is already built).
``fit``: time tokenizer and prior steps of the ``modelzoo`` generator configuration on
random inputs of the zoo's shapes. Either prints one JSON line (rank 0 only).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["speed_generator", "sample_run", "fit_run"]


def speed_generator(path: str | os.PathLike, *, chunk_size: int, vae_channels: int, prior_channels: int) -> Any:
    """An untrained `ChunkwiseGenerator` over the layout of the checkpoint at ``path``, ready to sample."""
    from paramgen.chunks import ChunkLayout, spec_from_safetensors
    from paramgen.normalize import ChunkStats

    layout = ChunkLayout(spec_from_safetensors(path), chunk_size)
    gen = build_chunkwise(layout, vae_channels=vae_channels, prior_channels=prior_channels)
    # Untrained: unit statistics and the freshly initialized networks stand in for fitted ones
    # (the library has no public "untrained but samplable" switch; a speed test needs no more).
    t = len(layout.tensors)
    gen.stats = ChunkStats(layout)
    gen.stats.load_state_dict({"mean": torch.zeros(t, dtype=torch.float64), "std": torch.full((t,), 0.02, dtype=torch.float64)})
    gen.generator.fitted = True
    for part in (gen.generator.tokenizer, gen.generator.prior, gen.generator.conditioner):
        part.eval()
    return gen


def build_chunkwise(layout: Any, *, vae_channels: int, prior_channels: int, timesteps: int = 1000) -> Any:
    """The D2NWG chunk-index generator of this harness: a chunk VAE and a latent DDPM on chunk positions."""
    from paramgen.pipelines import chunkwise

    return chunkwise(layout, seed=None, hidden_channels=vae_channels, base_channels=prior_channels, timesteps=timesteps)


def sample_run(args: argparse.Namespace) -> dict[str, Any]:
    """Time one whole-model ``sample`` on ``args.device``; peak host-RSS growth (and, on CUDA,
    peak device-memory growth) from just before the call."""
    from benchmarks.common import peak_rss_growth

    device = torch.device(args.device)
    gen = speed_generator(args.model, chunk_size=args.chunk_size, vae_channels=args.vae_channels, prior_channels=args.prior_channels).to(device)
    out = Path(args.result).with_suffix(".sample.safetensors") if args.mode == "file" else None
    kwargs = dict(out=out, batch_size=args.batch_size, generator=torch.Generator(device).manual_seed(args.seed), sampler="ddim", steps=args.steps)
    if device.type == "cuda":  # warm-up: one batch, so CUDA's lazy init and kernel selection are not timed
        gen.sample_chunks(range(min(args.batch_size, gen.layout.num_chunks)), generator=torch.Generator(device).manual_seed(args.seed), sampler="ddim", steps=args.steps)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        device_before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    try:
        result, grew = peak_rss_growth(gen.sample, **kwargs)
    except RuntimeError as e:  # a kernel without /proc/self/clear_refs (e.g. some sandboxes): time only
        if "clear_refs" not in str(e):
            raise
        result, grew = gen.sample(**kwargs), None
    seconds = time.perf_counter() - start  # sample() ends with the last batch copied to the host: synchronized
    numel = gen.layout.numel
    del result
    if out is not None:
        out.unlink()
    record: dict[str, Any] = {"numel": numel, "chunks": gen.layout.num_chunks, "seconds": seconds, "grew_bytes": grew, "fp32_bytes": 4 * numel, "device": str(device)}
    if device.type == "cuda":
        record["device_grew_bytes"] = torch.cuda.max_memory_allocated(device) - device_before
    return record


class _StepClock:
    """A tracker that notes when each logged step of each stage ended (``log_every=1``)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def log_params(self, params: Any) -> None:
        pass

    def log_metrics(self, metrics: Any, *, step: int | None = None) -> None:
        stage = next(iter(metrics)).split("/")[0]
        self.times.setdefault(stage, []).append(time.perf_counter())

    def log_artifact(self, path: Any) -> None:
        pass

    def close(self) -> None:
        pass


def fit_run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Steps/s of the modelzoo generator (VAE + ImageSetConditioner + DiffusionPrior) on random inputs."""
    from paramgen import ParamSpec
    from paramgen.models import build_model
    from paramgen.pipelines import d2nwg
    from paramgen.pipelines.d2nwg import fit_config
    from paramgen.training import fit

    torch.manual_seed(0)
    spec = ParamSpec.from_module(build_model("convnet", num_classes=5, channels=[8, 16]))  # the zoo's CNN
    # modelzoo's generator over MobileNetV2's 1280 features (benchmarks.modelzoo.make_generator)
    gen = d2nwg(spec, condition="dataset", feature_dim=1280, seed=None, hidden_channels=args.vae_channels).to(args.device)
    g = torch.Generator().manual_seed(1)
    m = 256  # checkpoints; 16 tasks of 5 classes x 5 shots of 1280-d features
    flat = 0.1 * torch.randn(m, spec.numel, generator=g).abs() + 1e-3  # positive: running_var is log-normalized
    feats = [torch.randn(5, 5, 1280, generator=g) for _ in range(16)]
    conds = [feats[i % 16] for i in range(m)]
    clock = _StepClock()
    config = fit_config(tokenizer_steps=args.steps, prior_steps=args.steps, precision=args.precision, seed=args.seed, log_every=1, progress=False)
    fit(gen, flat, conds, config=config, tasks=[str(i % 16) for i in range(m)], tracker=clock)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    # steps/s from the first logged step to the last: excludes start-up and the first step's warm-up
    rate = {stage: (len(t) - 1) / (t[-1] - t[0]) for stage, t in clock.times.items() if stage in ("tokenizer", "prior")}
    return {"tokenizer_steps_per_s": rate["tokenizer"], "prior_steps_per_s": rate["prior"], "world": int(os.environ.get("WORLD_SIZE", "1"))}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("model")
    s.add_argument("result")
    s.add_argument("--mode", choices=("file", "dict"), required=True)
    s.add_argument("--chunk-size", type=int, default=4096)
    s.add_argument("--vae-channels", type=int, default=32)
    s.add_argument("--prior-channels", type=int, default=32)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit")
    f.add_argument("result")
    f.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    f.add_argument("--steps", type=int, default=50)
    f.add_argument("--vae-channels", type=int, default=64)
    f.add_argument("--seed", type=int, default=0)
    for q in (s, f):
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = sample_run(args) if args.command == "sample" else fit_run(args)
    if result is not None:
        Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
