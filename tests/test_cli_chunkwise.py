"""``paramgen sample`` on a chunk-wise generator folder (`paramgen.chunkwise.ChunkwiseGenerator.save_pretrained`):
one model per sample, streamed into a .safetensors file, a Hugging Face model folder that
``AutoModel`` loads, or a PEFT adapter folder; options that make no sense for it are refused
by name (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paramgen.chunks import ChunkDataset, ChunkLayout, spec_from_safetensors
from paramgen.chunkwise import ChunkwiseGenerator
from paramgen.cli import main
from paramgen.conditioners import IndexConditioner
from paramgen.priors import DiffusionPrior
from paramgen.spec import ParamSpec
from paramgen.tokenizers import VAETokenizer
from paramgen.training import FitConfig

K = 64
SAMPLING = ["--sampler", "ddim", "--steps", "2"]
KW = dict(sampler="ddim", steps=2)


def build(layout: ChunkLayout, *, task_dim: int = 0, **configs) -> ChunkwiseGenerator:
    torch.manual_seed(0)
    tok = VAETokenizer(rows=1, width=K, latent_channels=2, latent_length=4, hidden_channels=8, num_down=1)
    prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=16 + task_dim, base_channels=8, channel_mults=(1,), timesteps=50)
    task = IndexConditioner(["a", "b"], dim=task_dim) if task_dim else None
    return ChunkwiseGenerator.build(layout, tokenizer=tok, prior=prior, task_conditioner=task, position_dim=16, **configs)


CONFIG = FitConfig(tokenizer_steps=5, prior_steps=5, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def bert_generator(tmp_path_factory) -> tuple[Path, Path]:
    """A chunk-wise generator fitted on two tiny BERT folders (it records their config.json), saved."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("chunkwise-cli")
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=12)
    files = []
    for i in range(2):
        torch.manual_seed(10 + i)
        BertModel(config).save_pretrained(root / f"bert{i}")
        files.append(root / f"bert{i}" / "model.safetensors")
    layout = ChunkLayout(spec_from_safetensors(files[0]), K)
    gen = build(layout).fit(ChunkDataset(layout, files), config=CONFIG)
    assert gen.model_config is not None
    return gen.save_pretrained(root / "generator"), root / "bert0"


def sample(*args: str) -> int:
    return main(["-q", "sample", *args])


def test_one_safetensors_file_is_the_librarys_sample(bert_generator, tmp_path, capsys):
    gen_dir, _ = bert_generator
    out = tmp_path / "one.safetensors"
    assert sample(str(gen_dir), "--out", str(out), "--seed", "3", *SAMPLING) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    gen = ChunkwiseGenerator.from_pretrained(gen_dir)
    expected = gen.sample(generator=torch.Generator().manual_seed(3), batch_size=256, **KW)
    written = load_file(str(out))
    assert written.keys() == expected.keys() and all(torch.equal(written[k], v) for k, v in expected.items())


def test_a_folder_receives_hugging_face_model_folders_that_automodel_loads(bert_generator, tmp_path, capsys):
    from transformers import AutoModel

    gen_dir, original = bert_generator
    out = tmp_path / "samples"
    assert sample(str(gen_dir), "--out", str(out), "-n", "2", "--seed", "1", *SAMPLING) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample-0", "sample-1", "samples.json"]
    assert json.loads((out / "samples.json").read_text()) == [{"file": f"sample-{i}", "cond": None, "sample": i} for i in range(2)]
    states = []
    for i in range(2):
        folder = out / f"sample-{i}"
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
        assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
        states.append(model.state_dict())
    assert json.loads((out / "sample-0" / "config.json").read_text())["hidden_size"] == json.loads((original / "config.json").read_text())["hidden_size"]
    assert not torch.equal(states[0]["pooler.dense.weight"], states[1]["pooler.dense.weight"])  # two samples, not one twice
    again = tmp_path / "again"
    assert sample(str(gen_dir), "--out", str(again), "-n", "2", "--seed", "1", *SAMPLING) == 0  # same seed, same bytes
    assert all((again / f"sample-{i}" / n).read_bytes() == (out / f"sample-{i}" / n).read_bytes() for i in range(2) for n in ("config.json", "model.safetensors"))


