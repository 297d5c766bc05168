"""``paramgen eval``: a generator's samples against the zoo's originals and the memorization
baselines of `paramgen.novelty`, task by task, on each task's test split.

Per task, with ``n`` models per method:

- ``originals``: the zoo's checkpoints of the task, re-evaluated;
- ``generated``: samples conditioned on the task;
- ``noisy_checkpoint``: random originals plus noise scaled per tensor, its level matched so
  that the median distance to the nearest zoo checkpoint equals the generated models'
  (`paramgen.novelty.matched_sigma`);
- ``checkpoint_mean``: averages of ``min(16, originals)`` random originals;
- ``gaussian``: per-coordinate Gaussians fitted to the originals.

Every model gets its test accuracy, its L2 distance to the nearest zoo checkpoint
(`paramgen.novelty.nearest_l2`) and the overlap of its wrong predictions with an
original's (`paramgen.novelty.wrong_prediction_iou`). An unconditional generator's
samples are scored on every task and its baselines drawn from the whole zoo.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from paramgen.cli.recipe import CONDITIONS
from paramgen.data import get_task
from paramgen.data.task import Split
from paramgen.io import read_json
from paramgen.normalize import PerTaskZScore
from paramgen.novelty import checkpoint_mean, elementwise_gaussian, matched_sigma, nearest_l2, noisy_checkpoints, tensor_scale, wrong_prediction_iou
from paramgen.zoo import EmptyZooError, Zoo
from paramgen.zoo.train import predict_many

__all__ = ["METHODS", "EvalError", "evaluate_generator", "format_table", "test_split"]

#: The rows of a task, in table order: the originals, the generator, the baselines.
METHODS = ("originals", "generated", "noisy_checkpoint", "checkpoint_mean", "gaussian")
_HEADERS = {"originals": "originals", "generated": "generated", "noisy_checkpoint": "noisy ckpt", "checkpoint_mean": "ckpt mean", "gaussian": "gaussian"}
_SOUP = 16  # checkpoints per average (Zeng et al.'s "mean of 16"), or all a task has


class EvalError(ValueError):
    """A generator and a zoo (or options) that cannot be scored together."""


def test_split(zoo: Zoo, task: str) -> Split:
    """The test split the zoo's runs of ``task`` were scored on: a built-in dataset's task,
    with the run's ``max_eval_per_class`` cap.

    Raises:
        EvalError: ``task`` is not a task of paramgen's datasets (a zoo of imported
            checkpoints, or one built on tasks of your own).
    """
    run_id = next(c.run_id for c in zoo if c.task == task)
    record = read_json(zoo.root / "runs" / f"{run_id}.json")
    try:
        return get_task(task, max_eval_per_class=record.get("max_eval_per_class")).test
    except ValueError as e:
        raise EvalError(f"cannot score task {task!r}: eval tests on paramgen's built-in datasets ({e})") from e


def _accuracy(model: torch.nn.Module, spec: Any, flat: torch.Tensor, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy ``(G,)`` and predictions ``(G, T)`` of weight vectors ``(G, D)``."""
    preds = predict_many(model, spec.unflatten_stacked(flat.float()), split)
    return (preds == split.y).double().mean(1), preds


def _check(generator: Any, zoo: Zoo) -> None:
    if generator.family:
        raise EvalError("eval scores a generator of one architecture; this one serves a family")
    if len(zoo.spec_ids) != 1:
        raise EvalError(f"eval needs a zoo of one architecture; this one holds {len(zoo.spec_ids)}")
    if generator.spec.fingerprint != zoo.spec().fingerprint:
        raise EvalError(
            f"the generator makes weights of another architecture than the zoo's (spec {generator.spec.fingerprint} vs {zoo.spec().fingerprint}); "
            "pass the zoo it was fitted on"
        )


