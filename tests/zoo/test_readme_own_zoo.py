"""The README's "your own zoo" snippet: from data to a fitted, saved, reloaded generator.

`SNIPPET` is the exact code of the README section (and of docs/own-zoo.md); the test runs
it, then checks what it made.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

SNIPPET = '''\
import torch
from sklearn.datasets import load_wine
from paramgen import Generator
from paramgen.data import Task
from paramgen.pipelines import d2nwg
from paramgen.zoo import RunConfig, TrainConfig, build_zoo, evaluate

wine = Task.from_arrays("wine", *load_wine(return_X_y=True), standardize=True, subject="chemical analyses of wines")
plan = [RunConfig(task=f"wine/{p}", arch="mlp", arch_kwargs={"in_features": 13, "hidden": [16]}, seed=s, train=TrainConfig(lr=1e-2, batch_size=16)) for p in ("0-1", "0-2", "1-2") for s in range(4)]
zoo = build_zoo("my_zoo", plan, tasks=[wine], workers=1)  # 12 MLPs on 3 class pairs, resumable
gen = d2nwg(zoo, seed=0, latent_length=8, hidden_channels=16, base_channels=16, timesteps=100)
gen.fit(zoo, tokenizer_steps=200, prior_steps=200, batch_size=6, generator=torch.Generator().manual_seed(0))
gen = Generator.from_pretrained(gen.save_pretrained("my_generator"))
model = gen.sample_into(zoo.model(0), ["wine/0-1"], generator=torch.Generator().manual_seed(0))
print(evaluate(model, wine.subset([0, 1]).test))  # (accuracy, loss) of new weights for wine/0-1
'''


def test_snippet_is_short():
    assert len([line for line in SNIPPET.splitlines() if line.strip()]) < 15


def test_own_zoo_from_data_to_a_reloaded_generator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(SNIPPET, "README.md (your own zoo)", "exec"), ns)
    zoo, gen, wine, evaluate = ns["zoo"], ns["gen"], ns["wine"], ns["evaluate"]
    assert len(zoo) == 12 and zoo.tasks == ("wine/0-1", "wine/0-2", "wine/1-2")
    assert min(c.metrics["test_acc"] for c in zoo) > 0.8  # the zoo learned its tasks
    assert (tmp_path / "my_generator" / "config.json").exists() and gen.fitted
    # The reloaded generator makes new weights that solve the tasks better than chance (0.5).
    flat, _ = zoo.flatten()
    accs = []
    model = zoo.model(0)
    for task in zoo.tasks:
        test = wine.subset([int(c) for c in task.split("/")[1].split("-")]).test
        samples = gen.sample([task], 4, generator=torch.Generator().manual_seed(1))
        for sd in samples:
            model.load_state_dict(sd, strict=True)
            accs.append(evaluate(model, test)[0])
        new = torch.stack([torch.cat([sd[t.name].flatten() for t in zoo.spec().vector_tensors]) for sd in samples])
        assert torch.cdist(new, flat).min() > 1e-3  # not copies of the zoo
    assert sum(accs) / len(accs) > 0.6, accs


def test_docs_page_holds_the_snippet():
    page = Path(__file__).resolve().parents[2] / "docs" / "own-zoo.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert SNIPPET in blocks
