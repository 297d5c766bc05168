"""``python -m paramgen.zoo import|info`` (and ``--help`` on every subcommand)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from paramgen.zoo import Zoo
from paramgen.zoo.__main__ import main


def _write_ckpts(folder, n: int = 3):
    folder.mkdir()
    for i in range(n):
        net = torch.nn.Linear(4, 2)
        with torch.no_grad():
            net.weight.copy_(torch.full((2, 4), float(i)))
        save_file(net.state_dict(), folder / f"seed{i}.safetensors")
    return folder


@pytest.mark.parametrize("command", ["build", "import", "info"])
def test_help_on_each_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: python -m paramgen.zoo " + command in capsys.readouterr().out


def test_import_a_folder_with_one_task_then_info(tmp_path, capsys):
    src = _write_ckpts(tmp_path / "ckpts")
    assert main(["import", str(src), "--task", "wine", "--out", str(tmp_path / "zoo"), "--no-progress"]) == 0
    assert "3 checkpoints, 1 tasks" in capsys.readouterr().out
    zoo = Zoo.open(tmp_path / "zoo")
    assert zoo.tasks == ("wine",) and sorted(float(zoo.state_dict(i)["weight"][0, 0]) for i in range(3)) == [0.0, 1.0, 2.0]
    assert main(["info", str(tmp_path / "zoo"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == 3


def test_import_with_metadata_toml_and_one_run(tmp_path, capsys):
    src = _write_ckpts(tmp_path / "ckpts")
    meta = tmp_path / "meta.toml"
    meta.write_text(
        '[seed0]\ntask = "wine"\nepoch = 10\nmetrics = {test_acc = 0.9}\n'
        '[seed1]\ntask = "wine"\nepoch = 20\nmetrics = {test_acc = 0.95}\n'
        '["seed2.safetensors"]\ntask = "wine"\nepoch = 30\nlab = "north"\n'
    )
    code = main(["import", *sorted(map(str, src.iterdir())), "--metadata", str(meta), "--run-id", "long-run", "--out", str(tmp_path / "zoo"), "--no-progress"])
    assert code == 0
    zoo = Zoo.open(tmp_path / "zoo")
    assert [c.id for c in zoo] == ["long-run@10", "long-run@20", "long-run@30"]
    assert zoo[1].metrics == {"test_acc": 0.95} and zoo[2].metadata["lab"] == "north"


def test_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    src = _write_ckpts(tmp_path / "ckpts", n=2)
    out = str(tmp_path / "zoo")
    assert main(["import", str(src / "seed0.safetensors"), "--out", out]) == 2
    assert "no task for" in capsys.readouterr().err
    assert main(["import", str(src / "seed0.safetensors"), str(src / "seed1.safetensors"), "--task", "a", "--task", "b", "--task", "c", "--out", out]) == 2
    assert "3 --task for 2 sources" in capsys.readouterr().err
    (tmp_path / "model.bin").write_bytes(b"x")
    assert main(["import", str(tmp_path / "model.bin"), "--task", "a", "--out", out]) == 2
    assert "pickled weights" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("task = ")
    assert main(["import", str(src), "--metadata", str(tmp_path / "bad.toml"), "--out", out]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing")], prog="paramgen zoo") == 2
    err = capsys.readouterr().err
    assert err.startswith("paramgen zoo info: error: ") and "not a zoo folder" in err


def test_info_without_recorded_accuracy_says_so(tmp_path, capsys):
    """Imported checkpoints carry only the metrics given to them: no NaN mean, in text or JSON."""
    src = _write_ckpts(tmp_path / "ckpts")
    assert main(["import", str(src), "--task", "wine", "--out", str(tmp_path / "zoo"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert "  test_acc_mean: n/a (no test accuracy recorded" in out and "  test_acc_min: n/a (no test accuracy recorded" in out
    assert main(["info", str(tmp_path / "zoo"), "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text
    summary = json.loads(text)
    assert summary["test_acc_mean"] is None and summary["test_acc_min"] is None and summary["test_acc_recorded"] == 0


def test_info_with_some_accuracies_says_over_how_many(tmp_path, capsys):
    src = _write_ckpts(tmp_path / "ckpts")
    meta = tmp_path / "meta.toml"
    meta.write_text('[seed0]\ntask = "wine"\nmetrics = {test_acc = 0.5}\n[seed1]\ntask = "wine"\nmetrics = {test_acc = 0.75}\n[seed2]\ntask = "wine"\n')
    assert main(["import", str(src), "--metadata", str(meta), "--out", str(tmp_path / "zoo"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "  test_acc_mean: 0.6250 (over the 2 of 3 checkpoints that recorded one)" in out
    assert "  test_acc_min: 0.5000 (over the 2 of 3 checkpoints that recorded one)" in out


def test_help_names_each_subcommand_and_has_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(f"    {c} " in text for c in ("build", "import", "info"))
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "Train the runs of a preset that the zoo folder lacks" in capsys.readouterr().out
