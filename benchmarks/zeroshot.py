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

Rows (accuracy on the test split of each task unless named otherwise; n = tasks):
- ``generated``: mean over ``samples`` generated heads; ``generated best-of-n (support)``:
  the head with the best accuracy on the conditioning images themselves.
- ``random head``: a freshly initialized linear layer.
- ``mean of zoo heads``: the average zoo head.
- ``most similar zoo task``: the zoo head whose task has the highest class-matched cosine
  similarity of class-mean features of the conditioning images, its rows reordered by
  that matching.
- ``nearest zoo rows``: for each class, the zoo row whose class mean is nearest (cosine).
- references that use no zoo: ``prototype (support)``, nearest class mean of the
  conditioning images; ``trained head (oracle)``, logistic regression on the task's whole
  training split.
- zoo size (figure 6a): generated, mean of zoo heads and most similar zoo task with
  10 %, 30 % and 100 % of the zoo (one generator fitted per size).
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
from benchmarks.common import Results, RunSetup, first_per_class
from paramgen import Generator
from paramgen.conditioners import mobilenet_features
from paramgen.data import load_dataset
from paramgen.heads import class_condition, class_means, head_accuracy, match_classes, prototype_head, train_linear_head
from paramgen.io import save_safetensors
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
    ),
    "default": dict(
        train_per_class=200,
        eval_per_class=100,
        zoo_tasks=150,
        val_tasks=10,
        test_tasks=30,
        unseen_tasks=60,
        pca=128,
        shots=5,
        vae_steps=2000,
        vae_channels=64,
        align_steps=600,
        prior_steps=3000,
        samples=8,
        zoo_fractions=(0.1, 0.3, 1.0),
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
    caps = {"train": size["train_per_class"], "val": size["eval_per_class"], "test": size["eval_per_class"]}
    base = {s: _capped(fashion.split(s).x, fashion.split(s).y, caps[s]) for s in caps}
    out = {f"fashion_rot{r}" if r else "fashion": {s: (torch.rot90(x, r // 90, dims=(-2, -1)), y) for s, (x, y) in base.items()} for r in (0, 90, 180, 270)}
    out[UNSEEN_DATASET] = {s: (digits.split(s).x, digits.split(s).y) for s in caps}
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


def generate_heads(gen: Generator, cond: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` heads ``W (n, K, F)``, ``b (n, K)`` for one conditioning set ``(K, S, F)`` (row k from class k flagged)."""
    k, f = cond.shape[0], cond.shape[-1]
    flat = gen.sample_flat([class_condition(cond, i) for i in range(k)], n, generator=generator, sampler="ddim", steps=50)  # (K * n, F + 1)
    heads = flat.view(k, n, f + 1).transpose(0, 1)  # (n, K, F + 1)
    return heads[..., :f].contiguous(), heads[..., f].contiguous()


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    setup = RunSetup.from_args("zeroshot", __doc__, SIZES, argv)  # arguments, threads, seed, output folder, logging
    args, size_name, size, out, g = setup.args, setup.size_name, setup.size, setup.out, setup.g
    started = setup.started

    # 1. Frozen features, standardized with the zoo's training images only.
    cache = out.parent / "cache" / f"zeroshot-mobilenet64-{size['train_per_class']}-{size['eval_per_class']}.safetensors"
    raw = features(size, cache)
    zoo_train = torch.cat([raw[ds]["train"][0] for ds in ZOO_DATASETS]).double()
    mu = zoo_train.mean(0)
    _, vecs = torch.linalg.eigh((zoo_train - mu).T @ (zoo_train - mu))  # ascending eigenvalues
    proj = vecs[:, -size["pca"] :].flip(1)  # (1280, pca): top principal axes of the zoo's images
    scale = ((zoo_train - mu) @ proj).std(0)
    feats = {ds: {s: ((((x.double() - mu) @ proj) / scale).float(), y) for s, (x, y) in sp.items()} for ds, sp in raw.items()}
    fdim = size["pca"]

    # 2. Tasks: subsets of the zoo datasets split into zoo / val / test; held-out datasets.
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
    evaluated = [name for name in groups if name != "zoo"]

    # 3. Zoo heads and every task's conditioning set (train split only).
    start = time.perf_counter()
    conds = make_conditions(feats, [t for name in groups for t in groups[name]], size["shots"], args.seed)
    zoo_heads = torch.stack([torch.cat([w, b[:, None]], 1) for w, b in (train_linear_head(*task_data(feats, *t, "train"), K) for t in groups["zoo"])])  # (Z, K, F + 1)
    zoo_s = time.perf_counter() - start
    zoo_means = torch.stack([class_means(conds[t]) for t in groups["zoo"]])  # (Z, K, F)

    res = Results("zeroshot", start=started, config={"size": size_name, "seed": args.seed, "backbone": "MobileNetV2 ImageNet (torchvision), 64x64, 1280 features",
                                                      "zoo_datasets": list(ZOO_DATASETS), "val_dataset": VAL_DATASET, "unseen_dataset": UNSEEN_DATASET, "k": K,
                                                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})
    res.add("zoo", "all", "heads", len(groups["zoo"]))
    res.add("zoo", "all", "build_s", zoo_s)

    def evaluate(task: tuple[str, tuple[int, ...]], split: str, zoo_idx: list[int], gen: Generator | None, key: int, full: bool) -> dict[str, float]:
        """Accuracy of every method on one task's ``split``; the zoo restricted to ``zoo_idx``."""
        x, y = task_data(feats, *task, split)
        cond = conds[task]
        accs: dict[str, float] = {}
        if gen is not None:
            w, b = generate_heads(gen, cond, size["samples"], g(key))
            accs["generated"] = float(head_accuracy(w, b, x, y).mean())
            sx, sy = cond.reshape(-1, fdim), torch.arange(K).repeat_interleave(cond.shape[1])
            best = head_accuracy(w, b, sx, sy).argmax()  # selection on the conditioning images only
            accs["generated best-of-n (support)"] = float(head_accuracy(w[best : best + 1], b[best : best + 1], x, y))
        heads = zoo_heads[zoo_idx]
        mean = heads.mean(0)
        accs["mean of zoo heads"] = float(head_accuracy(mean[None, :, :fdim], mean[None, :, fdim], x, y))
        cm = class_means(cond)
        sims = [match_classes(cm, zoo_means[j]) for j in zoo_idx]
        j = max(range(len(sims)), key=lambda i: sims[i][0])
        near = heads[j][sims[j][1]]  # rows reordered to the task's classes
        accs["most similar zoo task"] = float(head_accuracy(near[None, :, :fdim], near[None, :, fdim], x, y))
        if full:
            means = zoo_means[zoo_idx].reshape(-1, fdim)
            rows = heads.reshape(-1, fdim + 1)[(torch.nn.functional.normalize(cm, dim=1) @ torch.nn.functional.normalize(means, dim=1).T).argmax(1)]
            accs["nearest zoo rows"] = float(head_accuracy(rows[None, :, :fdim], rows[None, :, fdim], x, y))
            gr = torch.Generator().manual_seed(args.seed * 1000 + key)
            rand = []
            for _ in range(size["samples"]):
                layer = nn.Linear(fdim, K)
                with torch.no_grad():
                    bound = 1 / fdim**0.5
                    layer.weight.uniform_(-bound, bound, generator=gr)
                    layer.bias.uniform_(-bound, bound, generator=gr)
                rand.append(float(head_accuracy(layer.weight.detach()[None], layer.bias.detach()[None], x, y)))
            accs["random head"] = sum(rand) / len(rand)
            pw, pb = prototype_head(cond)
            accs["prototype (support)"] = float(head_accuracy(pw[None], pb[None], x, y))
            ow, ob = train_linear_head(*task_data(feats, *task, "train"), K)
            accs["trained head (oracle)"] = float(head_accuracy(ow[None], ob[None], x, y))
        return accs

    # 4. One generator per zoo size (nested subsets of the zoo's tasks).
    perm = torch.randperm(len(groups["zoo"]), generator=g(30)).tolist()
    scaling: dict[float, dict[str, dict[str, list[float]]]] = {}
    for fi, frac in enumerate(sorted(size["zoo_fractions"])):
        zoo_idx = sorted(perm[: max(2, round(frac * len(perm)))])
        rows = zoo_heads[zoo_idx].reshape(-1, fdim + 1)  # (Z * K, F + 1): task-major, class-minor
        row_conds = [class_condition(conds[groups["zoo"][j]], k) for j in zoo_idx for k in range(K)]
        row_groups = [f"{groups['zoo'][j][0]}:{groups['zoo'][j][1][k]}" for j in zoo_idx for k in range(K)]  # one group per (dataset, class)
        gen = row_generator(fdim, size)
        start = time.perf_counter()
        paramgen.fit(gen, rows, row_conds, tasks=row_groups, tokenizer_steps=size["vae_steps"], align_steps=size["align_steps"], prior_steps=size["prior_steps"],
                prior_lr=1e-3, generator=g(40 + fi), progress=False)
        fit_s = time.perf_counter() - start
        full = frac == max(size["zoo_fractions"])
        res.add("generator", f"zoo {frac:.0%}", "fit_s", fit_s, zoo_heads=len(zoo_idx))
        scaling[frac] = {}
        names = evaluated if full else [n for n in evaluated if n.startswith("unseen")]
        for name in names:
            split = "val" if name.startswith("val") else "test"
            per: dict[str, list[float]] = {}
            for ti, task in enumerate(groups[name]):
                start = time.perf_counter()
                accs = evaluate(task, split, zoo_idx, gen, 50_000 + 1000 * evaluated.index(name) + ti, full)
                for method, acc in accs.items():
                    per.setdefault(method, []).append(acc)
                    if full and name.startswith("unseen"):
                        res.add(method, f"{task[0]}/{'-'.join(map(str, task[1]))}", f"{split}_acc", acc)
            scaling[frac][name] = per
            for method, vals in per.items():
                res.add(method, name, f"{split}_acc", vals, zoo_fraction=frac, zoo_heads=len(zoo_idx))
            logger.info("zoo %.0f%% %s: %s", 100 * frac, name, {m: round(sum(v) / len(v), 3) for m, v in per.items()})

    # 5. Plots: methods on the test groups (full zoo), accuracy vs zoo size.
    artifacts = plots(scaling, out, [n for n in evaluated if n.startswith("unseen")])
    path = setup.write(res, artifacts=artifacts)
    print(res.table(skip_tasks=[f"{t[0]}/{'-'.join(map(str, t[1]))}" for n in evaluated for t in groups[n]]))
    print(f"results: {path}")
    return 0


def plots(scaling: dict[float, dict[str, dict[str, list[float]]]], out: Path, names: list[str]) -> list[Path]:
    """``zeroshot-methods.png`` (full zoo) and ``zeroshot-zoo-size.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import mean_ci

    out.mkdir(parents=True, exist_ok=True)
    full = scaling[max(scaling)]
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
        for method, style in (("generated", "-o"), ("most similar zoo task", "--s"), ("mean of zoo heads", ":^")):
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
