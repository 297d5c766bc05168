"""Chunk-wise generation: fit on a lazily read zoo, sample into a state dict or a file,
selected tensors over a base model, save/load, and the dataset path of `fit`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paramgen import Generator, ModelVectorizer, ParamSpec
from paramgen.chunks import ChunkDataset, ChunkLayout
from paramgen.chunkwise import ChunkPositionConditioner, ChunkSamples, ChunkwiseGenerator
from paramgen.conditioners import IndexConditioner
from paramgen.normalize import ChunkStats, Normalizer, normalizer_from_config
from paramgen.priors import DiffusionPrior
from paramgen.tokenizers import VAETokenizer
from paramgen.training import FitConfig, fit

K = 32


def net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))


def build(layout: ChunkLayout, task_dim: int = 0) -> ChunkwiseGenerator:
    torch.manual_seed(0)
    tok = VAETokenizer(rows=1, width=K, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=16 + task_dim, base_channels=8, channel_mults=(1,), timesteps=50)
    task = IndexConditioner(["a", "b"], dim=task_dim) if task_dim else None
    return ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, task_conditioner=task, position_dim=16)


def zoo(tmp_path: Path, n: int = 3) -> tuple[ChunkLayout, list[Path], list[dict]]:
    torch.manual_seed(1)
    states = [net().state_dict() for _ in range(n)]
    paths = []
    for i, sd in enumerate(states):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
    return ChunkLayout(ParamSpec.from_state_dict(states[0]), K), paths, states


CONFIG = FitConfig(tokenizer_steps=10, prior_steps=10, batch_size=8, progress=False)


def test_fit_sample_to_dict_and_to_file_agree_and_reload(tmp_path: Path) -> None:
    layout, paths, states = zoo(tmp_path)
    gen = build(layout).fit(ChunkDataset(layout, paths), config=CONFIG)
    kw = dict(sampler="ddim", steps=5, batch_size=3)
    sd = gen.sample(generator=torch.Generator().manual_seed(0), **kw)
    out = gen.sample(out=tmp_path / "gen.safetensors", generator=torch.Generator().manual_seed(0), **kw)
    assert out == tmp_path / "gen.safetensors"
    on_disk = load_file(str(out))
    assert sd.keys() == on_disk.keys() == states[0].keys()
    assert all(torch.equal(sd[k], on_disk[k]) for k in sd)
    net().load_state_dict(sd)  # the right shapes and names
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in sd.values())  # compact storage
    gen.save_pretrained(tmp_path / "g")
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "g")
    again = back.sample(generator=torch.Generator().manual_seed(0), **kw)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    other = gen.sample(generator=torch.Generator().manual_seed(1), **kw)
    assert not all(torch.equal(sd[k], other[k]) for k in sd)


def test_per_tensor_statistics_put_each_tensor_back_at_its_scale(tmp_path: Path) -> None:
    layout, paths, states = zoo(tmp_path)
    stats = ChunkStats(layout).fit_chunks(ChunkDataset(layout, paths))
    ln = layout.tensor_index("1.weight")  # LayerNorm weight: all ones
    assert stats.mean[ln] == pytest.approx(1.0) and stats.std[ln] == 1.0  # constant tensor: std 1
    w = torch.stack([s["0.weight"].flatten() for s in states]).double()
    assert stats.mean[0] == pytest.approx(float(w.mean()))
    assert stats.std[0] == pytest.approx(float(w.std(correction=0)), rel=1e-6)
    item = ChunkSamples(ChunkDataset(layout, paths), stats)[0]
    assert item["x"].shape == (1, K) and item["cond"] == 0


def test_selected_tensors_over_a_base_model(tmp_path: Path) -> None:
    _, paths, states = zoo(tmp_path)
    layout = ChunkLayout(ParamSpec.from_state_dict(states[0]), K, include=["2.weight"])
    gen = build(layout).fit(ChunkDataset(layout, paths, strict=False), config=CONFIG)
    with pytest.raises(ValueError, match="pass base="):
        gen.sample(sampler="ddim", steps=3)
    sd = gen.sample(base=states[0], generator=torch.Generator().manual_seed(0), sampler="ddim", steps=3)
    assert torch.equal(sd["0.weight"], states[0]["0.weight"]) and not torch.equal(sd["2.weight"], states[0]["2.weight"])


def test_task_conditioned_chunks(tmp_path: Path) -> None:
    layout, paths, _ = zoo(tmp_path, n=2)
    gen = build(layout, task_dim=4)
    with pytest.raises(ValueError, match="needs conditions="):
        gen.fit(ChunkDataset(layout, paths), config=CONFIG)
    gen.fit(ChunkDataset(layout, paths), conditions=["a", "b"], config=CONFIG)
    with pytest.raises(ValueError, match="pass cond"):
        gen.sample(sampler="ddim", steps=3)
    assert gen.sample("b", sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0)).keys() == net().state_dict().keys()


def test_bad_input(tmp_path: Path) -> None:
    layout, paths, _ = zoo(tmp_path)
    gen = build(layout)
    with pytest.raises(RuntimeError, match="not fitted"):
        gen.sample()
    with pytest.raises(ValueError, match="chunk_size 7 does not divide"):
        ChunkLayout(layout.spec, 7, divisible=True)
    other = ChunkLayout(layout.spec, 16)
    with pytest.raises(ValueError, match="layout differs"):
        gen.fit(ChunkDataset(other, paths), config=CONFIG)
    with pytest.raises(ValueError, match="chunk ids must lie in"):
        ChunkPositionConditioner.from_layout(layout, dim=4)([layout.num_chunks])
    save_file({"x": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(Exception, match="bad.safetensors"):
        ChunkDataset(layout, [tmp_path / "bad.safetensors"])


class RowsDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, conds: list[str]) -> None:
        self.x, self.conds = x, conds

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i][None], "cond": self.conds[i]}


def test_fit_on_a_dataset_equals_fit_on_the_tensor() -> None:
    spec = ParamSpec.from_module(torch.nn.Linear(4, 3))
    flat = torch.randn(16, spec.numel, generator=torch.Generator().manual_seed(0))
    conds = ["a", "b"] * 8
    states = []
    for data in ("tensor", "dataset"):
        torch.manual_seed(0)
        tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
        gen = Generator(
            vectorizer=ModelVectorizer(spec), tokenizer=tok, conditioner=IndexConditioner(["a", "b"], dim=4),
            prior=DiffusionPrior(shape=tok.latent_shape, cond_dim=4, base_channels=8, channel_mults=(1,), timesteps=50),
        )
        config = FitConfig(tokenizer_steps=6, prior_steps=6, batch_size=8, progress=False)
        if data == "tensor":
            fit(gen, flat, conds, config=config)
        else:
            fit(gen, RowsDataset(flat, conds), config=config)
        states.append({f"{r}.{k}": v for r, p in gen.components.items() for k, v in p.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="come from its items"):
        fit(gen, RowsDataset(flat, conds), conds, config=config)


def test_sample_chunks_of_one_tensor_match_the_whole_model_sample(tmp_path: Path) -> None:
    layout, paths, _ = zoo(tmp_path)
    gen = build(layout).fit(ChunkDataset(layout, paths), config=CONFIG)
    ids = layout.chunks_of("0.weight")
    part = gen.sample_chunks(ids, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=3)
    whole = gen.sample(generator=torch.Generator().manual_seed(0), sampler="ddim", steps=3, batch_size=len(ids))
    assert torch.equal(part.flatten()[: whole["0.weight"].numel()], whole["0.weight"].flatten())
    with pytest.raises(ValueError, match="chunk_ids must be"):
        gen.sample_chunks([layout.num_chunks])


# --------------------------------------------------------------------------- PEFT folders
_STEM = "base_model.model.bert.encoder.layer.{}.attention.self.query.{}.weight"


def adapter_zoo(tmp_path: Path, n: int = 3) -> tuple[ChunkLayout, list[Path]]:
    """LoRA adapters as PEFT saves them (rank 2 on a hidden size of 12, two layers)."""
    g = torch.Generator().manual_seed(2)
    paths = []
    for i in range(n):
        sd = {}
        for layer in (0, 1):
            sd[_STEM.format(layer, "lora_A")] = torch.randn(2, 12, generator=g)
            sd[_STEM.format(layer, "lora_B")] = torch.randn(12, 2, generator=g) * 0.1
        paths.append(tmp_path / f"a{i}.safetensors")
        save_file(sd, str(paths[-1]))
    return ChunkLayout(ParamSpec.from_state_dict(load_file(str(paths[0]))), K), paths


ADAPTER_CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"], "layers_to_transform": [0, 1], "task_type": "FEATURE_EXTRACTION"}


def test_sample_streams_into_a_peft_adapter_folder_that_peft_reads(tmp_path: Path) -> None:
    import peft
    from peft.utils import load_peft_weights

    layout, paths = adapter_zoo(tmp_path)
    gen = build(layout).fit(ChunkDataset(layout, paths), config=CONFIG)
    kw = dict(sampler="ddim", steps=3, batch_size=1)
    in_memory = gen.sample(generator=torch.Generator().manual_seed(0), **kw)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"], layers_to_transform=[0, 1])  # target_modules: a set
    folder = gen.sample(out=tmp_path / "out" / "adapter", adapter_config=config, generator=torch.Generator().manual_seed(0), **kw)
    assert folder == tmp_path / "out" / "adapter"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter"]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    back = peft.PeftConfig.from_pretrained(str(folder))
    assert (back.peft_type, back.r, back.lora_alpha, set(back.target_modules), back.layers_to_transform) == ("LORA", 2, 4, {"query"}, [0, 1])
    weights = load_peft_weights(str(folder), device="cpu")
    assert weights.keys() == in_memory.keys()
    assert all(torch.equal(weights[k], in_memory[k]) for k in weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gen.sample(out=empty, adapter_config=ADAPTER_CONFIG, **kw) == empty  # an empty folder is filled


def test_a_failed_adapter_folder_leaves_nothing_and_bad_targets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_full_at_write) -> None:
    import errno

    layout, paths = adapter_zoo(tmp_path)
    gen = build(layout).fit(ChunkDataset(layout, paths), config=CONFIG)
    kw = dict(sampler="ddim", steps=3, batch_size=1)
    out = tmp_path / "out"
    out.mkdir()
    calls = disk_full_at_write(3)  # header, first batch, then the disk is full
    with pytest.raises(OSError) as err:
        gen.sample(out=out / "adapter", adapter_config=ADAPTER_CONFIG, **kw)
    assert err.value.errno == errno.ENOSPC and len(calls) == 3 and list(out.iterdir()) == []
    monkeypatch.undo()

    taken = out / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        gen.sample(out=taken, adapter_config=ADAPTER_CONFIG, **kw)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="pass out=FOLDER"):
        gen.sample(adapter_config=ADAPTER_CONFIG, **kw)
    with pytest.raises(ValueError, match="no 'peft_type'"):
        gen.sample(out=out / "a", adapter_config={"r": 2}, **kw)
    with pytest.raises(TypeError, match="JSON-serializable"):
        gen.sample(out=out / "a", adapter_config={"peft_type": "LORA", "r": torch.tensor(2)}, **kw)
    with pytest.raises(TypeError, match="peft config or a mapping"):
        gen.sample(out=out / "a", adapter_config=["LORA"], **kw)
    assert sorted(p.name for p in out.iterdir()) == ["taken"]


# --------------------------------------------------------------------------- Hugging Face model folders
def bert_folders(tmp_path: Path, n: int = 2) -> list[Path]:
    """Tiny random BERTs saved by transformers: model.safetensors beside config.json."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=12)
    folders = []
    for i in range(n):
        torch.manual_seed(10 + i)
        folders.append(tmp_path / f"bert{i}")
        BertModel(config).save_pretrained(folders[-1])
    return folders


