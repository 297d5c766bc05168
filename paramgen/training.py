"""Fitting a `paramgen.Generator`: the training engine, kept apart from the pipeline.

``fit(generator, data, conds, config=FitConfig(...))`` runs D2NWG's stages in order, one
short function each:

1. ``normalizer``: statistics of the flat weights (closed form);
2. ``tokenizer``: the VAE / VQ-VAE learns the rows (skipped when it has no weights);
3. ``latents``: every model is encoded once and the latents are standardized to unit
   scale (a saved `paramgen.interfaces.LatentStats`; diffusion on badly scaled latents
   collapses);
4. ``align``: optional contrastive alignment of the conditioner with the latents (D2NWG
   Alg. 2, `paramgen.conditioners.align`);
5. ``prior``: the prior learns the latents (or tokens) given the conditions; a prior with
   ``fit`` (the KDE baseline) is fitted in closed form.

The gradient stages share one loop: AdamW with linear warmup and cosine (or constant)
decay, gradient clipping, an EMA of the weights (a component with its own ``update_ema``,
like `paramgen.priors.DiffusionPrior`, keeps it itself), autocast in bf16 or fp16 (with a
gradient scaler), gradient accumulation, tracker logging, and a check for NaN/Inf losses
that names the stage and step. The loop adds no per-step host synchronization: losses are
read back only when they are logged or checkpointed.

Randomness is a function of ``(config.seed, stage, step, micro-batch)``: the models of each
micro-batch and the noise the losses draw come from generators seeded by that tuple. So a
run resumed from a checkpoint continues exactly where it stopped, and a data-parallel run
whose processes take the micro-batches of a global batch computes the same losses as one
process that accumulates them.

Checkpoints (``config.checkpoint_every`` steps, into ``config.checkpoint_dir``) hold every
component's weights, the optimizer, scheduler, EMA, gradient-scaler and global RNG states
and the position, as safetensors + JSON, written to a new folder that replaces the last
one only when complete. ``fit(..., resume=DIR)`` continues from the newest one.

Data-parallel fitting runs under an existing launcher: ``torchrun --nproc_per_node N
script.py`` or ``accelerate launch script.py``; `fit` then uses an ``accelerate.Accelerator``
to join the process group and wrap each stage in ``DistributedDataParallel``.

Examples:
    >>> import torch
    >>> from paramgen import Generator, ModelVectorizer, ParamSpec
    >>> from paramgen.tokenizers import VAETokenizer
    >>> from paramgen.priors import DiffusionPrior
    >>> spec = ParamSpec.from_module(torch.nn.Linear(4, 2))
    >>> tok = VAETokenizer(rows=1, width=10, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    >>> gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=tok,
    ...                 prior=DiffusionPrior(shape=tok.latent_shape, base_channels=8, channel_mults=(1,), timesteps=50))
    >>> config = FitConfig(tokenizer_steps=5, prior_steps=5, batch_size=8, schedule="cosine", warmup_steps=2, progress=False)
    >>> gen = fit(gen, torch.randn(16, 10), config=config)
    >>> gen.fitted, gen.latent_stats.scale > 0
    (True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.generator import Generator, _by_arch
from paramgen.interfaces import LatentStats
from paramgen.io import read_json, save_safetensors, write_json
from paramgen.normalize import GlobalScale
from paramgen.spec import SpecMismatchError
from paramgen.tracking import Logger, NullLogger

__all__ = ["FitConfig", "fit", "NonFiniteLossError", "CheckpointError", "STAGES", "latest_checkpoint"]

logger = logging.getLogger(__name__)

STAGES = ("normalizer", "tokenizer", "latents", "align", "prior")
CHECKPOINT_FORMAT = "paramgen.fit-checkpoint"
CHECKPOINT_VERSION = 1
_LATEST = "latest.json"


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or Inf; the message names the stage and step."""


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, damaged or from another run."""


def _positive(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FitConfig.{attribute.name} must be a positive integer, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"FitConfig.{attribute.name} must be an integer >= 0, got {value!r}")


def _positive_float(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"FitConfig.{attribute.name} must be a finite number > 0, got {value!r}")


def _unit(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"FitConfig.{attribute.name} must lie in [0, 1), got {value!r}")


def _optional_positive_float(_: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None:
        _positive_float(_, attribute, value)


def _optional_positive(_: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        _positive(_, attribute, value)


@attrs.frozen(kw_only=True)
class FitConfig:
    """Everything `fit` needs besides the data; frozen, JSON-serializable (``attrs.asdict``).

    The defaults reproduce the first release's training (constant learning rate, no
    clipping, no engine EMA), so published numbers keep their meaning; D2NWG-style runs
    set ``schedule="cosine"``, ``warmup_steps`` and ``max_grad_norm``.

    Attributes:
        tokenizer_steps: Optimizer steps of the tokenizer stage.
        align_steps: Steps of the contrastive alignment stage (0 skips it).
        prior_steps: Optimizer steps of the prior stage.
        batch_size: Models per optimizer step (the global batch, over all processes and
            accumulation steps; capped at the zoo size).
        tokenizer_lr: Peak AdamW learning rate of the tokenizer.
        prior_lr: Peak AdamW learning rate of the prior (and a trainable conditioner).
        align_lr: Adam learning rate of the alignment stage.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        schedule: ``"constant"`` or ``"cosine"`` decay after the warmup.
        warmup_steps: Linear warmup steps of each gradient stage.
        min_lr_ratio: Final learning rate of the cosine schedule, relative to the peak.
        max_grad_norm: Clip the global gradient norm to this (``None``: no clipping).
        ema_decay: EMA of a stage's weights, copied into them at the end of the stage
            (0: off). Components with their own ``update_ema`` keep their EMA instead.
        precision: ``"fp32"``, or autocast in ``"bf16"`` / ``"fp16"`` (fp16 with a
            gradient scaler).
        grad_accum: Micro-batches per optimizer step (per process).
        seed: All randomness of fitting.
        log_every: Steps between logged (and NaN-checked) losses: to the ``tracker`` and
            as INFO records of the ``paramgen.training`` logger (stage, step, loss).
        checkpoint_every: Steps between checkpoints (``None``: only with
            ``checkpoint_dir`` set, at the end of each stage).
        checkpoint_dir: Folder for checkpoints (``None``: none are written).
        encode_batch_size: Models per batch when encoding the whole zoo.
        num_workers: DataLoader workers that read training batches.
        progress: Show tqdm progress bars.
    """

    tokenizer_steps: int = attrs.field(default=2000, validator=_non_negative)
    align_steps: int = attrs.field(default=0, validator=_non_negative)
    prior_steps: int = attrs.field(default=5000, validator=_non_negative)
    batch_size: int = attrs.field(default=64, validator=_positive)
    tokenizer_lr: float = attrs.field(default=1e-3, validator=_positive_float)
    prior_lr: float = attrs.field(default=1e-4, validator=_positive_float)
    align_lr: float = attrs.field(default=1e-3, validator=_positive_float)
    weight_decay: float = attrs.field(default=0.0)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=tuple)
    schedule: Literal["constant", "cosine"] = attrs.field(default="constant", validator=attrs.validators.in_(("constant", "cosine")))
    warmup_steps: int = attrs.field(default=0, validator=_non_negative)
    min_lr_ratio: float = attrs.field(default=0.0, validator=_unit)
    max_grad_norm: float | None = attrs.field(default=None, validator=_optional_positive_float)
    ema_decay: float = attrs.field(default=0.0, validator=_unit)
    precision: Literal["fp32", "bf16", "fp16"] = attrs.field(default="fp32", validator=attrs.validators.in_(("fp32", "bf16", "fp16")))
    grad_accum: int = attrs.field(default=1, validator=_positive)
    seed: int = attrs.field(default=0, validator=_non_negative)
    log_every: int = attrs.field(default=100, validator=_positive)
    checkpoint_every: int | None = attrs.field(default=None, validator=_optional_positive)
    checkpoint_dir: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    encode_batch_size: int = attrs.field(default=256, validator=_positive)
    num_workers: int = attrs.field(default=0, validator=_non_negative)
    progress: bool = True

    def __attrs_post_init__(self) -> None:
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0 or not math.isfinite(wd):
            raise ValueError(f"FitConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"FitConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("FitConfig.checkpoint_every needs checkpoint_dir (where to write the checkpoints)")

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["betas"] = list(self.betas)
        return d


# --------------------------------------------------------------------------- plumbing
def _seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple: independent streams per (seed, stage, step, slot)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _modules(*parts: Any) -> list[nn.Module]:
    return [p for p in parts if isinstance(p, nn.Module)]


def _trainable(*parts: Any) -> list[nn.Parameter]:
    return [p for m in _modules(*parts) for p in m.parameters() if p.requires_grad]


class _Run:
    """Device, processes, precision and checkpoints of one `fit` call."""

    def __init__(self, generator: Generator, config: FitConfig, tracker: Logger | None, accelerator: Any) -> None:
        self.config = config
        self.log = tracker or NullLogger()
        if accelerator is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            try:
                from accelerate import Accelerator
            except ImportError as e:  # pragma: no cover - accelerate is a dependency
                raise ImportError("data-parallel fitting needs accelerate: pip install accelerate") from e
            # Without a GPU, accelerate joins a gloo process group only when told cpu=True.
            accelerator = Accelerator(cpu=not torch.cuda.is_available())
            if accelerator.num_processes != int(os.environ["WORLD_SIZE"]):
                raise RuntimeError(
                    f"the launcher started {os.environ['WORLD_SIZE']} processes but accelerate joined "
                    f"{accelerator.num_processes}; pass an accelerate.Accelerator configured for them"
                )
        self.accelerator = accelerator
        if accelerator is not None:
            self.world, self.rank = accelerator.num_processes, accelerator.process_index
            generator.to(accelerator.device)
        else:
            self.world, self.rank = 1, 0
        self.device = generator.device
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
        self._noise = torch.Generator(device=self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slots(self) -> range:
        """Micro-batch slots of this process in each optimizer step."""
        a = self.config.grad_accum
        return range(self.rank * a, (self.rank + 1) * a)

    def noise(self, stage: str, step: int, slot: int) -> torch.Generator:
        return self._noise.manual_seed(_seed(self.config.seed, stage, step, slot, "noise"))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.accelerator is None or self.world == 1:
            return module
        return self.accelerator.prepare_model(module)

    def barrier(self) -> None:
        if self.accelerator is not None and self.world > 1:
            self.accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- data
class _Rows(torch.utils.data.Dataset):
    """Vectorized, normalized rows kept where they are (the CPU); batches move to the device."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, conds: Sequence[Any] | None, tasks: Sequence[str] | None) -> None:
        self.x, self.mask = x, mask  # (M, N, C); (N, C) shared or (M, N, C)
        self.shared = mask if mask.ndim == 2 else None
        self.conds, self.tasks = conds, tasks

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {
            "x": self.x[index],
            "mask": None if self.shared is not None else self.mask[index],  # a shared mask stays out
            "cond": None if self.conds is None else [self.conds[i] for i in idx],
            "task": None if self.tasks is None else [self.tasks[i] for i in idx],
        }


