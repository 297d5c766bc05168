"""``python -m benchmarks.unconditional``: D2NWG table 11 vs p-diff, scaled to this CPU.

p-diff's setting: train a small ResNet, then keep training only its last two BatchNorm
layers (weights and biases) and save a checkpoint after every step; fit an unconditional
generator on those checkpoints and compare the accuracy of generated parameters with the
originals. The comparison is D2NWG's: the same DDPM prior on the VAE's latents (VAE+DDPM)
vs directly on the raw parameters (DDPM, an identity tokenizer) - one component swapped.

Setting here: a ResNet-8 (widths 16/32/64) on Fashion-MNIST (10 classes); the generated
part is ``layer3.0.bn1`` and ``layer3.0.bn2`` (256 parameters; everything else, BN running
statistics included, stays the base model's). Reported: average / median / max test
accuracy of the originals and of 1) VAE+DDPM and 2) DDPM samples, each generator's
training time, and the novelty of the samples (L2 to the nearest original, overlap of
wrong predictions), with noisy originals as the memorization baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import paramgen
from benchmarks.common import Results, RunSetup
from paramgen import Generator, ParamSpec
from paramgen.data import get_task
from paramgen.models import ResNet
from paramgen.novelty import nearest_l2, noisy_checkpoints, tensor_scale, wrong_prediction_iou
from paramgen.pipelines import d2nwg
from paramgen.tokenizers import IdentityTokenizer
from paramgen.zoo import TrainConfig, train_classifier

__all__ = ["main", "SIZES", "make_generator"]

SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(train_per_class=200, eval_per_class=100, base_epochs=2, collect_steps=60, vae_steps=300, prior_steps=300, samples=20, channels=32),
    "default": dict(train_per_class=2000, eval_per_class=500, base_epochs=8, collect_steps=200, vae_steps=3000, prior_steps=4000, samples=200, channels=32),
}
SELECTED = ["layer3.0.bn1.weight", "layer3.0.bn1.bias", "layer3.0.bn2.weight", "layer3.0.bn2.bias"]


class Tail(nn.Module):
    """``layer3`` and ``fc`` of a ResNet under their own names, on cached ``layer2`` outputs."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.layer3, self.fc = net.layer3, net.fc

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer3(h).mean(dim=(2, 3)))


