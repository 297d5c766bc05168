"""``python -m benchmarks.zeroshot``: D2NWG table 2 and figure 6a scaled to this CPU.

Question: given a few images per class of a task it has never seen, does a generator
fitted on a zoo of linear heads produce a working head at once (no fine-tuning), better
than the heads one can get from the zoo without a generator, and does it improve as the
zoo grows?

Backbone (frozen): MobileNetV2 with its torchvision ImageNet weights
(`paramgen.conditioners.mobilenet_features`, images resized to 64 x 64), 1280 pooled
features, projected on their top ``pca`` (128) principal axes, fitted on the zoo's
training images only, and scaled to unit variance. Every head is a 5-way linear layer on
these features (so a linear layer on the backbone's features), trained by L2-regularized
logistic regression on the task's training split.

Datasets: Fashion-MNIST and three rotated copies (90, 180, 270 degrees; a rotated copy is
a dataset of its own: same garments, other images) and digits.
- Zoo: heads of a share of the 252 five-class subsets of Fashion-MNIST, rot90 and rot180.
- Unseen subsets (test): other subsets of those three datasets (class combinations no
  zoo head was trained on).
- Unseen dataset (test): digits, 5-class subsets. Nothing of digits is in the zoo, the
  feature projection or any choice made for this harness.
- Validation (the only data settings were chosen on): further subsets of the three zoo
  datasets, and subsets of Fashion-MNIST rot270 (a held-out dataset), scored on val splits.

Generator: D2NWG's pipeline on head *rows*. Row ``k`` of a head (``W[k], b[k]``) is one
sample; its condition is the task's conditioning images of class ``k`` (5 training
images per class, features as above), each image as ``[f, f - m]`` with ``m`` the mean of
all the task's conditioning images (`paramgen.heads.class_condition`): what the class
looks like and how it differs from the other classes of its task. The image-set encoder
(Set Transformer of Set Transformers) is aligned contrastively with the VAE latents
(D2NWG Alg. 2; contrastive groups are (dataset, class) pairs), then a latent DDPM is
fitted; sampling uses 50 DDIM steps. A head is its ``K`` rows sampled for its ``K`` class
conditions, so its class order is the condition's class order. (A first version flagged
the target class with an extra input channel on the whole set; the aligned encoder did
not tell the flagged classes apart, 9 % nearest-neighbour group accuracy on validation
rows vs 100 % for class sets, and its heads were at chance.)

Residual anchor (a setting): with ``anchor="prototype_row"`` the generator learns each row
minus ``s`` times its class's prototype row (`paramgen.anchors.PrototypeAnchor`, ``s`` by
least squares on the zoo) and adds it back when sampling. Each seed fits both settings on
the full zoo and reports as ``generated`` the one with the better validation accuracy.

Seeds (``--seeds``): the conditioning draws, generator fits, sampling and baseline noise
change with the seed; the zoo, validation and test tasks do not, so the seeds score the
same tasks (per-task values under ``items`` in results.json).

Rows (accuracy on the test split of each task unless named otherwise; n = seeds x tasks):
- ``generated``: mean over ``samples`` generated heads; ``generated best-of-n (support)``:
  the head with the best accuracy on the conditioning images themselves; both for each
  anchor setting too (``[anchor=...]``).
- baselines (`SIMPLE_BASELINES`): prototype (support); logistic regression on the
  conditioning images (C chosen on validation tasks); nearest zoo task (retrieval: the zoo
  task with the most similar class means of conditioning images, its head aligned by the
  class matching); best zoo head by support accuracy (aligned the same way); nearest zoo
  rows; mean of zoo heads; the memorization baselines of `paramgen.novelty` (the retrieved
  head plus noise, the soup of the 5 nearest tasks' aligned heads, a per-coordinate
  Gaussian); a random head. ``trained head (oracle)``: logistic regression on the task's
  whole training split.
- ``disagreement`` rows: functional novelty, the share of test images on which a head's
  prediction differs from the retrieved zoo head's.
- ``generated - best baseline``: paired differences to the simple baseline with the best
  mean (``acc_diff_items``: bootstrap over tasks; ``acc_diff_seeds_x_items``: clustered
  bootstrap over seeds and tasks; ``acc_diff_seeds``: t-interval over seeds).
- zoo size (figure 6a): generated, nearest zoo task and mean of zoo heads for each zoo
  fraction below 1 (one generator of the chosen setting per fraction).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import paramgen
from benchmarks.common import Results, RunSetup, first_per_class, parallel_map
from paramgen import Generator
from paramgen.anchors import PrototypeAnchor
from paramgen.conditioners import mobilenet_features
from paramgen.data import load_dataset
from paramgen.data.task import SplitName
from paramgen.heads import class_condition, class_means, head_accuracy, logistic_regression_heads, match_classes, prototype_head, train_linear_head
from paramgen.io import read_json, save_safetensors, write_json
from paramgen.novelty import disagreement, elementwise_gaussian, noisy_checkpoints
from paramgen.pipelines import d2nwg
from paramgen.spec import ParamSpec

__all__ = ["main", "SIZES", "conditions_of", "make_conditions", "generate_heads", "row_generator"]

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        train_per_class=60,
        eval_per_class=40,
        zoo_tasks=30,  # per zoo dataset
        val_tasks=4,  # per zoo dataset, and on the held-out validation dataset
        test_tasks=8,  # unseen subsets per zoo dataset
        unseen_tasks=16,  # digits tasks
        pca=128,
        shots=5,
        vae_steps=200,
        vae_channels=32,
        align_steps=100,
        prior_steps=600,
        samples=4,
        zoo_fractions=(0.3, 1.0),
        anchors=("none", "prototype_row"),
        lr_c=(0.1, 1.0, 10.0),
        seeds=1,
        boot=1000,
    ),
    # Scaled down from the single-seed run (150 zoo tasks per dataset, 2,000 / 600 / 3,000 VAE /
    # alignment / prior steps, zoo sizes 10 / 30 / 100 %) so that 3 whole-pipeline seeds with two
    # generator settings each fit on the shared CPU machine.
    "default": dict(
        train_per_class=200,
        eval_per_class=100,
        zoo_tasks=100,
        val_tasks=8,
        test_tasks=15,
        unseen_tasks=30,
        pca=128,
        shots=5,
        vae_steps=800,
        vae_channels=64,
        align_steps=200,
        prior_steps=1200,
        samples=8,
        zoo_fractions=(1.0,),
        anchors=("none", "prototype_row"),
        lr_c=(0.1, 1.0, 10.0),
        seeds=3,
        boot=2000,
    ),
}
K = 5  # classes per task
ZOO_DATASETS = ("fashion", "fashion_rot90", "fashion_rot180")
VAL_DATASET = "fashion_rot270"
UNSEEN_DATASET = "digits"


# ----------------------------------------------------------------------------- data
def _capped(x: torch.Tensor, y: torch.Tensor, per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if per_class is None:
        return x, y
    keep = first_per_class(y, per_class)
    return x[keep], y[keep]


def image_splits(size: dict[str, Any]) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Images and labels of every dataset and split: ``{dataset: {split: (x, y)}}``."""
    fashion = load_dataset("fashion_mnist")
    digits = load_dataset("digits")
    caps: dict[SplitName, int] = {"train": size["train_per_class"], "val": size["eval_per_class"], "test": size["eval_per_class"]}

    def xy(task: Any, split: SplitName) -> tuple[torch.Tensor, torch.Tensor]:
        x = task.split(split).x
        assert isinstance(x, torch.Tensor)  # images, not token strings
        return x, task.split(split).y

    base: dict[str, tuple[torch.Tensor, torch.Tensor]] = {s: _capped(*xy(fashion, s), caps[s]) for s in caps}
    out = {f"fashion_rot{r}" if r else "fashion": {s: (torch.rot90(x, r // 90, dims=(-2, -1)), y) for s, (x, y) in base.items()} for r in (0, 90, 180, 270)}
    out[UNSEEN_DATASET] = {str(s): xy(digits, s) for s in caps}
    return out


def features(size: dict[str, Any], cache: Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """MobileNetV2 features of :func:`image_splits`, computed once and cached in ``cache``."""
    if cache.exists():
        flat = load_file(str(cache))
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for key in flat:
            if key.endswith("/x"):
                ds, split, _ = key.split("/")
                out.setdefault(ds, {})[split] = (flat[key], flat[f"{ds}/{split}/y"])
        return out
    extractor = mobilenet_features(resize=64).eval()
    out = {}
    with torch.no_grad():
        for ds, splits in image_splits(size).items():
            for split, (x, y) in splits.items():
                f = torch.cat([extractor(x[i : i + 256]) for i in range(0, len(x), 256)])
                out.setdefault(ds, {})[split] = (f, y)
    save_safetensors(cache, {f"{ds}/{s}/{k}": t.contiguous() for ds, sp in out.items() for s, xy in sp.items() for k, t in zip("xy", xy, strict=True)})
    return out


def task_data(feats: dict, ds: str, classes: Sequence[int], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels ``0..K-1`` (in the order of ``classes``) of one task's split."""
    x, y = feats[ds][split]
    keep = torch.isin(y, torch.tensor(list(classes)))
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(list(classes))] = torch.arange(len(classes))
    return x[keep], remap[y[keep]]


def conditions_of(x_train: torch.Tensor, y_train: torch.Tensor, k: int, shots: int, generator: torch.Generator) -> torch.Tensor:
    """The conditioning set ``(K, shots, F)``: ``shots`` random training images per class, nothing else."""
    groups = []
    for c in range(k):
        members = torch.nonzero(y_train == c).squeeze(1)
        if len(members) < shots:
            raise ValueError(f"conditions_of: class {c} has {len(members)} training images, expected at least {shots}")
        groups.append(x_train[members[torch.randperm(len(members), generator=generator)[:shots]]])
    return torch.stack(groups)


def make_conditions(feats: dict, tasks: Sequence[tuple[str, tuple[int, ...]]], shots: int, seed: int) -> dict[tuple[str, tuple[int, ...]], torch.Tensor]:
    """Every task's conditioning set, drawn from its *training* split only (one seeded stream per task)."""
    return {task: conditions_of(*task_data(feats, *task, "train"), len(task[1]), shots, torch.Generator().manual_seed(seed * 1000 + 100_000 + i)) for i, task in enumerate(tasks)}


# ----------------------------------------------------------------------------- generator
def row_generator(feature_dim: int, size: dict[str, Any]) -> Generator:
    """D2NWG's pipeline for one head row ``[W[k], b[k]]``: z-scoring, weight VAE, image-set encoder, latent DDPM."""
    spec = ParamSpec.from_module(nn.Linear(feature_dim, 1))
    return d2nwg(spec, condition="dataset", feature_dim=2 * feature_dim, seed=None, hidden_channels=size["vae_channels"], base_channels=32)


def fit_row_generator(rows: torch.Tensor, row_conds: list[torch.Tensor], row_groups: list[str], feature_dim: int, size: dict[str, Any], anchor: str, *, generator: torch.Generator) -> Generator:
    """`row_generator` fitted on zoo rows ``(R, F + 1)``; with ``anchor="prototype_row"`` it learns each row
    minus its class prototype row (`paramgen.anchors.PrototypeAnchor`, least-squares scale over the zoo)."""
    gen = row_generator(feature_dim, size)
    if anchor == "prototype_row":
        gen = gen.with_anchor(PrototypeAnchor(kind="prototype_row", feature_dim=feature_dim).fit_scale(rows, row_conds, gen.spec))  # fit learns w - s * a(cond)
    elif anchor != "none":
        raise ValueError(f"anchor must be 'none' or 'prototype_row', got {anchor!r}")
    paramgen.fit(gen, rows, row_conds, tasks=row_groups, tokenizer_steps=size["vae_steps"], align_steps=size["align_steps"], prior_steps=size["prior_steps"],
                 prior_lr=1e-3, generator=generator, progress=False)  # fmt: skip
    return gen


def generate_heads(gen: Generator, cond: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` heads ``W (n, K, F)``, ``b (n, K)`` for one conditioning set ``(K, S, F)`` (row k from class k flagged)."""
    k, f = cond.shape[0], cond.shape[-1]
    flat = gen.sample_flat([class_condition(cond, i) for i in range(k)], n, generator=generator, sampler="ddim", steps=50)  # (K * n, F + 1)
    assert isinstance(flat, torch.Tensor)  # one architecture
    heads = flat.view(k, n, f + 1).transpose(0, 1)  # (n, K, F + 1)
    return heads[..., :f].contiguous(), heads[..., f].contiguous()


# ----------------------------------------------------------------------------- main
SIMPLE_BASELINES = (
    "prototype (support)",
    "logistic regression (support)",
    "nearest zoo task (retrieval)",
    "best zoo head (by support)",
    "nearest zoo rows",
    "mean of zoo heads",
    "nearest zoo task + noise",
    "soup of the nearest tasks' heads",
    "per-coordinate Gaussian",
    "random head",
)
GENERATED = ("generated", "generated best-of-n (support)")


def project(raw: dict, size: dict[str, Any]) -> dict:
    """Features on the top ``pca`` principal axes of the zoo datasets' training images, at unit variance."""
    zoo_train = torch.cat([raw[ds]["train"][0] for ds in ZOO_DATASETS]).double()
    mu = zoo_train.mean(0)
    _, vecs = torch.linalg.eigh((zoo_train - mu).T @ (zoo_train - mu))  # ascending eigenvalues
    proj = vecs[:, -size["pca"] :].flip(1)  # (1280, pca): top principal axes of the zoo's images
    scale = ((zoo_train - mu) @ proj).std(0)
    return {ds: {s: ((((x.double() - mu) @ proj) / scale).float(), y) for s, (x, y) in sp.items()} for ds, sp in raw.items()}


def task_groups(size: dict[str, Any]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Zoo, validation and test tasks; fixed streams (not the pipeline seed), so every seed scores the same tasks."""
    g = lambda k: torch.Generator().manual_seed(k)  # noqa: E731
    subsets = list(itertools.combinations(range(10), K))
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {"zoo": [], "val subsets": [], "unseen subsets": []}
    for i, ds in enumerate(ZOO_DATASETS):
        order = torch.randperm(len(subsets), generator=g(10 + i)).tolist()
        a, b, c = size["zoo_tasks"], size["val_tasks"], size["test_tasks"]
        groups["zoo"] += [(ds, subsets[j]) for j in order[:a]]
        groups["val subsets"] += [(ds, subsets[j]) for j in order[a : a + b]]
        groups["unseen subsets"] += [(ds, subsets[j]) for j in order[a + b : a + b + c]]
    groups[f"val dataset ({VAL_DATASET})"] = [(VAL_DATASET, subsets[j]) for j in torch.randperm(len(subsets), generator=g(20)).tolist()[: size["val_tasks"]]]
    groups[f"unseen dataset ({UNSEEN_DATASET})"] = [(UNSEEN_DATASET, subsets[j]) for j in torch.randperm(len(subsets), generator=g(21)).tolist()[: size["unseen_tasks"]]]
    return groups


def _acc(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(head_accuracy(w[None], b[None], x, y))


def _preds(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ w.T + b).argmax(1)


def baselines(
    feats: dict,
    task: tuple[str, tuple[int, ...]],
    split: str,
    cond: torch.Tensor,
    zoo_heads: torch.Tensor,
    zoo_means: torch.Tensor,
    zoo_idx: list[int],
    lr_c: Sequence[float],
    *,
    seed: int,
    samples: int,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Accuracy on ``split`` of every head that needs no generator; also the retrieved head (for novelty).

    Only ``cond`` (the task's conditioning images, ``(K, S, F)``) decides any head; ``split``
    scores them. Zoo heads are aligned to the task's classes by the best one-to-one matching of
    class means of the conditioning images (`paramgen.heads.match_classes`).
    """
    x, y = task_data(feats, *task, split)
    f = cond.shape[-1]
    heads = zoo_heads[zoo_idx]  # (Z, K, F + 1)
    gr = torch.Generator().manual_seed(seed)
    accs: dict[str, float] = {}
    pw, pb = prototype_head(cond)
    accs["prototype (support)"] = _acc(pw, pb, x, y)
    for c in lr_c:
        lw, lb = logistic_regression_heads(cond[None], c=c)
        accs[f"logistic regression (support) C={c:g}"] = _acc(lw[0], lb[0], x, y)
    cm = class_means(cond)
    sims = [match_classes(cm, zoo_means[j]) for j in zoo_idx]
    aligned = torch.stack([heads[i][sims[i][1]] for i in range(len(zoo_idx))])  # (Z, K, F + 1): rows in the task's class order
    order = sorted(range(len(sims)), key=lambda i: -sims[i][0])
    near = aligned[order[0]]
    accs["nearest zoo task (retrieval)"] = _acc(near[:, :f], near[:, f], x, y)
    sx, sy = cond.reshape(-1, f), torch.arange(K).repeat_interleave(cond.shape[1])
    sup = head_accuracy(aligned[..., :f], aligned[..., f], sx[None].expand(len(aligned), -1, -1), sy[None].expand(len(aligned), -1))  # (Z,)
    best = aligned[int(sup.argmax())]
    accs["best zoo head (by support)"] = _acc(best[:, :f], best[:, f], x, y)
    means = zoo_means[zoo_idx].reshape(-1, f)
    rows = heads.reshape(-1, f + 1)[(torch.nn.functional.normalize(cm, dim=1) @ torch.nn.functional.normalize(means, dim=1).T).argmax(1)]
    accs["nearest zoo rows"] = _acc(rows[:, :f], rows[:, f], x, y)
    mean = heads.mean(0)
    accs["mean of zoo heads"] = _acc(mean[:, :f], mean[:, f], x, y)
    # Memorization baselines (paramgen.novelty): the retrieved head plus noise of half the zoo's per-coordinate std,
    # the soup of the 5 nearest tasks' aligned heads, and independent Gaussians per coordinate.
    flat = aligned.reshape(len(aligned), -1)
    noisy, _ = noisy_checkpoints(near.reshape(1, -1), samples, sigma=0.5, scale=flat.std(0), generator=gr)
    accs["nearest zoo task + noise"] = sum(_acc(h.view(K, f + 1)[:, :f], h.view(K, f + 1)[:, f], x, y) for h in noisy) / samples
    soup = aligned[order[:5]].mean(0)
    accs["soup of the nearest tasks' heads"] = _acc(soup[:, :f], soup[:, f], x, y)
    gauss = elementwise_gaussian(heads.reshape(len(heads), -1), samples, generator=gr)
    accs["per-coordinate Gaussian"] = sum(_acc(h.view(K, f + 1)[:, :f], h.view(K, f + 1)[:, f], x, y) for h in gauss) / samples
    rand = []
    for _ in range(samples):
        bound = 1 / f**0.5
        w = torch.empty(K, f).uniform_(-bound, bound, generator=gr)
        rand.append(_acc(w, torch.empty(K).uniform_(-bound, bound, generator=gr), x, y))
    accs["random head"] = sum(rand) / len(rand)
    ow, ob = train_linear_head(*task_data(feats, *task, "train"), K)
    accs["trained head (oracle)"] = _acc(ow, ob, x, y)
    return accs, {"nearest": near, "noisy": noisy.view(samples, K, f + 1)}


def generated(gen: Generator, feats: dict, task: tuple[str, tuple[int, ...]], split: str, cond: torch.Tensor, n: int, generator: torch.Generator) -> dict[str, Any]:
    """``n`` generated heads for ``cond``: mean accuracy, best-of-n by accuracy on the conditioning images, per-sample accuracies and predictions."""
    x, y = task_data(feats, *task, split)
    w, b = generate_heads(gen, cond, n, generator)
    per = head_accuracy(w, b, x, y)  # (n,)
    f = cond.shape[-1]
    sx, sy = cond.reshape(-1, f), torch.arange(K).repeat_interleave(cond.shape[1])
    best = int(head_accuracy(w, b, sx[None].expand(n, -1, -1), sy[None].expand(n, -1)).argmax())  # the conditioning images only
    return {"generated": float(per.mean()), "generated best-of-n (support)": float(per[best]), "per_sample": per.tolist(), "chosen": best, "w": w, "b": b}


def run_seed(job: tuple[int, dict[str, Any], str]) -> dict[str, Any]:
    """One seed of the whole pipeline: conditioning draws, generators (each anchor setting, chosen on
    validation), every baseline (C chosen on validation), on the seed-independent tasks.

    ``job`` is ``(seed, size, cache path)``. Returns per-task values: ``{"groups": {group: {method: [acc per task]}}, ...}``.
    """
    seed, size, cache = job
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a spawned worker's own log (a no-op where logging is set up)
    torch.manual_seed(seed)
    feats = project(features(size, Path(cache)), size)
    fdim = size["pca"]
    groups = task_groups(size)
    evaluated = [name for name in groups if name != "zoo"]
    g = lambda k: torch.Generator().manual_seed(seed * 1000 + k)  # noqa: E731
    start = time.perf_counter()
    conds = make_conditions(feats, [t for name in groups for t in groups[name]], size["shots"], seed)
    zoo_heads = torch.stack([torch.cat([w, b[:, None]], 1) for w, b in (train_linear_head(*task_data(feats, *t, "train"), K) for t in groups["zoo"])])  # (Z, K, F + 1)
    zoo_s = time.perf_counter() - start
    zoo_means = torch.stack([class_means(conds[t]) for t in groups["zoo"]])  # (Z, K, F)
    out: dict[str, Any] = {"seed": seed, "zoo_s": zoo_s, "fit_s": {}, "groups": {}, "val_choice": {}, "per_sample": {}, "zoo_size": {}}
    perm = torch.randperm(len(groups["zoo"]), generator=torch.Generator().manual_seed(30)).tolist()
    full_idx = sorted(perm)
    lr_c = tuple(size["lr_c"])

    def fit(zoo_idx: list[int], anchor: str, key: int) -> Generator:
        rows = zoo_heads[zoo_idx].reshape(-1, fdim + 1)  # (Z * K, F + 1): task-major, class-minor
        row_conds = [class_condition(conds[groups["zoo"][j]], k) for j in zoo_idx for k in range(K)]
        row_groups = [f"{groups['zoo'][j][0]}:{groups['zoo'][j][1][k]}" for j in zoo_idx for k in range(K)]  # one group per (dataset, class)
        start = time.perf_counter()
        gen = fit_row_generator(rows, row_conds, row_groups, fdim, size, anchor, generator=g(key))
        out["fit_s"][f"{anchor} {len(zoo_idx)}"] = time.perf_counter() - start
        return gen

    # 1. Full zoo: one generator per anchor setting; the setting and C are chosen on the validation tasks.
    gens = {a: fit(full_idx, a, 40 + i) for i, a in enumerate(size["anchors"])}
    per: dict[str, dict[str, list[float]]] = {name: {} for name in evaluated}
    for gi, name in enumerate(evaluated):
        split = "val" if name.startswith("val") else "test"
        for ti, task in enumerate(groups[name]):
            key = 50_000 + 1000 * gi + ti
            accs, ref = baselines(feats, task, split, conds[task], zoo_heads, zoo_means, full_idx, lr_c, seed=seed * 1000 + key, samples=size["samples"])
            x, _ = task_data(feats, *task, split)
            near_pred = _preds(ref["nearest"][:, :fdim], ref["nearest"][:, fdim], x)
            for a, gen in gens.items():
                res = generated(gen, feats, task, split, conds[task], size["samples"], g(key))
                for m in GENERATED:
                    accs[f"{m} [anchor={a}]"] = res[m]
                # Functional novelty: how often the generated heads' predictions differ from the retrieved zoo head's.
                accs[f"generated [anchor={a}] disagreement with nearest zoo task"] = (
                    sum(disagreement(_preds(w[:, :], bb, x), near_pred) for w, bb in zip(res["w"], res["b"], strict=True)) / size["samples"]
                )
                out["per_sample"].setdefault(name, {}).setdefault(a, []).append(res["per_sample"])
            accs["nearest zoo task + noise disagreement with nearest zoo task"] = sum(disagreement(_preds(h[:, :fdim], h[:, fdim], x), near_pred) for h in ref["noisy"]) / size["samples"]
            for m, v in accs.items():
                per[name].setdefault(m, []).append(v)
        logger.info("seed %d %s: %s", seed, name, {m: round(sum(v) / len(v), 3) for m, v in per[name].items() if "disagreement" not in m})
    val_names = [n for n in evaluated if n.startswith("val")]
    pooled = lambda m: sum(sum(per[n][m]) for n in val_names) / sum(len(per[n][m]) for n in val_names)  # noqa: E731
    chosen_anchor = max(size["anchors"], key=lambda a: (pooled(f"generated [anchor={a}]"), -list(size["anchors"]).index(a)))
    chosen_c = max(lr_c, key=lambda c: (pooled(f"logistic regression (support) C={c:g}"), -lr_c.index(c)))
    out["val_choice"] = {"anchor": chosen_anchor, "lr_c": chosen_c, "val_generated": {a: pooled(f"generated [anchor={a}]") for a in size["anchors"]},
                         "val_lr": {f"{c:g}": pooled(f"logistic regression (support) C={c:g}") for c in lr_c}}  # fmt: skip
    for name in evaluated:
        for m in GENERATED:
            per[name][m] = per[name][f"{m} [anchor={chosen_anchor}]"]
        per[name]["generated disagreement with nearest zoo task"] = per[name][f"generated [anchor={chosen_anchor}] disagreement with nearest zoo task"]
        per[name]["logistic regression (support)"] = per[name][f"logistic regression (support) C={chosen_c:g}"]
    out["groups"] = per
    out["tasks"] = {name: [f"{t[0]}/{'-'.join(map(str, t[1]))}" for t in groups[name]] for name in evaluated}
    # 2. Smaller zoos (figure 6a), with the chosen setting, on the test groups.
    for fi, frac in enumerate(sorted(size["zoo_fractions"])):
        if frac >= 1.0:
            continue
        zoo_idx = sorted(perm[: max(2, round(frac * len(perm)))])
        gen = fit(zoo_idx, chosen_anchor, 60 + fi)
        for gi, name in enumerate(evaluated):
            if not name.startswith("unseen"):
                continue
            vals: dict[str, list[float]] = {}
            for ti, task in enumerate(groups[name]):
                key = 50_000 + 1000 * gi + ti
                res = generated(gen, feats, task, "test", conds[task], size["samples"], g(key))
                accs, _ = baselines(feats, task, "test", conds[task], zoo_heads, zoo_means, zoo_idx, (), seed=seed * 1000 + key, samples=size["samples"])
                for m, v in {"generated": res["generated"], "nearest zoo task (retrieval)": accs["nearest zoo task (retrieval)"], "mean of zoo heads": accs["mean of zoo heads"]}.items():
                    vals.setdefault(m, []).append(v)
            out["zoo_size"].setdefault(str(frac), {})[name] = vals
    return out


def main(argv: Sequence[str] | None = None) -> int:
    def arguments(p: Any) -> None:
        p.add_argument("--seeds", type=int, default=None, help="whole-pipeline seeds --seed, --seed + 1, ... (default: 1 at --quick, 3 at the default size)")
        p.add_argument("--workers", type=int, default=1, help="seeds run in this many processes at once (one torch thread each)")
        p.add_argument("--zoo-fractions", default=None, help="comma-separated zoo sizes for figure 6a, e.g. 0.1,0.3,1 (default: the size's)")
        p.add_argument("--reuse-runs", default=None, help="rebuild the tables from the per-seed values (runs.json) an earlier run wrote, without running anything")

    setup = RunSetup.from_args("zeroshot", __doc__, SIZES, argv, add_arguments=arguments)
    args, size_name, size, out = setup.args, setup.size_name, setup.size, setup.out
    if args.seeds is not None:
        size["seeds"] = args.seeds
    if args.zoo_fractions:
        size["zoo_fractions"] = tuple(sorted({*(float(v) for v in args.zoo_fractions.split(",")), 1.0}))
    cache = out.parent / "cache" / f"zeroshot-mobilenet64-{size['train_per_class']}-{size['eval_per_class']}.safetensors"
    seeds = [args.seed + i for i in range(size["seeds"])]
    if args.reuse_runs:
        runs = read_json(args.reuse_runs)
        seeds = [r["seed"] for r in runs]
    else:
        features(size, cache)  # once, before any worker reads it
        runs = parallel_map(run_seed, [(s, size, str(cache)) for s in seeds], workers=args.workers)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "runs.json", runs)  # the per-seed values, before the tables are built from them

    res = setup.results(size=size_name, seed=args.seed, seed_list=seeds, backbone="MobileNetV2 ImageNet (torchvision), 64x64, 1280 features", zoo_datasets=list(ZOO_DATASETS),
                        val_dataset=VAL_DATASET, unseen_dataset=UNSEEN_DATASET, k=K, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()})  # fmt: skip
    res.config["chosen_on_validation"] = {str(r["seed"]): r["val_choice"] for r in runs}
    res.add("zoo", "all", "heads", 3 * size["zoo_tasks"])
    res.add("zoo", "all", "build_s", [r["zoo_s"] for r in runs])
    for key in sorted({k for r in runs for k in r["fit_s"]}):  # "<anchor> <zoo heads>"; smaller zoos use each seed's chosen anchor
        res.add("generator", f"fit {key}", "fit_s", [r["fit_s"][key] for r in runs if key in r["fit_s"]])
    groups = list(runs[0]["groups"])
    methods = [*GENERATED, *(f"{m} [anchor={a}]" for a in size["anchors"] for m in GENERATED), *SIMPLE_BASELINES, "trained head (oracle)"]
    res.config["best_simple_baseline"] = {}
    for name in groups:
        metric = "val_acc" if name.startswith("val") else "test_acc"
        per_seed = {m: torch.tensor([r["groups"][name][m] for r in runs], dtype=torch.float64) for m in runs[0]["groups"][name]}  # (K seeds, N tasks)
        for m in [*methods, *(k for k in per_seed if k not in methods)]:
            v = per_seed[m]
            extra: dict[str, Any] = {"seeds": len(runs)}
            if m == "logistic regression (support)":
                extra["C"] = [r["val_choice"]["lr_c"] for r in runs]
            if m in GENERATED:
                extra["anchor"] = [r["val_choice"]["anchor"] for r in runs]
            res.add(m, name, "disagreement" if "disagreement" in m else metric, v.flatten().tolist(), **extra)
            if len(runs) > 1 and "disagreement" not in m:
                res.add(m, name, f"{metric}_seed_means", v.mean(1).tolist())
        if name.startswith("unseen"):
            res.config["best_simple_baseline"][name] = add_paired_rows(res, name, per_seed, GENERATED, SIMPLE_BASELINES, boot=size["boot"], seed=args.seed)
        res.items[name] = {"seeds": seeds, "tasks": runs[0]["tasks"][name], metric: {m: v.tolist() for m, v in per_seed.items()},
                           "generated_per_sample": {a: [r["per_sample"][name][a] for r in runs] for a in size["anchors"]}}  # fmt: skip
    scaling: dict[float, dict[str, dict[str, list[float]]]] = {}
    full = {name: {m: [v for r in runs for v in r["groups"][name][m]] for m in ("generated", "nearest zoo task (retrieval)", "mean of zoo heads")} for name in groups}
    scaling[1.0] = full
    for frac in runs[0]["zoo_size"]:
        scaling[float(frac)] = {name: {m: [v for r in runs for v in r["zoo_size"][frac][name][m]] for m in vals} for name, vals in runs[0]["zoo_size"][frac].items()}
        for name, vals in scaling[float(frac)].items():
            for m, accs in vals.items():
                res.add(m, name, "test_acc", accs, zoo_fraction=float(frac), seeds=len(runs))
    artifacts = plots(scaling, {name: {m: [v for r in runs for v in r["groups"][name][m]] for m in methods} for name in groups}, out, [n for n in groups if n.startswith("unseen")])
    path = setup.write(res, artifacts=artifacts)
    print(res.table())
    print(f"results: {path}")
    return 0


def add_paired_rows(res: Results, task: str, per_seed: dict[str, torch.Tensor], generated: Sequence[str], baselines: Sequence[str], *, boot: int, seed: int) -> str:
    """Rows ``"<generated> - best baseline"`` (see `benchmarks.fewshot.add_paired_rows`; items are tasks)."""
    from benchmarks.fewshot import add_paired_rows as paired

    return paired(res, task, per_seed, generated, baselines, boot=boot, seed=seed)


def plots(scaling: dict[float, dict[str, dict[str, list[float]]]], full: dict[str, dict[str, list[float]]], out: Path, names: list[str]) -> list[Path]:
    """``zeroshot-methods.png`` (full zoo) and ``zeroshot-zoo-size.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import mean_ci

    out.mkdir(parents=True, exist_ok=True)
    methods = list(full[names[0]])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        stats = [mean_ci(full[name][m]) for m in methods]
        ax.bar([j + i * width for j in range(len(methods))], [s[0] for s in stats], width, yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]], label=name, capsize=2)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(methods))], methods, rotation=30, ha="right", fontsize=8)
    ax.axhline(1 / K, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("test accuracy (5-way)")
    ax.set_title("zero-shot heads on frozen MobileNetV2 features")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = out / "zeroshot-methods.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    fracs = sorted(scaling)
    for name in names:
        for method, style in (("generated", "-o"), ("nearest zoo task (retrieval)", "--s"), ("mean of zoo heads", ":^")):
            ax.plot([100 * f for f in fracs], [mean_ci(scaling[f][name][method])[0] for f in fracs], style, label=f"{method}, {name}")
    ax.set_xscale("log")
    ax.set_xlabel("zoo size (% of the zoo's heads)")
    ax.set_ylabel("test accuracy (5-way)")
    ax.set_title("accuracy vs zoo size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p2 = out / "zeroshot-zoo-size.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


if __name__ == "__main__":
    raise SystemExit(main())
