"""benchmarks.cross_arch_layers: the member plan and the Net2Net donor (the run itself is `--quick`)."""

import pytest

from benchmarks.cross_arch_layers import SIZES, Member, nearest_seen, plan_members


@pytest.mark.parametrize("size", ["quick", "default"])
def test_plan_splits_the_space(size):
    families = SIZES[size]["families"]
    members = plan_members(families, seed=0)
    assert members == plan_members(families, seed=0)  # drawn once, the same for every pipeline seed
    assert len({m.key for m in members}) == len(members)
    if size == "default":
        assert 20 <= len(members) <= 40
    for fam, f in families.items():
        mine = [m for m in members if m.family == fam]
        seen = [m for m in mine if m.split == "seen"]
        assert Member(fam, min(f["box_depths"]), min(f["box_widths"]), "seen") in seen
        inside = [m for m in mine if m.depth in f["box_depths"] and m.width in f["box_widths"]]
        assert {m.split for m in inside} <= {"seen", "interpolation"}
        assert all(m.split == "extrapolation" for m in mine if m not in inside)
        assert [m.split for m in mine].count("interpolation") == f["interpolation"]
        for m in mine:
            if m.split != "seen":
                src = nearest_seen(m, members)  # always reachable by growth: the smallest corner is seen
                assert src.split == "seen" and src.depth <= m.depth and src.width <= m.width


def test_nearest_seen_is_the_largest_that_grows():
    members = [Member("convnet", 2, 4, "seen"), Member("convnet", 2, 6, "seen"), Member("convnet", 3, 8, "seen")]
    assert nearest_seen(Member("convnet", 3, 7, "interpolation"), members).key == "convnet-d2-w6"
    with pytest.raises(ValueError, match="no seen member"):
        nearest_seen(Member("resnet", 8, 2, "extrapolation"), members)


TINY = dict(
    families={
        "convnet": dict(box_depths=(2,), box_widths=(2, 3), extra_depths=(3,), extra_widths=(), seen=1, interpolation=1, extrapolation=1),
        "resnet": dict(box_depths=(8,), box_widths=(1, 2), extra_depths=(14,), extra_widths=(), seen=1, interpolation=1, extrapolation=1),
    },
    seeds=(0,),
    zoo_epochs=1,
    keep_epochs=(1,),
    tokenizer_steps=3,
    prior_steps=3,
    codebook_size=8,
    hidden=16,
    d_model=16,
    layers=1,
    vae_hidden=8,
    unet_channels=8,
    recal_batches=2,
    eval_per_class=5,
    finetune_train_per_class=5,
)


@pytest.mark.slow
@pytest.mark.parametrize("components", ["vq-gpt", "vae-ddpm"])
def test_tiny_run_end_to_end(components, tmp_path, monkeypatch):
    from benchmarks import cross_arch_layers
    from tests.benchmarks.test_harnesses import methods, run

    data = run(cross_arch_layers, tmp_path, monkeypatch, TINY, extra=["--components", components, "--workers", "1"])
    assert {"generated", "random init + bn-recal", "net2net + bn-recal", "original", "reconstruction"} <= methods(data)
    diffs = {(r["method"], r["task"], r["epoch"]) for r in data["rows"] if r["metric"] == "paired_diff"}
    assert ("generated - net2net + bn-recal", "interpolation", 1) in diffs and ("generated - random init", "extrapolation", 0) in diffs
    items = data["items"]["net2net + bn-recal @1"]
    assert {i["member"] for i in items} == {"convnet-d2-w3", "convnet-d3-w2", "resnet-d8-w2", "resnet-d14-w1"}


@pytest.mark.parametrize("components", ["vq-gpt", "vae-ddpm"])
def test_sample_rows_noise_scale(components):
    """``noise_scale=1`` is the prior's own sampler; 0 is deterministic (x_T = 0, or greedy decoding)."""
    import torch

    import paramgen
    from benchmarks.cross_arch_layers import make_generator, sample_rows
    from paramgen.conditioners import ConcatConditioner
    from paramgen.conditioners.descriptor import DescriptorConditioner
    from paramgen.conditioners.index import OneHotConditioner
    from paramgen.layerwise import LayerRowLayout
    from paramgen.models import ConvNet

    torch.manual_seed(0)
    lay = LayerRowLayout(ConvNet(channels=[2, 4], num_classes=3), width=8)
    conds = [("a", d) for d in lay.descriptors]
    gen = make_generator(components, ConcatConditioner(OneHotConditioner(["a"]), DescriptorConditioner()), {**SIZES["quick"], **TINY, "width": 8, "tokens_per_chunk": 4, "latent_length": 4})
    paramgen.fit(gen, torch.randn(len(conds), 8), conds, tokenizer_steps=2, prior_steps=2, batch_size=8, generator=torch.Generator().manual_seed(0))

    def draw(scale, seed):
        return sample_rows(gen, conds, noise_scale=scale, generator=torch.Generator().manual_seed(seed))

    assert draw(0.0, 1).shape == (lay.rows, 8)
    assert torch.equal(draw(0.0, 1), draw(0.0, 2))
    if components == "vae-ddpm":
        assert torch.equal(draw(1.0, 3), gen.sample_flat(conds, 1, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="noise_scale"):
        draw(1.5, 0)
