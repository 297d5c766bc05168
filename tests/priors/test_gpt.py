"""Tests of `GPTPrior`: shapes, seeding, the KV cache against naive decoding, windows, learning, saving."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from paramgen.interfaces import Prior
from paramgen.priors.gpt import GPTPrior

torch.set_num_threads(1)

TINY = dict(d_model=16, layers=2, heads=2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sharpened(prior: GPTPrior, factor: float = 30.0) -> GPTPrior:
    """Scale the output head so that untrained logits spread over a few nats (no near-ties)."""
    with torch.no_grad():
        prior.head.weight.mul_(factor)
    return prior.eval()


def _grid(length: int, context: int) -> list[int]:
    """Window starts as documented: stride ``context - context // 2``, last one clamped."""
    context = min(context, length)
    stride = context - context // 2
    return [min(j * stride, length - context) for j in range(1 + math.ceil((length - context) / stride))]


def _naive_sample(prior: GPTPrior, n: int, cond, generator, *, temperature: float = 1.0, top_k=None) -> torch.Tensor:
    """Reference sampler: re-runs the full window forward for every token, no cache."""
    length, context = prior.length, prior.context
    keep, starts = context // 2, _grid(length, context)
    out = torch.zeros(n, 0, dtype=torch.long)  # (n, done)
    while out.shape[1] < length:
        done = out.shape[1]
        j = max(i for i, s in enumerate(starts) if s <= max(done - keep, 0))
        start, stop = starts[j], min(starts[j] + context, length)
        while out.shape[1] < stop:
            with torch.no_grad():
                logits = prior(out[:, start:], cond, window=j)[:, -1] / temperature  # (n, V)
            if top_k is not None:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (n, 1)
            out = torch.cat([out, token], dim=1)
    return out


def _counting(n: int, length: int, vocab: int, generator) -> torch.Tensor:
    """Sequences that count up modulo ``vocab`` from a random start: ``(n, length)``."""
    return (torch.randint(0, vocab, (n, 1), generator=generator) + torch.arange(length)) % vocab


