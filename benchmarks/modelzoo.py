"""``python -m benchmarks.modelzoo``: D2NWG table 4 / IGPG table 1 scaled to this CPU.

Question: does one dataset-conditioned generator, fitted on a zoo of small CNNs trained on
many tasks, produce weights for a *seen* task that work at once and fine-tune faster than
random init, and are they more than copies of its training checkpoints?

Setting: the ``cnn-fashion-digits`` zoo (five-class subsets of digits and Fashion-MNIST,
one ConvNet architecture, 2 seeds x last 5 epochs per task; ``--quick``: a small zoo of the
same kind). One generator for all tasks: per-tensor z-scoring, the D2NWG weight VAE, a
latent DDPM conditioned on the task's dataset through the image-set encoder (a Set
Transformer over frozen MobileNetV2 features of 5 training images per class). Nothing is
selected: every reported generated model is a plain sample.

Rows (test accuracy unless named otherwise):
- ``zoo``: the task's training checkpoints (the reference).
- ``generated``: samples conditioned on the task's image set the generator was fitted with
  (DDPM, 1000 steps); ``generated (fresh draw)``: conditioned instead on a new random draw of
  the task's training images (same shots, a set the generator never saw), the number that
  says whether the condition is the task or one memorized image set; the paired per-task
  difference of the two; ``reconstruction``: the VAE alone.
- ``generated DDIM-50``: the same prior sampled with 50 DDIM steps (vs 1000 DDPM steps),
  with the wall-time ratio.
- ``kde latent``: S_KDE, a kernel density in the same latent space (same tokenizer). The
  generator is built by `paramgen.pipelines.d2nwg`; this row is an ablation of the prior,
  so it alone composes the fitted generator's parts with a `paramgen.priors.KDEPrior` by hand.
- ``noise 0.06`` / ``noise 0.12`` / ``noise matched``: a training checkpoint plus Gaussian
  noise (std relative to each tensor's scale; ``matched``: as far from the training set as
  the generated models), ``mean of 16`` (or of all the task's checkpoints when fewer),
  ``gaussian``: per-element Gaussian fitted to the task's checkpoints.
- ``random init``.
- ``novelty_l2``: distance to the nearest training checkpoint (whole zoo);
  ``wrong_iou``: the largest overlap of wrong predictions with a checkpoint of the task.
- fine-tuning curves (``epoch`` 0/1/5/25) of generated, random init, KDE and baselines.
- the task-by-condition accuracy matrix: weights generated for condition c, tested on t.
- ``alignment``: the final training loss of each contrastive-alignment restart
  (``FitConfig.align_restarts``; the restart with the lowest one is kept) and their spread.

``results.json`` holds per-item values under ``items``: the test accuracy of every sample
per task for the zoo, the generated and the fresh-draw rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import attrs
import torch

import paramgen
from benchmarks.common import Results, RunSetup, capped, parallel_map
from paramgen import Generator, ParamSpec, PerLayerZScore
from paramgen.conditioners import mobilenet_features, set_features
from paramgen.data import Split, Task
from paramgen.models import build_model
from paramgen.novelty import (
    checkpoint_mean,
    elementwise_gaussian,
    matched_sigma,
    nearest_l2,
    noisy_checkpoints,
    tensor_scale,
    wrong_prediction_iou,
)
from paramgen.pipelines import d2nwg
from paramgen.priors import KDEPrior
from paramgen.tracking import NullLogger
from paramgen.zoo import RunConfig, TrainConfig, Zoo, build_zoo, load_run_task, preset, train_classifier
from paramgen.zoo.build import subset_runs
from paramgen.zoo.train import predict_many

__all__ = ["main", "SIZES", "make_generator", "AlignLosses", "image_condition"]

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        zoo="modelzoo-quick",
        tasks_per_dataset=2,
        seeds=(0, 1),
        zoo_epochs=8,
        keep_epochs=(6, 7, 8),
        fashion_train_per_class=200,
        shots=5,
        vae_steps=300,
        vae_channels=32,
        align_steps=150,
        align_restarts=3,
        prior_steps=600,
        samples=5,
        eval_per_class=100,
        finetune_tasks=2,
        finetune_epochs=(1, 5),
        finetune_train_per_class=100,
        matrix_tasks=4,
    ),
    "default": dict(
        zoo="cnn-fashion-digits",
        shots=5,
        vae_steps=4000,
        vae_channels=64,
        align_steps=1000,
        align_restarts=3,
        prior_steps=8000,
        samples=10,
        eval_per_class=200,
        finetune_tasks=6,
        finetune_epochs=(1, 5, 25),
        finetune_train_per_class=None,
        matrix_tasks=16,
    ),
}


def plan(size: dict[str, Any]) -> list[RunConfig]:
    """The zoo of this size: the ``cnn-fashion-digits`` preset or a small one like it."""
    if size["zoo"] == "cnn-fashion-digits":
        return preset("cnn-fashion-digits")
    train = TrainConfig(epochs=size["zoo_epochs"], lr=5e-3, batch_size=64)
    common: dict[str, Any] = dict(k=5, arch="convnet", arch_kwargs={"channels": [8, 16]}, seeds=size["seeds"], train=train, keep_epochs=size["keep_epochs"])
    n = size["tasks_per_dataset"]
    return subset_runs("digits", n, max_train_per_class=None, max_eval_per_class=None, **common) + subset_runs(
        "fashion_mnist", n, max_train_per_class=size["fashion_train_per_class"], max_eval_per_class=None, **common
    )


# ----------------------------------------------------------------------------- helpers
def accuracies(zoo: Zoo, flat: torch.Tensor, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy ``(G,)`` and predictions ``(G, T)`` of weight vectors ``(G, D)`` on ``split``."""
    preds = predict_many(zoo.model(0), zoo.spec().unflatten_stacked(flat.float()), split)
    return (preds == split.y).float().mean(1), preds


