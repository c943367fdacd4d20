import json

import numpy as np
import pytest
import torch
from torch import nn

from fitvision.errors import FitVisionError
from fitvision.export import export_model, read_onnx_metadata, read_torchscript_metadata

MEAN, STD = [0.49, 0.48, 0.45], [0.2, 0.19, 0.21]
CLASSES = ["airplane", "bird", "cat", "dog", "frog"]


def tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, len(CLASSES)))
    with torch.no_grad():  # trained-looking BN statistics and confident outputs: a mismatch would show
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[-1].weight.mul_(20)
    return model.eval()


META = {"model": "tiny", "model_kwargs": {"num_classes": len(CLASSES)}, "classes": CLASSES, "mean": MEAN,
        "std": STD, "input_size": [16, 16], "storage_size": 16}


def images(n=100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)


def reference_probs(model, x_uint8):
    """What fitvision predicts: [0, 1] floats, normalised with the run's stats, softmax of the logits."""
    x = x_uint8.float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


@pytest.mark.parametrize("input_dtype", ["float", "uint8"])
def test_onnx_matches_fitvision_on_100_images(tmp_path, input_dtype):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent: pip install 'fitvision[onnx]'")
    pytest.importorskip("onnx", reason="onnx absent: pip install 'fitvision[onnx]'")
    model = tiny_model()
    path = export_model(model, META, "onnx", tmp_path / "m.onnx", input_dtype=input_dtype)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(100)
    feed = x.numpy() if input_dtype == "uint8" else (x.float() / 255).numpy()
    probs = session.run(None, {"image": feed})[0]
    ref = reference_probs(model, x)
    assert probs.shape == (100, len(CLASSES))
    assert np.abs(probs - ref).max() < 1e-4
    assert ref.max(axis=1).mean() > 0.6  # confident predictions, not a uniform output matching by accident
    # Normalization is inside the graph: feeding raw [0, 1] images to the bare network disagrees.
    with torch.no_grad():
        bare = torch.softmax(model(x.float() / 255), dim=1).numpy()
    assert np.abs(probs - bare).max() > 0.1
    # Dynamic batch: one image and a batch of 7 give the same rows.
    assert np.allclose(session.run(None, {"image": feed[:1]})[0], probs[:1], atol=1e-6)
    assert np.allclose(session.run(None, {"image": feed[3:10]})[0], probs[3:10], atol=1e-6)
    meta = read_onnx_metadata(path)
    assert json.loads(meta["classes"]) == CLASSES
    assert json.loads(meta["mean"]) == MEAN and json.loads(meta["std"]) == STD
    assert json.loads(meta["input_size"]) == [16, 16]
    assert meta["input"].endswith("uint8 0..255" if input_dtype == "uint8" else "float32 0..1")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_takes_uint8_and_float(tmp_path):
    model = tiny_model()
    path = export_model(model, META, "torchscript", tmp_path / "m.pt")
    loaded = torch.jit.load(str(path))
    x = images(10)
    ref = reference_probs(model, x)
    with torch.no_grad():
        assert np.abs(loaded(x).numpy() - ref).max() < 1e-5
        assert np.abs(loaded(x.float() / 255).numpy() - ref).max() < 1e-5
        assert loaded(x[:1]).shape == (1, len(CLASSES))
    meta = read_torchscript_metadata(path)
    assert json.loads(meta["classes"]) == CLASSES and meta["model"] == "tiny"
    assert meta["input"] == "RGB NCHW batch of shape (N, 3, 16, 16), uint8 0..255 or float32 0..1"


def test_export_leaves_the_callers_model_alone(tmp_path):
    model = tiny_model().train().to(memory_format=torch.channels_last)
    export_model(model, META, "onnx", tmp_path / "m.onnx")
    assert model.training and model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_format_and_dtype(tmp_path):
    with pytest.raises(FitVisionError) as e:
        export_model(tiny_model(), META, "tflite", tmp_path / "m")
    assert str(e.value) == "unknown export format 'tflite' (valid: onnx, torchscript)"
    with pytest.raises(FitVisionError) as e:
        export_model(tiny_model(), META, "onnx", tmp_path / "m", input_dtype="int8")
    assert str(e.value) == "unknown input dtype 'int8' (valid: float, uint8)"
    with pytest.raises(FitVisionError) as e:
        export_model(tiny_model(), META, "onnx", tmp_path / "m", exporter="jit")
    assert str(e.value) == "unknown ONNX exporter 'jit' (valid: auto, legacy, dynamo)"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "outdir").mkdir()
    with pytest.raises(FitVisionError) as e:
        export_model(tiny_model(), META, "torchscript", tmp_path / "outdir")
    assert str(e.value) == f"{tmp_path / 'outdir'} is a folder; give the file to write, e.g. {tmp_path / 'outdir' / 'model.pt'}"
    assert list(tmp_path.iterdir()) == [tmp_path / "outdir"] and not any((tmp_path / "outdir").iterdir())


def upsampling_pool_model():
    # Upsampling a 1x1 map with adaptive pooling (AlexNet's 6x6 pool at 32 px): the legacy
    # exporter has no ONNX op for it; the dynamo exporter decomposes it.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=16), nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(144, 5))