def evaluate_generator(
    generator: Any,
    zoo: Zoo | str | Path,
    *,
    n: int = 8,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    condition: str | None = None,
    batch_size: int = 256,
    sample_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``generator`` on the tasks of ``zoo`` next to its originals and the baselines.

    Args:
        generator: A fitted `paramgen.Generator` of the zoo's architecture.
        zoo: The zoo it was fitted on (a folder or an open `paramgen.zoo.Zoo`).
        n: Models per method and task (samples per task).
        seed: Seeds sampling (as ``paramgen sample --seed``) and, apart, the baselines.
        tasks: The tasks to score (default: all of the zoo's).
        condition: What the generator is conditioned on, read from a task's first
            checkpoint (`paramgen.cli.recipe.CONDITIONS`); default ``"task"``, or
            ``"none"`` for an unconditional generator.
        batch_size: Models decoded at once.
        sample_kwargs: Sampling options for the prior (``sampler=``, ``steps=``, ...).

    Returns:
        A JSON-ready report: the settings, per task the per-model ``test_acc``,
        ``novelty_l2`` and ``wrong_iou`` of each of `METHODS` (with the noise level and
        the number of checkpoints averaged), and ``mean``: per method the mean over tasks
        of the task means.

    Raises:
        EvalError: a family generator, another architecture than the zoo's, an unknown
            task or condition, or a task that is not a built-in dataset's.
    """
    if not isinstance(zoo, Zoo):
        try:
            zoo = Zoo.open(zoo)
        except (FileNotFoundError, EmptyZooError) as e:
            raise EvalError(str(e)) from e
    _check(generator, zoo)
    names = list(zoo.tasks) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in zoo.tasks]
    if unknown:
        raise EvalError(f"task {unknown[0]!r} is not in the zoo; its tasks: {', '.join(zoo.tasks[:10])}{' ...' if len(zoo.tasks) > 10 else ''}")
    conditioned = generator.conditioner is not None
    condition = condition or ("task" if conditioned else "none")
    if condition not in CONDITIONS:
        raise EvalError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    if (condition == "none") == conditioned:
        raise EvalError("this generator is conditioned: pass --condition task, text or text+arch" if conditioned else "this generator is unconditional: omit --condition")
    splits = {t: test_split(zoo, t) for t in names}  # every task checked before any sampling
    first = {t: next(c for c in zoo if c.task == t) for t in names}
    try:
        nets = {t: zoo.model(first[t]) for t in names}  # runs the weights of each task
    except ValueError as e:
        raise EvalError(str(e)) from e
    read = CONDITIONS[condition]
    conds = None if read is None else [read(first[t]) for t in names]
    if conds is not None:
        try:
            generator.condition(conds)
        except (KeyError, ValueError, TypeError) as e:
            raise EvalError(f"the generator does not take the zoo's {condition!r} conditions: {e}") from e

    spec = zoo.spec()
    flat, _ = zoo.flatten()  # (M, D)
    owner = [c.task for c in zoo]
    options = dict(sample_kwargs or {})
    rng = torch.Generator(device=generator.device).manual_seed(seed)  # as `paramgen sample --seed`
    per_task = conditioned and isinstance(generator.normalizer, PerTaskZScore)  # it needs the task of each condition
    drawn = generator.sample_flat(conds, n, generator=rng, tasks=names if per_task else None, batch_size=batch_size, **options)
    assert isinstance(drawn, torch.Tensor)  # one architecture: one (B * n, D) tensor
    samples = drawn.float().cpu()  # (len(names) * n, D), task by task; unconditional: (n, D)
    scale = tensor_scale(spec, flat)
    baselines = torch.Generator().manual_seed(seed)
    report: dict[str, Any] = {
        "zoo": str(zoo.root), "condition": condition, "samples_per_task": n, "seed": seed, "sampling": options, "methods": list(METHODS), "tasks": {},
    }  # fmt: skip
    for i, task in enumerate(names):
        own = flat[[j for j, t in enumerate(owner) if t == task]]  # (M_t, D)
        pool = own if conditioned else flat  # where the baselines draw from
        generated = samples[i * n : (i + 1) * n] if conditioned else samples
        distance = float(nearest_l2(generated, flat)[0].median())
        sigma = matched_sigma(pool, distance, scale=scale, generator=baselines) if distance > 0 else 0.0
        k = min(_SOUP, len(pool))
        models = {
            "originals": own,
            "generated": generated,
            "noisy_checkpoint": noisy_checkpoints(pool, n, sigma=sigma, scale=scale, generator=baselines)[0],
            "checkpoint_mean": checkpoint_mean(pool, n, k=k, generator=baselines),
            "gaussian": elementwise_gaussian(pool, n, generator=baselines),
        }
        model = nets[task]
        _, reference = _accuracy(model, spec, own, splits[task])
        row: dict[str, Any] = {"test_examples": len(splits[task]), "noise_sigma": sigma, "mean_of": k}
        for method, weights in models.items():
            acc, preds = _accuracy(model, spec, weights, splits[task])
            row[method] = {
                "test_acc": acc.tolist(),
                "novelty_l2": nearest_l2(weights, flat)[0].tolist(),
                "wrong_iou": wrong_prediction_iou(preds, reference, splits[task].y).tolist(),
            }
        report["tasks"][task] = row
    report["mean"] = {m: statistics.fmean(statistics.fmean(r[m]["test_acc"]) for r in report["tasks"].values()) for m in METHODS}
    return report


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a short table: mean test accuracy per task and method, the mean over
    tasks, and each method's median distance to the nearest zoo checkpoint."""
    width = max(len("mean over tasks"), *(len(t) for t in report["tasks"]))
    head = f"{'test accuracy':<{width}}" + "".join(f" {_HEADERS[m]:>10}" for m in METHODS)
    lines = [head]
    for task, row in report["tasks"].items():
        lines.append(f"{task:<{width}}" + "".join(f" {statistics.fmean(row[m]['test_acc']):>10.3f}" for m in METHODS))
    lines.append(f"{'mean over tasks':<{width}}" + "".join(f" {report['mean'][m]:>10.3f}" for m in METHODS))
    novelty = {m: statistics.median(d for r in report["tasks"].values() for d in r[m]["novelty_l2"]) for m in METHODS}
    lines.append(f"{'L2 to nearest ckpt':<{width}}" + "".join(f" {novelty[m]:>10.3g}" for m in METHODS))
    return "\n".join(lines)
