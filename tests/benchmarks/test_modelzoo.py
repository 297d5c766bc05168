"""modelzoo's pieces: the alignment-restart losses it reports, and the fresh draw is other training images."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import Results
from benchmarks.modelzoo import AlignLosses, tensor


def test_align_losses_report_every_restart_and_the_spread():
    rec = AlignLosses()
    rec.log_metrics({"tokenizer/loss": 1.0}, step=100)
    for r, loss in enumerate([0.3, 0.001, 0.002]):
        rec.log_metrics({"align/restart_loss": loss}, step=r)
    rec.log_metrics({"align/best_restart": 1, "align/restart_spread": 0.299}, step=10)
    res = Results("modelzoo", config={})
    rec.report(res, "restarts")
    rows = {r["metric"]: r for r in res.rows}
    assert rows["restart_final_loss"]["n"] == 3 and rows["restart_final_loss"]["kept"] == 1
    assert rows["kept_final_loss"]["value"] == 0.001
    assert rows["restart_loss_spread"]["value"] == pytest.approx(0.299)


def test_align_losses_with_one_restart_keep_the_last_step():
    rec = AlignLosses()
    rec.log_metrics({"align/loss_first": 2.0, "align/loss_last": 0.5}, step=10)
    res = Results("modelzoo", config={})
    rec.report(res, "restarts")
    assert [r["value"] for r in res.rows if r["metric"] == "kept_final_loss"] == [0.5]


def test_tensor_refuses_a_list():
    assert tensor(torch.zeros(2, 3)).shape == (2, 3)
    with pytest.raises(TypeError, match=r"one \(B, D\) tensor"):
        tensor([torch.zeros(3)])
