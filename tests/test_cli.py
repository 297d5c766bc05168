"""The ``paramgen`` command line: ``fit`` + ``sample`` reproduce the demo's generator; bad
configs and arguments exit with status 2 and say what was expected."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paramgen import demo
from paramgen.cli import build_parser, main
from paramgen.cli.recipe import ConfigError, Recipe, fit_recipe, parse_override, tomllib
from paramgen.data import get_task
from paramgen.generator import Generator
from paramgen.zoo import Zoo, evaluate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "demo.toml"
STEPS = 10  # per stage: enough to run every stage, short enough for the fast suite


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m paramgen.cli ARGS`` in a fresh process (the console script's code path)."""
    return subprocess.run([sys.executable, "-m", "paramgen.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    """Two runs of the demo's tiny preset (2 tasks x 2 epochs), built through ``paramgen zoo build``."""
    out = tmp_path_factory.mktemp("cli") / "zoo"
    assert main(["-q", "zoo", "build", "--preset", "tiny", "--limit", "2", "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def fitted(zoo_dir) -> tuple[Path, Generator]:
    """The generator saved by ``paramgen fit examples/demo.toml`` (shortened), and the demo's
    own function fitted in this process with the same steps."""
    out = zoo_dir.parent / "generator"
    r = _cli("fit", str(EXAMPLE), "--set", f"zoo={zoo_dir}", "--set", f"out={out}", "--set", f"fit.tokenizer_steps={STEPS}",
             "--set", f"fit.prior_steps={STEPS}", "--threads", "1", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"saved the fitted generator to {out}" in r.stdout
    assert "it/s" not in r.stderr  # --no-progress: no tqdm bars
    # The losses are logged by default (INFO): stage, step and the loss of each stage.
    lines = r.stderr.splitlines()
    for stage in ("tokenizer", "prior"):
        assert any(line.startswith(f"{stage} step {STEPS}/{STEPS}: loss=") for line in lines), r.stderr
    gen = fit_recipe(demo.recipe(str(zoo_dir), str(zoo_dir.parent / "unused"), steps=STEPS), progress=False)
    return out, gen


def test_example_config_is_the_demo_recipe(zoo_dir, tmp_path):
    data = tomllib.loads(EXAMPLE.read_text())
    assert data == demo.DEMO
    from_file = Recipe.from_toml(EXAMPLE, [f"zoo={zoo_dir}", f"out={tmp_path}"])
    assert from_file == demo.recipe(str(zoo_dir), str(tmp_path))
    # Paths in the file resolve against its folder.
    assert Recipe.from_toml(EXAMPLE).zoo == str(EXAMPLE.parent / "../runs/demo/zoo")
    assert from_file.fit.tokenizer_steps == 600 and from_file.fit.align_steps == 0 and from_file.options["latent_length"] == 16


def test_fit_reproduces_the_demo_generator_bit_for_bit(fitted):
    out, gen = fitted
    saved = load_file(str(out / "weights.safetensors"))
    reloaded = Generator.from_pretrained(out)
    mine = {f"{role}.{k}": v for role, part in gen.components.items() for k, v in part.state_dict().items()}
    assert set(saved) == set(mine) and len(saved) > 10
    for name, value in mine.items():
        assert torch.equal(saved[name], value.cpu()), name
    assert reloaded.latent_stats == gen.latent_stats
    assert json.loads((out / "config.json").read_text())["components"]["prior"]["config"]["ema_decay"] == 0.99


def test_sample_writes_the_demos_samples(fitted, zoo_dir, tmp_path, capsys):
    out, gen = fitted
    zoo = Zoo.open(zoo_dir)
    tasks = list(zoo.tasks)
    folder = tmp_path / "samples"
    args = ["sample", str(out), *[a for t in tasks for a in ("--cond", t)], "-n", "2", "--seed", "1", "--sampler", "ddim", "--steps", "5", "--out", str(folder)]
    assert main(args) == 0
    printed = capsys.readouterr().out.split()
    expected = gen.sample(tasks, 2, generator=torch.Generator().manual_seed(1), sampler="ddim", steps=5)  # what the demo does
    manifest = json.loads((folder / "samples.json").read_text())
    assert [m["cond"] for m in manifest] == [t for t in tasks for _ in range(2)] and [m["sample"] for m in manifest] == [0, 1] * len(tasks)
    assert printed == [str(folder / m["file"]) for m in manifest]
    for m, want in zip(manifest, expected, strict=True):
        got = load_file(str(folder / m["file"]))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), m["file"]
    # A sample loads into the zoo's model strictly and scores as the demo's sample does.
    model = zoo.model(0)
    model.load_state_dict(load_file(str(folder / manifest[0]["file"])), strict=True)
    test = get_task(zoo[0].task).test
    ref = zoo.model(0)
    ref.load_state_dict(expected[0], strict=True)
    assert evaluate(model, test) == evaluate(ref, test)


def test_sample_one_file_and_pt_format(fitted, zoo_dir, tmp_path):
    out, _ = fitted
    task = Zoo.open(zoo_dir).tasks[0]
    fast = ["--sampler", "ddim", "--steps", "5"]
    one = tmp_path / "one.safetensors"
    assert main(["-q", "sample", str(out), "--cond", task, "--seed", "3", *fast, "--out", str(one)]) == 0
    pt = tmp_path / "one.pt"
    assert main(["-q", "sample", str(out), "--cond", task, "--seed", "3", *fast, "--out", str(pt)]) == 0
    a, b = load_file(str(one)), torch.load(pt, weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "one.safetensors"]  # no temporary files left
    c = tmp_path / "other.safetensors"
    assert main(["-q", "sample", str(out), "--cond", task, "--seed", "4", *fast, "--out", str(c)]) == 0
    assert not all(torch.equal(a[k], v) for k, v in load_file(str(c)).items())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-n", "2", "--out", "{tmp}/x.safetensors"], "is one file but 2 models were asked for"),
        (["--temperature", "0.7", "--out", "{tmp}/x.safetensors"], "DiffusionPrior does not take --temperature; its sampling options: --sampler, --steps"),
        (["--out", "{tmp}/x.safetensors", "--format", "pt"], "is a .safetensors file but --format is 'pt'"),
        (["--out", "{tmp}/d", "--format", "peft"], "--format peft needs a generator of LoRA adapters"),
        (["-n", "0", "--out", "{tmp}/d"], "-n/--num must be a positive integer, got 0"),
        (["--num-labels", "2", "--out", "{tmp}/d"], "--num-labels and --lora-alpha apply to PEFT adapter output only"),
        (["--base", "{tmp}/none.safetensors", "--out", "{tmp}/d"], "--base: no file"),
        (["--task", "a", "--task", "b", "--task", "c", "--out", "{tmp}/d"], "--task: give one value, or one per --cond (1); got 3"),
    ],
)
def test_sample_bad_arguments_exit_2(fitted, zoo_dir, tmp_path, capsys, extra, message):
    out, _ = fitted
    task = Zoo.open(zoo_dir).tasks[0]
    assert main(["sample", str(out), "--cond", task, *[a.format(tmp=tmp_path) for a in extra]]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sample_bad_condition_and_folder(fitted, tmp_path, capsys):
    out, _ = fitted
    assert main(["sample", str(out), "--cond", "no-such-task", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--cond" in err and "no-such-task" in err and "known keys" in err
    assert main(["sample", str(out), "--out", str(tmp_path / "d")]) == 2
    assert "this generator is conditioned: pass --cond" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing"), "--cond", "a", "--out", str(tmp_path / "d")]) == 2
    assert "holds no saved generator" in capsys.readouterr().err


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fit.toml"
    path.write_text(text)
    return path


GOOD = 'zoo = "zoo"\nout = "gen"\n[generator]\npipeline = "d2nwg"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "[fit]\nsteps = 3\n", "[fit] has no key 'steps'; valid keys: align_lr, align_restarts, align_steps, batch_size"),
        (GOOD.replace("d2nwg", "diffusion"), "unknown pipeline 'diffusion'; expected one of chunkwise, cond-pdiff, d2nwg, igpg"),
        (GOOD + "latent_lenght = 8\n", "pipeline 'd2nwg' has no option 'latent_lenght'; valid options: condition, seed, tasks, chunk_size"),
        (GOOD + "condition = 'image'\n", "condition must be one of 'task', 'text', 'text+arch', 'none'"),
        (GOOD + "seed = -1\n", "seed must be an integer >= 0, got -1"),
        (GOOD + "[fit]\nbatch_size = 0\n", "FitConfig.batch_size must be a positive integer, got 0"),
        (GOOD + "[trainer]\nx = 1\n", "unknown top-level key 'trainer'; valid keys: zoo, out, generator, fit"),
        ('zoo = "zoo"\n[generator]\npipeline = "d2nwg"\n', "the config lacks 'out'"),
        ('zoo = "zoo"\nout = "gen"\n[generator]\nlatent_length = 8\n', "[generator] lacks 'pipeline'"),
        ("zoo = [", "is not a readable TOML file"),
    ],
)
def test_fit_bad_config_exits_2(tmp_path, capsys, text, message):
    path = _config(tmp_path, text)
    assert main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"paramgen fit: error: {path}: ") and message in err, err
    with pytest.raises(ConfigError, match="valid|expected|lacks|must|readable"):
        Recipe.from_toml(path)


def test_fit_bad_option_value_exits_2(zoo_dir, tmp_path, capsys):
    path = _config(tmp_path, f'zoo = "{zoo_dir}"\nout = "gen"\n[generator]\npipeline = "d2nwg"\nsampler = "euler"\n')
    assert main(["fit", str(path)]) == 2
    assert "[generator]: " in capsys.readouterr().err and not (tmp_path / "gen").exists()


def test_fit_missing_zoo_and_bad_override(tmp_path, capsys):
    path = _config(tmp_path, GOOD)
    assert main(["fit", str(path)]) == 2
    assert f"{tmp_path / 'zoo'} is not a zoo folder" in capsys.readouterr().err
    assert not (tmp_path / "gen").exists()
    assert main(["fit", str(path), "--set", "fit.prior_steps"]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "none.toml")]) == 2
    assert "no config file" in capsys.readouterr().err