def make_generator(spec: ParamSpec, feature_dim: int, size: dict[str, Any], *, residuals: bool = False) -> Generator:
    """D2NWG conditioned on image sets of ``feature_dim`` features (`paramgen.pipelines.d2nwg`,
    its defaults but for the VAE width of ``size``); weights from the process's generator
    (``seed=None``), seeded by the run setup. ``residuals``: the generator will learn
    residuals over an anchor, which can be negative where weights are not (running
    variances are z-scored, not logged)."""
    normalizer = PerLayerZScore(spec, log=()) if residuals else "per-layer"
    return d2nwg(spec, condition="dataset", feature_dim=feature_dim, seed=None, hidden_channels=size["vae_channels"], normalizer=normalizer)


class AlignLosses(NullLogger):
    """A tracker for `paramgen.fit` that keeps the alignment restarts' final training losses
    (``align/restart_loss``; with one restart, the last step's ``align/loss_last``)."""

    def __init__(self) -> None:
        self.finals: list[float] = []
        self.best: int | None = None

    def log_metrics(self, metrics: Any, *, step: int | None = None) -> None:
        if "align/restart_loss" in metrics:
            self.finals.append(float(metrics["align/restart_loss"]))
        elif "align/loss_last" in metrics:
            self.finals.append(float(metrics["align/loss_last"]))
        if "align/best_restart" in metrics:
            self.best = int(metrics["align/best_restart"])

    def report(self, res: Results, group: str) -> None:
        """Rows: each restart's final loss, the kept one and the spread (max - min)."""
        if not self.finals:
            return
        best = self.best if self.best is not None else 0
        res.add("alignment", group, "restart_final_loss", self.finals, kept=best)
        res.add("alignment", group, "kept_final_loss", self.finals[best])
        res.add("alignment", group, "restart_loss_spread", max(self.finals) - min(self.finals), restarts=len(self.finals))


