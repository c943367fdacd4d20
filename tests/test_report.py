"""Plots and report.html: exact metrics, real PNGs, a self-contained page, redraw from the run folder."""

import base64
import re

import numpy as np
import pytest
from PIL import Image

from fakerun import CLASSES, fake_dataset, make_fake_run
from fitvision.errors import FitVisionError
from fitvision.report import html as report_html
from fitvision.report import plots

PLOTS = ["accuracy.png", "loss.png", "lr.png", "confusion.png", "top_confused.png", "mistakes.png"]


def test_confusion_matrix_matches_a_loop():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    ref = np.zeros((5, 5), np.int64)
    for a, b in zip(t, p):
        ref[a, b] += 1
    assert np.array_equal(plots.confusion_matrix(t, p, 5), ref)


def test_most_confused_orders_off_diagonal_cells():
    cm = np.array([[9, 3, 0], [5, 7, 1], [0, 3, 2]])
    assert plots.most_confused(cm, ["a", "b", "c"], k=3) == [("b", "a", 5), ("a", "b", 3), ("c", "b", 3)]
    assert plots.most_confused(np.eye(3, dtype=int) * 4, ["a", "b", "c"]) == []


def test_per_class_accuracy_exact():
    probs = np.eye(3, dtype=np.float32)[[0, 1, 1, 2, 0]]  # predictions 0 1 1 2 0
    targets = np.array([0, 1, 2, 2, 1])
    rows = report_html.per_class_accuracy(probs, targets, ["a", "b", "c", "d"])
    assert [(r["count"], r["correct"]) for r in rows] == [(1, 1), (2, 1), (2, 1), (0, 0)]
    assert [r["acc"] for r in rows] == [1.0, 0.5, 0.5, None]


def test_pick_grid_worst_mistakes_first():
    targets = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probs = np.full((8, 3), 0.1, np.float32)
    probs[np.arange(8), targets] = 0.8
    probs[3] = [0.05, 0.9, 0.05]  # wrong, p(true) 0.05
    probs[6] = [0.3, 0.6, 0.1]  # wrong, p(true) 0.3
    pick = plots.pick_grid(probs, targets, n=6, seed=0)
    assert list(pick[:2]) == [3, 6]
    assert len(pick) == 6 and len(set(pick.tolist())) == 6