def test_sample_into_a_model_folder_that_automodel_loads_strictly(tmp_path: Path) -> None:
    from transformers import AutoModel

    from paramgen.chunks import spec_from_safetensors

    folders = bert_folders(tmp_path)
    files = [f / "model.safetensors" for f in folders]
    layout = ChunkLayout(spec_from_safetensors(files[0]), K)
    gen = build(layout)
    assert gen.model_config is None
    gen.fit(ChunkDataset(layout, files), config=CONFIG)  # records the folders' config.json
    assert gen.model_config is not None and gen.model_config["model_type"] == "bert" and gen.model_config["hidden_size"] == 8
    kw = dict(sampler="ddim", steps=3, batch_size=16)
    in_memory = gen.sample(generator=torch.Generator().manual_seed(0), **kw)
    folder = gen.sample(out=tmp_path / "out" / "sampled", generator=torch.Generator().manual_seed(0), **kw)
    assert folder == tmp_path / "out" / "sampled"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sampled"]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in in_memory.items())
    assert not torch.equal(state["pooler.dense.weight"], AutoModel.from_pretrained(str(folders[0])).state_dict()["pooler.dense.weight"])

    gen.save_pretrained(tmp_path / "g")  # the config travels with the generator
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "g")
    assert back.model_config == gen.model_config
    again = back.sample(out=tmp_path / "again", generator=torch.Generator().manual_seed(0), **kw)
    assert all((again / n).read_bytes() == (folder / n).read_bytes() for n in ("config.json", "model.safetensors"))