def _collate(items: Any) -> dict[str, Any]:
    """A batch from `_Rows.__getitems__` as is, or a list of a user dataset's items."""
    if isinstance(items, dict):
        return items
    if not items or not all(isinstance(it, dict) and "x" in it for it in items):
        raise TypeError("a fit dataset's items must be dicts with an 'x' entry: the rows (N, C) of one model, normalized")

    def column(key: str) -> list[Any] | None:
        values = [it.get(key) for it in items]
        return None if all(v is None for v in values) else values

    masks = column("mask")
    return {
        "x": torch.stack([it["x"] for it in items]),  # (B, N, C)
        "mask": None if masks is None else torch.stack(masks),  # (B, N, C)
        "cond": column("cond"),
        "task": column("task"),
    }


class _StepSampler(torch.utils.data.Sampler[list[int]]):
    """Index micro-batches of this process for steps ``start+1 .. steps``, drawn with
    replacement from a generator seeded by (seed, stage, step): any step can be
    reproduced on its own, which is what makes resuming exact."""

    def __init__(self, m: int, batch: int, run: _Run, stage: str, start: int, steps: int) -> None:
        self.m, self.batch, self.run, self.stage, self.start, self.steps = m, batch, run, stage, start, steps
        self.micro = batch // (run.world * run.config.grad_accum)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.run.config.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator()
        for step in range(self.start + 1, self.steps + 1):
            g.manual_seed(_seed(self.run.config.seed, self.stage, step, "batch"))
            idx = torch.randint(0, self.m, (self.batch,), generator=g)  # the global batch
            for slot in self.run.slots():
                yield idx[slot * self.micro : (slot + 1) * self.micro].tolist()


