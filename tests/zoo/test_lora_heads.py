"""PEFT adapters of tasks with different label counts are one architecture in a zoo: heads
zero-padded to the widest, runs already in the zoo included, each checkpoint's labels recorded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from paramgen.io import file_sha256, save_safetensors, write_json  # noqa: E402
from paramgen.lora import AdapterExport, LoRASetup, save_adapter  # noqa: E402
from paramgen.spec import ParamSpec  # noqa: E402
from paramgen.zoo import Zoo, ZooWriter, import_checkpoints, read_checkpoint  # noqa: E402

SETUP = LoRASetup(rank=2, alpha=4.0)
HEAD_W, HEAD_B = "base_model.model.classifier.weight", "base_model.model.classifier.bias"


def _adapter(folder, labels: int, seed: int, setup: LoRASetup = SETUP):
    g = torch.Generator().manual_seed(seed)
    tensors = {name: 0.1 * torch.randn(shape, generator=g) for name, shape in setup.shapes(labels).items()}
    return save_adapter(folder, tensors, setup, num_labels=labels), tensors


def _old_import(root, folder, task: str, run_id: str) -> None:
    """A run as the writer stored a PEFT folder before layouts were canonical: the file's
    (sorted) order, the head's bias first, no recorded labels."""
    state = load_file(folder / "adapter_model.safetensors")
    spec = ParamSpec.from_state_dict(state)
    config = json.loads((folder / "adapter_config.json").read_text())
    write_json(root / "specs" / f"{spec.fingerprint}.json", spec.to_dict())
    tensors = root / "runs" / f"{run_id}.safetensors"
    save_safetensors(tensors, {k: v.unsqueeze(0) for k, v in state.items()}, metadata={"spec_id": spec.fingerprint})
    metadata = {k: config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")}
    record = {
        "run_id": run_id, "task": task, "dataset": task, "task_description": task, "arch": None, "arch_kwargs": {}, "arch_description": "LORA adapter",
        "seed": None, "hyperparameters": {}, "spec_id": spec.fingerprint, "metadata": {**metadata, "source": "peft"},
        "checkpoints": [{"epoch": 0, "index": 0, "metrics": {}, "imported_from": str(folder)}], "tensors_sha256": file_sha256(tensors),
    }  # fmt: skip
    write_json(root / "runs" / f"{run_id}.json", record)


def test_a_peft_folder_is_laid_out_as_lora_setup_lays_it_out(tmp_path):
    folder, _ = _adapter(tmp_path / "a", 2, seed=0)
    assert list(load_file(folder / "adapter_model.safetensors"))[-2:] == [HEAD_B, HEAD_W]  # the file: bias first
    read = read_checkpoint(folder)
    assert read.spec.fingerprint == LoRASetup(rank=2, max_labels=2).spec().fingerprint and read.metadata["num_labels"] == 2


def test_heads_of_2_and_3_labels_are_padded_to_one_architecture(tmp_path):
    pairs = [_adapter(tmp_path / f"bin{i}", 2, seed=i) for i in range(2)]
    root = tmp_path / "zoo"
    import_checkpoints(root, [f for f, _ in pairs], tasks=["a", "b"])
    assert Zoo.open(root).spec()[HEAD_W].shape == (2, 384)  # no wider head yet: nothing padded
    wide, wide_tensors = _adapter(tmp_path / "tri", 3, seed=9)
    import_checkpoints(root, [wide], tasks=["c"])  # a wider head: the zoo's runs are padded to it
    zoo = Zoo.open(root)
    zoo.verify()  # rewritten runs carry the digests of their new bytes
    assert zoo.spec_ids == (SETUP.spec().fingerprint,) and len(zoo) == 3
    assert {c.task: c.metadata["num_labels"] for c in zoo} == {"a": 2, "b": 2, "c": 3}
    for c, (_, tensors) in zip(sorted(zoo, key=lambda c: c.task), [*pairs, (wide, wide_tensors)], strict=True):
        sd = zoo.state_dict(c)
        k = c.metadata["num_labels"]
        assert torch.equal(sd[HEAD_W][:k], tensors[HEAD_W]) and torch.equal(sd[HEAD_B][:k], tensors[HEAD_B])
        assert not sd[HEAD_W][k:].any() and not sd[HEAD_B][k:].any()  # zero rows, as LoRAZoo pads
        assert all(torch.equal(sd[n], tensors[n]) for n in tensors if "classifier" not in n)
    flat, _ = zoo.flatten()
    assert flat.shape == (3, SETUP.spec().numel)
    # A narrower adapter joining later is padded on import; the zoo stays one architecture.
    late, _ = _adapter(tmp_path / "late", 2, seed=5)
    assert ZooWriter(root).add(late, task="d").spec_id == SETUP.spec().fingerprint


def test_a_zoo_imported_before_keeps_loading_and_is_padded_when_a_wider_head_comes(tmp_path):
    root = tmp_path / "zoo"
    old, old_tensors = _adapter(tmp_path / "old", 2, seed=1)
    _old_import(root, old, "a", "a__old")
    zoo = Zoo.open(root)  # the old layout (bias first) reads as before
    assert zoo.spec().names[-2:] == (HEAD_B, HEAD_W) and torch.equal(zoo.state_dict(0)[HEAD_W], old_tensors[HEAD_W])
    same, _ = _adapter(tmp_path / "same", 2, seed=2)
    assert ZooWriter(root).add(same, task="b").spec_id == zoo.spec_ids[0]  # the same tensors in another order: its architecture
    wide, _ = _adapter(tmp_path / "wide", 3, seed=3)
    ZooWriter(root).add(wide, task="c")
    zoo = Zoo.open(root)
    assert len(zoo.spec_ids) == 1 and zoo.spec()[HEAD_W].shape == (3, 384)
    c = next(c for c in zoo if c.run_id == "a__old")
    assert c.metadata["num_labels"] == 2  # recorded when its head was padded
    assert torch.equal(zoo.state_dict(c)[HEAD_W][:2], old_tensors[HEAD_W]) and not zoo.state_dict(c)[HEAD_W][2].any()


def test_adapters_with_another_lora_alpha_are_refused(tmp_path):
    a, _ = _adapter(tmp_path / "a", 2, seed=0)
    b, _ = _adapter(tmp_path / "b", 2, seed=1, setup=LoRASetup(rank=2, alpha=8.0))
    with pytest.raises(ValueError, match=r"b is a LoRA adapter with lora_alpha=8.0, checkpoint .*a has lora_alpha=4.0"):
        import_checkpoints(tmp_path / "zoo", [a, b], tasks="t")
    assert not (tmp_path / "zoo").exists()
    assert len(import_checkpoints(tmp_path / "zoo", [a, b], tasks="t", mixed_architectures=True)) == 2


def test_adapter_export_records_labels_alpha_and_a_portable_base(tmp_path):
    from paramgen.lora import BASE_MODEL_ID

    folders = [_adapter(tmp_path / f"f{i}", k, seed=i)[0] for i, k in enumerate((2, 3, 2))]
    zoo = import_checkpoints(tmp_path / "zoo", folders, tasks=["pos", "sentiment", "neg"], task_description="unused")
    assert AdapterExport.from_zoo(import_checkpoints(tmp_path / "plain", [{"w": torch.ones(2)}], tasks="t")) is None  # no adapters
    export = AdapterExport.from_zoo(zoo)
    assert export is not None and export.num_labels == {"pos": 2, "sentiment": 3, "neg": 2} and export.lora_alpha == 4.0
    assert export.base_model == BASE_MODEL_ID
    back = AdapterExport.load(export.save(tmp_path / "gen").parent)
    assert back is not None and (back.num_labels, back.descriptions, back.lora_alpha, back.base_model) == (export.num_labels, export.descriptions, 4.0, BASE_MODEL_ID)
    assert back.labels("sentiment") == 3 and back.labels("anything", task="neg") == 2 and back.labels("new task") is None
    assert AdapterExport.load(tmp_path / "nowhere") is None
    (tmp_path / "gen" / "adapter_export.json").write_text(json.dumps({"format": "paramgen.AdapterExport", "num_labels": {"pos": "two"}}))
    with pytest.raises(ValueError, match=r"adapter_export.json: 'num_labels': expected an object of names to label counts"):
        AdapterExport.load(tmp_path / "gen")
