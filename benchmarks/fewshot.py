"""``python -m benchmarks.fewshot``: D2NWG table 1 (few-shot heads generated from the support set) scaled to this CPU.

Question: can a generator of classifier heads, fitted on heads of many tasks of *base*
classes and conditioned on a support set's images, give heads for *novel* classes that
beat the usual few-shot baselines in the same episodes?

Setting (`paramgen.data.episodes.fewshot_pool`): the 10 Fashion-MNIST and 10 digits
classes (digits resized to 28x28), each also rotated by 90 degrees as an extra class;
the source classes of each dataset split 5 / 2 / 3 into base / validation / novel, so 20
base, 8 validation and 12 novel classes (a rotated copy stays in its source's split).

1. A Conv4 backbone (`paramgen.models.Conv4`, width 64, 64 features) is trained on the
   base classes only, then frozen. Features are centred by the base-class mean and
   L2-normalized (the same features for every method).
2. The zoo: linear heads (5 x 64 + 5) fitted on many random 5-way tasks of base classes,
   each on ``head_per_class`` images per class, classes in the task's random order. Each
   head is paired with ``zoo_draws`` support sets of the task (1 and 5 shots, same class
   order): the generator learns to go from a few images to the head fitted on many.
3. The generator (`paramgen.Generator`): per-tensor z-scoring, the D2NWG weight VAE, a
   latent DDPM, conditioned on the support set's features through
   `paramgen.conditioners.ordered.OrderedSetConditioner` (per-class DeepSets codes
   concatenated in class order; D2NWG's ``T o T`` encoder is invariant to the class
   order, so a head generated from it could not know which row is which class). With
   ``align_steps > 0`` the encoder is first aligned contrastively with the latents
   (D2NWG Alg. 2) and frozen; with 0 it learns jointly with the prior. With
   ``residual`` the generator makes the difference between the zoo head and the
   support set's nearest-centroid head (times one least-squares scale fitted on the
   zoo), and that head is added back after sampling. Both choices were made on
   validation classes (docs/fewshot.md).
4. Episodes: ``episodes`` novel 5-way episodes for 1 and 5 shots with 15 queries per
   class. For each, ``samples`` heads are generated (DDIM, 50 steps) from the support
   features only; the one with the best *support* accuracy (ties: lowest support
   cross-entropy) is reported. The query images and labels are used only to score.

Baselines in the same episodes: nearest centroid (ProtoNet-style, Euclidean), logistic
regression on the support features (scikit-learn, C chosen on validation episodes), a
head fine-tuned from zero on the support set (Adam; steps chosen on validation). Also
reported: a plain generated sample (no selection), the selected head fine-tuned on the
support set (what D2NWG does; steps chosen on validation), and a control where each
episode gets the head generated from *another* episode's support set (should be chance).
Every hyperparameter choice uses validation-class episodes only.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import paramgen
from benchmarks.common import Results, RunSetup, clustered_bootstrap, paired_bootstrap, paired_seed_ci, parallel_map
from paramgen import Generator
from paramgen.anchors import PrototypeAnchor
from paramgen.conditioners.ordered import OrderedSetConditioner
from paramgen.data.episodes import ClassPool, Episodes, fewshot_pool, gather, sample_episodes
from paramgen.guidance import Guidance, SupportCrossEntropy
from paramgen.heads import fit_heads, head_accuracy, head_cross_entropy, head_spec, logistic_regression_heads, prototype_head
from paramgen.models import Conv4
from paramgen.pipelines import d2nwg

__all__ = [
    "main",
    "SIZES",
    "WAY",
    "generate_heads",
    "select_by_support",
    "generated_method",
    "make_generator",
]

logger = logging.getLogger(__name__)

# The heads' functions live in paramgen.heads; tests/test_fewshot_guard.py imports this name.
nearest_centroid = prototype_head

WAY = 5
QUERY = 15
SHOTS = (1, 5)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        per_class=200,
        width=64,
        backbone_epochs=3,
        zoo_tasks=300,
        zoo_draws=2,
        head_per_class=100,
        head_steps=150,
        vae_steps=300,
        vae_channels=32,
        align_steps=0,
        residual=True,
        support_guidance=100.0,  # paramgen.guidance scale, chosen on validation classes (docs/fewshot.md, fewshot_tuning)
        prior_steps=800,
        samples=5,
        episodes=100,
        val_episodes=50,
        ft_steps=(10, 30, 100),
        gen_ft_steps=(20, 50, 100),
        lr_c=(0.1, 1.0, 10.0),
        seeds=1,
        boot=1000,
    ),
    "default": dict(
        # Scaled down from the single-seed run of docs/fewshot.md (10 backbone epochs, 2,000 tasks,
        # 1,500 / 3,000 VAE / prior steps, 600 / 200 episodes) so that 3 whole-pipeline seeds fit
        # on the shared CPU machine.
        per_class=800,
        width=64,
        backbone_epochs=6,
        zoo_tasks=1000,
        zoo_draws=4,
        head_per_class=120,
        head_steps=300,
        vae_steps=800,
        vae_channels=64,
        align_steps=0,
        residual=True,
        support_guidance=100.0,  # paramgen.guidance scale, chosen on validation classes (docs/fewshot.md, fewshot_tuning)
        prior_steps=2000,
        samples=10,
        episodes=300,
        val_episodes=100,
        ft_steps=(10, 30, 100, 300),
        gen_ft_steps=(20, 50, 100, 200),
        lr_c=(0.1, 1.0, 10.0, 100.0),
        seeds=3,
        boot=2000,
    ),
}


# ----------------------------------------------------------------------------- heads
def _labels(e: int, way: int, per_class: int) -> torch.Tensor:
    """Labels ``(E, way * per_class)`` of episode tensors flattened class by class."""
    return torch.arange(way).repeat_interleave(per_class).expand(e, -1).contiguous()


# ----------------------------------------------------------------------------- methods
def generate_heads(
    gen: Generator, support: torch.Tensor, n: int, *, generator: torch.Generator, batch_size: int = 256, guidance: Guidance | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated heads per episode from the support features only.

    Args:
        gen: A fitted generator of `head_spec` heads with an ordered-set conditioner.
        support: ``(E, K, S, F)`` support features, classes in order.
        n: Heads per episode.
        generator: Randomness of sampling.
        batch_size: Heads decoded at once.
        guidance: Optional support-set loss guidance (`paramgen.guidance`); it reads the support only.

    Returns:
        ``w (E, n, K, F)``, ``b (E, n, K)``; a generator with a residual anchor
        (`paramgen.anchors.PrototypeAnchor`) adds the support's scaled nearest-centroid head itself.
    """
    e, k, _, f = support.shape
    flat = gen.sample_flat(list(support), n, generator=generator, batch_size=batch_size, sampler="ddim", steps=50, guidance=guidance)  # (E * n, D)
    assert isinstance(flat, torch.Tensor)  # one architecture
    heads = gen.spec.unflatten_stacked(flat)
    return heads["weight"].view(e, n, k, f), heads["bias"].view(e, n, k)