def _global_batch(run: _Run, m: int, stage: str) -> int:
    b = min(run.config.batch_size, m)
    parts = run.world * run.config.grad_accum
    if b % parts:
        raise ValueError(
            f"the {stage} stage's global batch ({b} = min(batch_size, {m} models)) must split evenly into "
            f"{run.world} processes x {run.config.grad_accum} accumulation steps"
        )
    return b


def _loader(dataset: torch.utils.data.Dataset, sampler: _StepSampler, run: _Run) -> Iterator[Any]:
    pin = _pin_memory(dataset, run.device)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=run.config.num_workers, pin_memory=pin))


def _pin_memory(dataset: torch.utils.data.Dataset, device: torch.device) -> bool:
    """Pinned host memory speeds copies to CUDA; items already on the device (the latents of
    the prior stage) cannot be pinned ("only dense CPU tensors can be pinned", seen on an
    H200), so pin only when training on CUDA from items on the host."""
    return device.type == "cuda" and all(t.device.type == "cpu" for t in _tensors(dataset[0]))


def _tensors(item: Any) -> list[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        return [item]
    if isinstance(item, dict):
        return [t for v in item.values() for t in _tensors(v)]
    return []


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


# --------------------------------------------------------------------------- the loop
class _Ema:
    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)


def _lr_factor(config: FitConfig, steps: int) -> Callable[[int], float]:
    warmup = config.warmup_steps

    def factor(k: int) -> float:  # k optimizer steps taken so far
        if k < warmup:
            return (k + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (k - warmup) / max(1, steps - warmup))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class _LossModule(nn.Module):
    """One stage's trainable parts behind ``forward`` (so DDP can wrap the stage)."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, dict[str, Any]]], **parts: Any) -> None:  # parts: nn.Modules held as protocol types
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.fn = fn

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.fn(batch, generator)


def _train(
    run: _Run,
    stage: str,
    module: _LossModule,
    dataset: torch.utils.data.Dataset,
    *,
    steps: int,
    lr: float,
    start: int,
    saved: _Saved | None,
    save: Callable[[int, dict[str, Any]], None],
    update_ema: Callable[[], None] | None = None,
) -> None:
    """The gradient loop shared by the tokenizer and prior stages."""
    from tqdm.auto import tqdm

    config = run.config
    params = [p for p in module.parameters() if p.requires_grad]
    batch = _global_batch(run, len(dataset), stage)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(config, steps))
    ema = _Ema(params, config.ema_decay) if config.ema_decay > 0 and update_ema is None else None
    scaler = torch.amp.GradScaler(run.device.type) if config.precision == "fp16" else None
    if saved is not None:
        saved.restore_loop(opt, sched, ema, scaler)
    model = run.wrap(module)
    model.train()
    first_bad = torch.full((), -1, dtype=torch.long, device=run.device)
    data = _loader(dataset, _StepSampler(len(dataset), batch, run, stage, start, steps), run)  # type: ignore[arg-type]
    accum = config.grad_accum
    last: dict[str, Any] = {}

    def check(step: int) -> None:
        bad = int(first_bad)  # the one host sync, at log and checkpoint steps only
        if bad >= 0:
            raise NonFiniteLossError(
                f"fit: the {stage} loss became NaN or Inf at step {bad} of {steps}; "
                "lower the learning rate, set max_grad_norm, or fit in fp32"
            )

    for step in tqdm(range(start + 1, steps + 1), desc=stage, disable=not config.progress or not run.main, initial=start, total=steps):
        for i, slot in enumerate(run.slots()):
            micro = _to(next(data), run.device)
            sync = i == accum - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync(), run.autocast():  # type: ignore[operator]
                loss, metrics = model(micro, run.noise(stage, step, slot))
            scaled = loss.float() / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        if scaler is not None:
            scaler.unscale_(opt)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the fp16 scaler skips the steps whose gradients overflowed
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            sched.step()
        if update_ema is not None:
            update_ema()
        elif ema is not None:
            ema.update()
        last = {"loss": loss.detach(), **metrics}
        if step % config.log_every == 0 or step == steps:
            check(step)
            if run.main:
                values = {k: float(v) for k, v in last.items()} | {"lr": cast(float, sched.get_last_lr()[0])}
                run.log.log_metrics({f"{stage}/{k}": v for k, v in values.items()}, step=step)
                logger.info("%s step %d/%d: %s", stage, step, steps, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < steps:
            check(step)
            save(step, {"optimizer": opt, "scheduler": sched, "ema": ema, "scaler": scaler})
    check(steps)
    if ema is not None:
        ema.copy_to_params()
    module.eval()


# --------------------------------------------------------------------------- checkpoints
class _Saved:
    """A checkpoint read back: position, component weights and loop states."""

    def __init__(self, path: Path) -> None:
        meta_path, tensor_path = path / "state.json", path / "state.safetensors"
        if not meta_path.exists() or not tensor_path.exists():
            raise CheckpointError(f"{path} is not a complete fit checkpoint (state.json and state.safetensors expected)")
        self.path = path
        self.meta = read_json(meta_path)
        if self.meta.get("format") != CHECKPOINT_FORMAT or self.meta.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}/state.json is not a paramgen fit checkpoint of version {CHECKPOINT_VERSION}")
        try:
            self.tensors = load_file(str(tensor_path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{tensor_path} cannot be read ({e})") from e
        self.stage: str = self.meta["stage"]
        self.step: int = self.meta["step"]

    def _sub(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def restore_generator(self, generator: Generator) -> None:
        for role, part in generator._components().items():
            if isinstance(part, nn.Module):
                state = self._sub(f"generator.{role}.")
                device = generator.device
                part.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
        # Which weights were frozen (e.g. a conditioner after alignment) is no part of a
        # state dict, but decides what the next stage trains.
        for role, names in self.meta.get("frozen", {}).items():
            part = generator._components().get(role)
            if isinstance(part, nn.Module):
                for name, p in part.named_parameters():
                    p.requires_grad_(name not in names)
        stats = self.meta.get("latent_stats")
        if stats is not None:
            generator.latent_stats = LatentStats(**stats)
        cpu = self.tensors.get("rng.cpu")
        if cpu is not None:
            torch.set_rng_state(cpu)
        cuda = self._sub("rng.cuda.")
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])

    @property
    def done(self) -> bool:
        """Whether the checkpoint marks the end of its stage (no loop state)."""
        return bool(self.meta.get("done"))

    def restore_loop(self, opt: torch.optim.Optimizer, sched: Any, ema: _Ema | None, scaler: Any) -> None:
        loop = self.meta["loop"]
        device = next((p.device for g in opt.param_groups for p in g["params"]), torch.device("cpu"))
        state: dict[int, dict[str, Any]] = {}
        for key, value in self._sub("optimizer.").items():
            pid, _, name = key.partition(".")
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
        opt.load_state_dict({"state": state, "param_groups": loop["param_groups"]})
        sched.load_state_dict(loop["scheduler"])
        if ema is not None:
            shadow = self._sub("ema.")
            if len(shadow) != len(ema.shadow):
                raise CheckpointError(f"{self.path}: the checkpoint holds {len(shadow)} EMA tensors, the stage has {len(ema.shadow)}")
            for i, s in enumerate(ema.shadow):
                s.copy_(shadow[str(i)])
        if scaler is not None and loop.get("scaler"):
            scaler.load_state_dict(loop["scaler"])


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``directory`` (``None`` if there is none)."""
    directory = Path(directory)
    if not (directory / _LATEST).exists():
        return None
    name = read_json(directory / _LATEST)["checkpoint"]
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise CheckpointError(f"{directory}/{_LATEST} names an invalid checkpoint {name!r}")
    return directory / name


