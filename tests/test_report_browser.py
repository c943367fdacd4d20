"""report.html in a real browser: headless Chromium renders it offline and the screenshot has the content."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fakerun import fake_dataset, make_fake_run
from fitvision.report.html import render_run_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def _screenshot(page, out, tmp_path, height=3000):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={out}", f"--window-size=1280,{height}",
           page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _near(px, rgb, tol=10):
    return int((np.abs(px.reshape(-1, 3) - rgb).max(1) <= tol).sum())


def test_report_renders_in_chromium(tmp_path):
    run = make_fake_run(tmp_path / "run")
    page = render_run_report(run, dataset=fake_dataset(1000))
    px = _screenshot(page, tmp_path / "shot.png", tmp_path)
    assert px.shape == (3000, 1280, 3)
    background = np.array([246, 248, 250])  # the page's --bg; white sections are within 12 of it too
    content = (np.abs(px - background).max(2) > 12).mean()
    assert content > 0.1, f"screenshot mostly blank ({content:.0%} content)"
    # The embedded PNGs decoded: the confusion matrix's dark blue diagonal and the red mistake frames.
    assert _near(px, [8, 48, 107], tol=20) > 500, "confusion matrix not rendered"
    assert _near(px, [214, 39, 40], tol=12) > 500, "mistakes grid / confused-pairs bars not rendered"
    # The headline accuracy card (green tint) is on the first screen.
    assert _near(px[:400], [238, 246, 238], tol=3) > 2000
