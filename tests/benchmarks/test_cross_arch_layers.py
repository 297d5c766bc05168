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
