"""The gradient loop shared by the stages: run (devices, processes, precision), seeded
step sampling and loaders, AdamW with warmup and cosine or constant decay, clipping, EMA,
autocast, accumulation, logging and the NaN/Inf check."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sized
from typing import Any, Protocol, cast

import torch
from torch import nn

from paramgen.generator import Generator
from paramgen.layout import collate
from paramgen.tracking import Logger, NullLogger
from paramgen.training.config import FitConfig, NonFiniteLossError

__all__ = ["Run", "Ema", "LossModule", "LoopState", "gradient_loop", "stream_seed", "modules_of", "trainable_parameters"]

logger = logging.getLogger("paramgen.training")


class LoopState(Protocol):
    """A checkpoint's loop states, restored into a stage's optimizer, scheduler, EMA and
    gradient scaler (`paramgen.training.checkpoint.Saved`; the engine does not import it)."""

    def restore_loop(self, opt: torch.optim.Optimizer, sched: Any, ema: Ema | None, scaler: Any) -> None: ...


def stream_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple: independent streams per (seed, stage, step, slot)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def modules_of(*parts: Any) -> list[nn.Module]:
    """The parts that are ``nn.Module``s."""
    return [p for p in parts if isinstance(p, nn.Module)]


def trainable_parameters(*parts: Any) -> list[nn.Parameter]:
    """The parameters of the parts that require gradients (frozen ones are left out)."""
    return [p for m in modules_of(*parts) for p in m.parameters() if p.requires_grad]


class Run:
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
        return self._noise.manual_seed(stream_seed(self.config.seed, stage, step, slot, "noise"))

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


class _StepSampler(torch.utils.data.Sampler[list[int]]):
    """Index micro-batches of this process for steps ``start+1 .. steps``, drawn with
    replacement from a generator seeded by (seed, stage, step): any step can be
    reproduced on its own, which is what makes resuming exact."""

    def __init__(self, m: int, batch: int, run: Run, stage: str, start: int, steps: int) -> None:
        self.m, self.batch, self.run, self.stage, self.start, self.steps = m, batch, run, stage, start, steps
        self.micro = batch // (run.world * run.config.grad_accum)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.run.config.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator()
        for step in range(self.start + 1, self.steps + 1):
            g.manual_seed(stream_seed(self.run.config.seed, self.stage, step, "batch"))
            idx = torch.randint(0, self.m, (self.batch,), generator=g)  # the global batch
            for slot in self.run.slots():
                yield idx[slot * self.micro : (slot + 1) * self.micro].tolist()


def _global_batch(run: Run, m: int, stage: str) -> int:
    b = min(run.config.batch_size, m)
    parts = run.world * run.config.grad_accum
    if b % parts:
        raise ValueError(
            f"the {stage} stage's global batch ({b} = min(batch_size, {m} models)) must split evenly into "
            f"{run.world} processes x {run.config.grad_accum} accumulation steps"
        )
    return b


def _collate(items: Any) -> dict[str, Any]:
    """`paramgen.layout.collate`, keeping the items' other entries as lists: a positional
    tokenizer's ``"position"``, the ``"checkpoint"`` and ``"chunk"`` a behavioural loss reads
    (`paramgen.chunkwise.ChunkSamples`' items carry them)."""
    batch = collate(items)
    if not isinstance(items, dict):
        for key in items[0]:
            if key not in batch:
                batch[key] = [it.get(key) for it in items]
    return batch


def _loader(dataset: torch.utils.data.Dataset, sampler: _StepSampler, run: Run) -> Iterator[Any]:
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


class Ema:
    """An exponential moving average of ``params`` (``FitConfig.ema_decay``), copied into them at the end of a stage."""

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


class LossModule(nn.Module):
    """One stage's trainable parts behind ``forward`` (so DDP can wrap the stage).

    Attributes:
        step: The optimizer step whose micro-batches are being computed (1-based; set by
            `gradient_loop`), for losses with terms on some steps only.
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, dict[str, Any]]], **parts: Any) -> None:  # parts: nn.Modules held as protocol types
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.fn = fn
        self.step = 0

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.fn(batch, generator)


def gradient_loop(
    run: Run,
    stage: str,
    module: LossModule,
    dataset: torch.utils.data.Dataset,
    *,
    steps: int,
    lr: float,
    start: int,
    saved: LoopState | None,
    save: Callable[[int, dict[str, Any]], None],
    update_ema: Callable[[], None] | None = None,
) -> None:
    """The gradient loop shared by the tokenizer and prior stages."""
    from tqdm.auto import tqdm

    config = run.config
    params = [p for p in module.parameters() if p.requires_grad]
    m = len(cast(Sized, dataset))  # fit checked that the dataset has a length
    batch = _global_batch(run, m, stage)
    opt = torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(config, steps))
    ema = Ema(params, config.ema_decay) if config.ema_decay > 0 and update_ema is None else None
    scaler = torch.amp.GradScaler(run.device.type) if config.precision == "fp16" else None
    if saved is not None:
        saved.restore_loop(opt, sched, ema, scaler)
    model = run.wrap(module)
    model.train()
    first_bad = torch.full((), -1, dtype=torch.long, device=run.device)
    data = _loader(dataset, _StepSampler(m, batch, run, stage, start, steps), run)
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
        module.step = step
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
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
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

