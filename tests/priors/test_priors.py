"""Tests of the priors: a shared contract for every Prior, the schedule maths, the UNet, learning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from paramgen.interfaces import Prior
from paramgen.priors import DiffusionPrior, KDEPrior, LinearSchedule, UNet1D, ddim_sample, ddpm_sample


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Run these tiny-tensor tests on one intra-op thread, restoring the count afterwards.

    Thousands of sub-millisecond ops gain nothing from a thread pool, and on a machine
    whose cores are shared with other jobs OpenMP's spinning workers made this file 50x
    slower (8 s with one thread, over 500 s with two, measured under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Shared contract: subclass once per implementation (diffusers' SchedulerCommonTest habit).
# ---------------------------------------------------------------------------------------
class PriorContract:
    shape = (2, 6)  # (C, T)
    cond_dim = 3

    def make(self, *, conditional: bool):
        raise NotImplementedError

    def fit(self, prior, latents: torch.Tensor, cond: torch.Tensor | None) -> None:
        """Train or fit ``prior`` on the data (implementation-specific verb)."""
        raise NotImplementedError

    def data(self, *, conditional: bool, m: int = 12) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = _gen(123)
        latents = torch.randn(m, *self.shape, generator=g)  # (M, C, T)
        cond = torch.eye(self.cond_dim)[torch.arange(m) % self.cond_dim] if conditional else None  # (M, Dc)
        return latents, cond

    def fitted(self, *, conditional: bool):
        prior = self.make(conditional=conditional)
        self.fit(prior, *self.data(conditional=conditional))
        return prior

    def conds(self, n: int) -> torch.Tensor:
        return torch.eye(self.cond_dim)[torch.arange(n) % self.cond_dim]  # (n, Dc)

    # --- contract ---------------------------------------------------------------------
    def test_is_a_prior(self):
        assert isinstance(self.make(conditional=True), Prior)

    @pytest.mark.parametrize("conditional", [False, True])
    def test_sample_shape(self, conditional):
        prior = self.fitted(conditional=conditional)
        x = prior.sample(5, self.conds(5) if conditional else None, generator=_gen(0))
        assert x.shape == (5, *self.shape)
        assert x.dtype == torch.float32
        assert torch.isfinite(x).all()

    def test_seeded_samples_repeat_and_seeds_differ(self):
        prior = self.fitted(conditional=True)
        cond = self.conds(4)
        a = prior.sample(4, cond, generator=_gen(7))
        b = prior.sample(4, cond, generator=_gen(7))
        c = prior.sample(4, cond, generator=_gen(8))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)

    def test_sample_leaves_global_rng_alone(self):
        prior = self.fitted(conditional=True)
        state = torch.get_rng_state()
        prior.sample(3, self.conds(3), generator=_gen(0))
        assert torch.equal(torch.get_rng_state(), state)

    def test_save_and_rebuild_samples_identically(self, tmp_path):
        prior = self.fitted(conditional=True)
        save_file(prior.state_dict(), tmp_path / "prior.safetensors")
        (tmp_path / "config.json").write_text(json.dumps(prior.config()))

        config = json.loads((tmp_path / "config.json").read_text())
        rebuilt = type(prior).from_config(config)
        rebuilt.load_state_dict(load_file(tmp_path / "prior.safetensors"))
        cond = self.conds(4)
        expected = prior.sample(4, cond, generator=_gen(3))
        assert torch.equal(rebuilt.sample(4, cond, generator=_gen(3)), expected)
        # The weights matter: a rebuilt prior that skipped load_state_dict would differ.
        fresh = type(prior).from_config(config)
        self.fit(fresh, *self.data(conditional=True, m=6))
        assert not torch.allclose(fresh.sample(4, cond, generator=_gen(3)), expected)

    def test_latents_that_are_not_batches_of_latents_are_refused(self):
        prior = self.make(conditional=False)
        with pytest.raises(ValueError, match="expected latents of shape"):
            self.fit(prior, torch.randn(4, self.shape[0] * self.shape[1]), None)

    def test_nan_latents_are_refused(self):
        latents, _ = self.data(conditional=False)
        latents[1, 0, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            self.fit(self.make(conditional=False), latents, None)

    def test_cond_of_wrong_width_is_refused(self):
        latents, cond = self.data(conditional=True)
        with pytest.raises(ValueError, match=r"expected cond of shape \(12,"):
            self.fit(self.make(conditional=True), latents, cond[:, :2].contiguous() if self.fit_checks_width else cond[:5])
        prior = self.fitted(conditional=True)
        with pytest.raises(ValueError, match=rf"expected cond of shape \(4, {self.cond_dim}\), got \(4, 2\)"):
            prior.sample(4, torch.zeros(4, 2), generator=_gen(0))
        with pytest.raises(ValueError, match=rf"expected cond of shape \(4, {self.cond_dim}\), got \(3, {self.cond_dim}\)"):
            prior.sample(4, self.conds(3), generator=_gen(0))

    def test_cond_for_an_unconditional_prior_is_refused(self):
        prior = self.fitted(conditional=False)
        with pytest.raises(ValueError, match="cond=None"):
            prior.sample(2, self.conds(2), generator=_gen(0))

    def test_missing_cond_for_a_conditional_prior_is_refused(self):
        prior = self.fitted(conditional=True)
        with pytest.raises(ValueError, match="got None"):
            prior.sample(2, None, generator=_gen(0))

    def test_bad_n_is_refused(self):
        prior = self.fitted(conditional=False)
        with pytest.raises(ValueError, match="n must be"):
            prior.sample(0, None, generator=_gen(0))


class TestDiffusionPriorContract(PriorContract):
    fit_checks_width = True  # the width is fixed at construction

    def make(self, *, conditional: bool) -> DiffusionPrior:
        torch.manual_seed(0)  # module init only; the priors themselves never read the global RNG
        return DiffusionPrior(
            shape=self.shape, cond_dim=self.cond_dim if conditional else 0, timesteps=30, base_channels=8,
            channel_mults=(1, 2), dropout=0.1, ema_decay=0.9,
        )  # fmt: skip

    def fit(self, prior: DiffusionPrior, latents, cond) -> None:
        g = _gen(len(latents))
        opt = torch.optim.Adam(prior.parameters(), lr=1e-2)  # the EMA copy has no grads
        for _ in range(3):
            loss = prior.loss(latents, cond, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            prior.update_ema()

    def test_loss_leaves_global_rng_alone(self):
        prior = self.make(conditional=True)  # dropout > 0: the masks come from the generator too
        latents, cond = self.data(conditional=True)
        state = torch.get_rng_state()
        a = prior.loss(latents, cond, generator=_gen(0))
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, prior.loss(latents, cond, generator=_gen(0)))

    def test_latents_of_the_wrong_shape_name_expected_and_got(self):
        prior = self.make(conditional=False)
        with pytest.raises(ValueError, match=r"expected latents of shape \(B, 2, 6\), got \(4, 2, 7\)"):
            prior.loss(torch.randn(4, 2, 7))
        with pytest.raises(ValueError, match=r"got \(4, 3, 6\)"):
            prior.loss(torch.randn(4, 3, 6))

    def test_cond_passed_to_unconditional_loss_is_refused(self):
        with pytest.raises(ValueError, match="unconditional"):
            self.make(conditional=False).loss(torch.randn(2, *self.shape), torch.zeros(2, 3))
        with pytest.raises(ValueError, match="got None"):
            self.make(conditional=True).loss(torch.randn(2, *self.shape), None)

    def test_ddim_sampler_and_steps(self):
        prior = self.fitted(conditional=True)
        cond = self.conds(3)
        a = prior.sample(3, cond, generator=_gen(1), sampler="ddim", steps=5)
        assert a.shape == (3, *self.shape)
        assert not torch.allclose(a, prior.sample(3, cond, generator=_gen(1), sampler="ddim", steps=10))
        with pytest.raises(ValueError, match="steps must be an int in"):
            prior.sample(3, cond, generator=_gen(1), sampler="ddim", steps=31)
        with pytest.raises(ValueError, match="sampler must be"):
            prior.sample(3, cond, sampler="euler")

    def test_guidance_needs_a_trained_null_condition(self):
        prior = self.fitted(conditional=True)
        with pytest.raises(ValueError, match="cond_dropout > 0"):
            prior.sample(2, self.conds(2), guidance_scale=2.0)
        with pytest.raises(ValueError, match="cond_dropout > 0"):
            DiffusionPrior(shape=self.shape, cond_dim=3, guidance_scale=3.0)
        with pytest.raises(ValueError, match="conditional prior"):
            DiffusionPrior(shape=self.shape, cond_dropout=0.1)

    def test_classifier_free_guidance(self):
        torch.manual_seed(0)
        prior = DiffusionPrior(shape=self.shape, cond_dim=3, timesteps=30, base_channels=8, channel_mults=(1, 2), cond_dropout=0.5, ema_decay=0.0)
        latents, cond = self.data(conditional=True)
        self.fit(prior, latents, cond)
        assert prior.null_cond.grad is not None and prior.null_cond.grad.abs().sum() > 0  # the null row was trained
        a, b = self.conds(2), self.conds(3)[1:]
        # w = 0 keeps only the unconditional branch: the condition must not matter.
        assert torch.allclose(prior.sample(2, a, generator=_gen(4), guidance_scale=0.0), prior.sample(2, b, generator=_gen(4), guidance_scale=0.0), atol=1e-5)
        # w = 1 is the plain conditional model, and w = 3 extrapolates away from it.
        plain = prior.sample(2, a, generator=_gen(4))
        assert torch.equal(plain, prior.sample(2, a, generator=_gen(4), guidance_scale=1.0))
        assert not torch.allclose(plain, prior.sample(2, a, generator=_gen(4), guidance_scale=3.0))
        assert "null_cond" in prior.state_dict() and "ema_null_cond" in prior.state_dict()

    def test_ema_follows_the_warmed_up_decay(self):
        prior = self.make(conditional=False)
        before = [p.detach().clone() for p in prior.ema.parameters()]
        with torch.no_grad():
            for p in prior.unet.parameters():
                p.add_(1.0)
        prior.update_ema()  # first update: decay = min(0.9, 1 / 10) = 0.1
        for b, e, live in zip(before, prior.ema.parameters(), prior.unet.parameters(), strict=True):
            assert torch.allclose(e, 0.1 * b + 0.9 * live, atol=1e-6)
        assert int(prior.ema_updates) == 1
        assert not any(p.requires_grad for p in prior.ema.parameters())
        prior.train()
        assert prior.unet.training and not prior.ema.training

    def test_ema_decay_zero_samples_with_the_live_weights(self):
        torch.manual_seed(0)
        prior = DiffusionPrior(shape=self.shape, timesteps=30, base_channels=8, channel_mults=(1, 2), ema_decay=0.0)
        self.fit(prior, *self.data(conditional=False))
        a = prior.sample(3, generator=_gen(0))
        with torch.no_grad():
            for p in prior.ema.parameters():
                p.zero_()
        assert torch.equal(a, prior.sample(3, generator=_gen(0)))
        assert prior.unet.training  # sampling switched dropout off only for its own duration

    def test_config_is_json_and_rebuilds(self):
        prior = self.make(conditional=True)
        config = json.loads(json.dumps(prior.config()))
        rebuilt = DiffusionPrior.from_config(config)
        assert rebuilt.config() == prior.config()
        assert rebuilt.state_dict().keys() == prior.state_dict().keys()

    def test_bad_hyperparameters_are_refused(self):
        with pytest.raises(ValueError, match="shape must be"):
            DiffusionPrior(shape=(4,))
        with pytest.raises(ValueError, match="ema_decay"):
            DiffusionPrior(shape=(1, 4), ema_decay=1.0)
        with pytest.raises(ValueError, match="sampler"):
            DiffusionPrior(shape=(1, 4), sampler="pndm")
        with pytest.raises(ValueError, match="ddim_steps"):
            DiffusionPrior(shape=(1, 4), timesteps=20, sampler="ddim", ddim_steps=50)


class TestKDEPriorContract(PriorContract):
    fit_checks_width = False  # any width fits; a row count that differs from the latents' fails

    def make(self, *, conditional: bool) -> KDEPrior:
        return KDEPrior()

    def fit(self, prior: KDEPrior, latents, cond) -> None:
        prior.fit(latents, cond)

    def test_loss_is_refused_and_fit_is_the_verb(self):
        prior = self.make(conditional=True)
        assert hasattr(prior, "fit")
        with pytest.raises(TypeError, match="fitted with fit"):
            prior.loss(torch.randn(2, *self.shape), None)

    def test_unfitted_sample_is_refused(self):
        with pytest.raises(RuntimeError, match="not fitted"):
            KDEPrior().sample(1, None)

    def test_bad_bandwidth_is_refused(self):
        for bad in ("normal", 0.0, -1.0, True):
            with pytest.raises(ValueError, match="bandwidth"):
                KDEPrior(bandwidth=bad)


# ---------------------------------------------------------------------------------------
# Schedule and samplers.
# ---------------------------------------------------------------------------------------
def test_linear_schedule_values():
    sched = LinearSchedule(timesteps=1000)
    assert float(sched.betas[0]) == pytest.approx(1e-4) and float(sched.betas[-1]) == pytest.approx(2e-2)
    assert sched.betas.dtype == torch.float64
    assert float(sched.alphas_cumprod[-1]) < 1e-4
    assert float(sched.posterior_variance[0]) == 0.0
    # Default betas scale with 1000 / T, so a short chain still ends near pure noise ...
    assert float(LinearSchedule(timesteps=100).alphas_cumprod[-1]) < 1e-4
    # ... while explicit betas are taken literally.
    short = LinearSchedule(timesteps=100, beta_start=1e-4, beta_end=2e-2)
    assert float(short.betas[-1]) == pytest.approx(2e-2) and float(short.alphas_cumprod[-1]) > 0.3
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        LinearSchedule(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="timesteps"):
        LinearSchedule(timesteps=0)


@pytest.mark.parametrize("step", [0, 10, 100, 500, 999])
def test_q_sample_marginals(step):
    sched = LinearSchedule(timesteps=1000)
    x0 = torch.full((100_000, 1, 1), 2.0)
    x_t = sched.q_sample(x0, torch.full((100_000,), step), torch.randn(x0.shape, generator=_gen(step)))
    abar = float(sched.alphas_cumprod[step])
    assert float(x_t.mean()) == pytest.approx(abar**0.5 * 2.0, abs=0.01)
    assert float(x_t.var()) == pytest.approx(1.0 - abar, abs=0.01 + 0.02 * (1.0 - abar))


def test_q_sample_per_row_steps():
    sched = LinearSchedule(timesteps=50)
    x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0, 20, 49])
    rows = sched.q_sample(x0, t, noise)
    for i in range(3):
        assert torch.allclose(rows[i], sched.q_sample(x0[i : i + 1], int(t[i]), noise[i : i + 1])[0])
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        sched.q_sample(x0, torch.tensor([0, 1, 50]), noise)


MU, SIGMA = 1.5, 0.4


def _optimal_eps(sched: LinearSchedule):
    """The exact E[eps | x_t] for data N(MU, SIGMA^2): the best possible denoiser."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = sched.alphas_cumprod[t].float().view(-1, 1, 1)
        return (x - abar.sqrt() * MU) * (1 - abar).sqrt() / (abar * SIGMA**2 + 1 - abar)

    return eps_fn


