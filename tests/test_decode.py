"""Decode and cache: the bad-image matrix, colour modes, EXIF, storage size, cache integrity."""

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitvision.data import decode
from fitvision.data.dataset import load_dataset
from fitvision.data.decode import decode_image
from fitvision.data.readers import DataWarning
from fitvision.errors import FitVisionError

RNG = np.random.default_rng(1)


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb(h=48, w=48) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def _exif_rotated_jpeg(path: Path) -> Path:
    """40x20 stored, left half red, right half blue, EXIF orientation 6 (display rotated 90 cw)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(path, Image.fromarray(arr), format="JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture
def matrix(tmp_path):
    """An unsplit class-folder data set holding every kind of awkward file."""
    root = tmp_path / "matrix"
    good = root / "good"
    for i in range(3):
        _save(good / f"rgb{i}.png", _rgb())
    odd = root / "odd"
    gray = _save(odd / "gray.png", Image.fromarray(RNG.integers(0, 256, (48, 48), dtype=np.uint8)))
    _save(odd / "palette.png", _rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:24, :, 3] = 255  # top half opaque red, bottom half transparent
    _save(odd / "rgba.png", Image.fromarray(rgba))
    la = np.full((48, 48, 2), 90, np.uint8)
    la[..., 1] = 255  # opaque grey
    _save(odd / "la.png", Image.fromarray(la))
    _save(odd / "cmyk.jpg", _rgb().convert("CMYK"), format="JPEG", quality=95)
    sixteen = np.full((48, 48), 65535, np.uint16)
    sixteen[24:] = 32896  # 128 * 257
    _save(odd / "gray16.png", Image.fromarray(sixteen))
    _exif_rotated_jpeg(odd / "rotated.jpg")
    bad = root / "bad"
    bad.mkdir()
    full = io.BytesIO()
    _rgb(64, 64).save(full, format="JPEG")
    (bad / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image\n")
    (bad / "huge.png").write_bytes(_png_header_only(100_000, 100_000))  # above 2x the limit: an error
    (bad / "big.png").write_bytes(_png_header_only(10_000, 10_000))  # above 1x: only a warning in Pillow
    return root, gray


def test_bad_image_matrix(matrix):
    root, _ = matrix
    with pytest.warns(DataWarning) as record:
        ds = load_dataset(root, storage_size=48)
    bad_msgs = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert len(bad_msgs) == 1  # one warning at the end, not one per file
    assert bad_msgs[0].startswith(f"5 unreadable image(s) in {root} skipped: bad/big.png (")
    assert bad_msgs[0].endswith(" ...")
    assert ds.classes == ["bad", "good", "odd"]  # classes come from the folders, readable or not
    assert len(ds.train_y) == 3 + 7 and len(ds.valid_y) == 0
    assert ds.train_x.dtype == np.uint8 and ds.train_x.shape == (10, 48, 48, 3)
    with pytest.raises(FitVisionError, match=r"^5 unreadable image\(s\) in .* found: bad/big.png .*\(strict mode; "
                                             r"remove or fix them\)$"):
        load_dataset(root, storage_size=48, strict=True)


def test_bad_images_refused_one_by_one(matrix):
    root, _ = matrix
    for name, why in [("truncated.jpg", "truncated"), ("zero.jpg", "cannot identify"),
                      ("text.jpg", "cannot identify"), ("huge.png", "decompression bomb"),
                      ("big.png", "decompression bomb")]:
        with pytest.raises(FitVisionError, match=f"^cannot read image .*{name}: .*{why}"):
            decode_image(root / "bad" / name)


def test_colour_modes_become_rgb(matrix):
    root, gray_path = matrix
    odd = root / "odd"
    gray = decode_image(gray_path)
    assert gray.shape == (48, 48, 3) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, np.repeat(np.asarray(Image.open(gray_path))[..., None], 3, axis=2))
    np.testing.assert_array_equal(decode_image(odd / "palette.png"),
                                  np.asarray(Image.open(odd / "palette.png").convert("RGB")))
    rgba = decode_image(odd / "rgba.png")
    assert rgba[0, 0].tolist() == [200, 0, 0] and rgba[-1, -1].tolist() == [255, 255, 255]  # alpha over white
    assert decode_image(odd / "la.png")[0, 0].tolist() == [90, 90, 90]
    cmyk = decode_image(odd / "cmyk.jpg")
    assert cmyk.shape == (48, 48, 3)
    assert np.abs(cmyk.astype(int) - np.asarray(Image.open(odd / "cmyk.jpg").convert("RGB"), int)).max() == 0
    g16 = decode_image(odd / "gray16.png")
    assert g16[0, 0].tolist() == [255, 255, 255] and g16[-1, -1].tolist() == [128, 128, 128]  # scaled, not clipped


def test_float_images_in_0_1_are_scaled_and_decode_image_is_writable(tmp_path):
    a = np.zeros((8, 8), np.float32)
    a[:4] = 1.0
    a[4:] = 0.5
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    img = decode_image(tmp_path / "f.tif")
    # before: 0..1 floats became pixel values 0 and 1 (near-black)
    assert img[0, 0].tolist() == [255, 255, 255] and img[-1, -1].tolist() == [128, 128, 128]
    img[0, 0] = 7  # before: "assignment destination is read-only"
    assert img[0, 0].tolist() == [7, 7, 7]


def test_exif_orientation_applied(tmp_path):
    img = decode_image(_exif_rotated_jpeg(tmp_path / "r.jpg"), storage_size=160)
    assert img.shape == (20, 20, 3)  # shorter side 20, never upscaled
    top, bottom = img[:8].reshape(-1, 3).mean(0), img[-8:].reshape(-1, 3).mean(0)
    # displayed upright the image is 20 wide and 40 tall: red on top, blue below
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_storage_size_resize_and_crop(tmp_path):
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:, 50:250] = 255  # a white centre square, black bars left and right
    path = _save(tmp_path / "wide.png", Image.fromarray(arr))
    out = decode_image(path, storage_size=100)
    assert out.shape == (100, 100, 3)
    assert out.min() == 255  # the centre crop removed the bars exactly
    small = _save(tmp_path / "small.png", _rgb(32, 32))
    np.testing.assert_array_equal(decode_image(small), np.asarray(Image.open(small)))  # 32x32 stays
    with pytest.raises(FitVisionError, match="^image not found: "):
        decode_image(tmp_path / "missing.png")


def test_squish_keeps_the_whole_picture(tmp_path):
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :100, 0] = 255  # red left quarter, blue right quarter: both lost to a centre crop
    arr[:, 300:, 2] = 255
    path = _save(tmp_path / "wide.png", Image.fromarray(arr))
    cropped = decode_image(path, storage_size=40)
    assert cropped[..., 0].max() == 0 and cropped[..., 2].max() == 0
    out = decode_image(path, storage_size=40, resize_method="squish")
    assert out.shape == (40, 40, 3)
    assert out[:, :9, 0].min() > 250 and out[:, 31:, 2].min() > 250  # the quarters are 10 px wide now
    assert out[:, 11:29].max() < 5  # and the black middle is still black
    with pytest.raises(FitVisionError, match=r"^unknown resize_method 'pad' \(valid: crop, squish\)$"):
        decode_image(path, resize_method="pad")


def test_resize_method_has_its_own_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    wide = np.zeros((30, 60, 3), np.uint8)
    wide[:, :15] = 255  # white left quarter
    for split in ("train", "test"):
        for c in ("a", "b"):
            _save(root / split / c / "0.png", Image.fromarray(wide))
    crop = load_dataset(root, storage_size=30)
    squish = load_dataset(root, storage_size=30, resize_method="squish")
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and sum("-s30-squish-" in n for n in names) == 1
    assert crop.train_x.max() == 0 and squish.train_x[:, :, :6].min() > 250
    np.testing.assert_array_equal(squish.valid_x[0], decode_image(root / "test" / "a" / "0.png", storage_size=30,
                                                                  resize_method="squish"))
    again = load_dataset(root, storage_size=30)  # the default is found again, not rebuilt
    assert isinstance(again.train_x, np.memmap) and again.train_x.max() == 0


def test_resize_filters_nearest_keeps_pixels_and_has_its_own_cache(tmp_path, monkeypatch):
    """Seed 004's comparison: nearest takes every output pixel from one input pixel (textures
    kept, aliasing too), bicubic blends them; each filter gets its own cache entry and run setting."""
    board = np.kron(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))  # 64 px
    path = _save(tmp_path / "board.png", Image.fromarray(board))
    colours = {tuple(c) for c in board.reshape(-1, 3)}
    nearest = decode_image(path, storage_size=16, resize_filter="nearest")
    assert all(tuple(c) in colours for c in nearest.reshape(-1, 3))
    np.testing.assert_array_equal(nearest, board[2::4, 2::4])  # the centre pixel of each 4x4 cell
    cubic = decode_image(path, storage_size=16)  # the default, bicubic (after a box reduction): blends
    assert sum(tuple(c) not in colours for c in cubic.reshape(-1, 3)) > 50
    two_step = Image.fromarray(board).resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=3.0)
    np.testing.assert_array_equal(decode_image(path, storage_size=16, resize_filter="bicubic_nearest"),
                                  np.asarray(two_step.resize((16, 16), Image.Resampling.NEAREST)))
    with pytest.raises(FitVisionError, match=r"^unknown resize_filter 'cubic' \(did you mean 'bicubic'\?"):
        decode_image(path, resize_filter="cubic")
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for c in ("a", "b"):
            _save(root / split / c / "0.png", Image.fromarray(board))
    near = load_dataset(root, storage_size=16, resize_filter="nearest")
    load_dataset(root, storage_size=16)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and sum("-s16-nearest-" in n for n in names) == 1
    np.testing.assert_array_equal(near.train_x[0], nearest)


def _split_folder(root: Path, n_train=4, n_valid=2, classes=("a", "b"), size=40) -> Path:
    for split, n in (("train", n_train), ("test", n_valid)):
        for c in classes:
            for i in range(n):
                _save(root / split / c / f"{i}.png", _rgb(size, size))
    return root


def test_cache_is_memory_mapped_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    root = _split_folder(tmp_path / "ds")
    first = load_dataset(root, storage_size=32)
    assert first.image_size == [32, 32] and len(first.valid_y) == 4
    again = load_dataset(root, storage_size=32)
    assert isinstance(again.train_x, np.memmap)
    np.testing.assert_array_equal(again.train_x, first.train_x)
    np.testing.assert_array_equal(again.valid_y, [0, 0, 1, 1])
    assert len(list((tmp_path / "cache").iterdir())) == 1
    load_dataset(root, storage_size=16)  # another size: another cache entry
    assert len(list((tmp_path / "cache").iterdir())) == 2
    _save(root / "train" / "a" / "new.png", _rgb(40, 40))  # the source changed: another key
    assert len(load_dataset(root, storage_size=32).train_y) == 9
    assert len(list((tmp_path / "cache").iterdir())) == 3
    # a dataset decoded at its own side matches decode_image exactly
    np.testing.assert_array_equal(load_dataset(root, storage_size=40).train_x[0],
                                  decode_image(root / "train" / "a" / "0.png", storage_size=40))


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "missing"])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "cache"))
    root = _split_folder(tmp_path / "ds")
    first = np.array(load_dataset(root).train_x)
    (entry,) = (tmp_path / "cache").iterdir()
    target = entry / "train_x.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "garbage_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        target.unlink()
    again = load_dataset(root)
    np.testing.assert_array_equal(again.train_x, first)
    assert target.stat().st_size == 128 + first.nbytes  # rebuilt in full (npy header + data)


def test_valid_pct_on_unsplit_folders(tmp_path):
    root = tmp_path / "flat"
    for c in ("x", "y"):
        for i in range(10):
            _save(root / c / f"{i}.png", _rgb(16, 16))
    ds = load_dataset(root, valid_pct=0.25, seed=7)
    assert len(ds.train_y) == 15 and len(ds.valid_y) == 5
    again = load_dataset(root, valid_pct=0.25, seed=7)
    np.testing.assert_array_equal(ds.valid_x, again.valid_x)
    other = load_dataset(root, valid_pct=0.25, seed=8)
    assert not np.array_equal(ds.valid_x, other.valid_x)
    whole = load_dataset(root)
    assert len(whole.train_y) == 20 and len(whole.valid_y) == 0
    with pytest.raises(FitVisionError, match=r"^valid_pct must be in \[0, 1\), got -0.1$"):
        load_dataset(root, valid_pct=-0.1)
    combined = np.concatenate([ds.train_x, ds.valid_x]).reshape(20, -1)
    assert sorted(map(bytes, combined)) == sorted(map(bytes, whole.train_x.reshape(20, -1)))


def test_images_in_sub_folders_belong_to_their_top_class_folder(tmp_path):
    # one rule in both layouts (issue 31): the class is the top class folder, as in ImageFolder
    root = tmp_path / "nested"
    for cls in ("cat", "dog"):
        for i in range(2):
            _save(root / cls / "sub" / f"{i}.png", _rgb(8, 8))
    ds = load_dataset(root)
    assert (ds.classes, ds.train_y.tolist(), ds.nested) == (["cat", "dog"], [0, 0, 1, 1], 4)
    nested = tmp_path / "breeds"  # deeper folders are not classes of their own
    for path in ("cats/tabby", "cats/siamese", "dogs/pug"):
        _save(nested / path / "0.png", _rgb(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cats/ and dogs/ hold images below them: not empty classes
        assert load_dataset(nested).classes == ["cats", "dogs"]


def test_archive_made_from_inside_its_folder_has_no_empty_class_dot(tmp_path):
    import tarfile

    for cls in ("a", "b"):
        for i in range(2):
            _save(tmp_path / "src" / cls / f"{i}.png", _rgb(8, 8))
    with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:  # as `tar czf x.tar.gz .`: members "./a/0.png"
        tar.add(tmp_path / "src", arcname=".")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: "1 class folder(s) ... hold no images ...: ."
        assert load_dataset(tmp_path / "x.tar.gz").classes == ["a", "b"]


def test_no_decodable_training_image_is_one_readable_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "x.jpg").write_bytes(b"not a picture")
    with pytest.raises(FitVisionError, match=r"^none of the 2 training images in .*bad could be decoded "
                                             r"\(first: a/x\.jpg: UnidentifiedImageError: "
                                             r"cannot identify image file '.*x\.jpg'\)$"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset(tmp_path / "bad")


def test_empty_class_warns_and_no_images_errors(tmp_path):
    root = _split_folder(tmp_path / "ds", n_train=2, n_valid=1)
    (root / "train" / "empty").mkdir()
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    with pytest.warns(DataWarning, match=r"^2 class folder\(s\) in .* hold no images and are left out: test/b, "
                                         r"train/empty$"):
        ds = load_dataset(root)
    assert ds.classes == ["a", "b"]
    nothing = tmp_path / "nothing"
    (nothing / "train" / "cat").mkdir(parents=True)
    (nothing / "train" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(FitVisionError, match=r"^no images found in .*nothing; expected class folders: "
                                             r"train/<class>/<image> plus valid\|val\|test/<class>/<image>, "
                                             r"or <class>/<image> \(unsplit\)$"):
        load_dataset(nothing)


def test_split_root_found_below_wrappers_and_loose_files(tmp_path):
    root = _split_folder(tmp_path / "ds" / "outer" / "inner", n_train=2, n_valid=1)
    _save(tmp_path / "ds" / "outer" / "preview.png", _rgb(40, 40))  # a loose image beside the data
    ds = load_dataset(tmp_path / "ds")
    assert ds.classes == ["a", "b"] and len(ds.train_y) == 4 and len(ds.valid_y) == 2
    assert root.exists()


def test_unseen_valid_label_is_an_error(tmp_path):
    root = _split_folder(tmp_path / "ds", n_train=1, n_valid=1)
    _save(root / "test" / "zebra" / "0.png", _rgb(40, 40))
    with pytest.raises(FitVisionError, match=r"^.*ds: class folder\(s\) zebra have validation images but no "
                                             r"training images; add it to train/ or remove it from the validation "
                                             r"folder$"):
        load_dataset(root)


def test_parallel_decode_matches_sequential(tmp_path, monkeypatch):
    root = _split_folder(tmp_path / "ds", n_train=6, n_valid=3, size=50)
    sequential = load_dataset(root, storage_size=24)
    monkeypatch.setattr(decode, "MIN_PARALLEL", 0)
    monkeypatch.setattr(decode, "CHUNK", 4)
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "other-cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        warnings.simplefilter("error", ResourceWarning)
        parallel = load_dataset(root, storage_size=24)
    np.testing.assert_array_equal(parallel.train_x, sequential.train_x)
    np.testing.assert_array_equal(parallel.valid_x, sequential.valid_x)
    np.testing.assert_array_equal(parallel.train_y, sequential.train_y)


def test_decode_image_size_gives_every_image_the_same_shape(tmp_path):
    # the data-block example in docs/data.md stacks a folder of mixed sizes
    paths = [_save(tmp_path / f"{i}.png", _rgb(h, w)) for i, (h, w) in enumerate([(40, 41), (43, 42), (300, 200)])]
    assert {decode_image(p).shape for p in paths} == {(40, 40, 3), (42, 42, 3), (160, 160, 3)}
    assert np.stack([decode_image(p, size=128) for p in paths]).shape == (3, 128, 128, 3)
    with pytest.raises(FitVisionError, match=r"^size must be at least 1 pixel, got 0$"):
        decode_image(paths[0], size=0)


def test_symlinked_class_folder_is_read(tmp_path):
    for i in range(2):
        _save(tmp_path / "elsewhere" / "dogs" / f"{i}.png", _rgb(8, 8))
        _save(tmp_path / "data" / "cat" / f"{i}.png", _rgb(8, 8))
    (tmp_path / "data" / "dog").symlink_to(tmp_path / "elsewhere" / "dogs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: "1 class folder(s) ... hold no images ...: dog"
        ds = load_dataset(tmp_path / "data")
    assert ds.classes == ["cat", "dog"] and list(ds.train_y) == [0, 0, 1, 1]
    _save(tmp_path / "elsewhere" / "dogs" / "2.png", _rgb(8, 8))  # the linked folder is part of the cache key
    assert len(load_dataset(tmp_path / "data").train_y) == 5


def test_dangling_symlink_is_skipped_like_an_unreadable_image(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            _save(tmp_path / "data" / cls / f"{i}.png", _rgb(8, 8))
    (tmp_path / "data" / "a" / "gone.png").symlink_to(tmp_path / "moved-away.png")
    # before the fix: FileNotFoundError out of the cache key, a bug's one-line error
    with pytest.warns(DataWarning, match=r"^1 unreadable image\(s\) in .*data skipped: a/gone\.png "
                                         r"\(FileNotFoundError: .*gone\.png'\)$"):
        ds = load_dataset(tmp_path / "data")
    assert len(ds.train_y) == 4


def test_decode_workers_end_on_sigterm_whatever_handler_the_parent_has():
    """Pool.terminate() ends its workers with SIGTERM, then waits for them. Forked workers inherit
    the parent's Python SIGTERM handler, and fitvision's (train/preempt.py) is installed before the
    data loads. With a handler that only records the signal (as that one does during a fit) and
    the workers mid-task, terminate() never returned before the fix: each worker finished its task
    and then waited on the task queue's lock, which terminate() holds. The workers now restore
    the default action and die at once."""
    import contextlib
    import os
    import signal
    import threading
    import time

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        pool = decode._pool(2)
        assert pool.map(abs, [-1, -2]) == [1, 2]  # both workers up
        busy = [pool.apply_async(time.sleep, (20,)) for _ in range(2)]  # one task each, mid-task at the end
        time.sleep(1)
        pids = [p.pid for p in pool._pool]
        ender = threading.Thread(target=pool.terminate, daemon=True)
        ender.start()
        ender.join(30)
        hung = ender.is_alive()
        if hung:  # free the test run; the assertion below reports it
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ender.join(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not hung, "Pool.terminate() hung: a decode worker outlived SIGTERM"
    assert not any(r.ready() for r in busy)  # killed mid-task, not left to finish
    assert seen == []  # the signal went to the workers, not to this process