def _json_value(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def _write_checkpoint(run: _Run, generator: Generator, fingerprint: dict[str, Any], stage: str, step: int, loop: Mapping[str, Any] | None) -> None:
    """Write a checkpoint folder, then point ``latest.json`` at it, then drop the older ones.

    ``loop`` (optimizer, scheduler, EMA, scaler) is given mid-stage; without it the
    checkpoint marks the end of ``stage``.
    """
    if not run.main:
        run.barrier()
        return
    root = Path(run.config.checkpoint_dir)  # type: ignore[arg-type]
    name = f"checkpoint-{STAGES.index(stage)}-{stage}-{'done' if loop is None else f'{step:08d}'}"
    tensors: dict[str, torch.Tensor] = {}
    for role, part in generator._components().items():
        if isinstance(part, nn.Module):
            tensors.update({f"generator.{role}.{k}": v.detach().cpu() for k, v in part.state_dict().items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if run.device.type == "cuda":
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "stage": stage,
        "step": step,
        "done": loop is None,
        "fit": fingerprint,
        "frozen": {
            role: [n for n, p in part.named_parameters() if not p.requires_grad]
            for role, part in generator._components().items()
            if isinstance(part, nn.Module)
        },
        "latent_stats": None if generator.latent_stats is None else attrs.asdict(generator.latent_stats),
        "loop": None,
    }
    if loop is not None:
        opt: torch.optim.Optimizer = loop["optimizer"]
        sd = opt.state_dict()
        for pid, entry in sd["state"].items():
            for k, v in entry.items():
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.tensor(v)
        groups = [{k: _json_value(v) for k, v in g.items()} for g in sd["param_groups"]]
        sched_state = {k: _json_value(v) for k, v in loop["scheduler"].state_dict().items() if k != "lr_lambdas"}
        sched_state["lr_lambdas"] = [None]
        ema = loop.get("ema")
        if ema is not None:
            tensors.update({f"ema.{i}": s.detach().cpu() for i, s in enumerate(ema.shadow)})
        scaler = loop.get("scaler")
        meta["loop"] = {
            "param_groups": groups,
            "scheduler": sched_state,
            "scaler": None if scaler is None else {k: _json_value(v) for k, v in scaler.state_dict().items()},
        }
    tmp = root / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_safetensors(tmp / "state.safetensors", tensors, metadata={"format": CHECKPOINT_FORMAT})
    write_json(tmp / "state.json", meta)
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    previous = latest_checkpoint(root)
    write_json(root / _LATEST, {"checkpoint": name})
    if previous is not None and previous.name != name and previous.exists():
        shutil.rmtree(previous)
    run.barrier()


# --------------------------------------------------------------------------- the stages
def _fit_normalizer(generator: Generator, zoo: _Zoo) -> None:
    norm = generator.normalizer
    if norm is None:
        return
    if isinstance(norm, GlobalScale):  # statistics over the architectures' groups (one for a single one), with their specs
        if zoo.archs is None:
            groups = [(zoo.flat.float(), generator.spec)]  # type: ignore[union-attr]
        else:
            groups = [(torch.stack([zoo.flat[i].reshape(-1).float() for i in idx]), generator.specs[a]) for a, idx in _by_arch(zoo.archs).items()]
        norm.fit_groups(groups)
    else:
        norm.fit(zoo.flat.float(), tasks=zoo.tasks)  # type: ignore[union-attr]


def _fit_tokenizer(
    run: _Run, generator: Generator, rows: torch.utils.data.Dataset, predictor: nn.Module | None, start: int, saved: _Saved | None, save: Callable
) -> None:
    tok = generator.tokenizer
    if not _trainable(tok) or run.config.tokenizer_steps == 0:
        return
    extra = {"predictor": predictor} if predictor is not None else {}
    shared = getattr(rows, "shared", None)
    shared = None if shared is None else shared.to(run.device)  # (N, C), moved once

    def loss(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        out = tok.loss(batch["x"], mask=shared if batch["mask"] is None else batch["mask"], generator=g, **extra)
        assert out.loss is not None  # a trainable tokenizer returns a loss
        return out.loss, dict(out.metrics)

    _train(run, "tokenizer", _LossModule(loss, tokenizer=tok), rows, steps=run.config.tokenizer_steps, lr=run.config.tokenizer_lr, start=start, saved=saved, save=save)


@attrs.frozen
class _Encoded:
    z: torch.Tensor  # (M, *latent_shape) standardized latents, or (M, L) token ids; on the device
    latents: torch.Tensor | None  # (M, *latent_shape) quantized latents of a discrete tokenizer (for alignment)
    conds: list[Any] | None
    tasks: list[str] | None


def _encode(run: _Run, generator: Generator, rows: torch.utils.data.Dataset, *, want_latents: bool) -> _Encoded:
    """One pass over the zoo in order: latents (or token ids) of every model, on the device,
    with their conditions and tasks; fixes the latent statistics."""
    tok = generator.tokenizer
    if isinstance(tok, nn.Module):
        tok.eval()
    loader = torch.utils.data.DataLoader(rows, batch_size=run.config.encode_batch_size, collate_fn=_collate, num_workers=run.config.num_workers)
    shared = getattr(rows, "shared", None)
    shared = None if shared is None else shared.to(run.device)
    conds: list[Any]
    tasks: list[Any]
    outs, quantized, conds, tasks = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            mask = shared if batch["mask"] is None else batch["mask"].to(run.device)
            out = tok.encode(batch["x"].to(run.device), mask=mask)
            outs.append(out.indices if generator.discrete else out.latents)
            if generator.discrete and want_latents:
                quantized.append(out.latents)
            conds.extend(batch["cond"] if batch["cond"] is not None else [None] * len(batch["x"]))
            tasks.extend(batch["task"] if batch["task"] is not None else [None] * len(batch["x"]))
    latents = torch.cat(outs)  # type: ignore[arg-type]
    # The losses skip value checks on an accelerator (paramgen._validate): check once here.
    if latents.is_floating_point() and not torch.isfinite(latents).all():
        raise NonFiniteLossError("fit: the tokenizer encoded some models to NaN or Inf latents (check the zoo for non-finite weights)")
    cond_list = None if all(c is None for c in conds) else conds
    task_list = None if all(t is None for t in tasks) else tasks
    if generator.discrete:
        generator.latent_stats = LatentStats(mean=0.0, scale=1.0)
        z = latents.reshape(len(latents), -1)  # (M, L) token ids
        return _Encoded(z, torch.cat(quantized) if quantized else None, cond_list, task_list)
    mean, std = float(latents.mean()), float(latents.std()) if latents.numel() > 1 else 1.0
    generator.latent_stats = LatentStats(mean=mean, scale=std if std > 0 else 1.0)
    return _Encoded(generator.latent_stats.standardize(latents), None, cond_list, task_list)  # (M, *latent_shape)


def _align(run: _Run, generator: Generator, enc: _Encoded) -> None:
    from paramgen.conditioners.align import align_to_latents

    if run.config.align_steps == 0:
        return
    if generator.conditioner is None or enc.conds is None:
        raise ValueError("the align stage needs a conditioner and conds")
    target = (enc.latents if generator.discrete else enc.z).flatten(1)  # type: ignore[union-attr]
    # The projection head is initialized from the global RNG: fork it, seeded, so that the
    # stage is reproducible and leaves the caller's RNG as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(run.config.seed, "align", "init"))
        g = torch.Generator().manual_seed(_seed(run.config.seed, "align", "batches"))
        losses = align_to_latents(
            generator.conditioner, enc.conds, target, groups=enc.tasks, steps=run.config.align_steps,  # type: ignore[arg-type]
            batch_size=run.config.batch_size, lr=run.config.align_lr, generator=g, progress=run.config.progress and run.main,
        )
    if run.main:
        run.log.log_metrics({"align/loss_first": losses[0], "align/loss_last": losses[-1]}, step=run.config.align_steps)
        logger.info("align step %d/%d: loss=%.4g (first step: %.4g)", run.config.align_steps, run.config.align_steps, losses[-1], losses[0])


class _Latents(torch.utils.data.Dataset):
    """Latents (on the device) with fixed condition vectors or raw conditions."""

    def __init__(self, z: torch.Tensor, c: torch.Tensor | None, raw: Sequence[Any] | None) -> None:
        self.z, self.c, self.raw = z, c, raw

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(idx, dtype=torch.long, device=self.z.device)
        return {
            "z": self.z[index],
            "c": None if self.c is None else self.c[index],
            "raw": None if self.raw is None or self.c is not None else [self.raw[i] for i in idx],
        }


def _conditions(run: _Run, generator: Generator, conds: Sequence[Any]) -> torch.Tensor:
    n, b = len(conds), run.config.encode_batch_size
    with torch.no_grad():
        c = torch.cat([generator.condition(list(conds[i : i + b])) for i in range(0, n, b)])  # type: ignore[misc]
    if not torch.isfinite(c).all():
        raise ValueError("fit: the conditioner turned some conditions into NaN or Inf vectors")
    return c


def _fit_prior(run: _Run, generator: Generator, enc: _Encoded, start: int, saved: _Saved | None, save: Callable) -> None:
    prior, conditioner = generator.prior, generator.conditioner
    z = enc.z
    cond_params = _trainable(conditioner)
    fixed = _conditions(run, generator, enc.conds) if conditioner is not None and not cond_params else None  # type: ignore[arg-type]
    if hasattr(prior, "fit"):
        c_all = fixed if fixed is not None or conditioner is None else _conditions(run, generator, enc.conds)  # type: ignore[arg-type]
        prior.fit(z, c_all)
        return
    if run.config.prior_steps == 0:
        return
    if isinstance(conditioner, nn.Module) and not cond_params:
        conditioner.eval()

    def loss(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        if batch["c"] is not None:
            c = batch["c"]
        elif conditioner is not None:
            c = generator.condition(batch["raw"])
        else:
            c = None
        return prior.loss(batch["z"], c, generator=g), {}

    parts = {"prior": prior} | ({"conditioner": conditioner} if cond_params else {})
    raw = None if conditioner is None or fixed is not None else enc.conds
    _train(
        run, "prior", _LossModule(loss, **parts), _Latents(z, fixed, raw), steps=run.config.prior_steps, lr=run.config.prior_lr,
        start=start, saved=saved, save=save, update_ema=getattr(prior, "update_ema", None),
    )


# --------------------------------------------------------------------------- fit
@attrs.frozen
class _Zoo:
    flat: torch.Tensor | Sequence[torch.Tensor] | torch.utils.data.Dataset
    conds: Sequence[Any] | None
    tasks: list[str] | None
    archs: list[str] | None

    @property
    def m(self) -> int:
        return len(self.flat)  # type: ignore[arg-type]

    @property
    def lazy(self) -> bool:
        return isinstance(self.flat, torch.utils.data.Dataset)


class _WeightItems(torch.utils.data.Dataset):
    """A `paramgen.zoo.WeightDataset` as fit's items: rows ``x``, ``mask``, ``task`` and,
    when given, one raw condition per checkpoint."""

    def __init__(self, dataset: Any, conds: Sequence[Any] | None) -> None:
        self.dataset, self.conds = dataset, conds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        out = {"x": item["values"], "mask": item["mask"], "task": item["task"]}
        return out if self.conds is None else {**out, "cond": self.conds[i]}


def _member_for(generator: Generator, spec: Any, what: str) -> str:
    """The family member of ``spec`` (by fingerprint)."""
    for key, member in generator.specs.items():
        if member.fingerprint == spec.fingerprint:
            return key
    raise ValueError(f"{what} has an architecture (spec {spec.fingerprint}) that is not a member of this family ({sorted(generator.specs)})")


def _from_zoo(generator: Generator, zoo: Any, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> tuple[Any, Sequence[str], Sequence[str] | None]:
    """A `paramgen.zoo.Zoo` view as flat vectors, its tasks and (for a family) architectures."""
    if len(zoo) == 0:
        raise ValueError(f"fit needs at least one model; the zoo view {zoo!r} is empty")
    tasks = [c.task for c in zoo] if tasks is None else tasks
    if not generator.family:
        if len(zoo.spec_ids) != 1:
            raise ValueError(
                f"this generator has one architecture, the zoo holds {len(zoo.spec_ids)} {list(zoo.spec_ids)}: "
                "fit on zoo.filter(spec_id=...), or build the generator over a FamilyVectorizer"
            )
        try:
            generator.spec.check_compatible(zoo.spec())
        except SpecMismatchError as e:
            raise SpecMismatchError(f"the zoo's checkpoints are not of the generator's architecture: {e}") from e
        return zoo.flatten()[0], tasks, None
    by_spec = {sid: zoo.filter(spec_id=sid) for sid in zoo.spec_ids}
    if archs is None:
        key_of = {sid: _member_for(generator, zoo.spec(sid), f"the zoo's spec {sid}") for sid in by_spec}
        archs = [key_of[c.spec_id] for c in zoo]
    flat: list[torch.Tensor] = [None] * len(zoo)  # type: ignore[list-item]
    where = {c: i for i, c in enumerate(zoo)}
    for view in by_spec.values():
        for c, row in zip(view, view.flatten()[0], strict=True):
            flat[where[c]] = row
    return flat, tasks, archs


def _from_state_dicts(generator: Generator, sds: Sequence[Mapping[str, torch.Tensor]], archs: Sequence[str] | None) -> tuple[Any, Sequence[str] | None]:
    """State dicts as flat vectors (each checked against its spec: the first mismatch is named)."""
    if not generator.family:
        return generator.spec.flatten(sds)[0], archs
    if archs is None:
        archs = []
        for i, sd in enumerate(sds):
            fits = [k for k, spec in generator.specs.items() if _fits(spec, sd)]
            if not fits:
                raise ValueError(f"state dict {i} matches no member of this family ({sorted(generator.specs)}); pass archs=")
            archs.append(fits[0])
    if isinstance(archs, str) or len(archs) != len(sds):
        raise ValueError(f"a family generator needs one architecture key per model ({len(sds)}), got {archs!r}"[:300])
    return [generator.specs[a].flatten([sd])[0][0] for a, sd in zip(archs, sds, strict=True)], archs


def _fits(spec: Any, sd: Mapping[str, torch.Tensor]) -> bool:
    try:
        spec.check_state_dict(sd)
    except SpecMismatchError:
        return False
    return True


_Inputs = tuple[Any, Sequence[Any] | None, Sequence[str] | None, Sequence[str] | None]


def _takes_task_names(conditioner: Any) -> bool:
    """Whether raw conditions are task names (an `IndexConditioner`), so a zoo's tasks can serve as them."""
    from paramgen.conditioners.index import IndexConditioner

    return isinstance(conditioner, IndexConditioner)


def _inputs(generator: Generator, data: Any, conds: Sequence[Any] | None, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> _Inputs:
    """A `Zoo`, a `WeightDataset` or state dicts turned into what the stages take."""
    from paramgen.zoo.store import WeightDataset, Zoo

    if isinstance(data, Zoo):
        flat, tasks, archs = _from_zoo(generator, data, tasks, archs)
        if conds is None and _takes_task_names(generator.conditioner):
            conds = list(tasks)  # a task-indexed generator: the checkpoints' tasks are their conditions
        return flat, conds, tasks, archs
    if isinstance(data, WeightDataset):
        if tasks is not None or archs is not None:
            raise ValueError("with a WeightDataset, tasks come from its checkpoints: pass tasks and archs as None")
        if generator.family:
            raise ValueError("a family generator fits on a Zoo (all architectures) or flat vectors with archs=, not on a WeightDataset")
        try:
            generator.spec.check_compatible(data.vectorizer.spec)
        except SpecMismatchError as e:
            raise SpecMismatchError(f"the WeightDataset is not of the generator's architecture: {e}") from e
        if (data.vectorizer.rows, data.vectorizer.width) != (generator.vectorizer.rows, generator.vectorizer.width):
            raise ValueError(
                f"the WeightDataset lays models out as ({data.vectorizer.rows}, {data.vectorizer.width}) rows, the generator as "
                f"({generator.vectorizer.rows}, {generator.vectorizer.width}): build it with the generator's vectorizer"
            )
        if data.normalizer is not None:
            raise ValueError("build the WeightDataset with normalizer=None: fit fits the generator's own normalizer")
        if conds is not None and len(conds) != len(data):
            raise ValueError(f"expected one raw condition per checkpoint ({len(data)}), got {len(conds)}")
        if generator.normalizer is not None:  # its statistics need every model at once: the zoo's fast path
            flat, tasks, _ = _from_zoo(generator, data.zoo, None, None)
            return flat, conds, tasks, None
        return _WeightItems(data, conds), None, None, None
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 0 and all(isinstance(d, Mapping) for d in data):
        flat, archs = _from_state_dicts(generator, data, archs)
        return flat, conds, tasks, archs
    return data, conds, tasks, archs


def _check_zoo(generator: Generator, flat: Any, conds: Sequence[Any] | None, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> _Zoo:
    if isinstance(flat, torch.utils.data.Dataset):
        if conds is not None or tasks is not None or archs is not None:
            raise ValueError("with a dataset, conditions and tasks come from its items ('cond', 'task'); pass conds, tasks and archs as None")
        if generator.family:
            raise ValueError("a family generator fits on flat vectors with archs=, not on a dataset")
        if generator.normalizer is not None:
            raise ValueError(
                "a dataset gives rows as the tokenizer sees them (normalized): build the generator with normalizer=None "
                "and normalize in the dataset"
            )
        try:
            m = len(flat)  # type: ignore[arg-type]
        except TypeError as e:
            raise TypeError(f"fit needs a map-style dataset with a length, got {type(flat).__name__}") from e
        if m == 0:
            raise ValueError("fit needs at least one model; the dataset is empty")
        return _Zoo(flat, None, None, None)
    if isinstance(flat, torch.Tensor):
        m = flat.shape[0] if flat.ndim >= 1 else 0
    elif isinstance(flat, Sequence) and all(isinstance(f, torch.Tensor) for f in flat):
        m = len(flat)
    else:
        raise TypeError(
            "fit expects a paramgen.zoo.Zoo, a WeightDataset, a sequence of state dicts, (M, D) flat weight vectors, "
            f"a sequence of flat vectors (a family) or a map-style dataset; got {type(flat).__name__}"
        )
    if m == 0:
        raise ValueError("fit needs at least one model; the zoo is empty")
    arch_list = generator._check_archs(archs, m)
    if arch_list is None:
        generator._check_flat(flat)
    if generator.conditioner is not None and (conds is None or len(conds) != m):
        raise ValueError(f"expected one raw condition per weight vector ({m}), got {None if conds is None else len(conds)}")
    if generator.conditioner is None and conds is not None:
        raise ValueError("this generator is unconditional; pass conds=None")
    if tasks is not None and len(tasks) != m:
        raise ValueError(f"expected one task name per weight vector ({m}), got {len(tasks)}")
    return _Zoo(flat, conds, None if tasks is None else list(tasks), arch_list)


def _fingerprint(generator: Generator, zoo: _Zoo, config: FitConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    keep = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every", "checkpoint_dir", "progress", "num_workers", "log_every")}
    if zoo.lazy:
        size = [zoo.m, generator.vectorizer.rows, generator.vectorizer.width]
    elif zoo.archs is not None:
        size = [int(f.numel()) for f in zoo.flat][:1]  # type: ignore[union-attr]
    else:
        size = list(zoo.flat.shape)  # type: ignore[union-attr]
    return {"config": keep, "models": zoo.m, "size": size, "components": {r: type(p).__name__ for r, p in generator._components().items()}}


def fit(
    generator: Generator,
    flat: Any,
    conds: Sequence[Any] | None = None,
    *,
    config: FitConfig | None = None,
    tasks: Sequence[str] | None = None,
    archs: Sequence[str] | None = None,
    predictor: nn.Module | None = None,
    tracker: Logger | None = None,
    resume: str | os.PathLike | None = None,
    accelerator: Any = None,
) -> Generator:
    """Fit every stage of ``generator`` on a zoo, on the generator's device.

    Args:
        generator: The pipeline to fit (moved to a device beforehand with
            `paramgen.Generator.to`, or by the accelerator).
        flat: The zoo. A `paramgen.zoo.Zoo` view (all its checkpoints; its tasks are the
            ``tasks`` when those are not given, and the ``conds`` too when the conditioner is
            an `paramgen.conditioners.IndexConditioner` over task names; a family generator takes each
            checkpoint's architecture from its spec), a `paramgen.zoo.WeightDataset`
            built with the generator's vectorizer and ``normalizer=None`` (read lazily when
            the generator has no normalizer), or a sequence of state dicts (each checked
            against the spec; the first mismatching tensor is named). Or ``(M, D)`` weight vectors in spec order (e.g. ``Zoo.flatten()[0]``), kept
            on the CPU: batches move to the device one at a time. For a family, a
            sequence of ``M`` flat vectors of their own architectures. Or a map-style
            ``torch.utils.data.Dataset`` read lazily, whose items are dicts with ``"x"``
            (the ``(N, C)`` rows of one model as the tokenizer sees them: vectorized and
            normalized), and optionally ``"mask"`` (``(N, C)`` bool), ``"cond"`` (its raw
            condition) and ``"task"``; the normalizer stage is then the dataset's business
            (build the generator with ``normalizer=None``).
        conds: One raw condition per model, for the conditioner.
        config: Steps, optimizer, schedule, precision, checkpoints.
        tasks: Task name per model (a per-task normalizer; contrastive groups).
        archs: For a family: the architecture key of each model.
        predictor: Frozen accuracy predictor for the predictor-guided VAE loss.
        tracker: Receives losses every ``config.log_every`` steps (process 0 only); the
            same values go to the ``paramgen.training`` logger at INFO.
        resume: A checkpoint folder of an interrupted run with the same data and config,
            or the ``checkpoint_dir`` holding it; the run continues from it.
        accelerator: An ``accelerate.Accelerator`` for data-parallel fitting; created
            automatically when the process was started by ``torchrun`` or
            ``accelerate launch`` with more than one process.

    Returns:
        The fitted ``generator`` (in eval mode).

    ``config.prior_steps=0`` skips the prior stage: a generator whose prior learns by
    gradient steps is then not marked fitted (unless it was before), so it cannot sample
    from an untrained prior. ``tokenizer_steps=0`` keeps the tokenizer as it is (to reuse
    a fitted one).

    Raises:
        NonFiniteLossError: A loss became NaN or Inf (the message names stage and step).
        CheckpointError: ``resume`` is not a checkpoint of this run.
        ValueError: An empty zoo; conditions, tasks or architectures that do not match it.
        paramgen.spec.SpecMismatchError: Weights of another architecture.
    """
    config = config or FitConfig()
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    generator.check_fittable()
    flat, conds, tasks, archs = _inputs(generator, flat, conds, tasks, archs)
    zoo = _check_zoo(generator, flat, conds, tasks, archs)
    run = _Run(generator, config, tracker, accelerator)
    fingerprint = _fingerprint(generator, zoo, config)
    saved: _Saved | None = None
    if resume is not None:
        path = Path(resume)
        if (path / _LATEST).exists():
            path = latest_checkpoint(path)  # type: ignore[assignment]
        saved = _Saved(path)
        if saved.meta["fit"] != fingerprint:
            diff = sorted(k for k in fingerprint if saved.meta["fit"].get(k) != fingerprint[k])
            raise CheckpointError(f"{path} is a checkpoint of another run (it differs in {', '.join(diff)}); resume with the same data, components and config")
        saved.restore_generator(generator)
        logger.info("resuming from %s (stage %s, step %d)", path, saved.stage, saved.step)
    at = STAGES.index(saved.stage) if saved is not None else 0
    step_in = saved.step if saved is not None else 0

    def saver(stage: str) -> Callable[..., None]:
        def save(step: int, loop: dict[str, Any] | None = None) -> None:
            if config.checkpoint_dir is not None:
                _write_checkpoint(run, generator, fingerprint, stage, step, loop)

        return save

    def resumed(stage: str) -> tuple[int, _Saved | None]:
        """Where a stage starts: mid-stage only in the stage the checkpoint stopped in."""
        if saved is not None and STAGES[at] == stage and not saved.done:
            return step_in, saved
        return 0, None

    def finished(stage: str) -> bool:
        return saved is not None and (STAGES.index(stage) < at or (STAGES.index(stage) == at and saved.done))

    # The stages. Deterministic ones (normalizer statistics, encoding) are recomputed on
    # resume; an interrupted alignment starts over from the tokenizer-end checkpoint.
    rows: torch.utils.data.Dataset
    if zoo.lazy:
        rows = zoo.flat  # type: ignore[assignment]
    else:
        _fit_normalizer(generator, zoo)
        x, mask = generator._rows(zoo.flat, zoo.tasks, zoo.archs)  # type: ignore[arg-type]  # (M, N, C) on the CPU
        rows = _Rows(x, mask, zoo.conds, zoo.tasks)
    if not finished("tokenizer"):
        start, state = resumed("tokenizer")
        _fit_tokenizer(run, generator, rows, predictor, start, state, saver("tokenizer"))
        saver("tokenizer")(config.tokenizer_steps)
    enc = _encode(run, generator, rows, want_latents=config.align_steps > 0)
    if zoo.lazy:
        if generator.conditioner is not None and (enc.conds is None or any(c is None for c in enc.conds)):
            raise ValueError("this generator is conditioned: every dataset item needs a 'cond'")
        if generator.conditioner is None and enc.conds is not None:
            raise ValueError("this generator is unconditional, but the dataset items carry a 'cond'")
    if not finished("align") and config.align_steps > 0:
        _align(run, generator, enc)
        saver("align")(config.align_steps)
    if not finished("prior"):
        start, state = resumed("prior")
        _fit_prior(run, generator, enc, start, state, saver("prior"))
    for part in _modules(generator.tokenizer, generator.prior, generator.conditioner):
        part.eval()
    # prior_steps=0 skips the stage: a prior that learns by gradient steps is then not
    # fitted by this run, and the generator is marked fitted only if it already was.
    trained = hasattr(generator.prior, "fit") or not _trainable(generator.prior) or config.prior_steps > 0
    if not trained and not generator.fitted:
        logger.warning("fit: prior_steps=0 left the %s untrained; the generator is not marked fitted", type(generator.prior).__name__)
    generator.fitted = generator.fitted or trained
    return generator