def test_ddpm_with_the_optimal_denoiser_samples_the_data_distribution():
    sched = LinearSchedule(timesteps=1000)
    x = ddpm_sample(_optimal_eps(sched), (20_000, 1, 1), sched, generator=_gen(0))
    assert float(x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(x.std()) == pytest.approx(SIGMA, abs=0.012)


def test_ddim_with_the_optimal_denoiser_samples_the_data_distribution():
    sched = LinearSchedule(timesteps=1000)
    x = ddim_sample(_optimal_eps(sched), (20_000, 1, 1), sched, steps=1000, generator=_gen(0))
    assert float(x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(x.std()) == pytest.approx(SIGMA, abs=0.012)


def test_ddim_is_the_exact_affine_map_for_gaussian_data():
    # For Gaussian data and the optimal denoiser each DDIM (eta=0) step is affine:
    # x_prev - sqrt(a') MU = k (x_t - sqrt(a) MU), k = (sqrt(a' a) S^2 + sqrt((1-a')(1-a))) / (a S^2 + 1 - a).
    sched = LinearSchedule(timesteps=1000)
    steps = 50
    ts = torch.linspace(999, 0, steps, dtype=torch.float64).round().long().tolist()
    abar = sched.alphas_cumprod
    gain = 1.0
    for i, t in enumerate(ts):
        a = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < steps else 1.0
        gain *= ((a_prev * a) ** 0.5 * SIGMA**2 + ((1 - a_prev) * (1 - a)) ** 0.5) / (a * SIGMA**2 + 1 - a)
    x_T = torch.randn(1000, 1, 1, generator=_gen(5))
    x = ddim_sample(_optimal_eps(sched), x_T.shape, sched, steps=steps, init_noise=x_T)
    expected = MU + gain * (x_T.double() - float(abar[-1]) ** 0.5 * MU)
    assert torch.allclose(x.double(), expected, atol=1e-4)


def test_ddim_eta_zero_is_deterministic_given_x_T():
    sched = LinearSchedule(timesteps=100)
    eps_fn = _optimal_eps(sched)
    x_T = torch.randn(16, 1, 3, generator=_gen(0))
    a = ddim_sample(eps_fn, x_T.shape, sched, steps=20, init_noise=x_T, generator=_gen(1))
    b = ddim_sample(eps_fn, x_T.shape, sched, steps=20, init_noise=x_T, generator=_gen(2))
    assert torch.equal(a, b)
    c = ddim_sample(eps_fn, x_T.shape, sched, steps=20, eta=1.0, init_noise=x_T, generator=_gen(1))
    d = ddim_sample(eps_fn, x_T.shape, sched, steps=20, eta=1.0, init_noise=x_T, generator=_gen(2))
    assert not torch.allclose(c, d)


def test_ddim_with_eta_one_and_every_step_is_ddpm():
    # Same x_T and the same noise stream: DDIM(eta=1, steps=T) must reproduce DDPM's posterior variance.
    sched = LinearSchedule(timesteps=100)
    eps_fn = _optimal_eps(sched)
    x_T = torch.randn(64, 1, 3, generator=_gen(0))
    a = ddpm_sample(eps_fn, x_T.shape, sched, init_noise=x_T, generator=_gen(9))
    b = ddim_sample(eps_fn, x_T.shape, sched, steps=100, eta=1.0, init_noise=x_T, generator=_gen(9))
    assert torch.allclose(a, b, atol=1e-4)


def test_ddpm_step_adds_no_noise_at_t0_and_clip_x0_bounds_the_mean():
    sched = LinearSchedule(timesteps=50)
    x = torch.randn(4, 1, 3, generator=_gen(0))
    eps = torch.randn(4, 1, 3, generator=_gen(1))
    assert torch.equal(sched.ddpm_step(eps, x, 0, generator=_gen(2)), sched.ddpm_step(eps, x, 0, generator=_gen(3)))
    # Per-row steps: the row at t=0 is noise-free, the others are not.
    t = torch.tensor([0, 5, 5, 5])
    a, b = sched.ddpm_step(eps, x, t, generator=_gen(2)), sched.ddpm_step(eps, x, t, generator=_gen(3))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:])
    # Without clipping the x0-parameterised mean equals the eps form of eq. 6.
    big = 1e6
    assert torch.allclose(sched.ddpm_step(eps, x, 0, clip_x0=big), sched.ddpm_step(eps, x, 0), atol=1e-5)
    clipped = sched.ddpm_step(eps * 100, x, 0, clip_x0=1.0)  # at t=0, x_{-1} = x0_hat
    assert clipped.abs().max() <= 1.0 + 1e-5


