"""Every ```python block of every page in docs/ runs, in order, in one namespace per page.

A block whose first line is ``# file: NAME`` is written to NAME in the working directory instead
of being executed (guides that build a module and then import it)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    monkeypatch.syspath_prepend(str(tmp_path))
    for i, block in enumerate(code_blocks(page)):
        first = block.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(block)
            continue
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # name the block in the failure
            raise AssertionError(f"{page.name}, code block {i} failed: {e!r}\n{block}") from e


def test_docs_exist():
    assert (DOCS / "index.md").exists() and (DOCS / "concepts.md").exists()
    assert PAGES, "no runnable code blocks found in docs/"


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def local_links(page: Path) -> list[str]:
    """The relative file links of a page (web addresses and in-page anchors left out)."""
    return [t for t in LINK.findall(page.read_text()) if "://" not in t and not t.startswith("mailto:")]


def test_local_links_finds_relative_targets_only(tmp_path):
    page_text = "[a](bench/x.log) [b](https://e.org/y) [c](#top) [d](bench/z.png#frag)"
    assert LINK.findall(page_text) == ["bench/x.log", "https://e.org/y", "bench/z.png"]
    page = tmp_path / "page.md"
    page.write_text(page_text)
    assert local_links(page) == ["bench/x.log", "bench/z.png"]


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_linked_artifact_exists(page):
    """Every figure in docs/results.md points to the log or report that shows it: a link whose
    file is gone (an artifact deleted or renamed) fails here, not in a reader's browser."""
    missing = sorted({t for t in local_links(page) if not (page.parent / t).exists()})
    assert not missing, f"{page.name} links to files that do not exist: {missing}"