def _train(prior: GPTPrior, batch_fn, steps: int, lr: float = 3e-3) -> GPTPrior:
    g = _gen(0)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    prior.train()
    for _ in range(steps):
        tokens, cond = batch_fn(g)
        loss = prior.loss(tokens, cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return prior.eval()


@pytest.fixture(scope="module")
def counter() -> GPTPrior:
    """Unconditional prior trained on counting sequences longer than its context (5 windows)."""
    torch.manual_seed(0)  # parameter init only
    prior = GPTPrior(vocab_size=12, length=24, context=8, d_model=32, layers=2, heads=2)
    return _train(prior, lambda g: (_counting(32, 24, 12, g), None), steps=600)


# ---------------------------------------------------------------------------------------
# Interface, shapes, dtypes
# ---------------------------------------------------------------------------------------
def test_is_a_prior_with_shape_and_cond_dim():
    prior = GPTPrior(vocab_size=8, length=7, cond_dim=3, **TINY)
    assert isinstance(prior, Prior)
    assert prior.shape == (7,) and prior.cond_dim == 3
    assert prior.window_starts == (0,) and prior.context == 7


@pytest.mark.parametrize("cond_dim, cond_tokens, context", [(0, 1, None), (3, 2, None), (3, 1, 4), (0, 1, 100)])
def test_shapes_and_dtypes(cond_dim, cond_tokens, context):
    prior = GPTPrior(vocab_size=9, length=10, cond_dim=cond_dim, cond_tokens=cond_tokens, context=context, **TINY)
    cond = torch.randn(4, cond_dim) if cond_dim else None
    tokens = torch.randint(0, 9, (4, 10), generator=_gen(0))
    loss = prior.loss(tokens, cond, generator=_gen(1))
    assert loss.shape == () and loss.dtype == torch.float32 and loss.requires_grad
    # Untrained logits are near-uniform: the loss starts near log(V).
    assert abs(loss.item() - math.log(9)) < 0.3
    logits = prior(tokens[:, :3], cond)
    assert logits.shape == (4, 4, 9)
    x = prior.sample(4, cond, generator=_gen(2))
    assert x.shape == (4, 10) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < 9


def test_logits_are_causal_and_the_prefix_predicts_token_0():
    prior = _sharpened(GPTPrior(vocab_size=8, length=6, cond_dim=2, cond_tokens=2, **TINY))
    tokens = torch.randint(0, 8, (3, 5), generator=_gen(0))
    cond = torch.randn(3, 2, generator=_gen(1))
    logits = prior(tokens, cond)  # (3, 6, 8)
    changed = tokens.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 8
    other = prior(changed, cond)
    assert torch.allclose(logits[:, :3], other[:, :3], atol=1e-6)  # up to and including the prediction of token 2
    assert not torch.allclose(logits[:, 3:], other[:, 3:])
    # The prefix's prediction depends on the condition only.
    assert torch.allclose(logits[:, 0], prior(tokens[:, :0], cond)[:, 0], atol=1e-6)
    assert not torch.allclose(logits[:, 0], prior(tokens, cond + 1)[:, 0])


def test_one_window_loss_is_next_token_cross_entropy():
    prior = GPTPrior(vocab_size=8, length=6, cond_dim=2, **TINY)
    tokens = torch.randint(0, 8, (5, 6), generator=_gen(0))
    cond = torch.randn(5, 2, generator=_gen(1))
    expected = F.cross_entropy(prior(tokens[:, :-1], cond).flatten(0, 1), tokens.flatten())
    assert torch.allclose(prior.loss(tokens, cond), expected)


def test_windowed_loss_scores_one_grid_window_per_row():
    prior = GPTPrior(vocab_size=8, length=22, context=8, **TINY)
    assert prior.window_starts == tuple(_grid(22, 8)) == (0, 4, 8, 12, 14)
    tokens = torch.randint(0, 8, (6, 22), generator=_gen(0))
    window = torch.randint(0, 5, (6,), generator=_gen(3))  # the draw `loss` makes first
    starts = torch.tensor(prior.window_starts)[window]
    targets = torch.stack([tokens[i, s : s + 8] for i, s in enumerate(starts.tolist())])  # (6, 8)
    expected = F.cross_entropy(prior(targets[:, :-1], window=window).flatten(0, 1), targets.flatten())
    assert torch.allclose(prior.loss(tokens, generator=_gen(3)), expected)


# ---------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------
def test_seeded_sampling_repeats_seeds_differ_and_global_rng_is_untouched():
    prior = GPTPrior(vocab_size=16, length=12, cond_dim=2, context=6, **TINY)
    cond = torch.randn(8, 2, generator=_gen(0))
    state = torch.get_rng_state()
    a = prior.sample(8, cond, generator=_gen(7))
    b = prior.sample(8, cond, generator=_gen(7))
    c = prior.sample(8, cond, generator=_gen(8))
    prior.sample(8, cond)  # no generator: a fresh one, still not the global RNG
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dropout_and_windows_in_the_loss_come_from_the_generator():
    prior = GPTPrior(vocab_size=8, length=12, context=6, dropout=0.3, **TINY).train()
    tokens = torch.randint(0, 8, (4, 12), generator=_gen(0))
    state = torch.get_rng_state()
    a, b, c = (prior.loss(tokens, generator=_gen(s)) for s in (5, 5, 6))
    prior.loss(tokens)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------------------
# The KV cache and the windows against naive decoding
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, context", [(10, None), (22, 8), (9, 3), (7, 1)])
@pytest.mark.parametrize("temperature, top_k", [(1.0, 1), (1.0, None), (0.7, 3)])
def test_cached_sampling_equals_naive_sampling(length, context, temperature, top_k):
    prior = _sharpened(GPTPrior(vocab_size=10, length=length, cond_dim=3, cond_tokens=2, context=context, **TINY))
    cond = torch.randn(5, 3, generator=_gen(0))
    fast = prior.sample(5, cond, generator=_gen(1), temperature=temperature, top_k=top_k)
    slow = _naive_sample(prior, 5, cond, _gen(1), temperature=temperature, top_k=top_k)
    assert torch.equal(fast, slow)
    assert len(fast.unique()) > 1  # not a constant sequence


@settings(max_examples=12)
@given(
    length=st.integers(1, 10),
    extra=st.one_of(st.none(), st.integers(0, 4)),
    cond_dim=st.sampled_from([0, 2]),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    top_k=st.one_of(st.none(), st.integers(1, 6)),
)
def test_windowed_generation_with_a_large_context_is_one_pass(length, extra, cond_dim, n, seed, top_k):
    context = None if extra is None else length + extra
    prior = _sharpened(GPTPrior(vocab_size=6, length=length, cond_dim=cond_dim, context=context, **TINY), 10.0)
    assert prior.window_starts == (0,)
    cond = torch.randn(n, cond_dim, generator=_gen(seed)) if cond_dim else None
    windowed = prior.sample(n, cond, generator=_gen(seed), top_k=top_k)
    # One pass: token i from the full forward over prefix and tokens 0..i-1 (window 0).
    g, out = _gen(seed), torch.zeros(n, 0, dtype=torch.long)
    for _ in range(length):
        with torch.no_grad():
            logits = prior(out, cond)[:, -1]  # (n, V)
        if top_k is not None:
            logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
        out = torch.cat([out, torch.multinomial(F.softmax(logits, -1), 1, generator=g)], dim=1)
    assert torch.equal(windowed, out)


def _forward_lengths(prior: GPTPrior, fn) -> list[int]:
    lengths: list[int] = []
    hook = prior.blocks[0].register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    try:
        fn()
    finally:
        hook.remove()
    return lengths


def test_sampling_costs_one_forward_per_token():
    prior = GPTPrior(vocab_size=8, length=12, cond_dim=2, cond_tokens=3, **TINY)
    lengths = _forward_lengths(prior, lambda: prior.sample(2, torch.randn(2, 2), generator=_gen(0)))
    assert lengths == [3] + [1] * 11  # prefix once, then 11 single-token steps: 12 calls for 12 tokens


def test_windowed_sampling_costs_one_forward_per_token():
    prior = GPTPrior(vocab_size=8, length=22, context=8, **TINY)  # windows start at 0, 4, 8, 12, 14
    lengths = _forward_lengths(prior, lambda: prior.sample(2, None, generator=_gen(0)))
    # Each window: one forward over BOS + prompt (the last >= 4 tokens), then single tokens.
    expected = [1] + [1] * 7 + [5] + [1] * 3 + [5] + [1] * 3 + [5] + [1] * 3 + [7] + [1]
    assert lengths == expected and len(lengths) == 22


# ---------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------
def test_windowed_generation_continues_a_pattern_across_windows(counter):
    samples = counter.sample(64, None, generator=_gen(1))  # (64, 24): 5 windows of 8
    steps_ok = (samples[:, 1:] - samples[:, :-1]) % 12 == 1  # (64, 23)
    assert steps_ok.all(dim=1).float().mean() >= 0.85
    # The first token of every later window (positions 8, 12, 16, 20) follows its prompt.
    assert steps_ok[:, [7, 11, 15, 19]].float().mean() >= 0.95
    # Starts are spread over the vocabulary (the first token is uniform in the data).
    assert len(samples[:, 0].unique()) >= 8


def test_generate_continues_a_prompt_longer_than_a_window(counter):
    prompt = (torch.tensor([[3], [9]]) + torch.arange(10)) % 12  # (2, 10)
    out = counter.generate(2, None, prompt=prompt, generator=_gen(2), top_k=1)
    assert torch.equal(out[:, :10], prompt)
    assert torch.equal(out, (torch.tensor([[3], [9]]) + torch.arange(24)) % 12)


def test_window_embedding_tells_the_prefix_where_the_window_lies():
    # context=1: every token is predicted from BOS plus its window's embedding alone.
    torch.manual_seed(2)  # parameter init only
    sequence = torch.tensor([3, 1, 4, 1, 5, 2])
    prior = GPTPrior(vocab_size=6, length=6, context=1, **TINY)
    assert prior.window_starts == (0, 1, 2, 3, 4, 5)
    _train(prior, lambda g: (sequence.expand(16, -1), None), steps=150, lr=1e-2)
    samples = prior.sample(32, None, generator=_gen(0))
    assert (samples == sequence).all(dim=1).float().mean() >= 0.9


def test_conditional_prior_learns_one_pattern_per_condition():
    torch.manual_seed(1)  # parameter init only
    patterns = torch.randint(0, 8, (2, 10), generator=_gen(5))  # (2, L)
    assert not torch.equal(patterns[0], patterns[1])
    prior = GPTPrior(vocab_size=8, length=10, cond_dim=2, cond_tokens=2, d_model=32, layers=2, heads=2)

    def batch(g):
        which = torch.randint(0, 2, (32,), generator=g)
        return patterns[which], torch.eye(2)[which]

    _train(prior, batch, steps=300)
    which = torch.arange(64) % 2
    samples = prior.sample(64, torch.eye(2)[which], generator=_gen(3))
    assert (samples == patterns[which]).all(dim=1).float().mean() >= 0.9


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------
def test_safetensors_and_config_round_trip_gives_identical_samples(tmp_path):
    prior = GPTPrior(vocab_size=8, length=14, cond_dim=3, cond_tokens=2, context=6, temperature=0.9, top_k=5, **TINY)
    _train(prior, lambda g: (torch.randint(0, 8, (8, 14), generator=g), torch.randn(8, 3, generator=g)), steps=5)
    save_file(prior.state_dict(), tmp_path / "prior.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(prior.config()))
    again = GPTPrior.from_config(json.loads((tmp_path / "config.json").read_text()))
    again.load_state_dict(load_file(tmp_path / "prior.safetensors"), strict=True)
    again.eval()
    assert again.config() == prior.config()
    cond = torch.randn(6, 3, generator=_gen(0))
    assert torch.equal(prior.sample(6, cond, generator=_gen(4)), again.sample(6, cond, generator=_gen(4)))


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=0, length=4), "vocab_size must be an int >= 1, got 0"),
        (dict(vocab_size=4, length=True), "length must be an int >= 1, got True"),
        (dict(vocab_size=4, length=4, cond_dim=-1), "cond_dim must be an int >= 0"),
        (dict(vocab_size=4, length=4, cond_tokens=0), "cond_tokens must be an int >= 1"),
        (dict(vocab_size=4, length=4, context=0), "context must be an int >= 1"),
        (dict(vocab_size=4, length=4, d_model=10, heads=4), "heads must divide d_model"),
        (dict(vocab_size=4, length=4, dropout=1.0), r"dropout must lie in \[0, 1\)"),
        (dict(vocab_size=4, length=4, temperature=0.0), "temperature must be a finite number > 0"),
        (dict(vocab_size=4, length=4, top_k=5), r"top_k must be None or an int in \[1, vocab_size=4\], got 5"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTPrior(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "tokens, cond, error, match",
    [
        (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3), ValueError, r"expected tokens of shape \(B, 6\) with B >= 1, got \(2, 5\)"),
        (torch.zeros(6, dtype=torch.long), torch.zeros(2, 3), ValueError, r"expected tokens of shape \(B, 6\), got \(6,\)"),
        (torch.zeros(2, 6), torch.zeros(2, 3), TypeError, "expected tokens of dtype torch.int64"),
        (torch.full((2, 6), 8), torch.zeros(2, 3), ValueError, r"must lie in \[0, vocab_size=8\), got values in \[8, 8\]"),
        (torch.full((2, 6), -1), torch.zeros(2, 3), ValueError, r"got values in \[-1, -1\]"),
        (torch.zeros(2, 6, dtype=torch.long), None, ValueError, r"expected cond of shape \(2, 3\), got None"),
        (torch.zeros(2, 6, dtype=torch.long), torch.zeros(3, 3), ValueError, r"expected cond of shape \(2, 3\), got \(3, 3\)"),
        (torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), TypeError, "expected floating condition"),
        (torch.zeros(2, 6, dtype=torch.long), torch.full((2, 3), float("nan")), ValueError, "NaN or Inf"),
    ],
)
def test_bad_loss_inputs(tokens, cond, error, match):
    prior = GPTPrior(vocab_size=8, length=6, cond_dim=3, **TINY)
    with pytest.raises(error, match=match):
        prior.loss(tokens, cond)


def test_bad_sampling_and_forward_inputs():
    prior = GPTPrior(vocab_size=8, length=6, context=4, **TINY)
    with pytest.raises(ValueError, match="unconditional"):
        prior.sample(2, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        prior.sample(0, None)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        prior.sample(2, None, temperature=-1)
    with pytest.raises(ValueError, match=r"top_k must be None or an int in \[1, vocab_size=8\], got 9"):
        prior.sample(2, None, top_k=9)
    with pytest.raises(ValueError, match="expected a prompt shorter than length=6, got 6 tokens"):
        prior.generate(2, prompt=torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected prompt of shape \(2, T\) with B >= 1, got \(3, 2\)"):
        prior.generate(2, prompt=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="expected at most context=4 tokens, got 5"):
        prior(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"window must lie in \[0, 2\), got \[2\]"):
        prior(torch.zeros(1, 2, dtype=torch.long), window=2)
