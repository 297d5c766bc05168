"""A short, explicit training loop for the classifiers of a zoo.

Examples:
    >>> import torch
    >>> from paramgen.data import get_task
    >>> from paramgen.models import build_model
    >>> task = get_task("digits/0-1", max_train_per_class=20)
    >>> model = build_model("mlp", in_features=64, hidden=[16], num_classes=2)
    >>> snaps = train_classifier(model, task, TrainConfig(epochs=2), seed=0, keep_epochs=[2])
    >>> [s.epoch for s in snaps], sorted(snaps[0].metrics)[:2]
    ([2], ['test_acc', 'test_loss'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from paramgen.data import Split, Task

__all__ = ["TrainConfig", "Snapshot", "train_classifier", "evaluate", "predict_many"]


@attrs.frozen
class TrainConfig:
    """Hyperparameters of one training run (recorded in the zoo manifest)."""

    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9

    def __attrs_post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")


@attrs.frozen(eq=False)
class Snapshot:
    """Weights and metrics of a model after ``epoch`` epochs."""

    epoch: int
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 1024) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``split`` (eval mode, restored after)."""
    if isinstance(split.x, tuple):
        raise TypeError("evaluate() takes tensor inputs; text tasks need a text model")
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, len(split)
    for i in range(0, n, batch_size):
        logits = model(split.x[i : i + batch_size])
        y = split.y[i : i + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return correct / n, loss / n


def train_classifier(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    *,
    seed: int,
    keep_epochs: Sequence[int],
    init: bool = True,
    eval_splits: Mapping[str, Split] | None = None,
) -> list[Snapshot]:
    """Train ``model`` on ``task.train``; return snapshots after the ``keep_epochs``.

    Randomness (initialization when ``init``, batch order) comes from ``seed`` alone:
    the global RNG is forked, so the caller's random state is left untouched.

    Metrics of each snapshot: ``{train,val,test}_{acc,loss}`` on the full splits, or
    ``{name}_{acc,loss}`` on the splits of ``eval_splits`` when it is given.
    """
    keep = sorted(set(keep_epochs))
    if not keep or keep[0] < 1 or keep[-1] > config.epochs:
        raise ValueError(f"keep_epochs must lie in 1..{config.epochs}, got {list(keep_epochs)}")
    if isinstance(task.train.x, tuple):
        raise TypeError(f"task {task.name!r} is text; zoo training here takes image or signal tasks")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if init:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()  # type: ignore[operator]  # hasattr-checked method; nn.Module.__getattr__ types it Tensor | Module
        g = torch.Generator().manual_seed(seed)
        params: Any = model.parameters()
        if config.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        x, y = task.train.x, task.train.y
        snapshots = []
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), config.batch_size):
                idx = order[i : i + config.batch_size]
                if len(idx) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                    continue  # BatchNorm cannot train on a batch of one
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch in keep:
                metrics: dict[str, float] = {}
                splits = eval_splits if eval_splits is not None else {s: task.split(s) for s in ("train", "val", "test")}
                for split_name, split in splits.items():
                    acc, split_loss = evaluate(model, split)
                    metrics[f"{split_name}_acc"], metrics[f"{split_name}_loss"] = acc, split_loss
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                snapshots.append(Snapshot(epoch=epoch, state_dict=state, metrics=metrics))
    return snapshots


@torch.no_grad()
def predict_many(
    model: nn.Module,
    state_dicts: dict[str, torch.Tensor],
    split: Split,
    *,
    batch_size: int = 2048,
) -> torch.Tensor:
    """Predictions of many weight sets of one architecture at once: ``(G, T)`` labels.

    Args:
        model: A module of the architecture (its own weights are not used).
        state_dicts: Stacked tensors ``name -> (G, *shape)`` (e.g. ``ParamSpec.unflatten_stacked``).
        split: Inputs to predict (tensor inputs).

    The models run in eval mode through ``torch.func.vmap`` over ``functional_call``:
    one pass per batch of inputs instead of one per model.
    """
    from torch.func import functional_call, vmap

    if isinstance(split.x, tuple):
        raise TypeError("predict_many() takes tensor inputs")
    was_training = model.training
    model.eval()
    names = [n for n, t in state_dicts.items() if t.is_floating_point()]
    stacked = {n: state_dicts[n] for n in names}

    def run(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (x,), strict=False).argmax(-1)

    preds = [vmap(run, in_dims=(0, None))(stacked, split.x[i : i + batch_size]) for i in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(preds, dim=1)  # (G, T)
