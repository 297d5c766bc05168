"""Loading by registry: saved folders name registered components; anything else is refused
without importing it."""

from __future__ import annotations

import builtins
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from paramgen import Generator, ModelVectorizer, ParamSpec, fit, register
from paramgen.conditioners import ArchitectureConditioner, ConcatConditioner, IndexConditioner
from paramgen.priors import KDEPrior
from paramgen.registry import BUILTINS, Registry, UnregisteredComponentError, registry
from paramgen.tokenizers import IdentityTokenizer


def saved(tmp_path: Path, conditioner: Any = None) -> Path:
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=KDEPrior(), conditioner=conditioner)
    conds = None if conditioner is None else ["a", "b"] * 4
    fit(gen, torch.randn(8, spec.numel), conds, progress=False)
    return gen.save_pretrained(tmp_path / "gen")


def edit(path: Path, fn: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    fn(config)
    (path / "config.json").write_text(json.dumps(config))


def test_every_builtin_name_resolves_to_a_class_that_saves_under_that_name() -> None:
    for name in BUILTINS:
        cls = registry.get(name)
        assert registry.name_of(cls) == name


def test_a_saved_folder_names_registered_components(tmp_path: Path) -> None:
    path = saved(tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["version"] == 2
    assert {r: e.get("name") for r, e in config["components"].items()} == {"tokenizer": "identity", "prior": "kde"}
    assert "class" not in json.dumps(config["components"])


@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "builtins:eval", "benchmarks.modelzoo:main", "paramgen.io:write_json"])
@pytest.mark.parametrize("version", [1, 2])
def test_loading_refuses_unregistered_classes_without_importing_them(tmp_path: Path, target: str, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved(tmp_path)

    def poison(config: dict) -> None:
        config["version"] = version
        if version == 1:  # format 1 named every class by its import path
            for entry in config["components"].values():
                if "name" in entry:
                    entry["class"] = BUILTINS[entry.pop("name")]
        entry = config["components"]["prior"]
        entry.pop("name", None)
        entry.pop("class", None)
        entry["class" if version == 1 else "name"] = target

    edit(path, poison)
    imported: list[str] = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval was called"))
    before = set(sys.modules)
    with pytest.raises(UnregisteredComponentError, match=f"prior: .*{re.escape(repr(target))}.* not a registered component"):
        Generator.from_pretrained(path)
    assert imported == [] and "benchmarks.modelzoo" not in set(sys.modules) - before


def test_a_concat_conditioner_builds_its_parts_by_name_only(tmp_path: Path) -> None:
    cond = ConcatConditioner(IndexConditioner(["a", "b"], dim=2), IndexConditioner(["x"], dim=2))
    assert [p["name"] for p in cond.config()["parts"]] == ["index", "index"]
    with pytest.raises(UnregisteredComponentError, match="'os:system' is not a registered component"):
        ConcatConditioner.from_config({"parts": [{"name": "os:system", "config": {}}, {"name": "index", "config": {"names": ["a"], "dim": 2}}]})
    with pytest.raises(UnregisteredComponentError, match="names the class 'subprocess:Popen'"):
        ConcatConditioner.from_config({"parts": [{"class": "subprocess:Popen", "config": {}}] * 2})
    assert ArchitectureConditioner in {registry.get("architecture")}


def test_format_1_folders_of_builtin_components_still_load(tmp_path: Path) -> None:
    path = saved(tmp_path, IndexConditioner(["a", "b"], dim=2))
    reference = Generator.from_pretrained(path).sample(["a"], n=2, generator=torch.Generator().manual_seed(0))

    def to_v1(config: dict) -> None:
        config["version"] = 1
        for entry in config["components"].values():
            name = entry.pop("name", None)
            if name is not None:
                entry["class"] = BUILTINS[name]
        stats = config.pop("latent_stats")
        config["latent_mean"], config["latent_scale"] = stats["mean"], stats["scale"]

    edit(path, to_v1)
    old = Generator.from_pretrained(path).sample(["a"], n=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(reference, old, strict=True) for k in a)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.update(version=99), "format version 99"),
        (lambda c: c.update(version="one"), "format version 'one'"),
        (lambda c: c.pop("version"), "format version None"),
        (lambda c: c.update(latent_stats={"mean": 0.0, "scale": 0.0}), "invalid latent statistics"),
        (lambda c: c.pop("latent_stats"), "invalid latent statistics"),
        (lambda c: c["components"]["prior"].pop("name"), "the prior entry names no component"),
    ],
)
def test_malformed_configs_are_refused_clearly(tmp_path: Path, change: Any, match: str) -> None:
    path = saved(tmp_path)
    edit(path, change)
    with pytest.raises(ValueError, match=match):
        Generator.from_pretrained(path)


class ToyPrior(KDEPrior):
    """A user's component: registered once, then it saves and loads like a built-in."""


def test_a_user_component_registers_saves_and_loads(tmp_path: Path) -> None:
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=IdentityTokenizer(rows=1, width=spec.numel), prior=ToyPrior())
    fit(gen, torch.randn(8, spec.numel), progress=False)
    with pytest.raises(UnregisteredComponentError, match="paramgen.register"):
        gen.save_pretrained(tmp_path / "g")
    assert not (tmp_path / "g" / "config.json").exists()
    local = Registry()
    local.register("toy-prior", ToyPrior)
    assert local.name_of(ToyPrior()) == "toy-prior"
    register("test-toy-prior", ToyPrior)
    try:
        gen.save_pretrained(tmp_path / "g")
        assert isinstance(Generator.from_pretrained(tmp_path / "g").prior, ToyPrior)
    finally:
        registry._classes.pop("test-toy-prior")


def test_register_checks_its_arguments() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("kde", ToyPrior)
    with pytest.raises(ValueError, match="component name"):
        reg.register("a b", ToyPrior)
    with pytest.raises(TypeError, match="config"):
        reg.register("thing", int)
    reg.register("kde", ToyPrior, replace=True)
    assert reg.get("kde") is ToyPrior
