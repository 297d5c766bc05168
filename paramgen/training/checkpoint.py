"""Fit checkpoints: every component's weights, the loop states and the position, as
safetensors + JSON, written to a new folder that replaces the last one only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.generator import Generator
from paramgen.interfaces import LatentStats
from paramgen.io import read_json, save_safetensors, write_json
from paramgen.training.config import STAGES, CheckpointError
from paramgen.training.engine import Ema, Run

__all__ = ["latest_checkpoint", "Saved", "write_checkpoint", "LATEST"]

CHECKPOINT_FORMAT = "paramgen.fit-checkpoint"
CHECKPOINT_VERSION = 1
LATEST = "latest.json"


class Saved:
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
        for role, part in generator.components.items():
            if isinstance(part, nn.Module):
                state = self._sub(f"generator.{role}.")
                device = generator.device
                part.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
        # Which weights were frozen (e.g. a conditioner after alignment) is no part of a
        # state dict, but decides what the next stage trains.
        for role, names in self.meta.get("frozen", {}).items():
            part = generator.components.get(role)
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

    def restore_loop(self, opt: torch.optim.Optimizer, sched: Any, ema: Ema | None, scaler: Any) -> None:
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
    if not (directory / LATEST).exists():
        return None
    name = read_json(directory / LATEST)["checkpoint"]
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise CheckpointError(f"{directory}/{LATEST} names an invalid checkpoint {name!r}")
    return directory / name


def _json_value(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def write_checkpoint(run: Run, generator: Generator, fingerprint: dict[str, Any], stage: str, step: int, loop: Mapping[str, Any] | None) -> None:
    """Write a checkpoint folder, then point ``latest.json`` at it, then drop the older ones.

    ``loop`` (optimizer, scheduler, EMA, scaler) is given mid-stage; without it the
    checkpoint marks the end of ``stage``.
    """
    if not run.main:
        run.barrier()
        return
    assert run.config.checkpoint_dir is not None  # the caller writes checkpoints only then
    root = Path(run.config.checkpoint_dir)
    name = f"checkpoint-{STAGES.index(stage)}-{stage}-{'done' if loop is None else f'{step:08d}'}"
    tensors: dict[str, torch.Tensor] = {}
    for role, part in generator.components.items():
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
            for role, part in generator.components.items()
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
    write_json(root / LATEST, {"checkpoint": name})
    if previous is not None and previous.name != name and previous.exists():
        shutil.rmtree(previous)
    run.barrier()

