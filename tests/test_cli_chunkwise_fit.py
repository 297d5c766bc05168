"""``paramgen fit`` on a chunk-wise TOML (``pipeline = "chunkwise"``), then ``paramgen sample``:
a model streamed into one safetensors file that ``load_state_dict(strict=True)`` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from paramgen.chunkwise import ChunkwiseGenerator, is_chunkwise_folder
from paramgen.cli import main
from paramgen.cli.recipe import ConfigError, Recipe

SAMPLING = ["--sampler", "ddim", "--steps", "2"]

# Small sizes: a fit of a few steps takes a second or two.
TOML = """
zoo = "{zoo}"
out = "generator"
[generator]
pipeline = "chunkwise"
{condition}
chunk_size = 32
latent_length = 8
hidden_channels = 8
base_channels = 8
timesteps = 50
position_dim = 16
cond_dim = 8
[fit]
tokenizer_steps = 4
prior_steps = 4
batch_size = 8
warmup_steps = 1
"""


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _config(tmp_path: Path, zoo: str, condition: str = "") -> Path:
    path = tmp_path / "chunkwise.toml"
    path.write_text(TOML.format(zoo=zoo, condition=condition))
    return path


def _fit_then_sample(config: Path, tmp_path: Path, *cond: str) -> dict[str, torch.Tensor]:
    assert main(["-q", "fit", str(config), "--no-progress", "--threads", "1"]) == 0
    folder = tmp_path / "generator"
    assert is_chunkwise_folder(folder)
    out = tmp_path / "model.safetensors"
    assert main(["-q", "sample", str(folder), "--out", str(out), "--seed", "0", *cond, *SAMPLING]) == 0
    return load_file(str(out))


def test_fit_a_folder_of_checkpoints_then_sample_one_model_file(tmp_path):
    zoo = tmp_path / "checkpoints"
    zoo.mkdir()
    for i in range(3):
        save_file(_model(i).state_dict(), str(zoo / f"model-{i}.safetensors"))
    weights = _fit_then_sample(_config(tmp_path, "checkpoints"), tmp_path)
    model = _model(9)
    model.load_state_dict(weights, strict=True)  # every tensor, shape and dtype of the architecture
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not torch.equal(weights["0.weight"], _model(0).state_dict()["0.weight"])  # generated, not copied
    gen = ChunkwiseGenerator.from_pretrained(tmp_path / "generator")
    assert gen.layout.chunk_size == 32 and not gen.task_conditioned and gen.stats is not None


def test_fit_a_zoo_folder_on_task_names_then_sample_a_task(tmp_path):
    from paramgen.zoo import ZooWriter

    writer = ZooWriter(tmp_path / "zoo")
    for i in range(4):
        writer.add(_model(i), task=f"task{i % 2}", run_id=f"run{i}")
    weights = _fit_then_sample(_config(tmp_path, "zoo", 'condition = "task"'), tmp_path, "--cond", "task1")
    _model(9).load_state_dict(weights, strict=True)
    assert ChunkwiseGenerator.from_pretrained(tmp_path / "generator").task_conditioned


def test_chunkwise_recipe_defaults_to_no_condition_and_refuses_what_it_cannot_read(tmp_path, capsys):
    zoo = tmp_path / "checkpoints"
    zoo.mkdir()
    save_file(_model(0).state_dict(), str(zoo / "m.safetensors"))
    assert Recipe.from_toml(_config(tmp_path, "checkpoints")).condition == "none"
    with pytest.raises(ConfigError, match="has no option 'chunk_sise'"):
        Recipe.from_dict({"zoo": "z", "out": "g", "generator": {"pipeline": "chunkwise", "chunk_sise": 3}})
    # A folder of bare checkpoints has no task names.
    assert main(["-q", "fit", str(_config(tmp_path, "checkpoints", 'condition = "task"')), "--no-progress"]) == 2
    assert "a folder of checkpoints has no task names; use condition = \"none\" or a zoo folder" in capsys.readouterr().err
    # Nothing to fit on: the message names what was expected.
    (tmp_path / "empty").mkdir()
    assert main(["-q", "fit", str(_config(tmp_path, "empty")), "--no-progress"]) == 2
    assert "is neither a zoo folder (runs/) nor a folder of checkpoints" in capsys.readouterr().err


def test_the_example_config_is_a_valid_chunkwise_recipe():
    example = Path(__file__).resolve().parents[1] / "examples" / "chunkwise.toml"
    recipe = Recipe.from_toml(example)
    assert recipe.pipeline == "chunkwise" and recipe.condition == "none"
    assert recipe.fit.schedule == "cosine" and recipe.fit.tokenizer_steps == 2000
    assert recipe.zoo.endswith("runs/chunkwise/checkpoints")
