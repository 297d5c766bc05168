"""The device contract on a real GPU (marker ``gpu``; skipped without CUDA).

Run on a GPU machine with ``pytest -m gpu tests/gpu``: fit + sample + save/load of the
VAE+DDPM, VQ+GPT and KDE generators on CUDA, bf16 autocast, a CPU-saved generator sampled
on CUDA and a CUDA-saved one on the CPU, and the same seed giving the same samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paramgen import Generator, ModelVectorizer, ParamSpec, PerTaskZScore
from paramgen.conditioners import IndexConditioner
from paramgen.priors import DiffusionPrior, GPTPrior, KDEPrior
from paramgen.tokenizers import GumbelVQTokenizer, IdentityTokenizer, VAETokenizer
from paramgen.training import FitConfig, fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TASKS = ["a", "b", "c"]


def zoo() -> tuple[ParamSpec, torch.Tensor, list[str]]:
    spec = ParamSpec.from_module(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3)))
    g = torch.Generator().manual_seed(0)
    tasks = [TASKS[i % 3] for i in range(48)]
    flat = torch.randn(48, spec.numel, generator=g) * 0.1 + torch.tensor([TASKS.index(t) for t in tasks])[:, None].float()
    return spec, flat, tasks


def build(kind: str, spec: ParamSpec) -> Generator:
    torch.manual_seed(0)
    cond = IndexConditioner(TASKS, dim=8)
    if kind == "vae-ddpm":
        tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=8, hidden_channels=16, num_down=1, input_noise=0.01)
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=8, base_channels=16, channel_mults=(1, 2), timesteps=100, cond_dropout=0.1)
    elif kind == "vq-gpt":
        tok = GumbelVQTokenizer(rows=1, width=spec.numel, codebook_size=32, tokens_per_chunk=4, code_dim=8, hidden=32)
        prior = GPTPrior(vocab_size=32, length=tok.tokens_shape[0], cond_dim=8, d_model=32, layers=2, heads=2)
    else:
        tok = IdentityTokenizer(rows=1, width=spec.numel)
        prior = KDEPrior()
    return Generator(vectorizer=ModelVectorizer(spec), tokenizer=tok, prior=prior, conditioner=cond, normalizer=PerTaskZScore())


def sample(gen: Generator, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return gen.sample_flat(TASKS, n=2, generator=g, tasks=TASKS)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["vae-ddpm", "vq-gpt", "kde"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_sample_save_load_on_cuda(kind: str, precision: str, tmp_path: Path) -> None:
    spec, flat, tasks = zoo()
    gen = build(kind, spec).to("cuda")
    fit(gen, flat, tasks, tasks=tasks, config=FitConfig(tokenizer_steps=30, prior_steps=30, batch_size=16, precision=precision, progress=False))  # type: ignore[arg-type]
    assert gen.device.type == "cuda"
    a, b = sample(gen, 0, "cuda"), sample(gen, 0, "cuda")
    assert a.device.type == "cuda" and torch.isfinite(a).all() and torch.equal(a, b)
    cpu_g = gen.sample_flat(TASKS, n=1, generator=torch.Generator().manual_seed(0), tasks=TASKS)  # a CPU generator works too
    assert cpu_g.device.type == "cuda"  # type: ignore[union-attr]
    gen.save_pretrained(tmp_path / "g")
    on_cpu = Generator.from_pretrained(tmp_path / "g")
    assert on_cpu.device.type == "cpu"
    back = Generator.from_pretrained(tmp_path / "g", device="cuda")
    assert torch.equal(sample(back, 0, "cuda"), a)  # same seed, same device, after save/load
    assert torch.isfinite(sample(on_cpu, 0, "cpu")).all()


def test_a_cpu_saved_generator_samples_on_cuda(tmp_path: Path) -> None:
    spec, flat, tasks = zoo()
    gen = build("vae-ddpm", spec)
    fit(gen, flat, tasks, tasks=tasks, config=FitConfig(tokenizer_steps=10, prior_steps=10, batch_size=16, progress=False))
    gen.save_pretrained(tmp_path / "g")
    cuda = Generator.from_pretrained(tmp_path / "g", device="cuda")
    out = sample(cuda, 0, "cuda")
    assert out.device.type == "cuda" and torch.isfinite(out).all()
    # the same generator's CPU samples and CUDA samples come from the same weights
    ref = Generator.from_pretrained(tmp_path / "g").reconstruct(flat[:4], tasks=tasks[:4])
    got = cuda.reconstruct(flat[:4], tasks=tasks[:4])
    assert torch.allclose(ref, got.cpu(), atol=1e-4)  # type: ignore[union-attr]


def test_chunkwise_fit_and_stream_on_cuda(tmp_path: Path) -> None:
    """The large-model path on CUDA: a lazily read zoo fitted on the GPU, sampled into a
    file and into a state dict (same seed, same values), saved and sampled back on CUDA."""
    from safetensors.torch import load_file, save_file

    from paramgen.chunks import ChunkDataset, ChunkLayout
    from paramgen.chunkwise import ChunkwiseGenerator

    torch.manual_seed(1)
    states = [torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3)).state_dict() for _ in range(3)]
    paths = []
    for i, sd in enumerate(states):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
    layout = ChunkLayout(ParamSpec.from_state_dict(states[0]), 32)
    tok = VAETokenizer(rows=1, width=32, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=16, base_channels=8, channel_mults=(1,), timesteps=50)
    gen = ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, position_dim=16).to("cuda")
    gen.fit(ChunkDataset(layout, paths), config=FitConfig(tokenizer_steps=10, prior_steps=10, batch_size=8, progress=False))
    assert gen.device.type == "cuda"
    kw = dict(sampler="ddim", steps=5, batch_size=3)
    sd = gen.sample(generator=torch.Generator("cuda").manual_seed(0), **kw)
    out = gen.sample(out=tmp_path / "gen.safetensors", generator=torch.Generator("cuda").manual_seed(0), **kw)
    on_disk = load_file(str(out))
    assert isinstance(sd, dict) and sd.keys() == on_disk.keys() == states[0].keys()
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() and torch.equal(v, on_disk[k]) for k, v in sd.items())
    gen.save_pretrained(tmp_path / "g")
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "g", device="cuda")
    again = back.sample(generator=torch.Generator("cuda").manual_seed(0), **kw)
    assert isinstance(again, dict) and all(torch.equal(sd[k], again[k]) for k in sd)


def base_delta_path(device: str, tmp_path: Path) -> None:
    """Deltas over a pinned base on ``device``: a positional tokenizer with per-(task, chunk)
    positions fitted on D, sampled as base + D into a file and a dict (same values), the
    reconstruction, and a save/load that checks the base. Shared by a CPU and a CUDA test."""
    from safetensors.torch import load_file

    from paramgen.chunks import ChunkDataset, ChunkLayout
    from paramgen.chunkwise import ChunkwiseGenerator
    from paramgen.pipelines.chunkwise import chunkwise

    torch.manual_seed(2)
    base = {k: v.detach().clone() for k, v in torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Linear(10, 3)).state_dict().items()}
    g = torch.Generator().manual_seed(3)
    states = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(4)]
    tasks = ["a", "b", "a", "b"]
    layout = ChunkLayout(ParamSpec.from_state_dict(base), 32)
    data = ChunkDataset.from_state_dicts(layout, states, base=base)
    gen = chunkwise(
        layout, condition="task", tasks=["a", "b"], base=base, positional=True, position_bias=True, task_positions=True, compression=2,
        hidden_channels=8, num_down=1, position_dim=8, base_channels=8, channel_mults=(1,), timesteps=50,
    ).to(device)  # fmt: skip
    gen.fit(data, conditions=tasks, config=FitConfig(tokenizer_steps=5, prior_steps=5, batch_size=8, progress=False))
    assert gen.device.type == device
    kw = dict(sampler="ddim", steps=3, batch_size=4)
    sd = gen.sample("b", generator=torch.Generator(device).manual_seed(0), **kw)
    on_disk = load_file(str(gen.sample("b", out=tmp_path / "s.safetensors", generator=torch.Generator(device).manual_seed(0), **kw)))
    assert isinstance(sd, dict) and all(v.device.type == "cpu" and torch.isfinite(v).all() and torch.equal(v, on_disk[k]) for k, v in sd.items())
    assert max(float((sd[k] - base[k]).abs().max()) for k in base) < 1.0  # near the base: base + D
    rec = gen.reconstruct(data, 1, cond="b")
    assert all(torch.isfinite(v).all() for v in rec.values())
    back = ChunkwiseGenerator.from_pretrained(gen.save_pretrained(tmp_path / "g"), base=base, device=device)
    again = back.sample("b", generator=torch.Generator(device).manual_seed(0), **kw)
    assert isinstance(again, dict) and all(torch.equal(sd[k], again[k]) for k in sd)


def test_base_delta_path_on_cuda(tmp_path: Path) -> None:
    base_delta_path("cuda", tmp_path)
