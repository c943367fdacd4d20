"""Catalog resolution and the download path, end to end against a local HTTP server."""

import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitvision.data.dataset import load_dataset
from fitvision.data.sources import CATALOG, DatasetSpec, catalog_status, find_local, resolve
from fitvision.errors import FitVisionError

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- tiny archives
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def cifar_tarball(n_per_batch=4):
    """An official-format CIFAR-10 python tarball; label names deliberately unsorted."""
    names = [b"zebra", b"ant", b"moth"]
    batches = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            y = RNG.integers(0, 3, n_per_batch).tolist()
            batches[b] = (x, y)
            # protocol 2, like the official files: numpy arrays via _reconstruct and _codecs.encode
            _add(tf, f"cifar-10-batches-py/{b}", pickle.dumps({b"data": x, b"labels": y, b"batch_label": b.encode()},
                                                             protocol=2))
        _add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": names}, protocol=2))
    return buf.getvalue(), batches


def class_folder_images():
    """{relative name: uint8 image}, split layout with a wrapping folder, 40x30 images."""
    return {f"tiny/{split}/{cls}/{i}.png": RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            for split, n in (("train", 3), ("valid", 2)) for cls in ("cat", "dog") for i in range(n)}


def class_folder_tgz(images) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, arr in images.items():
            _add(tf, name, _png(arr))
    return buf.getvalue()


def class_folder_tar(images) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:  # uncompressed .tar
        for name, arr in images.items():
            _add(tf, name, _png(arr))
    return buf.getvalue()


def class_folder_zip(images) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in images.items():
            zf.writestr(name.replace("/valid/", "/val/"), _png(arr))
    return buf.getvalue()


# --------------------------------------------------------------------------- local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        data = self.files.get(self.path.lstrip("/").removeprefix("drop/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path.startswith("/drop/"):  # the connection breaks halfway through the body
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield _Handler.files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("FITVISION_DATA_DIR", str(root))
    return root


def _spec(url, archive, payload, checksum=None, name="tiny"):
    digest = checksum or "sha256:" + hashlib.sha256(payload).hexdigest()
    return DatasetSpec(name, "a tiny test set", url, archive, digest, "tinyds", "tiny-batches-py")