def test_format_safetensors_writes_files_in_the_folder(bert_generator, tmp_path):
    gen_dir, _ = bert_generator
    out = tmp_path / "files"
    assert sample(str(gen_dir), "--out", str(out), "-n", "2", "--format", "safetensors", *SAMPLING) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample-0.safetensors", "sample-1.safetensors", "samples.json"]
    assert "pooler.dense.weight" in load_file(str(out / "sample-0.safetensors"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-n", "2", "--out", "{tmp}/one.safetensors"], "--out {tmp}/one.safetensors is one file but 2 models were asked for"),
        (["--out", "{tmp}/m.pt"], "streams safetensors: give --out FILE.safetensors or a folder"),
        (["--out", "{tmp}/d", "--format", "pt"], "--format pt does not apply to a chunk-wise generator"),
        (["--out", "{tmp}/d", "--format", "peft"], "--format peft: this chunk-wise generator records no adapter_config.json"),
        (["--out", "{tmp}/d", "--task", "a"], "--task does not apply to a chunk-wise generator"),
        (["--out", "{tmp}/d", "--arch", "a"], "--arch does not apply to a chunk-wise generator"),
        (["--out", "{tmp}/d", "--num-labels", "2"], "--num-labels does not apply to a chunk-wise generator"),
        (["--out", "{tmp}/d", "--lora-alpha", "4"], "--lora-alpha does not apply to a chunk-wise generator"),
        (["--out", "{tmp}/d", "--cond", "a"], "this chunk-wise generator is unconditional: omit --cond"),
        (["--out", "{tmp}/d", "--temperature", "0.5"], "does not take --temperature"),
    ],
)
def test_options_that_make_no_sense_are_refused_by_name(bert_generator, tmp_path, capsys, extra, message):
    gen_dir, _ = bert_generator
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert sample(str(gen_dir), *extra, *SAMPLING) == 2
    err = capsys.readouterr().err
    assert err.startswith("paramgen sample: error: ") and message.replace("{tmp}", str(tmp_path)) in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_without_a_recorded_config_a_folder_needs_format_safetensors(tmp_path, capsys):
    sd = torch.nn.Linear(12, 10).state_dict()
    save_file(sd, str(tmp_path / "m.safetensors"))
    layout = ChunkLayout(ParamSpec.from_state_dict(sd), K)
    gen_dir = build(layout).fit(ChunkDataset(layout, [tmp_path / "m.safetensors"]), config=CONFIG).save_pretrained(tmp_path / "g")
    assert sample(str(gen_dir), "--out", str(tmp_path / "d"), *SAMPLING) == 2
    assert "records no config.json nor adapter_config.json" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert sample(str(gen_dir), "--out", str(tmp_path / "d"), "--format", "safetensors", *SAMPLING) == 0
    assert load_file(str(tmp_path / "d" / "sample-0.safetensors")).keys() == sd.keys()


def test_task_conditioned_peft_adapters(tmp_path, capsys):
    import peft

    stem = "base_model.model.bert.encoder.layer.0.attention.self.query.{}.weight"
    g = torch.Generator().manual_seed(2)
    files = []
    for i in range(2):
        files.append(tmp_path / f"a{i}.safetensors")
        save_file({stem.format("lora_A"): torch.randn(2, 12, generator=g), stem.format("lora_B"): torch.randn(12, 2, generator=g)}, str(files[-1]))
    layout = ChunkLayout(spec_from_safetensors(files[0]), K)
    adapter_config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"], "layers_to_transform": [0], "task_type": "FEATURE_EXTRACTION"}
    gen = build(layout, task_dim=4, adapter_config=adapter_config).fit(ChunkDataset(layout, files), conditions=["a", "b"], config=CONFIG)
    gen_dir = gen.save_pretrained(tmp_path / "g")
    out = tmp_path / "adapters"
    assert sample(str(gen_dir), "--out", str(out), "--cond", "a", "--cond", "b", "--seed", "5", *SAMPLING) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a-0", "b-0", "samples.json"]
    assert peft.PeftConfig.from_pretrained(str(out / "b-0")).r == 2
    expected = gen.sample("a", generator=torch.Generator().manual_seed(5), batch_size=256, **KW)
    written = load_file(str(out / "a-0" / "adapter_model.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    capsys.readouterr()
    assert sample(str(gen_dir), "--out", str(tmp_path / "x"), *SAMPLING) == 2
    assert "task-conditioned: pass --cond" in capsys.readouterr().err
    assert sample(str(gen_dir), "--out", str(tmp_path / "x"), "--cond", "c", *SAMPLING) == 2
    assert "--cond" in capsys.readouterr().err