def test_history_plots_are_readable_pngs(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + e / 20} for e in (1, 2, 3)]
    paths = plots.plot_history(history, tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "loss.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and 500 <= im.width <= 1200 and 300 <= im.height <= 900


def test_show_batch_draws_the_images_and_marks_mistakes(tmp_path):
    red, blue = np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    blue[..., 2] = 255
    images = np.concatenate([red[:2], blue[:2]])
    out = plots.show_batch(images, [0, 1, 2, 3], CLASSES, tmp_path / "g.png", preds=[0, 1, 2, 0], ncols=4)
    px = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    n_red = int(np.all(px == [255, 0, 0], axis=1).sum())
    n_blue = int(np.all(px == [0, 0, 255], axis=1).sum())
    frame = int(np.all(np.abs(px.astype(int) - [214, 39, 40]) < 8, axis=1).sum())  # plots.RED
    assert n_red > 2 * 100 * 100 and n_blue > 2 * 100 * 100  # each image drawn at > 100 px a side
    assert frame > 4 * 100  # one mistake (truck shown as airplane): a red frame around it


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One fake run rendered once (drawing the plots is the slow part): (run dir, report path, page)."""
    run = make_fake_run(tmp_path_factory.mktemp("report") / "run")
    path = report_html.render_run_report(run, dataset=fake_dataset(1000))
    return run, path, path.read_text()


def test_render_run_report_draws_every_plot_and_embeds_it(rendered):
    run, path, page = rendered
    assert path == run / "report.html"
    for name in PLOTS:
        assert (run / "plots" / name).is_file(), name
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((run / "plots" / n).read_bytes() for n in PLOTS)
    # Self-contained: no external resource of any kind.
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page


def test_report_shows_summary_history_and_per_class_accuracy(rendered):
    run, _, page = rendered
    z = np.load(run / "preds.npz")
    acc = (z["probs"].argmax(1) == z["targets"]).mean()
    assert f"{100 * acc:.2f}%" in page  # summary card
    assert page.count("<tr") >= 4 + 10 + 2  # history rows, per-class rows, headers
    bird = z["targets"] == CLASSES.index("bird")
    bird_acc = (z["probs"][bird].argmax(1) == 2).mean()
    assert re.search(rf"<td>bird</td><td class='num'>{bird.sum()}</td>.*?{100 * bird_acc:.1f}%", page)
    assert "<div class='v'>50.0 s</div><div class='k'>training time</div>" in page


def test_write_report_draws_missing_plots_notes_missing_data_and_escapes_names(tmp_path):
    """train_run calls only write_report: it must leave the plots DESIGN.md lists."""
    pytest.importorskip("fitvision.data.decode")
    classes = ["<script>alert(1)</script>", "b&b"] + CLASSES[2:]
    run = make_fake_run(tmp_path / "run", classes=classes, data=str(tmp_path / "no-such-data"))
    page = report_html.write_report(run).read_text()
    for name in report_html.RUN_PLOTS:
        assert (run / "plots" / name).is_file(), name
    assert "<script>" not in page and "&lt;script&gt;" in page and "b&amp;b" in page
    # The validation images are gone: the grid is skipped with a note, not a failure.
    assert "Mistakes grid not drawn: the validation images are not available here" in page
    assert not (run / "plots" / "mistakes.png").exists()


def test_write_report_refuses_a_non_run(tmp_path):
    from fitvision.errors import FitVisionError

    with pytest.raises(FitVisionError, match="run directory not found"):
        report_html.write_report(tmp_path / "nope")
    with pytest.raises(FitVisionError, match="is not a fitvision run"):
        report_html.write_report(tmp_path)


def test_show_dataset_on_a_folder(tmp_path):
    pytest.importorskip("fitvision.data.decode")
    root = tmp_path / "shapes"
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for split in ("train", "valid"):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), rgb).save(root / split / name / f"{i}.png")
    out = plots.show_dataset(str(root), tmp_path / "grid.png", n=4, seed=0)
    px = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    assert int(np.all(px == [255, 0, 0], axis=1).sum()) > 100 * 100
    assert int(np.all(px == [0, 0, 255], axis=1).sum()) > 100 * 100
    # no suffix: a .png, and the path returned (and printed by the CLI) is the file written
    assert plots.show_dataset(str(root), tmp_path / "plain", n=2) == tmp_path / "plain.png"
    assert (tmp_path / "plain.png").is_file() and not (tmp_path / "plain").exists()
    with pytest.raises(FitVisionError, match=r"^cannot write .*grid\.xyz: unknown image format '\.xyz' \(valid: .*\.png"):
        plots.show_dataset(str(root), tmp_path / "grid.xyz", n=2)
    with pytest.raises(FitVisionError, match=r"^.* is a folder; give a file name such as .*batch\.png$"):
        plots.show_dataset(str(root), tmp_path, n=2)


def test_show_dataset_augmented_round_trips_to_images(tmp_path):
    pytest.importorskip("fitvision.data.augment")
    pytest.importorskip("fitvision.data.decode")
    root = tmp_path / "flat"
    for split in ("train", "valid"):
        (root / split / "grey").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (100, 150, 200)).save(root / split / "grey" / f"{i}.png")
    out = plots.show_dataset(str(root), tmp_path / "aug.png", aug="crop_flip", n=2)
    # A flat image stays flat under crop/flip with reflect padding; denormalizing must give it back.
    px = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3).astype(int)
    assert int((np.abs(px - [100, 150, 200]).max(1) <= 2).sum()) > 2 * 100 * 100


def test_take_rows_keeps_the_requested_order():
    a = np.arange(20).reshape(10, 2)
    assert np.array_equal(plots.take_rows(a, np.array([7, 2, 9, 0])), a[[7, 2, 9, 0]])


def test_report_of_an_unfinished_run(tmp_path):
    """A crashed run has history, batches and config only: curves, a note, no failure."""
    run = make_fake_run(tmp_path / "run")
    for name in ("preds.npz", "summary.json", "model.json"):
        (run / name).unlink()
    page = report_html.render_run_report(run).read_text()
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["accuracy.png", "loss.png", "lr.png"]
    assert "<h1>resnet9 on cifar10</h1>" in page and "No summary.json: the run did not finish." in page
    assert page.count("No predictions saved (preds.npz)") == 1 and "Mistakes grid not drawn yet" not in page


def test_blank_momentum_cells_do_not_break_the_report(tmp_path):
    run = make_fake_run(tmp_path / "run")
    lines = (run / "batches.csv").read_text().splitlines()
    rows = [lines[0]] + [",".join(c if i != 3 else "" for i, c in enumerate(l.split(","))) for l in lines[1:]]
    (run / "batches.csv").write_text("\n".join(rows) + "\n")
    assert np.isnan(report_html.read_csv(run / "batches.csv")[0]["mom"])
    assert plots.plot_lr([0.1, 0.2], tmp_path / "lr.png", [float("nan")] * 2).is_file()


def test_report_and_atomic_writes_never_follow_a_planted_symlink(tmp_path):
    """An untrusted run folder may hold a symlink at the old fixed temporary names: writing the
    report (or any file through files.atomic_path) must not write through it."""
    from fitvision.files import atomic_write_text

    run = make_fake_run(tmp_path / "run", data=str(tmp_path / "no-such-data"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".report.html.tmp", ".model.pt.tmp", ".summary.json.tmp"):
        (run / name).symlink_to(victim)
    report_html.write_report(run)
    atomic_write_text(run / "summary.json", "{}\n")
    assert victim.read_text() == "precious"
    assert (run / "report.html").is_file() and not (run / "report.html").is_symlink()
    assert sorted(p.name for p in run.glob(".*.tmp")) == [".model.pt.tmp", ".report.html.tmp", ".summary.json.tmp"]
