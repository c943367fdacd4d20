"""Every ```python example in README.md and docs/ (the site's pages) runs, as a reader would paste it.

Each block runs in a fresh namespace in a temporary folder, the real datasets in
FITVISION_DATA_DIR. A block that cannot run here says why on the line before it:
<!-- not run: REASON --> (for example: it needs your own folder of photos).
"""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "benchmarks-history.md")]
TECHNIQUES = sorted(p for p in (ROOT / "docs" / "techniques").glob("*.md") if p.name != "index.md")
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def _examples():
    for page in PAGES:
        text = page.read_text()
        for k, m in enumerate(BLOCK.finditer(text)):
            line = text[: m.start()].count("\n") + 1
            yield pytest.param(m["code"], m["why"], id=f"{page.relative_to(ROOT)}:{line}")


EXAMPLES = list(_examples())


def test_the_pages_have_examples():
    assert len(EXAMPLES) >= 5
    assert sum(1 for e in EXAMPLES if e.values[1] is None) >= 2  # README's and training.md's at least


def test_every_technique_page_has_an_example_that_runs_here():
    """Issue 28: one page per technique, each with a runnable example (run below, in CI)."""
    assert len(TECHNIQUES) >= 12
    for page in TECHNIQUES:
        blocks = list(BLOCK.finditer(page.read_text()))
        assert any(m["why"] is None for m in blocks), f"{page.name} has no example that runs"


@pytest.mark.parametrize("code, why", EXAMPLES)
def test_example_runs(code, why, tmp_path, monkeypatch):
    if why:
        pytest.skip(f"not run: {why}")
    if not os.environ.get("FITVISION_DATA_DIR"):
        pytest.skip("real datasets absent: set FITVISION_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