def select_by_support(w: torch.Tensor, b: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head of each episode with the best support accuracy (ties: lowest support cross-entropy).

    Args:
        w: ``(E, n, K, F)`` candidate heads; ``b``: ``(E, n, K)``.
        support: ``(E, K, S, F)`` support features.

    Returns:
        ``w (E, K, F)``, ``b (E, K)`` of the chosen heads and the chosen index ``(E,)``.
    """
    e, n, k, f = w.shape
    s = support.shape[2]
    x = support.reshape(e, 1, k * s, f).expand(e, n, k * s, f).reshape(e * n, k * s, f)
    y = _labels(e * n, k, s)
    ww, bb = w.reshape(e * n, k, f), b.reshape(e * n, k)
    acc = head_accuracy(ww, bb, x, y).view(e, n)
    ce = head_cross_entropy(ww, bb, x, y).view(e, n)
    score = acc - 1e-4 * ce.nan_to_num(nan=1e4).clamp(max=100.0)  # accuracy first, cross-entropy breaks ties
    idx = score.argmax(1)
    ar = torch.arange(e)
    return w[ar, idx], b[ar, idx], idx


def generated_method(
    gen: Generator,
    support: torch.Tensor,
    query: torch.Tensor,
    query_y: torch.Tensor,
    n: int,
    *,
    generator: torch.Generator,
    guidance: Guidance | None = None,
) -> dict[str, Any]:
    """Generate ``n`` heads per episode, choose by support accuracy, score on the queries.

    The generator sees only ``support``; ``query`` and ``query_y`` are used after the
    choice, to score it (tests/test_fewshot_guard.py checks this).

    Args:
        gen: Fitted head generator.
        support: ``(E, K, S, F)``.
        query: ``(E, Q, F)`` query features (any order).
        query_y: ``(E, Q)`` query labels.
        n: Samples per episode.
        generator: Randomness of sampling.

    Returns:
        ``w``, ``b`` (chosen heads), ``index`` (chosen sample), ``acc`` (query accuracy
        of the chosen heads, ``(E,)``), ``sample_acc`` (mean query accuracy of all ``n``
        samples, ``(E,)``), ``per_sample_acc`` (``(E, n)``), ``all_w``, ``all_b`` (every sample).
    """
    all_w, all_b = generate_heads(gen, support, n, generator=generator, guidance=guidance)
    w, b, idx = select_by_support(all_w, all_b, support)
    e, _, k, f = all_w.shape
    acc = head_accuracy(w, b, query, query_y)
    q = query.shape[1]
    per_sample = head_accuracy(all_w.reshape(e * n, k, f), all_b.reshape(e * n, k), query.repeat_interleave(n, 0).reshape(e * n, q, f), query_y.repeat_interleave(n, 0)).view(e, n)
    return {"w": w, "b": b, "index": idx, "acc": acc, "sample_acc": per_sample.mean(1), "per_sample_acc": per_sample, "all_w": all_w, "all_b": all_b}


# ----------------------------------------------------------------------------- backbone and zoo
def split_base(pool: ClassPool, holdout: int) -> tuple[list[int], list[int]]:
    """Base classes for the backbone and for the zoo.

    ``holdout = 0``: both use every base class. Otherwise the first ``holdout`` base
    *source* classes of each dataset (with their rotated copies) are kept out of the
    backbone's training and only the zoo uses them, so the zoo's heads, like the novel
    episodes' heads, are fitted on features of classes the backbone never learned.
    """
    base = list(pool.splits["base"])
    if holdout == 0:
        return base, base
    sources: dict[str, list[str]] = {}
    for c in base:
        name = pool.names[c].split("@")[0]
        sources.setdefault(name.split("/")[0], [])
        if name not in sources[name.split("/")[0]]:
            sources[name.split("/")[0]].append(name)
    held = {name for names in sources.values() for name in names[:holdout]}
    if any(len(names) <= holdout for names in sources.values()):
        raise ValueError(f"zoo_holdout={holdout} leaves no base source class for the backbone")
    zoo = [c for c in base if pool.names[c].split("@")[0] in held]
    return [c for c in base if c not in zoo], zoo


def train_backbone(pool: ClassPool, size: dict[str, Any], *, seed: int, progress: bool, classes: Sequence[int] | None = None) -> tuple[Conv4, float]:
    """A Conv4 classifier of the base classes (or ``classes``; 10 % of their images held out); returns it and its held-out accuracy."""
    from tqdm.auto import tqdm

    base = pool.splits["base"] if classes is None else classes
    x = torch.cat([pool.images[c] for c in base])
    y = torch.cat([torch.full((len(pool.images[c]),), i, dtype=torch.long) for i, c in enumerate(base)])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_hold = len(y) // 10
    hold, train = perm[:n_hold], perm[n_hold:]
    model = Conv4(num_classes=len(base), width=size["width"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=size["backbone_epochs"])
    for _ in tqdm(range(size["backbone_epochs"]), desc="backbone", disable=not progress):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[hold[i : i + 1000]]).argmax(1) for i in range(0, len(hold), 1000)])
    return model, float((pred == y[hold]).float().mean())


@torch.no_grad()
def class_features(model: Conv4, pool: ClassPool, classes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Frozen features of every class, centred by the mean over the base classes (or ``classes``) and L2-normalized."""
    model.eval()
    raw = [torch.cat([model.features(x[i : i + 1000]) for i in range(0, len(x), 1000)]) for x in pool.images]
    mean = torch.cat([raw[c] for c in (pool.splits["base"] if classes is None else classes)]).mean(0)
    return [F.normalize(r - mean, dim=1) for r in raw]


def build_zoo(feats: Sequence[torch.Tensor], size: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """Heads of random 5-way base tasks, each paired with ``zoo_draws`` support sets.

    Returns ``w (T, K, F)``, ``b (T, K)``, ``classes (T, K)`` (positions in ``feats``),
    ``heldout_acc (T,)`` (accuracy on the class images not used to fit), ``conds`` (one
    ``(K, S, F)`` support set per row) and ``task_of_row``.
    """
    g = torch.Generator().manual_seed(seed)
    t, p = size["zoo_tasks"], size["head_per_class"]
    if min(len(f) for f in feats) <= p:
        raise ValueError(f"every base class needs more than head_per_class={p} images, the smallest has {min(len(f) for f in feats)}")
    classes = torch.stack([torch.randperm(len(feats), generator=g)[:WAY] for _ in range(t)])  # (T, K)
    ws, bs, accs = [], [], []
    for s in range(0, t, 250):  # tasks in chunks (memory)
        cl = classes[s : s + 250]
        x = torch.stack([torch.cat([feats[c][:p] for c in row.tolist()]) for row in cl])  # (B, K * p, F)
        w, b = fit_heads(x, _labels(len(cl), WAY, p), WAY, steps=size["head_steps"], lr=0.05, weight_decay=1e-3)
        held = [torch.cat([feats[c][p:] for c in row.tolist()]) for row in cl]
        held_y = [torch.cat([torch.full((len(feats[c]) - p,), k) for k, c in enumerate(row.tolist())]) for row in cl]
        accs += [head_accuracy(w[i : i + 1], b[i : i + 1], held[i][None], held_y[i][None]) for i in range(len(cl))]
        ws.append(w)
        bs.append(b)
    conds, task_of_row = [], []
    for d in range(size["zoo_draws"]):
        shot = SHOTS[d % len(SHOTS)]
        for i in range(t):
            picks = [feats[c][torch.randperm(len(feats[c]), generator=g)[:shot]] for c in classes[i].tolist()]
            conds.append(torch.stack(picks))  # (K, shot, F)
            task_of_row.append(i)
    return {"w": torch.cat(ws), "b": torch.cat(bs), "classes": classes, "heldout_acc": torch.cat(accs), "conds": conds, "task_of_row": task_of_row}


def make_generator(spec: Any, feature_dim: int, size: dict[str, Any]) -> Generator:
    """`paramgen.pipelines.d2nwg` with the class-order support-set encoder (`OrderedSetConditioner`,
    built by d2nwg between the VAE and the prior) at ``size``; weights from the process's
    generator (``seed=None``), seeded by the script."""
    cond = functools.partial(OrderedSetConditioner, feature_dim=feature_dim, num_classes=WAY, per_class=size.get("cond_per_class", 16), hidden=128)
    return d2nwg(spec, condition=cond, seed=None, latent_length=16, hidden_channels=size["vae_channels"], cond_dropout=size.get("cond_dropout", 0.0),
                 guidance_scale=size.get("guidance", 1.0))  # fmt: skip


def fit_generator(zoo: dict[str, Any], feature_dim: int, size: dict[str, Any], *, seed: int, progress: bool = False) -> Generator:
    """The head generator: z-scoring, weight VAE, latent DDPM conditioned on ordered support sets."""
    spec = head_spec(feature_dim, WAY)
    nn.Linear(feature_dim, WAY)  # unused: draws from the global RNG what the recorded results' later initializations expect
    rows = torch.tensor(zoo["task_of_row"])
    w, b = zoo["w"][rows], zoo["b"][rows]  # (M, K, F), (M, K)
    flat, _ = spec.flatten_stacked({"weight": w, "bias": b})  # (M, D)
    gen = make_generator(spec, feature_dim, size)
    if size.get("residual", False):
        # Generate the head's difference from the support set's nearest-centroid head, times one
        # least-squares scale fitted on the zoo; the anchor is saved with the generator.
        gen = gen.with_anchor(PrototypeAnchor(kind="prototype_head").fit_scale(flat, zoo["conds"], spec))  # fit learns w - s * a(cond)
    tasks = [f"task{i}" for i in zoo["task_of_row"]]
    paramgen.fit(gen, 
        flat, zoo["conds"], tasks=tasks, tokenizer_steps=size["vae_steps"], align_steps=size["align_steps"], prior_steps=size["prior_steps"],
        prior_lr=1e-3, generator=torch.Generator().manual_seed(seed), progress=progress,
    )  # fmt: skip
    return gen


# ----------------------------------------------------------------------------- evaluation
def _episode_data(feats: Sequence[torch.Tensor], counts: list[int], n: int, shot: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ep: Episodes = sample_episodes(counts, n, way=WAY, shot=shot, query=QUERY, generator=generator)
    support, query = gather(feats, ep)  # (E, K, S, F), (E, K, Q, F)
    return {"support": support, "query": query.flatten(1, 2), "query_y": _labels(n, WAY, QUERY)}


def evaluate(data: dict[str, torch.Tensor], gen: Generator, size: dict[str, Any], hp: dict[str, Any], *, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every method on the episodes of ``data``; per-episode query accuracies and diagnostics.

    ``hp`` holds the chosen ``lr_c``, ``ft_steps``, ``gen_ft_steps``; a value that is a
    tuple is a grid: every value is run and reported under its own name (validation).
    """
    sup, q, qy = data["support"], data["query"], data["query_y"]
    e, k, s, f = sup.shape
    sup_x, sup_y = sup.reshape(e, k * s, f), _labels(e, k, s)
    out: dict[str, torch.Tensor] = {}
    grid = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    out["nearest centroid"] = head_accuracy(*prototype_head(sup), q, qy)
    for c in grid(hp["lr_c"]):
        out[f"logistic regression C={c:g}"] = head_accuracy(*logistic_regression_heads(sup, c=c), q, qy)
    for steps in grid(hp["ft_steps"]):
        out[f"fine-tuned from zero {steps} steps"] = head_accuracy(*fit_heads(sup_x, sup_y, WAY, steps=steps, lr=0.1), q, qy)
    n = size["samples"]
    start = time.perf_counter()
    scale = size.get("support_guidance", 0.0)  # paramgen.guidance on the support set's cross-entropy; 0: none
    guidance = Guidance(SupportCrossEntropy(), scale=scale) if scale else None
    g = generated_method(gen, sup, q, qy, n, generator=torch.Generator().manual_seed(seed), guidance=guidance)
    info: dict[str, Any] = {"sample_s_per_head": (time.perf_counter() - start) / (e * n), "chosen_index": g["index"], "per_sample_acc": g["per_sample_acc"]}
    out["generated (1 sample)"] = g["sample_acc"]
    out[f"generated (best of {n} by support)"] = g["acc"]
    out[f"generated (mean of {n})"] = head_accuracy(g["all_w"].mean(1), g["all_b"].mean(1), q, qy)  # no selection: the samples' average head
    for steps in grid(hp["gen_ft_steps"]):
        if steps:
            out[f"generated + fine-tune {steps} steps"] = head_accuracy(*fit_heads(sup_x, sup_y, WAY, steps=steps, lr=0.01, init=(g["w"], g["b"])), q, qy)
    # Control: the head chosen for another episode's support set (classes differ): chance if the condition matters.
    out["generated (other episode's support)"] = head_accuracy(g["w"].roll(1, 0), g["b"].roll(1, 0), q, qy)
    info["support_acc_chosen"] = head_accuracy(g["w"], g["b"], sup_x, sup_y)
    return out, info


def _best(accs: dict[str, torch.Tensor], prefix: str, values: tuple) -> Any:
    """The grid value whose method ``f"{prefix}{value...}"`` has the best mean validation accuracy."""
    scores = {v: float(accs[name].mean()) for v in values for name in accs if name == prefix.format(v)}
    return max(scores, key=lambda v: (scores[v], -values.index(v)))


def plot(res_rows: list[dict[str, Any]], path: Path, methods: list[str]) -> Path:
    """Bar chart of novel-class accuracy with 95 % intervals, 1-shot and 5-shot side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(SHOTS)
    for j, shot in enumerate(SHOTS):
        task = f"novel 5-way {shot}-shot"
        rows = {r["method"]: r for r in res_rows if r["task"] == task and r["metric"] == "acc"}
        vals = [rows[m]["value"] for m in methods]
        err = [[rows[m]["value"] - rows[m]["ci_low"] for m in methods], [rows[m]["ci_high"] - rows[m]["value"] for m in methods]]
        ax.bar([i + (j - (len(SHOTS) - 1) / 2) * width for i in range(len(methods))], vals, width, yerr=err, capsize=3, label=f"{shot}-shot")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([m.replace(" (", "\n(").replace(" + ", "\n+ ") for m in methods], fontsize=7)
    ax.set_ylabel("query accuracy (novel classes)")
    ax.axhline(1 / WAY, color="gray", lw=0.8, ls="--")
    lo = min(r["ci_low"] for r in res_rows if r["task"].startswith("novel") and r["method"] in methods)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_title("5-way few-shot on novel Fashion-MNIST / digits classes (mean, 95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


SIMPLE_BASELINES = ("nearest centroid", "logistic regression", "fine-tuned from zero")


def run_seed(job: tuple[int, dict[str, Any], bool]) -> dict[str, Any]:
    """One whole pipeline (backbone, zoo, generator, choices on validation, novel episodes) for one seed.

    ``job`` is ``(seed, size, progress)`` (one picklable argument, for `benchmarks.common.parallel_map`).
    The episodes (classes, images) do not depend on the seed, so that the seeds score the same
    items; everything the pipeline learns or samples does. Returns plain per-episode values.
    """
    run_seed_, size, progress = job
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a spawned worker's own log (a no-op where logging is set up)
    torch.manual_seed(run_seed_)  # module initializations; this process runs one pipeline
    timer = time.perf_counter
    seed = run_seed_ * 1000
    pool = fewshot_pool(per_class=size["per_class"])
    start = timer()
    backbone_classes, zoo_classes = split_base(pool, size.get("zoo_holdout", 0))
    backbone, backbone_acc = train_backbone(pool, size, seed=seed + 1, progress=progress, classes=backbone_classes)
    backbone_s = timer() - start
    feats = class_features(backbone, pool, backbone_classes)
    base = [feats[c] for c in zoo_classes]
    logger.info("seed %d backbone: held-out base accuracy %.3f (%.0f s)", run_seed_, backbone_acc, backbone_s)
    start = timer()
    zoo = build_zoo(base, size, seed=seed + 2)
    zoo_s = timer() - start
    start = timer()
    gen = fit_generator(zoo, base[0].shape[1], size, seed=seed + 3, progress=progress)
    fit_s = timer() - start
    logger.info("seed %d zoo %d heads (held-out acc %.3f, %.0f s); generator fitted in %.0f s", run_seed_, len(zoo["w"]), float(zoo["heldout_acc"].mean()), zoo_s, fit_s)
    out: dict[str, Any] = {"seed": run_seed_, "backbone_acc": backbone_acc, "zoo_heldout_acc": zoo["heldout_acc"].tolist(), "backbone_s": backbone_s,
                           "zoo_s": zoo_s, "fit_s": fit_s, "anchor": None if gen.anchor is None else gen.anchor.config(), "shots": {},
                           "classes": {k: [pool.names[c] for c in v] for k, v in pool.splits.items()},
                           "backbone_classes": [pool.names[c] for c in backbone_classes], "zoo_classes": [pool.names[c] for c in zoo_classes]}  # fmt: skip
    val_feats, novel_feats = [feats[c] for c in pool.splits["val"]], [feats[c] for c in pool.splits["novel"]]
    grid = {"lr_c": tuple(size["lr_c"]), "ft_steps": tuple(size["ft_steps"]), "gen_ft_steps": tuple(size["gen_ft_steps"])}
    n = size["samples"]
    for shot in SHOTS:
        # Validation classes: choose each method's hyperparameters (never on novel classes).
        data = _episode_data(val_feats, pool.counts("val"), size["val_episodes"], shot, generator=torch.Generator().manual_seed(10 + shot))
        val, _ = evaluate(data, gen, size, grid, seed=seed + 20 + shot)
        hp = {
            "lr_c": _best(val, "logistic regression C={:g}", grid["lr_c"]),
            "ft_steps": _best(val, "fine-tuned from zero {} steps", grid["ft_steps"]),
            "gen_ft_steps": max((v for v in grid["gen_ft_steps"] if v), key=lambda v: (float(val[f"generated + fine-tune {v} steps"].mean()), -v)),
        }
        logger.info("seed %d %d-shot: chosen on validation classes %s", run_seed_, shot, hp)
        # Novel classes: the reported numbers.
        data = _episode_data(novel_feats, pool.counts("novel"), size["episodes"], shot, generator=torch.Generator().manual_seed(30 + shot))
        accs, info = evaluate(data, gen, size, hp, seed=seed + 40 + shot)
        names = {
            "nearest centroid": "nearest centroid",
            f"logistic regression C={hp['lr_c']:g}": "logistic regression",
            f"fine-tuned from zero {hp['ft_steps']} steps": "fine-tuned from zero",
            "generated (1 sample)": "generated (1 sample)",
            f"generated (best of {n} by support)": f"generated (best of {n} by support)",
            f"generated (mean of {n})": f"generated (mean of {n})",
            f"generated + fine-tune {hp['gen_ft_steps']} steps": "generated best + fine-tune",
            "generated (other episode's support)": "generated (other episode's support)",
        }
        out["shots"][shot] = {
            "chosen": hp,
            "val": {k: v.tolist() for k, v in val.items()},
            "novel": {label: accs[key].tolist() for key, label in names.items()},
            "per_sample_acc": info["per_sample_acc"].tolist(),
            "chosen_index": info["chosen_index"].tolist(),
            "support_acc_chosen": info["support_acc_chosen"].tolist(),
            "sample_s_per_head": info["sample_s_per_head"],
        }
    return out


def add_paired_rows(res: Results, task: str, per_seed: dict[str, torch.Tensor], generated: Sequence[str], baselines: Sequence[str], *, boot: int, seed: int) -> str:
    """Rows ``"<generated> - <best simple baseline>"``: paired differences of per-episode accuracies.

    ``per_seed[method]`` is ``(K seeds, N episodes)`` on the same episodes. The best simple
    baseline is the one with the highest mean over seeds and episodes (stated in the rows
    as ``baseline``). Metrics: ``acc_diff_items`` (paired bootstrap over episodes of the
    seed-averaged accuracies), ``acc_diff_seeds_x_items`` (`clustered_bootstrap` over seeds
    and episodes) and ``acc_diff_seeds`` (`paired_seed_ci`, a t-interval over seeds' means).
    Returns the best baseline's name.
    """
    best = max(baselines, key=lambda b: float(per_seed[b].mean()))
    for g in generated:
        a, b = per_seed[g], per_seed[best]
        extra = {"baseline": best}
        mean, lo, hi = paired_bootstrap(a.mean(0), b.mean(0), n_boot=boot, seed=seed)
        res.rows.append({"method": f"{g} - best baseline", "task": task, "metric": "acc_diff_items", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.shape[1], **extra})
        if a.shape[0] > 1:
            mean, lo, hi = clustered_bootstrap(a, b, n_boot=boot, seed=seed)
            res.rows.append({"method": f"{g} - best baseline", "task": task, "metric": "acc_diff_seeds_x_items", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.numel(), **extra})
            mean, lo, hi = paired_seed_ci(a.mean(1).tolist(), b.mean(1).tolist())
            res.rows.append({"method": f"{g} - best baseline", "task": task, "metric": "acc_diff_seeds", "value": mean, "ci_low": lo, "ci_high": hi, "n": a.shape[0], **extra})
    return best


def main(argv: Sequence[str] | None = None) -> int:
    def arguments(p: Any) -> None:
        p.add_argument("--progress", action="store_true", help="show progress bars")
        p.add_argument(
            "--zoo-holdout", type=int, default=0, metavar="N",
            help="keep the first N base source classes of each dataset (and their rotations) out of the backbone; the zoo is fitted on them only (default 0: backbone and zoo use every base class)",
        )  # fmt: skip
        p.add_argument("--seeds", type=int, default=None, help="whole-pipeline seeds --seed, --seed + 1, ... (default: 1 at --quick, 3 at the default size)")
        p.add_argument("--workers", type=int, default=1, help="seeds run in this many processes at once (one torch thread each)")

    setup = RunSetup.from_args("fewshot", __doc__, SIZES, argv, add_arguments=arguments, out_suffix=lambda a: f"-holdout{a.zoo_holdout}" if a.zoo_holdout else "")
    args, size_name, out = setup.args, setup.size_name, setup.out
    size = {**setup.size, "zoo_holdout": args.zoo_holdout}
    if args.seeds is not None:
        size["seeds"] = args.seeds
    if size["seeds"] < 1:
        raise SystemExit(f"--seeds must be >= 1, got {size['seeds']}")
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(size["seeds"])]
    runs = parallel_map(run_seed, [(s, size, args.progress) for s in seeds], workers=args.workers)

    config = {"size": size_name, "seed": args.seed, "seed_list": seeds, "way": WAY, "query": QUERY, "shots": list(SHOTS),
              "classes": runs[0]["classes"],
              "backbone_classes": runs[0]["backbone_classes"], "zoo_classes": runs[0]["zoo_classes"], "anchor": [r["anchor"] for r in runs],
              **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}}  # fmt: skip
    res = setup.results(**config)
    res.add("backbone", "base classes (held-out)", "acc", [r["backbone_acc"] for r in runs])
    res.add("zoo heads", "base 5-way tasks (held-out)", "acc", [a for r in runs for a in r["zoo_heldout_acc"]])
    res.add("backbone", "all", "train_s", [r["backbone_s"] for r in runs])
    res.add("zoo", "all", "build_s", [r["zoo_s"] for r in runs])
    res.add("generator", "all", "fit_s", [r["fit_s"] for r in runs])
    n = size["samples"]
    gen_best, gen_ft = f"generated (best of {n} by support)", "generated best + fine-tune"
    res.config["chosen_on_validation"] = {str(r["seed"]): {str(shot): r["shots"][shot]["chosen"] for shot in SHOTS} for r in runs}
    res.config["best_simple_baseline"] = {}
    for shot in SHOTS:
        for name in runs[0]["shots"][shot]["val"]:
            res.add(name, f"val 5-way {shot}-shot", "acc", [a for r in runs for a in r["shots"][shot]["val"][name]])
        task = f"novel 5-way {shot}-shot"
        per_seed = {m: torch.tensor([r["shots"][shot]["novel"][m] for r in runs], dtype=torch.float64) for m in runs[0]["shots"][shot]["novel"]}  # (K, N)
        for m, v in per_seed.items():
            extra: dict[str, Any] = {}
            if m == "logistic regression":
                extra = {"C": [r["shots"][shot]["chosen"]["lr_c"] for r in runs]}
            elif m == "fine-tuned from zero":
                extra = {"steps": [r["shots"][shot]["chosen"]["ft_steps"] for r in runs]}
            elif m == gen_ft:
                extra = {"steps": [r["shots"][shot]["chosen"]["gen_ft_steps"] for r in runs]}
            res.add(m, task, "acc", v.flatten().tolist(), **extra)
            if len(runs) > 1:
                res.add(m, task, "acc_seed_means", v.mean(1).tolist())
        res.add(gen_best, task, "support_acc", [a for r in runs for a in r["shots"][shot]["support_acc_chosen"]])
        res.add("generated", task, "sample_s_per_head", [r["shots"][shot]["sample_s_per_head"] for r in runs])
        res.config["best_simple_baseline"][task] = add_paired_rows(res, task, per_seed, [gen_best, gen_ft], SIMPLE_BASELINES, boot=size["boot"], seed=args.seed)
        # Per-item values: per seed, per episode (the episodes are the same for every seed), per sample.
        res.items[task] = {
            "seeds": seeds,
            "acc": {m: v.tolist() for m, v in per_seed.items()},
            "generated_per_sample_acc": [r["shots"][shot]["per_sample_acc"] for r in runs],
            "generated_chosen_index": [r["shots"][shot]["chosen_index"] for r in runs],
        }

    methods = ["nearest centroid", "logistic regression", "fine-tuned from zero", "generated (1 sample)", gen_best, f"generated (mean of {n})", gen_ft]
    png = plot([r for r in res.rows if r["metric"] == "acc"], out / "fewshot.png", methods)
    path = setup.write(res, artifacts=[png])
    print(res.table(skip_tasks=[f"val 5-way {s}-shot" for s in SHOTS]))
    print(f"results: {path}\nplot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