def test_op_legacy_onnx_cannot_express_is_a_clear_error(tmp_path):
    pytest.importorskip("onnx", reason="onnx absent: pip install 'fitvision[onnx]'")
    with pytest.raises(FitVisionError) as e:
        export_model(upsampling_pool_model(), META, "onnx", tmp_path / "m.onnx", exporter="legacy")
    assert str(e.value) == ("cannot export tiny to ONNX: Unsupported: ONNX export of operator adaptive_avg_pool2d, "
                            "output size that are not factor of input size; use --format torchscript, "
                            "or pip install onnxscript for torch's newer exporter")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter, input_dtype", [("auto", "float"), ("dynamo", "uint8")])
def test_dynamo_exporter_and_fallback(tmp_path, exporter, input_dtype):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent: pip install 'fitvision[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript absent: the dynamo exporter needs it")
    model = upsampling_pool_model().eval()
    path = export_model(model, META, "onnx", tmp_path / "m.onnx", input_dtype=input_dtype, exporter=exporter)
    session = ort.InferenceSession(str(path))
    x = images(7)
    feed = x.numpy() if input_dtype == "uint8" else (x.float() / 255).numpy()
    assert np.abs(session.run(None, {"image": feed})[0] - reference_probs(model, x)).max() < 1e-5
    assert np.allclose(session.run(None, {"image": feed[:2]})[0], session.run(None, {"image": feed})[0][:2], atol=1e-6)
    assert json.loads(read_onnx_metadata(path)["classes"]) == CLASSES


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory as train_run leaves it, for a cnn fitted in a few steps: 10 classes, 100
    validation image files. (Fitted here, not with train_run, and an MLP, to keep the test fast
    on a busy CPU; test_onnx_export_for_every_model covers the conv nets.)"""
    from fitvision.data.augment import channel_stats, normalize
    from fitvision.data.dataset import load_dataset
    from fitvision.models import create_model
    from fitvision.train.modelfile import save_model
    from synthetic_images import make_image_folder

    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(root / "data", [f"c{i}" for i in range(10)], 10, 10, size=32)
    ds = load_dataset(str(data))
    mean, std = (list(map(float, s)) for s in channel_stats(ds.train_x))
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = normalize(torch.from_numpy(np.array(ds.train_x)).permute(0, 3, 1, 2), mean, std)
    y = torch.from_numpy(np.array(ds.train_y))
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    meta = {"model": "mlp", "model_kwargs": {"num_classes": 10, "in_channels": 3, "width": 1.0},
            "classes": ds.classes, "mean": mean, "std": std, "input_size": [32, 32], "storage_size": 160}
    save_model(root / "run", model.eval(), meta)
    return root / "run", sorted((data / "valid").glob("*/*.png"))


def test_cli_onnx_export_agrees_with_predict_files_on_100_validation_images(trained_run, capsys):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent: pip install 'fitvision[onnx]'")
    pytest.importorskip("onnx", reason="onnx absent: pip install 'fitvision[onnx]'")
    from fitvision.cli import main
    from fitvision.data.decode import decode_image
    from fitvision.train.evaluate import predict_files

    run, files = trained_run
    assert len(files) == 100
    assert main(["export", str(run), "--format", "onnx", "--input-dtype", "uint8"]) == 0
    assert capsys.readouterr().out == f"wrote {run / 'model.onnx'}\n"
    meta = json.loads((run / "model.json").read_text())
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([decode_image(f, meta["storage_size"]) for f in files]).transpose(0, 3, 1, 2)
    probs = session.run(None, {"image": np.ascontiguousarray(x)})[0]

    ours = predict_files(run, files, topk=10)
    expected = np.zeros_like(probs)
    for row, result in enumerate(ours):
        for entry in result["top"]:
            expected[row, meta["classes"].index(entry["class"])] = entry["prob"]
    assert np.abs(probs - expected).max() < 1e-4
    assert probs.max(axis=1).mean() > 0.3  # fitted: far from uniform (0.1); c and c+3 share a colour
    assert json.loads(read_onnx_metadata(run / "model.onnx")["classes"]) == meta["classes"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_cli_torchscript_export(trained_run, tmp_path, capsys):
    from fitvision.cli import main

    run, _ = trained_run
    out = tmp_path / "m.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert json.loads(read_torchscript_metadata(out)["classes"]) == [f"c{i}" for i in range(10)]
    probs = torch.jit.load(str(out))(torch.rand(3, 3, 32, 32))
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))


@pytest.mark.parametrize("name", ["cnn", "convnet", "resnet9", "speednet", "xresnet"])
def test_onnx_export_for_every_model(tmp_path, name):
    """The registry's conv nets at 32 px, randomly initialised (alexnet's 6x6 adaptive pool cannot be
    expressed in ONNX at 32 px: test_op_onnx_cannot_express_is_a_clear_error)."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent: pip install 'fitvision[onnx]'")
    pytest.importorskip("onnx", reason="onnx absent: pip install 'fitvision[onnx]'")
    from fitvision.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=5, width=0.25).eval()
    meta = {**META, "model": name, "input_size": [32, 32]}
    path = export_model(model, meta, "onnx", tmp_path / "m.onnx")
    x = torch.rand(4, 3, 32, 32)
    probs = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = torch.softmax(model((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)), 1)
    assert np.abs(probs - ref.numpy()).max() < 1e-5
