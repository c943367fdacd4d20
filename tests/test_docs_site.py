"""The documentation site (mkdocs.yml, docs/) builds in strict mode: a broken link, a missing
page, an unparsable docstring or any other warning fails it. The CLI reference is generated from
the parser, so it lists every config flag."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_with_no_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
    site = tmp_path / "site"
    cli = (site / "cli" / "index.html").read_text()
    from fitvision.config import TrainConfig
    from fitvision.options import flag

    missing = [flag(f) for f in TrainConfig.__dataclass_fields__ if flag(f) not in cli]
    assert not missing, missing  # the reference is the parser's own help
    api = (site / "api" / "index.html").read_text()
    assert "lsuv_init" in api and "fit_recipe" in api  # from the docstrings
    pages = {p.parent.name for p in (site / "techniques").glob("*/index.html")}
    assert len(pages) >= 12 and {"batchnorm", "init", "schedules", "optimizers", "tta"} <= pages