@torch.no_grad()
def prefix(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """Frozen part of the network (stem, layer1, layer2) on ``x``: ``(N, 32, H/2, W/2)``."""
    net.eval()
    return torch.cat([net.layer2(net.layer1(F.relu(net.bn1(net.conv1(x[i : i + 2048]))))) for i in range(0, len(x), 2048)])


@torch.no_grad()
def predictions(tail: Tail, spec: ParamSpec, flat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``(G, T)`` predicted labels of ``G`` generated selections on cached activations."""
    from torch.func import functional_call, vmap

    tail.eval()
    params = spec.unflatten_stacked(flat.float())
    run = lambda p, x: functional_call(tail, p, (x,), strict=False).argmax(-1)  # noqa: E731
    return torch.cat([vmap(run, in_dims=(0, None))(params, h[i : i + 1024]) for i in range(0, len(h), 1024)], dim=1)


def collect(tail: Tail, spec: ParamSpec, h: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int) -> torch.Tensor:
    """Train only the selected BN parameters (running stats frozen); one checkpoint per step."""
    g = torch.Generator().manual_seed(seed)
    params = dict(tail.named_parameters())
    chosen = [params[n] for n in SELECTED]
    for p in tail.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    opt = torch.optim.SGD(chosen, lr=0.05, momentum=0.9)
    tail.eval()  # BatchNorm uses (and keeps) the base model's running statistics
    flats = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = F.cross_entropy(tail(h[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flats.append(spec.flatten({n: t.detach() for n, t in tail.state_dict().items() if n in SELECTED})[0])
    return torch.cat(flats)  # (steps, D)


def summary_rows(res: Results, method: str, acc: torch.Tensor, **extra: Any) -> None:
    res.add(method, "fashion_mnist", "test_acc", acc.tolist(), **extra)
    res.add(method, "fashion_mnist", "median_acc", float(acc.median()), **extra)
    res.add(method, "fashion_mnist", "max_acc", float(acc.max()), **extra)


def make_generator(method: str, spec: ParamSpec, size: dict[str, Any]) -> Generator:
    """``"VAE+DDPM"``: `paramgen.pipelines.d2nwg` unconditioned; ``"DDPM"``: the same pipeline with
    an identity tokenizer in place of the VAE (the tokenizer ablation: the prior sees the raw
    parameters). Weights from the process's generator (``seed=None``)."""
    if method == "VAE+DDPM":
        return d2nwg(spec, condition=None, seed=None, latent_length=16, hidden_channels=size["channels"], base_channels=size["channels"])
    return d2nwg(spec, condition=None, seed=None, tokenizer=IdentityTokenizer(rows=1, width=spec.numel), base_channels=size["channels"])


def main(argv: Sequence[str] | None = None) -> int:
    setup = RunSetup.from_args("unconditional", __doc__, SIZES, argv)
    args, size, g = setup.args, setup.size, setup.g

    task = get_task("fashion_mnist", max_train_per_class=size["train_per_class"], max_eval_per_class=size["eval_per_class"], seed=args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = ResNet(depth=8, num_classes=10, in_channels=1, widths=(16, 32, 64))
    start = time.perf_counter()
    train_classifier(net, task, TrainConfig(epochs=size["base_epochs"], lr=3e-3), seed=args.seed, keep_epochs=[size["base_epochs"]], init=False)
    base_s = time.perf_counter() - start
    spec = ParamSpec.from_module(net).select(include=SELECTED)
    h_train, h_test = prefix(net, task.train.x), prefix(net, task.test.x)
    tail = Tail(net)
    start = time.perf_counter()
    originals = collect(tail, spec, h_train, task.train.y, steps=size["collect_steps"], seed=args.seed)
    collect_s = time.perf_counter() - start

    res = setup.results(size=setup.size_name, seed=args.seed, selected=SELECTED, numel=spec.numel, **size)
    res.add("original", "fashion_mnist", "train_s", base_s + collect_s)
    orig_preds = predictions(tail, spec, originals, h_test)
    summary_rows(res, "original", (orig_preds == task.test.y).float().mean(1))

    scale = tensor_scale(spec, originals)
    for k, method in enumerate(("VAE+DDPM", "DDPM")):
        # The same prior network for both: only the tokenizer is swapped. Both draw their
        # initialization from the process's generator (seed=None), in this order.
        gen = make_generator(method, spec, size)
        start = time.perf_counter()
        paramgen.fit(gen, originals, tokenizer_steps=size["vae_steps"], prior_steps=size["prior_steps"], prior_lr=1e-3, generator=g(10 + k), progress=False)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        samples = gen.sample_flat(None, size["samples"], generator=g(20 + k), sampler="ddpm")  # the committed rows' sampler
        sample_s = time.perf_counter() - start
        preds = predictions(tail, spec, samples, h_test)
        summary_rows(res, method, (preds == task.test.y).float().mean(1))
        res.add(method, "fashion_mnist", "fit_s", fit_s)
        res.add(method, "fashion_mnist", "sample_s", sample_s)
        res.add(method, "fashion_mnist", "novelty_l2", nearest_l2(samples, originals)[0].tolist())
        res.add(method, "fashion_mnist", "wrong_iou", wrong_prediction_iou(preds, orig_preds, task.test.y).tolist())
    for sigma in (0.06, 0.12):
        noisy, _ = noisy_checkpoints(originals, size["samples"], sigma=sigma, scale=scale, generator=g(30))
        preds = predictions(tail, spec, noisy, h_test)
        summary_rows(res, f"noise {sigma}", (preds == task.test.y).float().mean(1))
        res.add(f"noise {sigma}", "fashion_mnist", "novelty_l2", nearest_l2(noisy, originals)[0].tolist())
        res.add(f"noise {sigma}", "fashion_mnist", "wrong_iou", wrong_prediction_iou(preds, orig_preds, task.test.y).tolist())
    # The original run's own spread: distance from each checkpoint to its nearest *other* one.
    d = torch.cdist(originals.double(), originals.double())
    d.fill_diagonal_(float("inf"))
    res.add("original", "fashion_mnist", "novelty_l2", d.min(1).values.float().tolist())

    path = setup.write(res)
    print(res.table())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
