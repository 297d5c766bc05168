"""Zoos of checkpoints a user already has: state dicts, safetensors, HF and PEFT folders."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from paramgen.models import build_model
from paramgen.spec import NonFiniteWeightsError, SpecMismatchError
from paramgen.vectorize import LayerVectorizer
from paramgen.zoo import WeightDataset, Zoo, ZooWriter, import_checkpoints


def _mlp(seed: int, hidden: int = 8) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model("mlp", in_features=4, hidden=[hidden], num_classes=3)


def test_state_dicts_round_trip_exactly_and_models_rebuild(tmp_path):
    writer = ZooWriter(tmp_path)
    nets = [_mlp(s) for s in range(3)]
    for s, net in enumerate(nets):
        c = writer.add(net.state_dict(), task="toy/0-1-2", arch="mlp", arch_kwargs={"in_features": 4, "hidden": [8], "num_classes": 3},
                       metrics={"test_acc": 0.5 + s / 10}, seed=s, note="hand-made")
        assert c.task == "toy/0-1-2" and c.dataset == "toy" and c.seed == s and c.metadata["note"] == "hand-made"
    zoo = Zoo.open(tmp_path)  # a zoo like any other, read by the unchanged reader
    assert len(zoo) == 3 and zoo.tasks == ("toy/0-1-2",)
    flat, _ = zoo.flatten()
    for i, c in enumerate(zoo):
        net = nets[c.seed]
        sd = zoo.state_dict(i)
        assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
        assert torch.equal(flat[i], torch.cat([p.detach().flatten() for p in net.state_dict().values()]))
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(i))
        assert torch.equal(zoo.model(i)(x), net.eval()(x))  # a paramgen.models name: rebuilt
    assert zoo.summary()["test_acc_mean"] == pytest.approx(0.6)
    # Runs without a run id are named by their weights: adding the same weights again stores nothing.
    again = import_checkpoints(tmp_path, [nets[0].state_dict()], tasks="toy/0-1-2")
    assert [c.id for c in again] == [zoo[[c.seed for c in zoo].index(0)].id] and len(Zoo.open(tmp_path)) == 3


def test_epochs_of_one_run_share_one_file(tmp_path):
    writer = ZooWriter(tmp_path)
    net = _mlp(0)
    states = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            net.head.weight.add_(0.1)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        writer.add(states[-1], task="toy", run_id="r0", epoch=epoch, metrics={"val_acc": epoch / 4})
    c = writer.add(states[0], task="toy", run_id="r0")  # epoch defaults to one more than the last
    assert c.epoch == 4 and c.index == 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r0.json", "r0.safetensors"]
    stacked = load_file(tmp_path / "runs" / "r0.safetensors")
    assert stacked["head.weight"].shape == (4, 3, 8)
    zoo = Zoo.open(tmp_path)
    assert [c.epoch for c in zoo] == [1, 2, 3, 4]
    assert torch.equal(zoo.state_dict(1)["head.weight"], states[1]["head.weight"])
    with pytest.raises(ValueError, match="already holds epoch 2"):
        writer.add(states[0], task="toy", run_id="r0", epoch=2)
    with pytest.raises(ValueError, match="is on task 'toy'"):
        writer.add(states[0], task="other", run_id="r0")
    with pytest.raises(SpecMismatchError, match=r"cannot join run 'r0'.*'layers.0.weight' expected shape \(8, 4\).*got shape \(5, 4\)"):
        writer.add(_mlp(0, hidden=5).state_dict(), task="toy", run_id="r0")
    assert len(Zoo.open(tmp_path)) == 4  # nothing half-written by the refusals
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_folder_of_safetensors_files_and_several_architectures(tmp_path):
    src = tmp_path / "ckpts"
    src.mkdir()
    for s in range(2):
        save_file(_mlp(s).state_dict(), src / f"small{s}.safetensors")
        save_file(_mlp(s, hidden=6).state_dict(), src / f"wide{s}.safetensors")
    (src / "notes.txt").write_text("not a checkpoint")
    tasks = {"small0": "a", "small1": "b", "wide0": "a", "wide1": "b"}
    mismatch = r"wide0.safetensors is another architecture than checkpoint .*small0.safetensors: 'head.weight' expected shape \(3, 8\).*got shape \(3, 6\).*mixed_architectures=True"
    with pytest.raises(SpecMismatchError, match=mismatch):
        import_checkpoints(tmp_path / "zoo", src, tasks=tasks)
    assert not (tmp_path / "zoo").exists()  # nothing written, not even the folder
    zoo = import_checkpoints(tmp_path / "zoo", src, tasks=tasks, mixed_architectures=True)
    assert len(zoo) == 4 and len(zoo.spec_ids) == 2 and zoo.tasks == ("a", "b")
    assert {c.metadata["source"] for c in zoo} == {"safetensors"}
    with pytest.raises(ValueError, match="2 architectures"):
        zoo.flatten()
    for sid in zoo.spec_ids:
        part = zoo.filter(spec_id=sid)
        flat, _ = part.flatten()
        vec = LayerVectorizer(part.spec(), chunk_size=8)
        ds = WeightDataset(part, vec)
        assert torch.equal(vec.unpack(ds.all()), flat)
        assert ds[0]["seed"] == -1 and ds[0]["task"] in ("a", "b")
    # No architecture recorded: the zoo serves weights but cannot build a model.
    with pytest.raises(ValueError, match="cannot build"):
        zoo.model(0)
    assert zoo.state_dict(0)["head.weight"].shape[0] == 3


def test_hugging_face_folder_records_its_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=30)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertModel(config)
    model.save_pretrained(tmp_path / "bert", safe_serialization=True)
    c = ZooWriter(tmp_path / "zoo").add(tmp_path / "bert", task="mlm", metrics={"loss": 1.5})
    assert c.arch == "BertModel" and c.metadata["model_type"] == "bert" and c.metadata["source"] == "huggingface"
    assert c.metadata["config"]["hidden_size"] == 8 and "bert" in c.arch_description
    zoo = Zoo.open(tmp_path / "zoo")
    sd = zoo.state_dict(0)
    saved = model.state_dict()
    assert all(torch.equal(sd[k], saved[k]) for k in sd) and len(sd) >= len(saved) - 1  # position_ids may be dropped
    with pytest.raises(ValueError, match="cannot build"):
        zoo.model(0)

    # Sharded: the index's weight map names the shards.
    shard_dir = tmp_path / "sharded"
    model.save_pretrained(shard_dir, safe_serialization=True, max_shard_size="20KB")
    assert (shard_dir / "model.safetensors.index.json").exists()
    c2 = ZooWriter(tmp_path / "zoo").add(shard_dir, task="mlm", run_id="sharded")
    assert c2.spec_id == c.spec_id  # the same tensors as the single-file save

    # Pickle only: refused, never unpickled.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text("{}")
    (bin_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickled weights.*safe_serialization=True"):
        ZooWriter(tmp_path / "zoo").add(bin_dir, task="mlm")


def test_peft_adapter_folder_records_lora_settings(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=30)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = transformers.BertModel(config)
        lora = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    c = ZooWriter(tmp_path / "zoo").add(tmp_path / "adapter", task="sst2")
    assert c.metadata["r"] == 2 and c.metadata["lora_alpha"] == 4 and c.metadata["target_modules"] == ["query", "value"]
    assert c.metadata["source"] == "peft" and "r=2" in c.arch_description
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    sd = Zoo.open(tmp_path / "zoo").state_dict(0)
    assert set(sd) == set(saved) and all(torch.equal(sd[k], saved[k]) for k in saved)

    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    good = json.loads(cfg_path.read_text())
    for bad, message in (([1, 2], "JSON object"), ({**good, "r": "four"}, "'r' must be a positive int"), ({**good, "lora_alpha": None}, "'lora_alpha' must be a number")):
        cfg_path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            ZooWriter(tmp_path / "zoo2").add(tmp_path / "adapter", task="sst2")


def test_bad_checkpoints_are_refused_with_what_was_expected(tmp_path):
    writer = ZooWriter(tmp_path / "zoo")
    good = _mlp(0).state_dict()
    with pytest.raises(ValueError, match="non-empty state dict"):
        writer.add({}, task="t")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        writer.add(tmp_path / "nowhere.safetensors", task="t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no weights: expected a Hugging Face model folder"):
        writer.add(tmp_path / "empty", task="t")
    with pytest.raises(ValueError, match="holds no checkpoints"):
        import_checkpoints(tmp_path / "zoo", tmp_path / "empty", tasks="t")
    (tmp_path / "model.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled weights"):
        writer.add(tmp_path / "model.pt", task="t")
    (tmp_path / "torn.safetensors").write_bytes(b"torn")
    with pytest.raises(ValueError, match="torn.safetensors is not a readable safetensors file"):
        writer.add(tmp_path / "torn.safetensors", task="t")
    nan = {k: v.clone() for k, v in good.items()}
    nan["layers.0.bias"][1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="layers.0.bias"):
        writer.add(nan, task="t")
    with pytest.raises(ValueError, match="metric 'acc' must be a finite number"):
        writer.add(good, task="t", metrics={"acc": float("inf")})
    with pytest.raises(ValueError, match="non-empty str"):
        writer.add(good, task="")
    with pytest.raises(ValueError, match="file-name-safe"):
        writer.add(good, task="t", run_id="../escape")
    with pytest.raises(TypeError, match="JSON values"):
        writer.add(good, task="t", extra=object())
    with pytest.raises(ValueError, match="got 1 tasks for 2 checkpoints"):
        import_checkpoints(tmp_path / "zoo", [good, good], tasks=["t"])
    # One named architecture keeps one set of tensors across runs.
    writer.add(good, task="t", arch="mine")
    with pytest.raises(SpecMismatchError, match="recorded as architecture 'mine'.*layers.0.weight"):
        writer.add(_mlp(0, hidden=5).state_dict(), task="t", arch="mine")
    assert len(Zoo.open(tmp_path / "zoo")) == 1  # only the good one went in


@settings(max_examples=15)
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    with_buffer=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_state_dict_round_trips_exactly(tmp_path_factory, shapes, dtype, with_buffer, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {f"m{i}.w": torch.randn(*shape, generator=g).to(dtype) for i, shape in enumerate(shapes)}
    if with_buffer:
        sd["m0.steps"] = torch.randint(0, 100, (2,), generator=g)  # an integer buffer rides along as an extra
    root = tmp_path_factory.mktemp("zoo")
    c = ZooWriter(root).add(sd, task="t")
    back = Zoo.open(root).state_dict(c)
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