def test_model_config_given_checked_and_refused_where_it_makes_no_sense(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    from paramgen.chunks import spec_from_safetensors

    folders = bert_folders(tmp_path)
    config = json.loads((folders[0] / "config.json").read_text())
    files = [tmp_path / f"m{i}.safetensors" for i in range(2)]  # not in model folders: nothing to record
    for f, src in zip(files, folders, strict=True):
        f.write_bytes((src / "model.safetensors").read_bytes())
    layout = ChunkLayout(spec_from_safetensors(files[0]), K)
    gen = build(layout).fit(ChunkDataset(layout, files), config=CONFIG)
    assert gen.model_config is None
    kw = dict(sampler="ddim", steps=2, batch_size=64)
    with pytest.raises(ValueError, match=r"records no config.json .*pass model_config="):
        gen.sample(out=tmp_path / "folder", **kw)
    assert not (tmp_path / "folder").exists()
    out = gen.sample(out=tmp_path / "given", model_config=folders[0], **kw)  # a folder holding config.json
    assert json.loads((out / "config.json").read_text()) == config
    with pytest.raises(ValueError, match="no 'model_type'"):
        gen.sample(out=tmp_path / "x", model_config={"hidden_size": 8}, **kw)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gen.sample(out=tmp_path / "x", model_config=tmp_path, **kw)
    with pytest.raises(ValueError, match="model_config= writes a folder: pass out=FOLDER"):
        gen.sample(model_config=config, **kw)
    with pytest.raises(ValueError, match="is a .safetensors file; model_config= writes a folder"):
        gen.sample(out=tmp_path / "m.safetensors", model_config=config, **kw)
    with pytest.raises(ValueError, match="not both"):
        gen.sample(out=tmp_path / "x", model_config=config, adapter_config=ADAPTER_CONFIG, **kw)
    with pytest.raises(ValueError, match="streams safetensors; give a .safetensors file or a folder"):
        gen.sample(out=tmp_path / "m.pt", **kw)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        gen.sample(out=out, model_config=config, **kw)
    assert not (tmp_path / "x").exists()

    # checkpoints in model folders whose configs differ: none recorded, and the log says why
    other = json.loads((folders[1] / "config.json").read_text())
    (folders[1] / "config.json").write_text(json.dumps({**other, "hidden_dropout_prob": 0.3}))
    with caplog.at_level("WARNING", logger="paramgen.chunkwise"):
        gen = build(layout).fit(ChunkDataset(layout, [f / "model.safetensors" for f in folders]), config=CONFIG)
    assert gen.model_config is None and "differ; no config.json recorded" in caplog.text

    # given at build (a transformers config): its absolute _name_or_path is not kept
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(str(folders[0]))
    gen = build(layout)
    gen = ChunkwiseGenerator(layout, gen.generator, model_config=hf)
    assert gen.model_config is not None and gen.model_config["model_type"] == "bert" and "_name_or_path" not in gen.model_config
    with pytest.raises(ValueError, match="not both"):
        ChunkwiseGenerator(layout, gen.generator, model_config=hf, adapter_config=ADAPTER_CONFIG)


def test_saved_in_the_registry_format_with_digests_and_edits_refused(tmp_path: Path) -> None:
    import json

    from paramgen.chunkwise import is_chunkwise_folder

    layout, paths, _ = zoo(tmp_path)
    gen = build(layout).fit(ChunkDataset(layout, paths), config=CONFIG)
    folder = gen.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generator", "weights.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "paramgen.ChunkwiseGenerator" and config["version"] == 2
    assert config["components"] == {"normalizer": {"config": {"type": "per_chunk", "layout": layout.config()}}}
    assert set(load_file(str(folder / "weights.safetensors"))) == {"normalizer.mean", "normalizer.std"}
    assert is_chunkwise_folder(folder) and not is_chunkwise_folder(folder / "generator")
    with pytest.raises(ValueError, match="not a paramgen generator"):  # the plain loader names the format it does not read
        Generator.from_pretrained(folder)
    # a hand edit of the definition, or other weights, is refused
    edited = {**config, "components": {"normalizer": {"config": {"type": "per_chunk", "layout": {**layout.config(), "chunk_size": 16}}}}}
    (folder / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="edited after saving"):
        ChunkwiseGenerator.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"normalizer.mean": torch.zeros(len(layout.tensors), dtype=torch.float64), "normalizer.std": torch.ones(len(layout.tensors), dtype=torch.float64)}, str(folder / "weights.safetensors"))
    with pytest.raises(ValueError, match="weights_sha256"):
        ChunkwiseGenerator.from_pretrained(folder)


