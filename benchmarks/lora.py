"""``python -m benchmarks.lora``: Cond P-Diff table 1 / D2NWG table 5 scaled to this CPU.

Question: can one generator, conditioned on a task's description plus two examples,
produce LoRA adapters that are as good as the trained ones, as standard PEFT adapters?

Setting: MiniLM (all-MiniLM-L6-v2) with a sequence-classification head; PEFT LoRA of rank
4 on the query and value projections of the last encoder layer, head saved with the
adapter. Seven tweet tasks (3-way sentiment, three binary pairs, three one-vs-rest), each
with a description; ``negative-vs-neutral`` is held out of the generator's zoo. One LoRA
run per task; the adapters of its last ``keep_last`` steps form the zoo. The generator
(per-task z-score, 1D-conv VAE with input/latent noise, conditional 1D-UNet diffusion
prior, condition = MiniLM embedding of description + two examples) is fitted on the zoo
of the seen tasks.

Protocol (Cond P-Diff): for each task generate ``samples`` adapters, keep the best by
accuracy on a fixed subset of the task's *training* split, report test accuracy.

Rows (test accuracy unless named otherwise):
- ``original``: the best trained checkpoint of the task, chosen the same way (on the
  training subset, among every ``original_stride``-th kept checkpoint); ``zoo``: those
  checkpoints' mean; ``model soup``: the average of all the task's kept checkpoints.
- ``generated``: the best of ``samples`` (selected on training); ``generated (all)``: every
  sample; ``reconstruction``: the VAE alone on the original checkpoint.
- ``gap to original`` (accuracy points, generated - original) per task and its mean;
  ``novelty_l2`` (distance to the nearest zoo checkpoint, relative to the task's checkpoint
  spread) and ``wrong_iou`` (overlap of wrong predictions with the original).
- held-out task: the same rows (its trained adapters were never in the zoo).
- condition ablation (Cond P-Diff table 4b): ``one-hot``, ``description``, ``description +
  examples`` generators sharing one VAE.
- interpolation: conditions ``(1 - a) c_A + a c_B`` between two tasks with opposite
  labels, accuracy on both.
- PEFT round trip: the selected adapters written as PEFT folders, loaded with
  ``PeftModel.from_pretrained``, max |logit difference| from paramgen's forward; a zoo
  rebuilt from adapter folders on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import paramgen
from benchmarks.common import Results, parser
from paramgen.lora import (
    Features,
    LoRASetup,
    LoRAZoo,
    MiniLMLoRA,
    TextTask,
    load_adapter,
    save_adapter,
    text_tasks,
    unpad_head,
)
from paramgen.novelty import nearest_l2, wrong_prediction_iou
from paramgen.pipelines import cond_pdiff

__all__ = ["main", "SIZES"]

logger = logging.getLogger(__name__)

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        tasks=None,
        held_out=("negative-vs-neutral",),
        train_per_label=150,
        eval_per_label=100,
        steps=150,
        keep_last=30,
        lr=3e-3,
        selection_per_task=150,
        original_stride=3,
        vae_steps=300,
        vae_channels=32,
        prior_steps=500,
        prior_channels=32,
        samples=20,
        ablation_samples=10,
        interp=("negative-or-not", "positive-or-not"),
        interp_alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
        interp_samples=4,
        ddim_steps=50,
        peft_texts=16,
    ),
    "default": dict(
        tasks=None,
        held_out=("negative-vs-neutral",),
        train_per_label=800,
        eval_per_label=300,
        steps=600,
        keep_last=150,
        lr=3e-3,
        selection_per_task=400,
        original_stride=5,
        vae_steps=2000,
        vae_channels=32,
        prior_steps=4000,
        prior_channels=32,
        samples=20,
        ablation_samples=20,
        interp=("negative-or-not", "positive-or-not"),
        interp_alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
        interp_samples=10,
        ddim_steps=100,
        peft_texts=32,
    ),
}


class Evaluator:
    """Accuracies of adapters on the cached features of each task's splits."""

    def __init__(self, model: MiniLMLoRA, tasks: dict[str, TextTask], selection: int, seed: int) -> None:
        self.model = model
        texts = sorted({x for t in tasks.values() for s in (t.train, t.val, t.test) for x in s.x})
        feats = model.features(texts)
        row = {x: i for i, x in enumerate(texts)}
        pick = lambda xs: Features(tuple(feats.states[row[x]] for x in xs))  # noqa: E731
        g = torch.Generator().manual_seed(seed)
        self.data: dict[tuple[str, str], tuple[Features, torch.Tensor]] = {}
        for name, t in tasks.items():
            self.data[(name, "train")] = (pick(t.train.x), t.train.y)
            keep = torch.randperm(len(t.train), generator=g)[:selection].sort().values  # a fixed training subset
            self.data[(name, "select")] = (pick([t.train.x[i] for i in keep.tolist()]), t.train.y[keep])
            self.data[(name, "test")] = (pick(t.test.x), t.test.y)
        self.labels = {name: t.num_labels for name, t in tasks.items()}

    def predict(self, adapters: Sequence[dict[str, torch.Tensor]], task: str, split: str) -> torch.Tensor:
        feats, _ = self.data[(task, split)]
        return self.model.predict(adapters, feats, self.labels[task])  # (G, N)

    def acc(self, adapters: Sequence[dict[str, torch.Tensor]], task: str, split: str) -> torch.Tensor:
        return (self.predict(adapters, task, split) == self.data[(task, split)][1]).float().mean(1)  # (G,)