def _listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# --------------------------------------------------------------------------- downloads
def test_download_cifar_python_tarball(server, data):
    files, base = server
    payload, batches = cifar_tarball()
    files["cifar-10-python.tar.gz"] = payload
    spec = _spec(f"{base}/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", payload)
    ds = load_dataset(spec)
    assert _listing(data) == ["cifar-10-python.tar.gz"]
    assert ds.classes == ["ant", "moth", "zebra"]
    x, y = batches["data_batch_1"]
    np.testing.assert_array_equal(ds.train_x[:4], x.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    remap = {0: 2, 1: 0, 2: 1}  # zebra, ant, moth -> sorted indices
    assert ds.train_y[:4].tolist() == [remap[v] for v in y]
    assert ds.train_x.shape == (20, 32, 32, 3) and ds.valid_x.shape == (4, 32, 32, 3)
    assert ds.image_size == [32, 32]


@pytest.mark.parametrize("fmt", ["tgz", "tar", "zip"])
def test_download_class_folder_archives(server, data, fmt):
    files, base = server
    images = class_folder_images()
    payload = {"tgz": class_folder_tgz, "tar": class_folder_tar, "zip": class_folder_zip}[fmt](images)
    files[f"tiny.{fmt}"] = payload
    ds = load_dataset(_spec(f"{base}/tiny.{fmt}", f"tiny.{fmt}", payload), storage_size=160)
    assert ds.classes == ["cat", "dog"]
    assert ds.image_size == [30, 30]  # never upscaled: the images' own shorter side
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.valid_y.tolist() == [0, 0, 1, 1]
    # PNG is lossless and 40x30 -> 30x30 is a pure centre crop (no resampling)
    np.testing.assert_array_equal(ds.train_x[4], images["tiny/train/dog/1.png"][:, 5:35])
    np.testing.assert_array_equal(ds.valid_x[0], images["tiny/valid/cat/0.png"][:, 5:35])


def test_the_official_cifar100_layout_loads_with_its_100_fine_labels(tmp_path):
    """cifar-100-python/{meta,train,test}: the fine labels and their names, the coarse ones ignored;
    classes sorted by name (as every layout), each image keeping its own class."""
    names = [f"class{(i * 37) % 100:02d}".encode() for i in range(100)]  # stored unsorted
    x = {b: RNG.integers(0, 256, (n, 3072), dtype=np.uint8) for b, n in (("train", 200), ("test", 100))}
    y = {"train": [i % 100 for i in range(200)], "test": [(7 * i) % 100 for i in range(100)]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for b in ("train", "test"):
            _add(tf, f"cifar-100-python/{b}", pickle.dumps({b"data": x[b], b"fine_labels": y[b],
                                                            b"coarse_labels": [0] * len(y[b])}, protocol=2))
        _add(tf, "cifar-100-python/meta", pickle.dumps({b"fine_label_names": names,
                                                        b"coarse_label_names": [b"all"]}, protocol=2))
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    ds = load_dataset(archive)
    assert ds.classes == sorted(n.decode() for n in names) and len(ds.classes) == 100
    for split, images, labels in (("train", ds.train_x, ds.train_y), ("test", ds.valid_x, ds.valid_y)):
        assert images.shape == (len(y[split]), 32, 32, 3)
        np.testing.assert_array_equal(images, x[split].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        assert [ds.classes[c] for c in labels] == [names[c].decode() for c in y[split]]


def test_extracted_cifar_folder_and_streamed_archive_agree(tmp_path, monkeypatch):
    from fitvision.data import readers
    from fitvision.data.extract import safe_extract

    payload, _ = cifar_tarball()
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(payload)
    from_archive = load_dataset(archive)
    folder = safe_extract(archive, tmp_path / "x") / "cifar-10-batches-py"
    from_folder = load_dataset(folder)
    monkeypatch.setattr(readers, "PRELOAD_LIMIT", 0)  # the two-pass path used for archives > 2 GiB
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache2"))
    streamed = load_dataset(archive)
    for ds in (from_folder, streamed):
        assert ds.classes == from_archive.classes
        np.testing.assert_array_equal(ds.train_x, from_archive.train_x)
        np.testing.assert_array_equal(ds.valid_y, from_archive.valid_y)


def test_two_pass_reading_of_a_class_folder_archive(tmp_path, monkeypatch):
    from fitvision.data import readers

    images = class_folder_images()
    archive = tmp_path / "tiny.tgz"
    archive.write_bytes(class_folder_tgz(images))
    monkeypatch.setattr(readers, "PRELOAD_LIMIT", 0)
    ds = load_dataset(archive)
    np.testing.assert_array_equal(ds.valid_x[3], images["tiny/valid/dog/1.png"][:, 5:35])


def test_checksum_mismatch_leaves_nothing(server, data):
    files, base = server
    files["tiny.tgz"] = class_folder_tgz(class_folder_images())
    spec = _spec(f"{base}/tiny.tgz", "tiny.tgz", b"", checksum="sha256:" + "0" * 64)
    with pytest.raises(FitVisionError, match=r"^checksum mismatch for http://127.0.0.1:\d+/tiny.tgz: expected "
                                             r"sha256:0{64}, got sha256:[0-9a-f]{64}; the download was discarded"):
        load_dataset(spec)
    assert _listing(data) == []  # no archive, no temporary part file


def test_dropped_connection_leaves_no_partial_file(server, data):
    files, base = server
    payload = class_folder_tgz(class_folder_images())
    files["tiny.tgz"] = payload
    broken = _spec(f"{base}/drop/tiny.tgz", "tiny.tgz", payload)
    with pytest.raises(FitVisionError, match=r"^tiny not found locally \(looked in .*\) and the download failed"):
        load_dataset(broken)
    assert _listing(data) == []
    ds = load_dataset(_spec(f"{base}/tiny.tgz", "tiny.tgz", payload))  # a later run starts over
    assert len(ds.train_y) == 6


def test_http_error_is_reported(server, data):
    _, base = server
    with pytest.raises(FitVisionError, match=rf"and the download failed \(HTTP 404 from {base}/gone.tgz\); "):
        resolve(_spec(f"{base}/gone.tgz", "gone.tgz", b""))
    assert _listing(data) == []


def test_offline_message_says_where_and_how(data):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _spec(f"http://127.0.0.1:{port}/tiny.tgz", "tiny.tgz", b"")
    with pytest.raises(FitVisionError) as err:
        resolve(spec)
    msg = str(err.value)
    assert msg.startswith(f"tiny not found locally (looked in {data} for tinyds*/, tinyds*.tgz, tinyds*.tar.gz, "
                          "tiny.tgz, tiny-batches-py/) and the download failed (cannot fetch "
                          f"http://127.0.0.1:{port}/tiny.tgz: ")
    assert msg.endswith(f"download http://127.0.0.1:{port}/tiny.tgz yourself and put it there, set "
                        "FITVISION_DATA_DIR to the folder holding a copy, or pass --data PATH")
    assert "\n" not in msg
    assert _listing(data) == []


# --------------------------------------------------------------------------- resolution
def test_resolution_order_and_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("FITVISION_DATA_DIR", str(tmp_path))
    spec = CATALOG["cifar10"]
    (tmp_path / "cifar100.tgz").write_bytes(b"")  # must not count as cifar10
    assert find_local(spec, tmp_path) is None
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert find_local(spec, tmp_path).name == "cifar-10-batches-py"
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    assert find_local(spec, tmp_path).name == "cifar-10-python.tar.gz"
    (tmp_path / "cifar10-jpeg.tgz").write_bytes(b"")
    assert find_local(spec, tmp_path).name == "cifar10-jpeg.tgz"
    (tmp_path / "cifar10").mkdir()
    assert resolve("cifar10").name == "cifar10"
    status = {r["name"]: r["location"] for r in catalog_status()}
    assert status == {"cifar10": str(tmp_path / "cifar10"), "cifar100": str(tmp_path / "cifar100.tgz"),
                      "imagenette": None, "imagewoof": None}
    with pytest.raises(FitVisionError, match="^unknown dataset 'nope': not a catalog name"):
        resolve("nope")


def test_catalog_pins_official_sources():
    assert CATALOG["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CATALOG["cifar10"].checksum == "md5:c58f30108f718f92721af3b95e74349a"
    assert CATALOG["imagenette"].url.endswith("/imagenette2-160.tgz")
    assert CATALOG["imagewoof"].url.endswith("/imagewoof2-160.tgz")


def test_read_only_data_dir_is_not_written(tmp_path, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir()
    (root / "tinyds.tgz").write_bytes(class_folder_tgz(class_folder_images()))
    os.chmod(root, 0o555)
    monkeypatch.setenv("FITVISION_DATA_DIR", str(root))
    try:
        ds = load_dataset(_spec("http://127.0.0.1:9/none.tgz", "none.tgz", b""))
        assert len(ds.valid_y) == 4 and _listing(root) == ["tinyds.tgz"]
    finally:
        os.chmod(root, 0o755)


# --------------------------------------------------------------------------- hostile pickle
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            _add(tf, f"cifar-10-batches-py/{b}", pickle.dumps({b"data": _Evil(marker), b"labels": [0]}))
        _add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [b"a"]}))
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(FitVisionError, match=r"^refusing to load .*cifar-10-batches-py/data_batch_1: not a plain "
                                             r"CIFAR pickle \(global 'posix.system' is not allowed\)$"):
        load_dataset(archive)
    assert not marker.exists()


def test_malformed_cifar_pickle_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            _add(tf, f"cifar-10-batches-py/{b}", pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                               b"labels": [0, 1]}))
        _add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [b"a", b"b"]}))
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(FitVisionError, match=r"^.*cifar-10-python.tar.gz: malformed CIFAR pickle \(expected "
                                             r"\(N, 3072\) pixels and N labels, got \(10, 100\) and \(10,\)\)$"):
        load_dataset(archive)