def write_format_1(folder: Path) -> None:
    """Rewrite a saved chunk-wise folder as paramgen wrote it before format 2: chunkwise.json,
    stats.safetensors and generator/ (chunkwise.py's save_pretrained of format 1, verbatim)."""
    import json

    config = json.loads((folder / "config.json").read_text())
    stats = load_file(str(folder / "weights.safetensors"))
    save_file({"mean": stats["normalizer.mean"], "std": stats["normalizer.std"]}, str(folder / "stats.safetensors"), metadata={"format": "paramgen.ChunkwiseGenerator"})
    meta = {
        "format": "paramgen.ChunkwiseGenerator",
        "version": 1,
        "spec": config["spec"],
        "layout": config["components"]["normalizer"]["config"]["layout"],
        "task_conditioned": config["task_conditioned"],
        "model_config": config["model_config"],
        "adapter_config": config["adapter_config"],
    }
    (folder / "chunkwise.json").write_text(json.dumps(meta, indent=1) + "\n")
    (folder / "config.json").unlink()
    (folder / "weights.safetensors").unlink()


def test_format_1_folders_load_and_sample_the_same(tmp_path: Path) -> None:
    import json

    from paramgen.chunkwise import is_chunkwise_folder

    layout, paths, _ = zoo(tmp_path, n=2)
    gen = build(layout, task_dim=4).fit(ChunkDataset(layout, paths), conditions=["a", "b"], config=CONFIG)
    kw = dict(sampler="ddim", steps=3, batch_size=4)
    expected = gen.sample("b", generator=torch.Generator().manual_seed(0), **kw)
    write_format_1(gen.save_pretrained(tmp_path / "old"))
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["chunkwise.json", "generator", "stats.safetensors"]
    assert is_chunkwise_folder(tmp_path / "old")
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "old")
    assert back.task_conditioned and isinstance(back.stats, ChunkStats) and back.layout == layout
    again = back.sample("b", generator=torch.Generator().manual_seed(0), **kw)
    assert all(torch.equal(expected[k], again[k]) for k in expected)
    # saved again, it is written in the current format
    assert sorted(p.name for p in back.save_pretrained(tmp_path / "new").iterdir()) == ["config.json", "generator", "weights.safetensors"]

    # format-1 folders saved before configs were recorded lack both keys; a bad one names the file
    meta_file = tmp_path / "old" / "chunkwise.json"
    meta = json.loads(meta_file.read_text())
    for key in ("model_config", "adapter_config"):
        del meta[key]
    meta_file.write_text(json.dumps(meta))
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "old")
    assert back.model_config is None and back.adapter_config is None
    meta_file.write_text(json.dumps({**meta, "model_config": {"hidden_size": 8}}))
    with pytest.raises(ValueError, match=r"chunkwise.json: model_config has no 'model_type'"):
        ChunkwiseGenerator.from_pretrained(tmp_path / "old")
    meta_file.write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(ValueError, match="not a paramgen chunk-wise generator of version 1"):
        ChunkwiseGenerator.from_pretrained(tmp_path / "old")


