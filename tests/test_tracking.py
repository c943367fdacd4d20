"""--tensorboard and --mlflow: what a run logs, read back with each tool's own reader."""

import csv
import json

import pytest

from fitvision.cli import main

from test_cli_errors import _fail, _split_folders


def _train(tmp_path, monkeypatch, *flags):
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    if not (tmp_path / "ds").exists():
        _split_folders(tmp_path / "ds")
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "ds"), "--recipe", "general", "--model", "cnn", "--width", "0.25",
            "--epochs", "2", "--bs", "4", "--no-progress", "--out", str(out), *flags]
    assert main(argv) == 0
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    with open(out / "batches.csv") as f:
        batches = list(csv.DictReader(f))
    return out, history, batches


def test_tensorboard_event_files_hold_the_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, history, batches = _train(tmp_path, monkeypatch, "--tensorboard")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    assert scalars("batch/loss") == [(int(b["step"]), pytest.approx(float(b["loss"]), rel=1e-6)) for b in batches]
    assert scalars("batch/lr") == [(int(b["step"]), pytest.approx(float(b["lr"]), rel=1e-6)) for b in batches]
    assert scalars("batch/momentum") == [(int(b["step"]), pytest.approx(float(b["mom"]), rel=1e-6)) for b in batches]
    for name in ("val_acc", "val_loss", "train_loss"):
        assert scalars(f"epoch/{name}") == [(int(r["epoch"]), pytest.approx(float(r[name]), rel=1e-6))
                                            for r in history]
    images = events.Tags()["images"]
    assert {"confusion_matrix", "sample_predictions"} <= set(images)
    confusion = events.Images("confusion_matrix")[0]
    assert confusion.width > 100 and confusion.encoded_image_string[:4] == b"\x89PNG"
    hparams = EventAccumulator(str(out / "tensorboard" / "hparams"))
    hparams.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = hparams.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "cnn" and start.hparams["epochs"].number_value == 2
    summary = json.loads((out / "summary.json").read_text())
    assert [e.value for e in hparams.Scalars("final/val_acc")] == [pytest.approx(summary["val_acc"])]


def test_mlflow_run_holds_params_metrics_and_the_run_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the default artifact store (./mlruns) of a sqlite tracking store
    out, history, _ = _train(tmp_path, monkeypatch, "--mlflow", uri)
    assert "mlflow" not in capsys.readouterr().err.lower()  # its table-creation chatter stays quiet
    record = json.loads((out / "mlflow.json").read_text())
    assert record["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    config = json.loads((out / "config.json").read_text())
    assert run.data.params == {k: str(v) for k, v in config.items()}
    for name in ("val_acc", "val_loss", "train_loss"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(logged) == [(int(r["epoch"]), pytest.approx(float(r[name]))) for r in history]
    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["final_val_acc"] == pytest.approx(summary["val_acc"])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.json", "model.safetensors", "history.csv", "report.html", "plots"} <= top
    assert not any(p.startswith("checkpoint") for p in top)
    assert "plots/confusion.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


def test_a_missing_extra_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from fitvision.train import tracking

    monkeypatch.setattr(tracking, "_importable", lambda name: False)
    _split_folders(tmp_path / "ds")
    base = ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r")]
    assert _fail(capsys, [*base, "--tensorboard"], code=2) == (
        "error: --tensorboard needs TensorBoard: pip install tensorboard (or 'fitvision[tensorboard]')")
    assert _fail(capsys, [*base, "--mlflow"], code=2) == (
        "error: --mlflow needs MLflow: pip install mlflow-skinny (or 'fitvision[mlflow]')")
    assert not (tmp_path / "r").exists()
