"""A fit run in its own process, for the kill/resume and data-parallel tests.

    python tests/fit_child.py OUT [--resume] [--kill-at STAGE:STEP] [--accum N] [--ckpt DIR]

Builds one small conditioned VAE + DDPM generator from fixed seeds, fits it and saves it
to OUT (under torchrun, process r saves to OUT-r). ``--kill-at`` sends SIGKILL to the
process itself right after that step was logged, i.e. in the middle of a stage.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from paramgen import Generator, ModelVectorizer, ParamSpec, PerTaskZScore
from paramgen.conditioners import IndexConditioner
from paramgen.priors import DiffusionPrior
from paramgen.tokenizers import VAETokenizer
from paramgen.tracking import NullLogger
from paramgen.training import FitConfig, fit

TASKS = ["a", "b", "c", "d"]


def build() -> tuple[Generator, torch.Tensor, list[str]]:
    torch.manual_seed(0)
    spec = ParamSpec.from_module(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)))
    tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=8, hidden_channels=16, num_down=1, input_noise=0.01, latent_noise=0.01)
    gen = Generator(
        vectorizer=ModelVectorizer(spec),
        tokenizer=tok,
        prior=DiffusionPrior(shape=tok.latent_shape, cond_dim=8, base_channels=8, channel_mults=(1, 2), timesteps=100, cond_dropout=0.1),
        conditioner=IndexConditioner(TASKS, dim=8),
        normalizer=PerTaskZScore(),
    )
    g = torch.Generator().manual_seed(1)
    tasks = [TASKS[i % 4] for i in range(32)]
    flat = torch.randn(32, spec.numel, generator=g) + torch.tensor([TASKS.index(t) for t in tasks])[:, None].float()
    return gen, flat, tasks


class Killer(NullLogger):
    def __init__(self, stage: str, step: int) -> None:
        self.stage, self.step = stage, step

    def log_metrics(self, metrics, *, step=None):  # noqa: ANN001
        if step == self.step and any(k.startswith(f"{self.stage}/") for k in metrics):
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--ckpt")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen, flat, tasks = build()
    config = FitConfig(
        tokenizer_steps=args.steps, align_steps=3, prior_steps=args.steps, batch_size=16, tokenizer_lr=3e-3, prior_lr=3e-3,
        schedule="cosine", warmup_steps=4, max_grad_norm=1.0, grad_accum=args.accum, seed=7, log_every=1,
        checkpoint_every=5 if args.ckpt else None, checkpoint_dir=args.ckpt, progress=False,
    )
    tracker = None
    if args.kill_at:
        stage, step = args.kill_at.split(":")
        tracker = Killer(stage, int(step))
    fit(gen, flat, tasks, config=config, tasks=tasks, tracker=tracker, resume=args.ckpt if args.resume else None)
    rank = os.environ.get("RANK")
    gen.save_pretrained(args.out if rank is None else f"{args.out}-{rank}")


if __name__ == "__main__":
    main()
