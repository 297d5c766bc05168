"""The training engine: config checks, schedule, EMA, precision, NaN errors, checkpoints,
exact resume after SIGKILL, and data-parallel fitting under torchrun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import paramgen
from paramgen import Generator, ModelVectorizer, ParamSpec
from paramgen.priors import DiffusionPrior, KDEPrior
from paramgen.spec import SpecMismatchError
from paramgen.tokenizers import IdentityTokenizer, VAETokenizer
from paramgen.tracking import NullLogger
from paramgen.training import CheckpointError, FitConfig, NonFiniteLossError, fit, latest_checkpoint

CHILD = Path(__file__).with_name("fit_child.py")


def small(**prior: object) -> tuple[Generator, torch.Tensor]:
    torch.manual_seed(0)
    spec = ParamSpec.from_module(torch.nn.Linear(4, 3))
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    gen = Generator(
        vectorizer=ModelVectorizer(spec),
        tokenizer=tok,
        prior=DiffusionPrior(shape=tok.latent_shape, base_channels=8, channel_mults=(1,), timesteps=50, **prior),  # type: ignore[arg-type]
    )
    return gen, torch.randn(24, spec.numel, generator=torch.Generator().manual_seed(1))


class Recorder(NullLogger):
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics, *, step=None):  # noqa: ANN001
        self.rows.append((step, dict(metrics)))


def states(gen: Generator) -> dict[str, torch.Tensor]:
    return {f"{r}.{k}": v.clone() for r, p in gen.components.items() if isinstance(p, torch.nn.Module) for k, v in p.state_dict().items()}


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"prior_steps": -1}, "prior_steps must be an integer >= 0"),
        ({"tokenizer_lr": 0.0}, "tokenizer_lr must be a finite number > 0"),
        ({"precision": "fp8"}, "precision"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"checkpoint_every": 5}, "checkpoint_every needs checkpoint_dir"),
        ({"grad_accum": 0}, "grad_accum must be a positive integer"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"betas": ("a", 0.9)}, "betas"),
        ({"weight_decay": "x"}, "weight_decay must be a finite number >= 0"),
        ({"prior_lr": True}, "prior_lr must be a finite number > 0"),
        ({"tokenizer_steps": 2.5}, "tokenizer_steps must be an integer >= 0"),
    ],
)
def test_fit_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FitConfig(**kwargs)


def test_fit_rejects_an_empty_zoo_and_a_batch_that_does_not_split() -> None:
    gen, flat = small()
    with pytest.raises(ValueError, match="zoo is empty"):
        fit(gen, flat[:0], config=FitConfig(progress=False))
    with pytest.raises(ValueError, match="must split evenly into 1 processes x 4 accumulation steps"):
        fit(gen, flat[:10], config=FitConfig(tokenizer_steps=1, prior_steps=1, grad_accum=4, progress=False))


# --------------------------------------------------------------------------- the loop
def test_warmup_then_cosine_learning_rate() -> None:
    gen, flat = small()
    rec = Recorder()
    config = FitConfig(tokenizer_steps=10, prior_steps=0, batch_size=8, tokenizer_lr=1e-2, schedule="cosine", warmup_steps=4, min_lr_ratio=0.1, log_every=1, progress=False)
    fit(gen, flat, config=config, tracker=rec)
    lrs = [m["tokenizer/lr"] for _, m in rec.rows if "tokenizer/lr" in m]
    # get_last_lr after step k is the rate of step k + 1
    assert lrs[:3] == pytest.approx([2 / 4 * 1e-2, 3 / 4 * 1e-2, 1e-2])
    assert all(a >= b for a, b in pairwise(lrs[3:]))
    assert lrs[-1] == pytest.approx(1e-3)


def test_engine_ema_replaces_the_weights_at_the_end_of_a_stage() -> None:
    runs = {}
    for decay in (0.0, 0.9):
        gen, flat = small()
        fit(gen, flat, config=FitConfig(tokenizer_steps=20, prior_steps=0, batch_size=8, ema_decay=decay, progress=False))
        runs[decay] = states(gen)
    moved = max(float((runs[0.0][k] - runs[0.9][k]).abs().max()) for k in runs[0.0] if k.startswith("tokenizer."))
    assert moved > 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_fits_and_samples(precision: str) -> None:
    gen, flat = small()
    fit(gen, flat, config=FitConfig(tokenizer_steps=5, prior_steps=5, batch_size=8, precision=precision, progress=False))  # type: ignore[arg-type]
    out = gen.sample(n=2, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5)
    assert all(torch.isfinite(v).all() for sd in out for v in sd.values())


def test_a_non_finite_loss_names_the_stage_and_step() -> None:
    gen, flat = small()
    real = gen.prior.loss
    calls = {"n": 0}

    def loss(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 3 else out

    gen.prior.loss = loss  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError, match="prior loss became NaN or Inf at step 3 of 8"):
        fit(gen, flat, config=FitConfig(tokenizer_steps=2, prior_steps=8, batch_size=8, log_every=5, progress=False))


def test_same_seed_same_generator_and_seed_matters() -> None:
    out = []
    for seed in (0, 0, 1):
        gen, flat = small()
        fit(gen, flat, config=FitConfig(tokenizer_steps=4, prior_steps=4, batch_size=8, seed=seed, progress=False))
        out.append(states(gen))
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    assert not all(torch.equal(out[0][k], out[2][k]) for k in out[0])


def test_a_kde_prior_is_fitted_in_closed_form() -> None:
    spec = ParamSpec.from_module(torch.nn.Linear(2, 2))
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=KDEPrior())
    fit(gen, torch.randn(10, spec.numel), config=FitConfig(progress=False))
    assert gen.fitted and gen.prior.state_dict()["latents"].shape[0] == 10


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_replace_each_other_and_resume_refuses_another_run(tmp_path: Path) -> None:
    gen, flat = small()
    config = FitConfig(tokenizer_steps=6, prior_steps=6, batch_size=8, checkpoint_every=2, checkpoint_dir=str(tmp_path), progress=False)
    fit(gen, flat, config=config)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["checkpoint-4-prior-00000004", "latest.json"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4-prior-00000004"
    meta = json.loads((tmp_path / folders[0] / "state.json").read_text())
    assert meta["stage"] == "prior" and meta["step"] == 4 and not meta["done"]
    tensors = load_file(str(tmp_path / folders[0] / "state.safetensors"))
    assert any(k.startswith("optimizer.") for k in tensors) and "rng.cpu" in tensors
    other, _ = small()
    with pytest.raises(CheckpointError, match="another run .*config"):
        fit(other, flat, config=FitConfig(tokenizer_steps=6, prior_steps=7, batch_size=8, progress=False), resume=tmp_path)
    with pytest.raises(CheckpointError, match="not a complete fit checkpoint"):
        fit(other, flat, config=config, resume=tmp_path / "missing")


def _child(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(CHILD), *args], env=env, capture_output=True, text=True, timeout=300)


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    same_config = json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    return same_config and x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("kill_at", ["tokenizer:12", "prior:13"])
def test_sigkill_in_the_middle_of_a_stage_then_resume_is_bit_identical(tmp_path: Path, kill_at: str) -> None:
    ref = _child(str(tmp_path / "reference"))
    assert ref.returncode == 0, ref.stderr
    killed = _child(str(tmp_path / "killed"), "--ckpt", str(tmp_path / "ckpt"), "--kill-at", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "killed").exists()
    stage = kill_at.split(":")[0]
    assert latest_checkpoint(tmp_path / "ckpt").name == f"checkpoint-{1 if stage == 'tokenizer' else 4}-{stage}-00000010"
    resumed = _child(str(tmp_path / "resumed"), "--ckpt", str(tmp_path / "ckpt"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _same(tmp_path / "reference", tmp_path / "resumed")


def test_two_processes_under_torchrun_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """Two gloo processes, each one micro-batch of 8, against one process accumulating two
    micro-batches of 8: the same losses, so the same weights up to the order of float sums
    (tolerance 1e-5; on this machine they agree exactly)."""
    one = _child(str(tmp_path / "one"), "--accum", "2")
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(CHILD), str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "weights.safetensors"))
    r0, r1 = (load_file(str(tmp_path / f"two-{r}" / "weights.safetensors")) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the processes stayed in sync
    worst = max(float((a[k].double() - r0[k].double()).abs().max()) for k in a)
    assert worst <= 1e-5
    # and a one-process run without accumulation (other noise, other batches) differs: the test can fail
    single = _child(str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    b = load_file(str(tmp_path / "single" / "weights.safetensors"))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) > 1e-3


def test_an_image_set_conditioner_trains_under_bf16_autocast() -> None:
    from paramgen.conditioners import ImageSetConditioner

    torch.manual_seed(0)
    spec = ParamSpec.from_module(torch.nn.Linear(4, 3))
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    cond = ImageSetConditioner(feature_dim=6, dim=8)
    gen = Generator(
        vectorizer=ModelVectorizer(spec), tokenizer=tok, conditioner=cond,
        prior=DiffusionPrior(shape=tok.latent_shape, cond_dim=8, base_channels=8, channel_mults=(1,), timesteps=50),
    )
    g = torch.Generator().manual_seed(0)
    sets = [torch.randn(3, 2, 6, generator=g) for _ in range(16)]  # (K classes, S images, F features) per model
    fit(gen, torch.randn(16, spec.numel, generator=g), sets, config=FitConfig(tokenizer_steps=2, prior_steps=3, batch_size=8, precision="bf16", progress=False))
    assert gen.fitted and all(torch.isfinite(p).all() for p in cond.parameters())


def test_host_memory_is_pinned_only_for_host_items_going_to_cuda() -> None:
    """Latents already on the GPU cannot be pinned (the prior stage failed so on an H200)."""
    from paramgen.training.engine import _pin_memory

    on_host = [{"x": torch.zeros(2), "cond": torch.zeros(1)}]
    on_device = [{"x": torch.zeros(2, device="meta"), "cond": torch.zeros(1)}]  # meta stands in for a CUDA tensor
    assert _pin_memory(on_host, torch.device("cuda")) is True  # type: ignore[arg-type]
    assert _pin_memory(on_device, torch.device("cuda")) is False  # type: ignore[arg-type]
    assert _pin_memory(on_host, torch.device("cpu")) is False  # type: ignore[arg-type]


# --------------------------------------------------------------------------- what fit takes
def kde_generator(vectorizer: Any, *, normalizer: Any = None) -> Generator:
    return Generator(vectorizer=vectorizer, tokenizer=IdentityTokenizer(rows=vectorizer.rows, width=vectorizer.width), prior=KDEPrior(), normalizer=normalizer)


def test_fit_on_state_dicts_equals_fit_on_their_flat_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = small()[0], small()[0]
    config = FitConfig(tokenizer_steps=3, prior_steps=3, batch_size=4, progress=False)
    spec = ParamSpec.from_module(torch.nn.Linear(4, 3))
    sds = [{"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)} for _ in range(8)]
    fit(a, sds, config=config)
    fit(b, spec.flatten(sds)[0], config=config)
    assert all(torch.equal(x, y) for x, y in zip(states(a).values(), states(b).values(), strict=True))
    bad = [dict(sd) for sd in sds]
    bad[5]["weight"] = torch.zeros(3, 5)
    with pytest.raises(SpecMismatchError, match=r"tensor 'weight' \(model 5\): expected shape \(3, 4\), got \(3, 5\)"):
        fit(small()[0], bad, config=config)
    bad[5] = {"weight": torch.zeros(3, 4)}
    with pytest.raises(SpecMismatchError, match=r"model 5\): missing \['bias'\]"):
        fit(small()[0], bad, config=config)


@pytest.fixture(scope="module")
def two_arch_zoo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """8 checkpoints: 2 digits tasks x 2 MLP widths x epochs 1-2 (trained in seconds)."""
    from paramgen.zoo import RunConfig, TrainConfig, build_zoo

    train = TrainConfig(epochs=2, lr=1e-2, batch_size=32)
    runs = [
        RunConfig(task=task, arch="mlp", arch_kwargs={"in_features": 64, "hidden": [h]}, train=train, keep_epochs=(1, 2), max_train_per_class=10, max_eval_per_class=5)
        for task in ("digits/0-1-2", "digits/3-4-5")
        for h in (4, 6)
    ]
    return build_zoo(tmp_path_factory.mktemp("zoo"), runs, workers=1, progress=False)


def test_fit_on_a_zoo_takes_its_tasks_and_matches_the_flat_path(two_arch_zoo: Any) -> None:
    from paramgen import PerTaskZScore

    zoo = two_arch_zoo.filter(spec_id=two_arch_zoo.spec_ids[0])
    spec = zoo.spec()
    a = kde_generator(ModelVectorizer(spec), normalizer=PerTaskZScore())
    paramgen.fit(a, zoo, progress=False, generator=torch.Generator().manual_seed(0))
    assert a.normalizer.tasks == zoo.tasks  # type: ignore[union-attr]
    b = kde_generator(ModelVectorizer(spec), normalizer=PerTaskZScore())
    paramgen.fit(b, zoo.flatten()[0], tasks=[c.task for c in zoo], progress=False, generator=torch.Generator().manual_seed(0))
    sample = lambda gen: gen.sample_flat(None, 3, tasks=[zoo.tasks[1]], generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(sample(a), sample(b))
    with pytest.raises(ValueError, match=r"this generator has one architecture, the zoo holds 2 .*zoo.filter\(spec_id=...\)"):
        paramgen.fit(kde_generator(ModelVectorizer(spec)), two_arch_zoo, progress=False)
    other = two_arch_zoo.filter(spec_id=two_arch_zoo.spec_ids[1])
    with pytest.raises(SpecMismatchError, match="not of the generator's architecture"):
        paramgen.fit(kde_generator(ModelVectorizer(spec)), other, progress=False)
    with pytest.raises(ValueError, match="at least one model; the zoo view .* is empty"):
        paramgen.fit(kde_generator(ModelVectorizer(spec)), zoo.filter(where=lambda c: False), progress=False)


def test_a_family_fits_on_a_zoo_of_several_architectures(two_arch_zoo: Any) -> None:
    from paramgen import FamilyVectorizer, GlobalScale

    specs = {"narrow": two_arch_zoo.spec(two_arch_zoo.spec_ids[0]), "wide": two_arch_zoo.spec(two_arch_zoo.spec_ids[1])}
    gen = kde_generator(FamilyVectorizer.modelwise(specs), normalizer=GlobalScale())
    paramgen.fit(gen, two_arch_zoo, progress=False)
    for arch, spec in specs.items():
        sd = gen.sample(archs=[arch], generator=torch.Generator().manual_seed(0))[0]
        spec.check_state_dict(sd)
    # The state dicts of the zoo fit a family too, each matched to its member.
    sds = [two_arch_zoo.state_dict(i) for i in range(len(two_arch_zoo))]
    assert paramgen.fit(kde_generator(FamilyVectorizer.modelwise(specs)), sds, progress=False).fitted
    with pytest.raises(ValueError, match="matches no member of this family"):
        paramgen.fit(kde_generator(FamilyVectorizer.modelwise({"narrow": specs["narrow"]})), sds, progress=False)


def test_fit_on_a_weight_dataset_reads_it_lazily_or_through_the_zoo(two_arch_zoo: Any) -> None:
    from paramgen import PerTaskZScore
    from paramgen.zoo import WeightDataset

    zoo = two_arch_zoo.filter(spec_id=two_arch_zoo.spec_ids[0])
    vec = ModelVectorizer(zoo.spec())
    lazy = paramgen.fit(kde_generator(vec), WeightDataset(zoo, vec), progress=False, generator=torch.Generator().manual_seed(0))
    eager = paramgen.fit(kde_generator(vec), zoo, progress=False, generator=torch.Generator().manual_seed(0))
    draw = lambda gen: gen.sample_flat(None, 2, generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(draw(lazy), draw(eager))
    normed = paramgen.fit(kde_generator(vec, normalizer=PerTaskZScore()), WeightDataset(zoo, vec), progress=False)
    assert normed.normalizer.tasks == zoo.tasks  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="normalizer=None"):
        paramgen.fit(kde_generator(vec), WeightDataset(zoo, vec, normalizer=normed.normalizer), progress=False)


def test_a_task_indexed_generator_fits_on_a_zoo_without_conditions(two_arch_zoo: Any) -> None:
    """The zoo's tasks are the conditions of an IndexConditioner over task names; any other
    conditioner still needs conds=."""
    from paramgen.conditioners import IndexConditioner, OrderedSetConditioner

    zoo = two_arch_zoo.filter(spec_id=two_arch_zoo.spec_ids[0])
    spec = zoo.spec()

    def conditioned(cond: Any) -> Generator:
        return Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=KDEPrior(), conditioner=cond)

    a = paramgen.fit(conditioned(IndexConditioner(zoo.tasks, dim=4)), zoo, progress=False)
    b = paramgen.fit(conditioned(IndexConditioner(zoo.tasks, dim=4)), zoo, [c.task for c in zoo], progress=False)
    draw = lambda gen: gen.sample_flat([zoo.tasks[0]], 2, generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(draw(a), draw(b))
    with pytest.raises(ValueError, match=r"expected one raw condition per weight vector \(4\), got None"):
        paramgen.fit(conditioned(OrderedSetConditioner(feature_dim=3, num_classes=3, per_class=2, hidden=4)), zoo, progress=False)


# ---------------------------------------------------------------- the engine as a package (issue 19)
TRAINING = Path(paramgen.__file__).parent / "training"
ENGINE_FILES = sorted(TRAINING.glob("*.py"))


def test_training_is_a_package_of_small_modules_without_an_import_circle():
    assert {f.stem for f in ENGINE_FILES} >= {"__init__", "config", "engine", "checkpoint", "inputs", "stages"}
    longest = max(ENGINE_FILES, key=lambda f: len(f.read_text().splitlines()))
    assert len(longest.read_text().splitlines()) <= 400, longest.name
    for f in ENGINE_FILES:  # each module first in a fresh interpreter: a circle fails one of them
        name = "paramgen.training" if f.stem == "__init__" else f"paramgen.training.{f.stem}"
        subprocess.run([sys.executable, "-c", f"import {name}"], check=True, capture_output=True)
    from paramgen.training import STAGES, CheckpointError, FitConfig, NonFiniteLossError, fit, latest_checkpoint  # noqa: F401


def _private_uses(path: Path) -> list[str]:
    """``generator._x`` / ``gen._x`` reads and ``from paramgen.generator import _x`` in a file."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("generator", "gen"):
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in ("paramgen.generator", "paramgen.layout"):
            found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_the_engine_uses_only_the_public_surface_of_the_generator():
    files = [*ENGINE_FILES, Path(paramgen.__file__).with_name("fitting.py")]
    assert len(files) >= 7
    assert [u for f in files for u in _private_uses(f)] == []
    # One function encodes a zoo (Generator.encode_zoo): the engine calls no tokenizer's encode itself.
    assert not [f.name for f in ENGINE_FILES if re.search(r"\b(tok|tokenizer)\.encode\(", f.read_text())]


def test_few_type_ignores_in_the_generator_and_the_engine():
    files = [Path(paramgen.__file__).with_name("generator.py"), *ENGINE_FILES]
    assert len(files) >= 7
    assert sum(f.read_text().count("type: ignore") for f in files) < 10