def test_sampler_arguments_are_checked():
    sched = LinearSchedule(timesteps=10)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(zero, (1, 1, 2), sched, steps=11)
    with pytest.raises(ValueError, match="init_noise"):
        ddpm_sample(zero, (1, 1, 2), sched, init_noise=torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="eta"):
        sched.ddim_step(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), 5, 3, eta=-1.0)
    with pytest.raises(ValueError, match="smaller than t"):
        sched.ddim_step(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), 3, 5)


# ---------------------------------------------------------------------------------------
# UNet1D.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 37, 1405])
@pytest.mark.parametrize("levels", [1, 3])
def test_unet_keeps_odd_lengths(length, levels):
    torch.manual_seed(0)
    net = UNet1D(in_channels=3, cond_dim=2, length=length, base_channels=8, channel_mults=(1, 2, 2)[:levels])
    out = net(torch.randn(2, 3, length), torch.tensor([0, 9]), torch.randn(2, 2))
    assert out.shape == (2, 3, length)


def test_unet_uses_time_and_condition():
    torch.manual_seed(0)
    net = UNet1D(in_channels=2, cond_dim=4, length=10, base_channels=12, groups=8)  # 12 channels: GroupNorm(6)
    for name, param in net.named_parameters():  # zero-initialised convs (block outputs, head) would hide the inputs
        if "conv2" in name or "final_conv" in name:
            torch.nn.init.normal_(param, std=0.1)
    assert net.downs[0][0].norm1.num_groups == 6
    x, c = torch.randn(2, 2, 10), torch.randn(2, 4)
    base = net(x, torch.tensor([3, 3]), c)
    assert not torch.allclose(base, net(x, torch.tensor([40, 40]), c))
    assert not torch.allclose(base, net(x, torch.tensor([3, 3]), c + 1))
    # Rows are independent (GroupNorm, not BatchNorm): row 0 alone gives the same output.
    assert torch.allclose(base[:1], net(x[:1], torch.tensor([3]), c[:1]), atol=1e-5)