def test_chunk_stats_is_a_normalizer_and_its_paths_agree(tmp_path: Path) -> None:
    """ChunkStats fitted on whole flat models and streamed over chunks gives the same
    statistics; its whole-model and chunk transforms agree; it round-trips through
    normalizer_from_config like the other normalizers."""
    layout, paths, states = zoo(tmp_path, n=3)
    spec = layout.spec
    flat = torch.stack([torch.cat([s[t.name].reshape(-1) for t in layout.tensors]) for s in states])  # (3, D)
    streamed = ChunkStats(layout).fit_chunks(ChunkDataset(layout, paths), batch_size=5)
    whole = ChunkStats(layout).fit(flat)
    assert isinstance(whole, Normalizer)
    assert torch.allclose(streamed.mean, whole.mean, rtol=0, atol=1e-12) and torch.allclose(streamed.std, whole.std, rtol=0, atol=1e-12)
    z = whole.transform(flat)
    assert torch.allclose(whole.inverse(z), flat, atol=1e-6)
    ids = torch.arange(layout.num_chunks)
    data = ChunkDataset.from_state_dicts(layout, states[1])
    rows = torch.stack([data[i]["values"] for i in range(layout.num_chunks)])  # (N, K)
    mask = layout.mask()
    chunked = whole.transform_chunks(rows, ids) * mask
    from paramgen.streaming import assemble

    # the chunk rows, standardized, are the whole model standardized, cut into chunks
    rebuilt = assemble(layout, [(ids, chunked)], check_finite=False)
    assert torch.allclose(torch.cat([rebuilt[t.name].reshape(-1) for t in layout.tensors]), z[1].float(), atol=1e-6)
    assert torch.allclose(whole.inverse_chunks(chunked, ids) * mask, rows, atol=1e-5)
    back = normalizer_from_config(whole.config(), whole.state_dict(), spec=spec)
    assert isinstance(back, ChunkStats) and back.layout == layout and torch.equal(back.mean, whole.mean)
    with pytest.raises(ValueError, match="needs the spec"):
        normalizer_from_config(whole.config(), whole.state_dict())
    with pytest.raises(ValueError, match="layout differs"):
        ChunkStats(ChunkLayout(spec, 16)).fit_chunks(ChunkDataset(layout, paths))
    with pytest.raises(ValueError, match="chunk ids must lie in"):
        whole.transform_chunks(rows[:1], [layout.num_chunks])
    with pytest.raises(RuntimeError, match="not fitted"):
        ChunkStats(layout).transform_chunks(rows[:1], [0])