def select_best(ev: Evaluator, adapters: list[dict[str, torch.Tensor]], task: str) -> tuple[int, torch.Tensor]:
    """Index of the best adapter on the task's training subset, and all their selection accuracies."""
    sel = ev.acc(adapters, task, "select")
    return int(sel.argmax()), sel


def main(argv: Sequence[str] | None = None) -> int:
    args = parser("lora", __doc__.split("\n\n")[0]).parse_args(argv)
    size_name = "quick" if args.quick else "default"
    size = SIZES[size_name]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/lora-{size_name}")
    g = lambda k: torch.Generator().manual_seed(args.seed * 1000 + k)  # noqa: E731 - one stream per use
    started = time.perf_counter()
    res = Results("lora", start=started, config={"size": size_name, "seed": args.seed, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}})
    sample_kw = dict(sampler="ddim", steps=size["ddim_steps"])

    # 1. Tasks, base model, cached features.
    setup = LoRASetup()
    tasks = text_tasks(size["tasks"], train_per_label=size["train_per_label"], eval_per_label=size["eval_per_label"], seed=args.seed)
    names = list(tasks)
    held = [t for t in size["held_out"] if t in tasks]
    seen = [t for t in names if t not in held]
    model = MiniLMLoRA(setup)
    start = time.perf_counter()
    ev = Evaluator(model, tasks, size["selection_per_task"], args.seed)
    res.add("features", "all", "build_s", time.perf_counter() - start)

    # 2. One LoRA run per task; its last keep_last steps are the zoo.
    start = time.perf_counter()
    adapters, records = [], []
    init = model.init_adapter(setup.max_labels, generator=g(1))  # one starting point for every task
    for ti, name in enumerate(names):
        k = tasks[name].num_labels
        feats, y = ev.data[(name, "train")]
        kept, steps, losses = model.train_lora(feats, y, k, steps=size["steps"], keep_last=size["keep_last"], lr=size["lr"], generator=g(10 + ti), init=unpad_head(init, k))
        adapters += kept
        records += [{"task": name, "num_labels": k, "run": 0, "step": s, "loss": losses[s - 1]} for s in steps]
        logger.info("trained %s: loss %.3f -> %.3f", name, losses[0], sum(losses[-20:]) / len(losses[-20:]))
    zoo_all = LoRAZoo.from_adapters(adapters, records, setup)
    zoo_all.save(out / "zoo")
    train_s = time.perf_counter() - start
    res.add("lora training", "all", "train_s", train_s, steps_per_task=size["steps"])
    rows_of = {n: [i for i, r in enumerate(zoo_all.records) if r["task"] == n] for n in names}
    seen_rows = [i for n in seen for i in rows_of[n]]
    flat, zoo_tasks = zoo_all.flat[seen_rows], [zoo_all.tasks[i] for i in seen_rows]

    # 3. Generators: description + examples (main), description only, one-hot; one VAE.
    n_pairs = 4  # conditions vary the two examples over a few pairs (augmentation)
    cond_text = [tasks[t].condition(pair=j % n_pairs) for j, t in enumerate(zoo_tasks)]
    cond_desc = [tasks[t].description for t in zoo_tasks]
    start = time.perf_counter()
    gen = cond_pdiff(setup.spec(), seed=None, hidden_channels=size["vae_channels"], prior_channels=size["prior_channels"])
    paramgen.fit(gen, flat, cond_text, tasks=zoo_tasks, tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], prior_lr=1e-3, generator=g(2), progress=False)
    fit_s = time.perf_counter() - start
    res.add("generator", "all", "fit_s", fit_s)
    gen.save_pretrained(out / "generator")
    ablation: dict[str, Any] = {"description + examples": gen}
    for kind, conds in (("description", cond_desc), ("one-hot", list(zoo_tasks))):
        onehot = kind == "one-hot"
        other = cond_pdiff(
            setup.spec(), condition="task" if onehot else "text", tasks=list(seen) if onehot else None, seed=None, prior_channels=size["prior_channels"],
            tokenizer=gen.tokenizer, normalizer=gen.normalizer,
        )  # fmt: skip
        paramgen.fit(other, flat, conds, tasks=zoo_tasks, tokenizer_steps=0, prior_steps=size["prior_steps"], prior_lr=1e-3, generator=g(3), progress=False)
        ablation[kind] = other

    # 4. Generation for every task in one call per generator.
    def sample(generator: Any, conds: list[Any], n: int, key: int, norm_tasks: list[str]) -> list[list[dict[str, torch.Tensor]]]:
        flat_out = generator.sample_flat(conds, n, generator=g(key), tasks=norm_tasks, **sample_kw)
        sds = setup.spec().unflatten(flat_out)
        return [sds[i * n : (i + 1) * n] for i in range(len(conds))]

    start = time.perf_counter()
    main_conds = [tasks[t].condition(pair=0) for t in names]
    generated = dict(zip(names, sample(gen, main_conds, size["samples"], 4, names), strict=True))
    sample_s = time.perf_counter() - start
    res.add("generated", "all", "sample_s_per_adapter", sample_s / (len(names) * size["samples"]), sampler=f"ddim-{size['ddim_steps']}")

    # 5. Per task: original, soup, generated; novelty.
    per: dict[str, dict[str, float]] = {}
    adapters_dir = out / "adapters"
    for name in names:
        own = zoo_all.adapters(rows_of[name])
        cand = own[:: -size["original_stride"]][::-1]  # every stride-th kept checkpoint, the last included
        bi, _ = select_best(ev, cand, name)
        original = cand[bi]
        orig_test, orig_preds = ev.acc([original], name, "test"), ev.predict([original], name, "test")
        zoo_test = ev.acc(cand, name, "test")
        soup = setup.spec().unflatten(zoo_all.flat[rows_of[name]].mean(0, keepdim=True))
        soup_test = ev.acc(soup, name, "test")
        samples = generated[name]
        gi, _ = select_best(ev, samples, name)
        all_test = ev.acc(samples, name, "test")
        gen_test = all_test[gi : gi + 1]
        norm = [name] if name in seen else ["__held_out__"]  # a held-out task: zoo-wide statistics
        recon = gen.reconstruct(setup.spec().flatten([original])[0].float(), tasks=norm)
        recon_test = ev.acc(setup.spec().unflatten(recon), name, "test")
        group = "seen" if name in seen else "held-out"
        res.add("original", name, "test_acc", orig_test.tolist(), group=group, selected_on="train")
        res.add("zoo", name, "test_acc", zoo_test.tolist(), group=group)
        res.add("model soup", name, "test_acc", soup_test.tolist(), group=group)
        res.add("generated", name, "test_acc", gen_test.tolist(), group=group, selected_on="train", of=len(samples))
        res.add("generated (all)", name, "test_acc", all_test.tolist(), group=group)
        res.add("reconstruction", name, "test_acc", recon_test.tolist(), group=group)
        res.add("generated", name, "gap_points", 100 * float(gen_test - orig_test), group=group)
        # Novelty: distance to the nearest zoo checkpoint, relative to the task's own spread.
        ref = zoo_all.flat[seen_rows]
        gen_flat = setup.spec().flatten(samples)[0].float()
        own_flat = zoo_all.flat[rows_of[name]]
        spread = float((own_flat - own_flat.mean(0)).norm(dim=1).mean()) or 1.0
        d, _ = nearest_l2(gen_flat, ref)
        res.add("generated (all)", name, "novelty_l2_rel", (d / spread).tolist(), group=group)
        res.add("generated", name, "novelty_l2_rel", float(d[gi] / spread), group=group)
        res.add("generated (all)", name, "wrong_iou", wrong_prediction_iou(ev.predict(samples, name, "test"), orig_preds, ev.data[(name, "test")][1]).tolist(), group=group)
        per[name] = {"original": float(orig_test), "soup": float(soup_test), "generated": float(gen_test), "group": group}  # type: ignore[dict-item]
        # The selected adapter as a PEFT folder.
        save_adapter(adapters_dir / name, samples[gi], setup, num_labels=tasks[name].num_labels)
        logger.info("%s (%s): original %.3f soup %.3f generated %.3f", name, group, float(orig_test), float(soup_test), float(gen_test))
    for method in ("original", "model soup", "generated"):
        key = {"original": "original", "model soup": "soup", "generated": "generated"}[method]
        res.add(method, "mean over seen tasks", "test_acc", [per[n][key] for n in seen])
    gaps = [100 * (per[n]["generated"] - per[n]["original"]) for n in seen]
    res.add("generated", "mean over seen tasks", "gap_points", gaps)
    res.add("generated", "seen tasks within 1 point", "fraction", [float(x >= -1.0) for x in gaps])

    # 6. Condition ablation (seen tasks; the held-out task for the text conditions).
    for kind, generator in ablation.items():
        conds = {"description + examples": [tasks[t].condition(pair=0) for t in names], "description": [tasks[t].description for t in names], "one-hot": seen}[kind]
        which = names if kind != "one-hot" else seen
        norm = [t if t in seen else "__held_out__" for t in which]
        samples_of = dict(zip(which, sample(generator, conds, size["ablation_samples"], 5, norm), strict=True))
        accs = []
        for name in which:
            gi, _ = select_best(ev, samples_of[name], name)
            acc = float(ev.acc(samples_of[name][gi : gi + 1], name, "test"))
            if name in seen:
                accs.append(acc)
            else:
                res.add(f"ablation: {kind}", name, "test_acc", acc, group="held-out", of=size["ablation_samples"])
        res.add(f"ablation: {kind}", "mean over seen tasks", "test_acc", accs, of=size["ablation_samples"])

    # 7. Interpolation between two task conditions (zoo-wide normalization statistics).
    ta, tb = size["interp"]
    if ta in tasks and tb in tasks:
        ca, cb = gen.conditioner([tasks[ta].condition(pair=0), tasks[tb].condition(pair=0)])
        conds = [(1 - a) * ca + a * cb for a in size["interp_alphas"]]
        blocks = sample(gen, conds, size["interp_samples"], 6, ["__interpolated__"] * len(conds))
        for a, block in zip(size["interp_alphas"], blocks, strict=True):
            for t in (ta, tb):
                res.add("interpolation", t, "test_acc", ev.acc(block, t, "test").tolist(), alpha=a, between=f"{ta}|{tb}")

    # 8. PEFT round trip: plain peft loads the written adapters; a zoo rebuilt from folders.
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    diffs = []
    for name in names:
        base = AutoModelForSequenceClassification.from_pretrained(model.model_path, num_labels=tasks[name].num_labels)
        peft_model = PeftModel.from_pretrained(base, str(adapters_dir / name)).eval()
        texts = list(tasks[name].test.x[: size["peft_texts"]])
        enc = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
        with torch.no_grad():
            ref = peft_model(**enc).logits
        mine = model.text_logits(load_adapter(adapters_dir / name, setup)[0], texts)[:, : tasks[name].num_labels]
        diffs.append(float((ref - mine).abs().max()))
    res.add("generated", "PEFT round trip", "max_abs_logit_diff", max(diffs), n_tasks=len(diffs))
    folders = []
    for name in names:  # the last checkpoint of each run, as adapter folders
        i = rows_of[name][-1]
        folders.append(save_adapter(out / "zoo_adapters" / name, zoo_all.adapters([i])[0], setup, num_labels=tasks[name].num_labels))
    rebuilt = LoRAZoo.from_folders(folders, names, setup)
    res.add("zoo", "from adapter folders", "max_abs_diff", float((rebuilt.flat - zoo_all.flat[[rows_of[n][-1] for n in names]]).abs().max()))

    path = res.write(out, mlflow=not args.no_mlflow)
    print(res.table(skip_tasks=()))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