def test_unet_checks_inputs():
    net = UNet1D(in_channels=2, cond_dim=3, length=8, base_channels=8, channel_mults=(1, 2))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 2, T\)"):
        net(torch.randn(1, 3, 8), torch.tensor([0]), torch.randn(1, 3))
    with pytest.raises(ValueError, match="length 8"):
        net(torch.randn(1, 2, 9), torch.tensor([0]), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"expected cond of shape \(1, 3\)"):
        net(torch.randn(1, 2, 8), torch.tensor([0]), None)
    with pytest.raises(ValueError, match="needs the latent length"):
        UNet1D(in_channels=2, cond_dim=3)
    with pytest.raises(ValueError, match="channel_mults"):
        UNet1D(in_channels=2, channel_mults=())


# ---------------------------------------------------------------------------------------
# Learning: a conditional diffusion prior separates two clusters.
# ---------------------------------------------------------------------------------------
def test_conditional_diffusion_prior_learns_two_clusters():
    torch.manual_seed(0)  # module init
    g = _gen(0)
    shape = (2, 12)
    centers = torch.randn(2, *shape, generator=g)
    centers = centers / centers.std()  # unit-scale latents, as the tokenizers produce
    onehot = torch.eye(2)
    prior = DiffusionPrior(shape=shape, cond_dim=2, timesteps=100, base_channels=16, channel_mults=(1, 2), ema_decay=0.99)
    opt = torch.optim.Adam(prior.parameters(), lr=2e-3)
    for _ in range(300):
        label = torch.randint(0, 2, (64,), generator=g)
        batch = centers[label] + 0.05 * torch.randn(64, *shape, generator=g)  # (64, C, T)
        loss = prior.loss(batch, onehot[label], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        prior.update_ema()
    assert float(loss.detach()) < 0.2

    live = torch.cat([p.flatten() for p in prior.unet.parameters()])
    ema = torch.cat([p.flatten() for p in prior.ema.parameters()])
    assert not torch.allclose(live, ema)
    assert (live - ema).abs().max() < 0.5 * live.abs().max()  # an average of recent weights, not the init

    gap = float((centers[0] - centers[1]).norm())  # about 7
    label = torch.arange(32) % 2
    for sampler in ("ddpm", "ddim"):
        x = prior.sample(32, onehot[label], generator=_gen(1), sampler=sampler, **({"steps": 20} if sampler == "ddim" else {}))
        own = (x - centers[label]).flatten(1).norm(dim=1)
        other = (x - centers[1 - label]).flatten(1).norm(dim=1)
        assert float(own.max()) < 0.25 * gap, sampler
        assert bool((other > 3 * own).all()), sampler


# ---------------------------------------------------------------------------------------
# KDE.
# ---------------------------------------------------------------------------------------
def _groups(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.cat([torch.randn(20, 1, 4, generator=g), 100 + torch.randn(20, 1, 4, generator=g)])  # (40, 1, 4)
    cond = torch.cat([torch.tensor([[1.0, 0.0]]).expand(20, 2), torch.tensor([[0.0, 1.0]]).expand(20, 2)])  # (40, 2)
    return latents, cond


def test_kde_samples_come_from_the_nearest_condition():
    latents, cond = _groups(_gen(0))
    prior = KDEPrior().fit(latents, cond)
    assert prior.conds.shape == (2, 2)
    asked = torch.tensor([[0.9, 0.1], [0.2, 0.7], [1.0, 0.0], [0.0, 1.0]])  # nearest: groups 0, 1, 0, 1
    x = prior.sample(4, asked, generator=_gen(1))
    near_100 = (x.flatten(1).mean(1) - 100).abs() < 10
    assert near_100.tolist() == [False, True, False, True]


def test_kde_bandwidth_rules_and_scaling():
    latents, cond = _groups(_gen(0))
    d = 4
    group_std = latents[:20].flatten(1).std(0, correction=1)  # (d,)
    scott = KDEPrior(bandwidth="scott").fit(latents, cond)
    silverman = KDEPrior(bandwidth="silverman").fit(latents, cond)
    first = int((scott.conds == cond[0]).all(1).nonzero())  # unique conditions are stored sorted
    assert torch.allclose(scott.scale[first].flatten(), 20 ** (-1 / (d + 4)) * group_std, atol=1e-5)
    assert torch.allclose(silverman.scale[first].flatten(), (20 * (d + 2) / 4) ** (-1 / (d + 4)) * group_std, atol=1e-5)
    # A fixed factor scales the noise around the chosen member linearly.
    spreads = []
    for h in (0.01, 0.02):
        prior = KDEPrior(bandwidth=h).fit(latents[:20], None)
        x = prior.sample(4000, None, generator=_gen(2))  # (4000, 1, 4)
        nearest = torch.cdist(x.flatten(1), latents[:20].flatten(1)).argmin(1)
        residual = (x - latents[:20][nearest]) / group_std.view(1, 1, d)
        spreads.append(float(residual.std()))
        assert spreads[-1] == pytest.approx(h, rel=0.05)
    assert spreads[1] / spreads[0] == pytest.approx(2.0, rel=0.05)


def test_kde_single_member_groups_use_the_pooled_std():
    g = _gen(0)
    many = 3 * torch.randn(10, 1, 4, generator=g)
    latents = torch.cat([many, torch.zeros(1, 1, 4)])  # group 1 has one member
    cond = torch.cat([torch.zeros(10, 1), torch.ones(1, 1)])
    prior = KDEPrior(bandwidth=1.0).fit(latents, cond)
    pooled = many.flatten(1).std(0, correction=1)  # group 0 is the only one with residual dofs
    assert torch.allclose(prior.scale[1].flatten(), pooled, atol=1e-5)
    x = prior.sample(2000, torch.ones(2000, 1), generator=_gen(1))
    assert float(x.std()) == pytest.approx(float(pooled.pow(2).mean().sqrt()), rel=0.1)
    # Every group a singleton: fall back to the spread of all latents.
    solo = KDEPrior(bandwidth=1.0).fit(latents[:3], torch.arange(3.0)[:, None])
    assert torch.allclose(solo.scale[0].flatten(), latents[:3].flatten(1).std(0, correction=1), atol=1e-5)