def test_overrides_parse_toml_values():
    assert parse_override("fit.prior_steps=20") == ("fit.prior_steps", 20)
    assert parse_override("generator.channel_mults=[1, 2]") == ("generator.channel_mults", [1, 2])
    assert parse_override("fit.precision=bf16") == ("fit.precision", "bf16")
    assert parse_override('out="a b"') == ("out", "a b")


def test_progress_bars_follow_the_flag(zoo_dir, tmp_path, capsys):
    base = ["fit", str(EXAMPLE), "--set", f"zoo={zoo_dir}", "--set", "fit.tokenizer_steps=2", "--set", "fit.prior_steps=2"]
    assert main(["-q", *base, "--set", f"out={tmp_path / 'a'}"]) == 0
    assert "tokenizer: 100%" in capsys.readouterr().err
    assert main(["-q", *base, "--set", f"out={tmp_path / 'b'}", "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["fit"], ["sample"], ["zoo"], ["zoo", "build"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: paramgen {' '.join(command)}".rstrip())
    expected = {(): "COMMAND", ("fit",): "[fit]", ("sample",): "--sampler", ("zoo",): "build", ("zoo", "build"): "--preset", ("demo",): "--no-progress"}
    assert expected[tuple(command)] in text


def test_python_dash_m_paramgen():
    r = subprocess.run([sys.executable, "-m", "paramgen", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "paramgen zoo build" in r.stdout
    assert all(f"\n    {c} " in r.stdout for c in ("zoo", "demo", "fit", "sample"))  # each command listed


def test_missing_argument_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit"])
    assert e.value.code == 2 and "CONFIG" in capsys.readouterr().err


def test_sample_peft_adapters(tmp_path, capsys):
    from paramgen.lora import LoRASetup, load_adapter
    from paramgen.pipelines import cond_pdiff
    from paramgen.training import FitConfig, fit

    setup = LoRASetup(rank=2, layers=(5,), max_labels=3)
    g = torch.Generator().manual_seed(0)
    zoo = [{t.name: 0.1 * torch.randn(t.shape, generator=g) for t in setup.spec().tensors} for _ in range(4)]
    gen = cond_pdiff(setup.spec(), condition="task", tasks=["pos", "neg"], chunk_size=512, prior_channels=8, timesteps=20)
    fit(gen, zoo, ["pos", "neg"] * 2, tasks=["pos", "neg"] * 2, config=FitConfig(tokenizer_steps=2, prior_steps=2, batch_size=4, progress=False))
    saved = gen.save_pretrained(tmp_path / "gen")
    out = tmp_path / "adapters"
    assert main(["-q", "sample", str(saved), "--cond", "pos", "--cond", "neg", "--num-labels", "2", "--sampler", "ddim", "--steps", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["neg-0", "pos-0", "samples.json"]
    tensors, labels = load_adapter(out / "pos-0", setup)  # a standard PEFT folder of this layout, head cut to 2 labels
    assert labels == 2 and set(tensors) == {t.name for t in setup.spec().tensors}
    assert json.loads((out / "pos-0" / "adapter_config.json").read_text())["r"] == 2
    assert main(["sample", str(saved), "--cond", "pos", "--num-labels", "5", "--sampler", "ddim", "--steps", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--num-labels must lie in 2..3" in capsys.readouterr().err


def test_own_checkpoints_import_fit_sample(tmp_path):
    """A folder of safetensors checkpoints of your own: ``zoo import``, ``fit``, ``sample``."""
    from safetensors.torch import save_file

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    files, g = [], torch.Generator().manual_seed(0)
    shapes = {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}  # nn.Sequential(Linear(4, 8), ReLU(), Linear(8, 3))
    for i in range(6):
        files.append(ckpts / f"m{i}.safetensors")
        save_file({k: 0.5 * torch.randn(s, generator=g) for k, s in shapes.items()}, str(files[-1]))
    zoo = tmp_path / "zoo"
    tasks = [a for i in range(6) for a in ("--task", "wine" if i % 2 else "iris")]
    assert main(["-q", "zoo", "import", *map(str, files), *tasks, "--out", str(zoo), "--no-progress"]) == 0
    config = _config(tmp_path, """zoo = "zoo"\nout = "gen"\n[generator]\npipeline = "d2nwg"\nlatent_length = 8\nhidden_channels = 8\nbase_channels = 8\ntimesteps = 20\n
[fit]\ntokenizer_steps = 3\nalign_steps = 0\nprior_steps = 3\nbatch_size = 6\nprogress = false\n""")
    assert main(["-q", "fit", str(config)]) == 0
    gen = Generator.from_pretrained(tmp_path / "gen")
    assert gen.conditioner.keys == ("iris", "wine")
    out = tmp_path / "wine.safetensors"
    assert main(["-q", "sample", str(tmp_path / "gen"), "--cond", "wine", "--out", str(out)]) == 0
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.load_state_dict(load_file(str(out)), strict=True)


# --------------------------------------------------------------------------- help
def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("paramgen",)):
    """Every parser of the command line: (command path, parser)."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_has_a_description():
    found = dict(_parsers(build_parser()))
    assert {"paramgen zoo build", "paramgen zoo import", "paramgen zoo info", "paramgen eval", "paramgen demo"} <= set(found)
    assert [name for name, p in found.items() if not (p.description or "").strip()] == []


def test_every_default_shows_once(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert [line for line in text.splitlines() if line.count("(default:") > 1] == [], name
    help_of = {name: p.format_help() for name, p in _parsers(build_parser())}
    assert "torch CPU threads (default: torch's choice)\n" in help_of["paramgen fit"]
    assert "models decoded at once (default: 256)" in help_of["paramgen sample"]
    assert "worker processes (default: 2)" in help_of["paramgen zoo build"]


def test_zoo_presets_listed_without_importing_them():
    from paramgen.cli.zoo import PRESET_NAMES
    from paramgen.zoo import PRESETS

    assert PRESET_NAMES == tuple(sorted(PRESETS))


HEAVY = ("torch", "numpy", "transformers", "sentence_transformers", "mlflow", "safetensors")


def test_help_imports_nothing_heavy():
    code = f"""
import sys
import paramgen
assert not [m for m in {HEAVY!r} if m in sys.modules], "import paramgen"
from paramgen.cli import build_parser, main
for command in ([], ["fit"], ["sample"], ["eval"], ["zoo"], ["zoo", "build"], ["zoo", "import"], ["zoo", "info"], ["demo"]):
    try:
        main([*command, "--help"])
    except SystemExit as e:
        assert e.code == 0, command
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
from paramgen import Generator, ParamSpec  # the public names still import, lazily
print(Generator.__name__, ParamSpec is sys.modules["paramgen.spec"].ParamSpec, "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == ["[]", "Generator True True"]


def test_lazy_package_keeps_its_public_names():
    import paramgen

    assert set(paramgen.__all__) <= set(dir(paramgen))
    for name in paramgen.__all__:
        assert getattr(paramgen, name).__name__ == name
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        paramgen.Nope  # noqa: B018


def test_no_progress_covers_hugging_face_bars(zoo_dir, tmp_path, capsys, monkeypatch):
    """A text-conditioned fit loads MiniLM through sentence-transformers, whose transformers
    draw a "Loading weights" bar: --no-progress switches it off too, and only for the command."""
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tf

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    config = _config(tmp_path, f"""zoo = "{zoo_dir}"\nout = "gen"\n[generator]\npipeline = "cond-pdiff"\ncondition = "text"\nchunk_size = 512\n
prior_channels = 8\ntimesteps = 20\n[fit]\ntokenizer_steps = 2\nprior_steps = 2\nbatch_size = 4\n""")
    assert main(["-q", "fit", str(config), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
    assert tf.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()  # put back afterwards
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_progress_switch_reaches_child_processes(monkeypatch):
    from paramgen.cli.progress import progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    show = [sys.executable, "-c", "import os; print(os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'), os.environ.get('TQDM_DISABLE'))"]
    with progress_bars(False):
        inside = subprocess.run(show, capture_output=True, text=True, check=True).stdout.split()
    after = subprocess.run(show, capture_output=True, text=True, check=True).stdout.split()
    assert inside == ["1", "1"] and after == ["None", "0"]


# --------------------------------------------------------------------------- tracking
def test_fit_tracks_params_losses_and_config_in_mlflow(zoo_dir, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "exp"
    folder.mkdir()
    config = folder / "fit.toml"
    config.write_text(EXAMPLE.read_text() + '\n[tracking]\nexperiment = "tiny"\nrun_name = "first"\n')
    args = ["-q", "fit", str(config), "--set", f"zoo={zoo_dir}", "--set", f"out={tmp_path / 'gen'}", "--set", "fit.tokenizer_steps=3",
            "--set", "fit.prior_steps=3", "--set", "fit.log_every=1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["artifacts", "fit.toml", "mlflow.db"]  # the store beside the config
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.data.params["pipeline"] == "d2nwg" and run.data.params["fit.prior_steps"] == "3" and run.data.params["generator.latent_length"] == "16"
    for stage in ("tokenizer", "prior"):
        history = client.get_metric_history(run.info.run_id, f"{stage}/loss")
        assert [m.step for m in history] == [1, 2, 3] and all(m.value > 0 for m in history)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.json"]


@pytest.mark.parametrize(
    "table, expected",
    [
        ("", None),
        ('[tracking]\nbackend = "none"\n', ("none", None)),
        ("[tracking]\n", ("mlflow", None)),
        ('[tracking]\nuri = "sqlite:///db/m.db"\n', ("mlflow", "sqlite:///{dir}/db/m.db")),
        ('[tracking]\nuri = "sqlite:////abs/m.db"\n', ("mlflow", "sqlite:////abs/m.db")),
        ('[tracking]\nuri = "http://127.0.0.1:5000"\n', ("mlflow", "http://127.0.0.1:5000")),
    ],
)
def test_tracking_table(tmp_path, table, expected):
    recipe = Recipe.from_toml(_config(tmp_path, GOOD + table))
    if expected is None:
        assert recipe.tracking.backend == "none"
        return
    backend, uri = expected
    assert recipe.tracking.backend == backend
    assert recipe.tracking.uri == (None if uri is None else uri.format(dir=tmp_path.resolve()))
    assert recipe.tracking.root == str(tmp_path.resolve())  # the default store: mlflow.db beside the config


def test_tracking_uri_override_resolves_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    config = _config(tmp_path / "configs", GOOD + '[tracking]\nuri = "sqlite:///there.db"\n')
    monkeypatch.chdir(tmp_path)
    assert Recipe.from_toml(config).tracking.uri == f"sqlite:///{tmp_path.resolve() / 'configs' / 'there.db'}"
    recipe = Recipe.from_toml(config, ["tracking.uri=sqlite:///here.db"])
    assert recipe.tracking.uri == f"sqlite:///{tmp_path.resolve() / 'here.db'}"


def test_fit_tracking_none_writes_no_store(zoo_dir, tmp_path):
    config = _config(tmp_path, EXAMPLE.read_text() + '\n[tracking]\nbackend = "none"\n')
    assert main(["-q", "fit", str(config), "--set", f"zoo={zoo_dir}", "--set", f"out={tmp_path / 'gen'}", "--set", "fit.tokenizer_steps=1",
                 "--set", "fit.prior_steps=1", "--no-progress"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.toml", "gen"]


# --------------------------------------------------------------------------- sampling options
def test_sampler_options_that_would_be_ignored_are_refused(fitted, zoo_dir, tmp_path, capsys):
    out, gen = fitted
    task = Zoo.open(zoo_dir).tasks[0]
    base = ["sample", str(out), "--cond", task, "--out", str(tmp_path / "x.safetensors")]
    for extra, flag in ((["--sampler", "ddpm", "--steps", "5"], "--steps"), (["--sampler", "ddpm", "--eta", "0.5"], "--eta")):
        assert main([*base, *extra]) == 2
        assert f"{flag} acts with the ddim sampler only, but --sampler is ddpm; add --sampler ddim, or drop {flag}" in capsys.readouterr().err
    # Without --sampler the prior's own default decides, as in the library.
    code = main([*base, "--steps", "5"])
    if gen.prior.sampler == "ddim":
        assert code == 0
    else:
        assert code == 2 and "DiffusionPrior samples with ddpm by default; add --sampler ddim" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []  # refused before sampling


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("out", ["a/missing/x.safetensors", "a/missing/folder"])
def test_sample_refuses_a_missing_parent_folder(fitted, zoo_dir, tmp_path, capsys, out):
    gen_dir, _ = fitted
    task = Zoo.open(zoo_dir).tasks[0]
    assert main(["sample", str(gen_dir), "--cond", task, "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / out.rpartition('/')[0]} does not exist" in err, err
    assert list(tmp_path.iterdir()) == []  # no folder made
    # A folder output is created when its parent exists.
    assert main(["-q", "sample", str(gen_dir), "--cond", task, "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "samples.json").is_file()


def test_fit_refuses_a_missing_parent_folder(zoo_dir, tmp_path, capsys):
    assert main(["fit", str(EXAMPLE), "--set", f"zoo={zoo_dir}", "--out", str(tmp_path / "no" / "gen")]) == 2
    assert f"the folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_identical_sample_runs_write_identical_bytes(fitted, zoo_dir, tmp_path):
    gen_dir, _ = fitted
    tasks = Zoo.open(zoo_dir).tasks
    conds = [a for t in tasks for a in ("--cond", t)]
    digests = set()
    for i in range(4):  # the metadata order was a per-call hash order: 4 runs agree by chance with p < 1%
        one = tmp_path / f"one{i}.safetensors"
        folder = tmp_path / f"dir{i}"
        assert main(["-q", "sample", str(gen_dir), "--cond", tasks[0], "--seed", "3", "--sampler", "ddim", "--steps", "2", "--out", str(one)]) == 0
        assert main(["-q", "sample", str(gen_dir), *conds, "-n", "2", "--seed", "3", "--sampler", "ddim", "--steps", "2", "--out", str(folder)]) == 0
        files = sorted(folder.iterdir())
        digests.add((one.read_bytes(), tuple(f.name for f in files), tuple(f.read_bytes() for f in files)))
    assert len(digests) == 1


# --------------------------------------------------------------------------- eval
def test_eval_scores_samples_originals_and_baselines(fitted, zoo_dir, tmp_path, capsys):
    from paramgen.novelty import nearest_l2

    out, gen = fitted
    zoo = Zoo.open(zoo_dir)
    report_path = tmp_path / "eval.json"
    assert main(["-q", "eval", str(out), "--zoo", str(zoo_dir), "-n", "3", "--seed", "1", "--sampler", "ddim", "--steps", "5", "--out", str(report_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["test", "accuracy", "originals", "generated", "noisy", "ckpt", "ckpt", "mean", "gaussian"]
    assert [line.split()[0] for line in table[1:3]] == list(zoo.tasks) and table[3].startswith("mean over tasks")
    report = json.loads(report_path.read_text())
    assert list(report["tasks"]) == list(zoo.tasks) and report["sampling"] == {"sampler": "ddim", "steps": 5} and report["condition"] == "task"
    # Generated: the samples `paramgen sample` draws with the same seed, scored on the task's test split.
    expected = gen.sample(list(zoo.tasks), 3, generator=torch.Generator().manual_seed(1), sampler="ddim", steps=5)
    flat, _ = zoo.flatten()
    for t, (task, row) in enumerate(report["tasks"].items()):
        test = get_task(task).test
        assert row["test_examples"] == len(test)
        # Originals: re-evaluated, they score what the zoo recorded.
        assert row["originals"]["test_acc"] == pytest.approx([c.metrics["test_acc"] for c in zoo if c.task == task])
        mine = []
        for sd in expected[3 * t : 3 * t + 3]:
            model = zoo.model(0)
            model.load_state_dict(sd, strict=True)
            mine.append(evaluate(model, test)[0])
        assert row["generated"]["test_acc"] == pytest.approx(mine)
        vectors, _ = gen.spec.flatten(expected[3 * t : 3 * t + 3])
        assert row["generated"]["novelty_l2"] == pytest.approx(nearest_l2(vectors, flat)[0].tolist(), rel=1e-5)
        for method in ("noisy_checkpoint", "checkpoint_mean", "gaussian"):
            assert len(row[method]["test_acc"]) == len(row[method]["novelty_l2"]) == len(row[method]["wrong_iou"]) == 3
            assert all(0.0 <= a <= 1.0 for a in row[method]["test_acc"])
        # The noise baseline sits as far from the zoo as the generated models (median).
        gen_med, noise_med = (sorted(row[m]["novelty_l2"])[1] for m in ("generated", "noisy_checkpoint"))
        assert noise_med == pytest.approx(gen_med, rel=0.35) and row["noise_sigma"] > 0
        # Two checkpoints per task: each "mean" is the average of both.
        own = flat[[i for i, c in enumerate(zoo) if c.task == task]]
        assert row["mean_of"] == 2
        assert row["checkpoint_mean"]["novelty_l2"] == pytest.approx([float((own[0] - own[1]).norm() / 2)] * 3, rel=1e-4)
    assert report["mean"]["generated"] == pytest.approx(sum(sum(r["generated"]["test_acc"]) / 3 for r in report["tasks"].values()) / 2)


def test_eval_unconditional_generator_scores_its_samples_on_every_task(zoo_dir, tmp_path, capsys):
    config = _config(tmp_path, f"""zoo = "{zoo_dir}"\nout = "gen"\n[generator]\npipeline = "d2nwg"\ncondition = "none"\nlatent_length = 8\n
hidden_channels = 8\nbase_channels = 8\ntimesteps = 20\n[fit]\ntokenizer_steps = 2\nprior_steps = 2\nbatch_size = 4\nprogress = false\n""")
    assert main(["-q", "fit", str(config)]) == 0
    assert main(["-q", "eval", str(tmp_path / "gen"), "--zoo", str(zoo_dir), "-n", "2", "--out", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    rows = list(report["tasks"].values())
    assert report["condition"] == "none" and len(rows) == 2
    assert rows[0]["generated"]["novelty_l2"] == rows[1]["generated"]["novelty_l2"]  # the same samples
    assert rows[0]["mean_of"] == 4  # baselines from the whole zoo
    assert main(["eval", str(tmp_path / "gen"), "--zoo", str(zoo_dir), "--condition", "task"]) == 2
    assert "this generator is unconditional: omit --condition" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "digits/9-9"], "task 'digits/9-9' is not in the zoo; its tasks: digits/"),
        (["--condition", "none"], "this generator is conditioned: pass --condition task, text or text+arch"),
        (["--condition", "text"], "the generator does not take the zoo's 'text' conditions"),
        (["--out", "{tmp}/no/e.json"], "the folder {tmp}/no does not exist"),
        (["--temperature", "0.5"], "DiffusionPrior does not take --temperature"),
        (["-n", "0"], "-n/--num must be a positive integer, got 0"),
        (["--zoo", "{tmp}/nothing"], "is not a zoo folder"),
    ],
)
def test_eval_bad_arguments_exit_2(fitted, zoo_dir, tmp_path, capsys, extra, message):
    out, _ = fitted
    args = ["eval", str(out), "--zoo", str(zoo_dir), *[a.format(tmp=tmp_path) for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("paramgen eval: error: ") and message.format(tmp=tmp_path) in err, err
    assert list(tmp_path.iterdir()) == []


def test_eval_refuses_a_zoo_of_another_architecture(fitted, tmp_path, capsys):
    from paramgen.zoo import ZooWriter

    out, _ = fitted
    ZooWriter(tmp_path / "other").add(torch.nn.Linear(3, 2), task="digits/0-1")
    assert main(["eval", str(out), "--zoo", str(tmp_path / "other")]) == 2
    assert "the generator makes weights of another architecture than the zoo's" in capsys.readouterr().err
