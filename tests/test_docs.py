"""Every Python block of the docs runs as a reader runs it, so examples cannot rot.

A block runs in a fresh namespace, as when it is pasted into a new session, unless its
first line is a comment saying that it continues (``# continues the block above``): it
then runs in the namespace of the blocks before it on the page. Blocks run as
``__main__``, so the body of an ``if __name__ == "__main__":`` guard runs as it does in a
script, with the page's own temporary folder as the working directory.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
# API pages run too, but for the LoRA page, whose example trains adapters on MiniLM for
# minutes (its pieces are tested in tests/test_lora*.py).
SLOW_API = {"lora.md"}
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text()) + sorted(
    p for p in (DOCS / "api").glob("*.md") if "```python" in p.read_text() and p.name not in SLOW_API
)
CONTINUES = re.compile(r"#[^\n]*\bcontinues\b", re.IGNORECASE)

def blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def continues(block: str) -> bool:
    first = block.lstrip("\n").split("\n", 1)[0]
    return CONTINUES.match(first.strip()) is not None


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks(page)):
        if i == 0 and continues(block):
            pytest.fail(f"{page.name}: its first Python block says it continues, but nothing comes before it")
        if not continues(block):
            namespace = {}  # a new session: the block must hold its own imports and names
        namespace.setdefault("__name__", "__main__")
        exec(compile(block, f"{page.name} (Python block {i + 1})", "exec"), namespace)


def test_the_marker_is_read_from_the_first_line_only():
    assert continues("# continues the block above\nx = 1\n")
    assert continues("\n# (continues the previous block)\n")
    assert not continues("import torch  # continues\n")
    assert not continues("x = 1\n# continues the block above\n")


ROOT = DOCS.parent
NAV_PAGE = re.compile(r"^\s*- (?:[^\n]*: )?([\w./-]+\.md)\s*$", re.MULTILINE)
NOT_API = {"demo"}  # the module behind `make demo` / `paramgen demo`, a script


def test_every_page_is_in_the_nav_and_every_public_module_has_an_api_page():
    nav = set(NAV_PAGE.findall((ROOT / "mkdocs.yml").read_text()))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert sorted(pages - nav) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(nav - pages) == [], "nav entries without a page"
    api = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    modules = {p.stem for p in (ROOT / "paramgen").iterdir() if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    missing = sorted(m for m in modules - NOT_API if not re.search(rf"^::: paramgen\.{m}\b", api, re.MULTILINE))
    assert missing == [], "public modules without an API page (docs/api/*.md)"