def tensor(flat: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """``sample_flat``'s one ``(B, D)`` tensor (a single-architecture generator returns no list)."""
    if not isinstance(flat, torch.Tensor):
        raise TypeError(f"expected one (B, D) tensor of weights, got a {type(flat).__name__}")
    return flat


def image_condition(task: Task, extractor: Any, shots: int, generator: torch.Generator) -> torch.Tensor:
    """``(K, shots, F)``: MobileNetV2 features of ``shots`` random training images per class."""
    x, _ = task.support_set(shots, split="train", generator=generator)
    assert isinstance(x, torch.Tensor)  # images, not the text of a text task
    return set_features(extractor, x.reshape(task.num_classes, shots, *x.shape[1:]))


def _finetune_job(job: dict[str, Any]) -> list[float]:
    """Worker: fine-tune one model; test accuracy at epoch 0 and at each requested epoch."""
    from paramgen.zoo import evaluate

    run = job["run"]
    if job["train_per_class"] is not None:  # fine-tune on fewer examples (same test split)
        run = attrs.evolve(run, max_train_per_class=job["train_per_class"])
    task = load_run_task(run)
    model = build_model(job["run"].arch, num_classes=task.num_classes, **job["run"].arch_kwargs)
    init = job["state_dict"] is None
    if not init:
        model.load_state_dict(job["state_dict"], strict=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job["seed"])
            for m in model.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
    test = capped(task.test, job["eval_per_class"])
    accs = [evaluate(model, test)[0]]
    epochs = job["epochs"]
    config = TrainConfig(epochs=max(epochs), lr=job["lr"], batch_size=64)
    snaps = train_classifier(model, task, config, seed=job["seed"], keep_epochs=epochs, init=False, eval_splits={"test": test})
    return accs + [s.metrics["test_acc"] for s in snaps]


def main(argv: Sequence[str] | None = None) -> int:
    setup = RunSetup.from_args("modelzoo", __doc__, SIZES, argv)  # arguments, threads, seed, output folder, logging
    args, size_name, size, out, g = setup.args, setup.size_name, setup.size, setup.out, setup.g
    timer = time.perf_counter
    started = setup.started  # wall_s of results.json covers the whole run

    # 1. The zoo (cached beside the outputs; building resumes).
    runs = plan(size)
    start = timer()
    zoo = build_zoo(out.parent / "zoos" / size["zoo"], runs, workers=2, progress=False)
    zoo_s = timer() - start
    spec = zoo.spec()
    flat, _ = zoo.flatten()
    tasks_of = [c.task for c in zoo]
    run_of = {r.task: r for r in runs if r.seed == runs[0].seed}
    datasets: dict[str, Task] = {}
    tasks = {name: load_run_task(run_of[name], datasets) for name in zoo.tasks}
    names = list(tasks)
    tests = {name: capped(task.test, size["eval_per_class"]) for name, task in tasks.items()}
    vals = {name: capped(task.val, size["eval_per_class"]) for name, task in tasks.items()}  # selection only

    # 2. Conditions: 5 training images per class -> frozen MobileNetV2 features (K, S, F).
    extractor = mobilenet_features()
    feats = {name: image_condition(task, extractor, size["shots"], g(1)) for name, task in tasks.items()}  # the fitted sets
    conds = [feats[t] for t in tasks_of]
    # A fresh draw per task: other random training images (another stream), a set the generator never saw.
    fresh = {name: image_condition(task, extractor, size["shots"], g(8)) for name, task in tasks.items()}

    # 3. One generator for all tasks: VAE + contrastively aligned set encoder + latent DDPM.
    gen = make_generator(spec, extractor.feature_dim, size)
    start = timer()
    align = AlignLosses()
    paramgen.fit(gen, flat, conds, tasks=tasks_of, tokenizer_steps=size["vae_steps"], align_steps=size["align_steps"], prior_steps=size["prior_steps"],
            prior_lr=1e-3, align_restarts=size["align_restarts"], generator=g(2), progress=False, tracker=align)
    fit_s = timer() - start
    # S_KDE: the same tokenizer, normalizer and (frozen) conditioner, a KDE prior.
    kde = Generator(vectorizer=gen.vectorizer, tokenizer=gen.tokenizer, prior=cast(Any, KDEPrior()), conditioner=gen.conditioner, normalizer=gen.normalizer)
    paramgen.fit(kde, flat, conds, tasks=tasks_of, tokenizer_steps=0, generator=g(3), progress=False)

    # 4. Samples for every task at once (n per condition, in task order).
    n = size["samples"]
    every = [feats[name] for name in names]
    start = timer()
    # DDPM-1000 explicitly: the committed "generated" rows were sampled with it (the
    # library's default sampler before DDIM-50, which the next row measures).
    generated = tensor(gen.sample_flat(every, n, generator=g(4), sampler="ddpm")).view(len(names), n, -1)
    ddpm_s = timer() - start
    start = timer()
    ddim = tensor(gen.sample_flat(every, n, generator=g(5), sampler="ddim", steps=50)).view(len(names), n, -1)
    ddim_s = timer() - start
    kde_samples = tensor(kde.sample_flat(every, n, generator=g(6))).view(len(names), n, -1)
    fresh_samples = tensor(gen.sample_flat([fresh[name] for name in names], n, generator=g(7), sampler="ddpm")).view(len(names), n, -1)

    res = Results("modelzoo", start=started, config={"size": size_name, "seed": args.seed, "zoo_checkpoints": len(zoo), "zoo_tasks": len(names),
                                                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})
    res.add("zoo", "all", "build_s", zoo_s)
    res.add("generator", "all", "fit_s", fit_s)
    align.report(res, "restarts")
    res.add("generated", "all", "sample_s_per_model", ddpm_s / generated[:, :, 0].numel())
    res.add("generated DDIM-50", "all", "sample_s_per_model", ddim_s / ddim[:, :, 0].numel())
    res.add("generated DDIM-50", "all", "ddpm_time_over_ddim", ddpm_s / ddim_s)
    scale = tensor_scale(spec, flat)
    k_mean = min(16, min(tasks_of.count(t) for t in names))  # "mean of 16", or of all a task has
    mean_name = f"mean of {k_mean}"
    per_method: dict[str, list[float]] = {}
    kept: dict[tuple[str, str], torch.Tensor] = {}
    for ti, name in enumerate(names):
        own = flat[[i for i, t in enumerate(tasks_of) if t == name]]
        methods = {"generated": generated[ti], "generated (fresh draw)": fresh_samples[ti], "generated DDIM-50": ddim[ti],
                   "reconstruction": tensor(gen.reconstruct(own)), "kde latent": kde_samples[ti]}
        # D2NWG's sample selection: the best of the n samples by *validation* accuracy.
        best = accuracies(zoo, generated[ti], vals[name])[0].argmax()
        methods["generated best-of-n (val)"] = generated[ti][best : best + 1]
        best = accuracies(zoo, fresh_samples[ti], vals[name])[0].argmax()
        methods["generated (fresh draw) best-of-n (val)"] = fresh_samples[ti][best : best + 1]
        sigma = matched_sigma(own, float(nearest_l2(generated[ti], flat)[0].median()), scale=scale, generator=g(10 + ti))
        methods["noise 0.06"] = noisy_checkpoints(own, n, sigma=0.06, scale=scale, generator=g(20 + ti))[0]
        methods["noise 0.12"] = noisy_checkpoints(own, n, sigma=0.12, scale=scale, generator=g(30 + ti))[0]
        methods["noise matched"] = noisy_checkpoints(own, n, sigma=sigma, scale=scale, generator=g(40 + ti))[0]
        methods[mean_name] = checkpoint_mean(own, n, k=k_mean, generator=g(50 + ti))
        methods["gaussian"] = elementwise_gaussian(own, n, generator=g(60 + ti))
        zoo_acc, zoo_preds = accuracies(zoo, own, tests[name])
        res.add("zoo", name, "test_acc", zoo_acc.tolist(), epoch=0)
        per_method.setdefault("zoo", []).append(float(zoo_acc.mean()))
        res.items.setdefault("test_acc per sample", {}).setdefault("zoo", {})[name] = zoo_acc.tolist()
        for method, w in methods.items():
            acc, preds = accuracies(zoo, w, tests[name])
            if method in ("generated", "generated (fresh draw)"):
                res.items["test_acc per sample"].setdefault(method, {})[name] = acc.tolist()
            res.add(method, name, "test_acc", acc.tolist(), epoch=0)
            res.add(method, name, "novelty_l2", nearest_l2(w, flat)[0].tolist())
            res.add(method, name, "wrong_iou", wrong_prediction_iou(preds, zoo_preds, tests[name].y).tolist())
            per_method.setdefault(method, []).append(float(acc.mean()))
            kept[(method, name)] = w
        logger.info("task %d/%d %s: zoo %.3f generated %.3f", ti + 1, len(names), name, per_method["zoo"][-1], per_method["generated"][-1])
    for method, accs in per_method.items():
        res.add(method, "mean over tasks", "test_acc", accs, epoch=0)
    # The fresh-draw number beside the fitted-set one: paired per task (t-interval over tasks).
    diffs = [a - b for a, b in zip(per_method["generated (fresh draw)"], per_method["generated"], strict=True)]
    res.add("fresh draw - fitted set", "mean over tasks", "test_acc_diff", diffs, note="generated (fresh draw) - generated, paired per task")
    for method in ("generated", "generated (fresh draw)", "generated best-of-n (val)"):
        rel = [a / z for a, z in zip(per_method[method], per_method["zoo"], strict=True)]
        res.add(method, "mean over tasks", "acc_over_zoo", rel)
        res.add(method, "worst task", "acc_over_zoo", min(rel))
        res.add(method, "tasks >= 0.9 zoo", "fraction", [float(r >= 0.9) for r in rel])
    res.add("random init", "mean over tasks", "test_acc", 1.0 / tasks[names[0]].num_classes, note="chance")

    # 5. Task-by-condition matrix: weights generated for condition c, tested on task t.
    sub = names[: size["matrix_tasks"]]
    matrix = torch.zeros(len(sub), len(sub))
    for ci in range(len(sub)):
        for ti, t in enumerate(sub):
            matrix[ti, ci] = accuracies(zoo, generated[ci, :3], tests[t])[0].mean()
    diag = matrix.diag()
    off = (matrix.sum(1) - diag) / (len(sub) - 1)
    res.add("generated", "condition matrix", "diag_acc", diag.tolist())
    res.add("generated", "condition matrix", "offdiag_acc", off.tolist())
    res.add("generated", "condition matrix", "diag_is_row_max", [float(matrix[i, i] >= matrix[i].max()) for i in range(len(sub))])

    # 6. Fine-tuning curves, one model per method and task (tasks from both datasets).
    half = size["finetune_tasks"] // 2
    ft_tasks = [t for t in names if t.startswith("digits")][:half] + [t for t in names if t.startswith("fashion")][:half]
    ft_methods = ["generated", "kde latent", "noise matched", "noise 0.12", "gaussian", mean_name, "random init"]
    jobs = []
    for name in ft_tasks:
        for method in ft_methods:
            sd = None if method == "random init" else spec.unflatten(kept[(method, name)][:1].float())[0]
            jobs.append({"run": run_of[name], "state_dict": sd, "epochs": list(size["finetune_epochs"]), "lr": 1e-3, "seed": args.seed,
                         "train_per_class": size["finetune_train_per_class"], "eval_per_class": size["eval_per_class"], "method": method})
    curves = parallel_map(_finetune_job, jobs, workers=2)
    for epoch_i, epoch in enumerate((0, *size["finetune_epochs"])):
        for method in ft_methods:
            res.add(method, "fine-tuned", "test_acc", [c[epoch_i] for j, c in zip(jobs, curves, strict=True) if j["method"] == method], epoch=epoch)

    path = setup.write(res)
    print(res.table(skip_tasks=names))
    print(f"condition matrix (rows: test task, cols: condition), tasks {sub}:\n{matrix.numpy().round(3)}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