def test_recorded_adapter_config_makes_sample_into_a_folder_a_peft_folder(tmp_path: Path) -> None:
    import peft

    from paramgen.chunkwise import is_chunkwise_folder

    layout, paths = adapter_zoo(tmp_path)
    gen = build(layout)
    gen = ChunkwiseGenerator(layout, gen.generator, adapter_config=ADAPTER_CONFIG).fit(ChunkDataset(layout, paths), config=CONFIG)
    gen.save_pretrained(tmp_path / "g")
    assert is_chunkwise_folder(tmp_path / "g") and not is_chunkwise_folder(tmp_path / "g" / "generator")
    back = ChunkwiseGenerator.from_pretrained(tmp_path / "g")
    folder = back.sample(out=tmp_path / "adapter", sampler="ddim", steps=2, batch_size=4)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert peft.PeftConfig.from_pretrained(str(folder)).r == 2

    # adapters in PEFT folders: fit records their adapter_config.json
    peft_folders = [folder, back.sample(out=tmp_path / "adapter2", sampler="ddim", steps=2, batch_size=4)]
    fresh = build(layout).fit(ChunkDataset(layout, [f / "adapter_model.safetensors" for f in peft_folders]), config=CONFIG)
    assert fresh.model_config is None and fresh.adapter_config == ADAPTER_CONFIG
