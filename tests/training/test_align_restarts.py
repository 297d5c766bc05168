"""Alignment restarts (``FitConfig.align_restarts``): the lowest final training loss is kept,
every restart is logged, and one restart is exactly the single alignment run it always was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import paramgen.conditioners.align as align_module
from paramgen.conditioners import ImageSetConditioner
from paramgen.conditioners.align import align_to_latents, reinitialize
from paramgen.tracking import NullLogger
from paramgen.training import FitConfig
from paramgen.training.engine import stream_seed
from paramgen.training.stages import _Encoded, align_stage, final_loss

TASKS = ["a", "b", "c", "d"]


class Recorder(NullLogger):
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics, *, step=None):  # noqa: ANN001
        self.rows.append((step, dict(metrics)))


def setup(restarts: int, steps: int = 6) -> tuple[SimpleNamespace, SimpleNamespace, _Encoded]:
    torch.manual_seed(0)
    cond = ImageSetConditioner(feature_dim=6, dim=4, hidden=8, heads=2, num_inducing=2)
    g = torch.Generator().manual_seed(1)
    tasks = [TASKS[i % 4] for i in range(16)]
    feats = {t: torch.randn(3, 2, 6, generator=g) for t in TASKS}  # (K, S, F) per task
    z = torch.randn(16, 2, 4, generator=g) + torch.tensor([TASKS.index(t) for t in tasks]).float()[:, None, None]
    enc = _Encoded(z=z, latents=None, conds=[feats[t] for t in tasks], tasks=tasks)
    config = FitConfig(align_steps=steps, align_restarts=restarts, batch_size=4, seed=3, progress=False)
    run = SimpleNamespace(config=config, main=True, log=Recorder())
    return run, SimpleNamespace(conditioner=cond, discrete=False), enc


def test_align_restarts_is_validated():
    with pytest.raises(ValueError, match="align_restarts must be a positive integer"):
        FitConfig(align_restarts=0)
    assert FitConfig().align_restarts == 1


def test_one_restart_is_the_former_single_run():
    """The former stage, inline: same seeds, same weights, same logged metrics."""
    run, gen, enc = setup(1)
    result = align_stage(run, gen, enc)
    assert result is not None and result.best == 0 and len(result.final_losses) == 1 and result.spread == 0.0
    ref_run, ref, _ = setup(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(3, "align", "init"))
        g = torch.Generator().manual_seed(stream_seed(3, "align", "batches"))
        losses = align_to_latents(ref.conditioner, enc.conds, enc.z.flatten(1), groups=enc.tasks, steps=6, batch_size=4, lr=1e-3, generator=g)
    for (k, a), b in zip(gen.conditioner.state_dict().items(), ref.conditioner.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert run.log.rows == [(6, {"align/loss_first": losses[0], "align/loss_last": losses[-1]})]
    assert not any(p.requires_grad for p in gen.conditioner.parameters())


def test_restarts_keep_the_lowest_final_loss(monkeypatch):
    """A stand-in alignment whose restart r ends at a chosen loss and marks the weights with r."""
    finals = [0.5, 0.1, 0.3]
    calls: list[torch.Tensor] = []

    def fake(conditioner, raw, latents, **kwargs):  # noqa: ANN001, ANN003
        r = len(calls)
        calls.append(conditioner.head.weight.detach().clone())  # the initialization of this restart
        assert all(p.requires_grad for p in conditioner.parameters())  # unfrozen again for each restart
        with torch.no_grad():
            conditioner.head.bias.fill_(float(r))
        conditioner.requires_grad_(False)
        return [1.0] * (kwargs["steps"] - 1) + [finals[r]]

    monkeypatch.setattr(align_module, "align_to_latents", fake)
    run, gen, enc = setup(3, steps=5)
    result = align_stage(run, gen, enc)
    assert result is not None and result.final_losses == (0.5, 0.1, 0.3) and result.best == 1
    assert result.spread == pytest.approx(0.4)
    assert torch.equal(gen.conditioner.head.bias, torch.full_like(gen.conditioner.head.bias, 1.0))  # restart 1's weights
    assert not torch.equal(calls[0], calls[1]) and not torch.equal(calls[1], calls[2])  # fresh initializations
    assert not gen.conditioner.training and not any(p.requires_grad for p in gen.conditioner.parameters())
    logged = [(s, m) for s, m in run.log.rows]
    assert logged[:3] == [(0, {"align/restart_loss": 0.5}), (1, {"align/restart_loss": 0.1}), (2, {"align/restart_loss": 0.3})]
    assert logged[3][1]["align/best_restart"] == 1 and logged[3][1]["align/restart_spread"] == pytest.approx(0.4)


def test_real_restarts_differ_and_are_reproducible():
    run, gen, enc = setup(3)
    a = align_stage(run, gen, enc)
    run2, gen2, enc2 = setup(3)
    b = align_stage(run2, gen2, enc2)
    assert a == b and len(set(a.final_losses)) == 3 and a.final_losses[a.best] == min(a.final_losses)
    for x, y in zip(gen.conditioner.state_dict().values(), gen2.conditioner.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_final_loss_is_the_tail_mean():
    assert final_loss([9.0] * 18 + [1.0, 3.0]) == 2.0
    assert final_loss([4.0]) == 4.0


def test_reinitialize_draws_trainable_weights_only_and_leaves_the_global_rng():
    torch.manual_seed(0)
    cond = ImageSetConditioner(feature_dim=6, dim=4, hidden=8, heads=2, num_inducing=2)
    cond.head.requires_grad_(False)
    before = {k: v.clone() for k, v in cond.state_dict().items()}
    state = torch.get_rng_state()
    n = reinitialize(cond, generator=torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())
    assert n == sum(1 for p in cond.parameters() if p.requires_grad)
    after = cond.state_dict()
    assert torch.equal(after["head.weight"], before["head.weight"])  # frozen: kept
    inducing = [k for k in after if k.endswith("inducing")]
    assert inducing and all(not torch.equal(after[k], before[k]) for k in inducing)  # no reset_parameters: Xavier
    linear = [k for k in after if k.endswith("to_q.weight")]
    assert all(not torch.equal(after[k], before[k]) for k in linear)
    again = ImageSetConditioner(feature_dim=6, dim=4, hidden=8, heads=2, num_inducing=2)
    again.head.requires_grad_(False)
    reinitialize(again, generator=torch.Generator().manual_seed(5))
    drawn = [k for k in after if not k.startswith("head.")]
    assert all(torch.equal(again.state_dict()[k], after[k]) for k in drawn)  # the same seed, the same draws
