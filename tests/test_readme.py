"""The README's Python code runs, so it cannot rot; the CI script calls its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    from tests.zoo.test_readme_own_zoo import SNIPPET

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2 and blocks.count(SNIPPET) == 1  # SNIPPET: the block under "## Your own zoo"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # later blocks use names from earlier ones, as a reader would
        if block == SNIPPET:  # the own-zoo snippet: run and checked by tests/zoo/test_readme_own_zoo.py
            continue
        exec(compile(block, "README.md", "exec"), namespace)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
