"""The core installs light: without transformers, sentence-transformers and peft, paramgen
imports, fits, samples, saves and loads; what needs them says which extra to install.

Each check runs in a fresh interpreter whose import system refuses those packages (a
``sys.meta_path`` finder), as on a machine where ``pip install paramgen`` put none of them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = """
import sys

BLOCKED = ("transformers", "sentence_transformers", "peft")


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Block())
"""


def run_without_extras(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_the_blocker_blocks(tmp_path: Path) -> None:
    out = run_without_extras("import peft\n", tmp_path)
    assert out.returncode != 0 and "blocked by the test" in out.stderr


def test_core_imports_fits_samples_saves_and_loads_without_the_extras(tmp_path: Path) -> None:
    out = run_without_extras(
        f"""
        import importlib
        import torch

        for name in ("paramgen", "paramgen.generator", "paramgen.training", "paramgen.zoo", "paramgen.chunks", "paramgen.chunkwise",
                     "paramgen.priors", "paramgen.tokenizers", "paramgen.vectorize", "paramgen.normalize", "paramgen.selectors",
                     "paramgen.conditioners", "paramgen.heads", "paramgen.registry", "paramgen.lora"):
            importlib.import_module(name)

        from paramgen import Generator, ModelVectorizer, ParamSpec, fit
        from paramgen.conditioners import IndexConditioner
        from paramgen.priors import DiffusionPrior
        from paramgen.tokenizers import VAETokenizer

        spec = ParamSpec.from_state_dict({{"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}})
        tok = VAETokenizer(rows=1, width=spec.numel, latent_channels=2, latent_length=4, hidden_channels=4)
        cond = IndexConditioner(["a", "b"], dim=4)
        prior = DiffusionPrior(shape=tok.latent_shape, cond_dim=cond.dim, timesteps=10, base_channels=8, channel_mults=(1,))
        gen = Generator(vectorizer=ModelVectorizer(spec), tokenizer=tok, prior=prior, conditioner=cond)
        g = torch.Generator().manual_seed(0)
        fit(gen, torch.randn(8, spec.numel, generator=g), ["a", "b"] * 4, tokenizer_steps=2, prior_steps=2, batch_size=4, generator=g, progress=False)
        a = gen.sample(["a"], 2, generator=torch.Generator().manual_seed(1))
        back = Generator.from_pretrained(gen.save_pretrained({str(tmp_path / "gen")!r}))
        b = back.sample(["a"], 2, generator=torch.Generator().manual_seed(1))
        assert [sorted(x) for x in a] == [["bias", "weight"]] * 2
        assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)

        import sys
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "sentence_transformers", "peft"))
        assert loaded == [], loaded
        print("core ok")
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "core ok" in out.stdout


def test_what_needs_the_extras_names_the_extra_to_install(tmp_path: Path) -> None:
    out = run_without_extras(
        """
        import torch
        from paramgen.conditioners import TextConditioner
        from paramgen.lora import LoRASetup, LoRAZoo, MiniLMLoRA, TextOrVectorConditioner, pad_head, save_adapter

        setup = LoRASetup()
        assert setup.spec().numel == 7299  # the layout and the zoo need none of the extras
        adapter = {k: torch.zeros(s) for k, s in setup.shapes(2).items()}
        assert LoRAZoo.from_adapters([adapter], [{"task": "t"}], setup).flat.shape == (1, 7299)

        cases = {
            "MiniLMLoRA": (lambda: MiniLMLoRA(setup), "MiniLMLoRA needs the package 'transformers', which is not installed: pip install 'paramgen[lora]'"),
            "peft_config": (lambda: setup.peft_config(2), "LoRASetup.peft_config needs the package 'peft', which is not installed: pip install 'paramgen[lora]'"),
            "save_adapter": (lambda: save_adapter("unused", pad_head(adapter, setup), setup, num_labels=2, base_model_path="m"), "pip install 'paramgen[lora]'"),
            "TextOrVectorConditioner": (lambda: TextOrVectorConditioner(), "TextOrVectorConditioner needs the package 'sentence_transformers', which is not installed: pip install 'paramgen[text]'"),
            "TextConditioner": (lambda: TextConditioner(), "TextConditioner needs the package 'sentence_transformers', which is not installed: pip install 'paramgen[text]'"),
        }
        for name, (call, message) in cases.items():
            try:
                call()
            except ImportError as err:
                assert message in str(err), (name, str(err))
            else:
                raise AssertionError(f"{name} did not raise ImportError")
        print("errors ok")
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "errors ok" in out.stdout
