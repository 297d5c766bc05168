"""Baselines for adapters of unseen tasks: nearest seen task, multi-task LoRA, a fitted composition.

What a generated adapter for a task outside the zoo has to beat, each built only from the
seen tasks' adapters or data and from what the condition (or the selection data the
generator's best-of-n uses) holds:

- `nearest_tasks`: the seen tasks ranked by cosine similarity of condition vectors (no
  data of the new task beyond its condition);
- `train_multitask_lora`: one LoRA shared by all seen tasks, one head per task (the new
  task borrows the head of its nearest seen task);
- `fit_composition`: LoraHub-style weights over seen adapters, fitted by gradient descent
  on a few labelled examples of the new task, with an L1 penalty.

Examples:
    >>> import torch
    >>> seen = torch.eye(3)
    >>> nearest_tasks(torch.tensor([[0.9, 0.1, 0.0]]), seen).tolist()
    [[0, 1, 2]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from paramgen.lora.minilm import Features, MiniLMLoRA
from paramgen.lora.setup import _HEAD, _PREFIX, pad_head, unpad_head

__all__ = ["nearest_tasks", "train_multitask_lora", "fit_composition"]


def nearest_tasks(query: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Seen tasks ranked by cosine similarity to each query condition, nearest first.

    Args:
        query: ``(Q, dim)`` condition vectors of the new tasks.
        seen: ``(S, dim)`` condition vectors of the seen tasks.

    Returns:
        ``(Q, S)`` long: indices into ``seen``.

    Raises:
        ValueError: The widths differ or ``seen`` is empty.
    """
    if query.ndim != 2 or seen.ndim != 2 or query.shape[1] != seen.shape[1] or seen.shape[0] == 0:
        raise ValueError(f"nearest_tasks: expected (Q, dim) and (S >= 1, dim) condition vectors, got {tuple(query.shape)} and {tuple(seen.shape)}")
    sim = F.normalize(query.float(), dim=1) @ F.normalize(seen.float().to(query.device), dim=1).T  # (Q, S)
    return sim.argsort(dim=1, descending=True, stable=True)


def train_multitask_lora(
    model: MiniLMLoRA,
    feats: Sequence[Features],
    labels: Sequence[torch.Tensor],
    num_labels: Sequence[int],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    generator: torch.Generator,
    init: Mapping[str, torch.Tensor] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """One LoRA shared by several tasks, one head per task, trained with AdamW on cached features.

    Each step takes one batch of one task, the tasks in turn.

    Args:
        model: The base model.
        feats: Cached training features of each task.
        labels: Their labels.
        num_labels: Each task's number of labels.
        steps: Optimizer steps in all (``steps / len(feats)`` per task).
        batch_size: Texts per step.
        lr: AdamW learning rate (no weight decay).
        generator: Draws the batches (and the initialization without ``init``).
        init: A starting adapter (its head's first rows start every task's head).

    Returns:
        ``(adapters, losses)``: per task the shared LoRA with the task's head (padded to
        ``max_labels`` rows), and the loss of every step.

    Raises:
        ValueError: The task lists differ in length, or are empty.
    """
    if not (len(feats) == len(labels) == len(num_labels)) or not feats:
        raise ValueError(f"train_multitask_lora: expected as many features, labels and label counts (>= 1), got {len(feats)}, {len(labels)}, {len(num_labels)}")
    start = dict(init) if init is not None else model.init_adapter(max(num_labels), generator=generator)
    head_w, head_b = _PREFIX + _HEAD[0], _PREFIX + _HEAD[1]
    shared = {k: v.clone().requires_grad_(True) for k, v in start.items() if k not in (head_w, head_b)}
    heads = [{head_w: start[head_w][:k].clone().requires_grad_(True), head_b: start[head_b][:k].clone().requires_grad_(True)} for k in num_labels]
    opt = torch.optim.AdamW([*shared.values(), *(p for h in heads for p in h.values())], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        t = step % len(feats)
        n = len(feats[t])
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).tolist()
        h, mask = feats[t].batch(idx)
        loss = F.cross_entropy(model.forward({**shared, **heads[t]}, h, mask), labels[t][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out = [pad_head({k: v.detach().clone() for k, v in {**shared, **head}.items()}, model.setup) for head in heads]
    return out, losses


def fit_composition(
    model: MiniLMLoRA,
    adapters: Sequence[Mapping[str, torch.Tensor]],
    feats: Features,
    labels: torch.Tensor,
    num_labels: int,
    *,
    steps: int = 50,
    lr: float = 0.05,
    l1: float = 0.01,
    batch_size: int = 128,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LoraHub-style composition: ``sum_i w_i adapter_i`` with ``w`` fitted on labelled examples.

    Every tensor (LoRA A, LoRA B and the head) is the same weighted sum of the seen
    adapters' tensors. ``w`` starts uniform (``1 / M``) and is fitted with Adam on the
    cross-entropy of the examples plus ``l1 * |w|_1`` (LoraHub's regularizer), on batches
    of at most ``batch_size`` examples.

    Args:
        model: The base model.
        adapters: ``M`` seen adapters (heads padded to the same rows).
        feats: Cached features of the labelled examples.
        labels: Their labels.
        num_labels: The new task's number of labels (the heads are cut to it).
        steps: Adam steps.
        lr: Adam learning rate.
        l1: L1 penalty on the weights.
        batch_size: Examples per step.
        generator: Draws the batches.

    Returns:
        ``(weights (M,), adapter)``: the fitted weights and the composed adapter (head
        padded as the inputs').

    Raises:
        ValueError: No adapters, or no examples.
    """
    if not adapters or len(feats) == 0 or len(feats) != len(labels):
        raise ValueError(f"fit_composition: expected >= 1 adapter and as many labels as examples (>= 1), got {len(adapters)} adapters, {len(feats)} examples, {len(labels)} labels")
    stacked = {k: torch.stack([a[k] for a in adapters]) for k in adapters[0]}  # name -> (M, *shape)
    first = next(iter(stacked.values()))
    w = torch.full((len(adapters),), 1.0 / len(adapters), device=first.device, dtype=first.dtype, requires_grad=True)  # on the adapters' device
    opt = torch.optim.Adam([w], lr=lr)

    def compose(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.tensordot(weights, v, dims=1) for k, v in stacked.items()}

    n = len(feats)
    for _ in range(steps):
        idx = torch.randperm(n, generator=generator)[:batch_size].tolist()
        h, mask = feats.batch(idx)
        logits = model.forward(unpad_head(compose(w), num_labels), h, mask)
        loss = F.cross_entropy(logits, labels[idx]) + l1 * w.abs().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = w.detach().clone()
    return final, {k: v.detach() for k, v in compose(final).items()}
