"""The decoded-array cache under faults (issue 31): a full disk, kill -9 mid-write, two builders
at once, a read-only cache folder. Each test failed before the fix it names.

The real-disk variants mount a small tmpfs (root only) and are skipped with the reason where that
is impossible; the injected variants (monkeypatched os calls) always run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic_images import make_image_folder

from fitvision.data import cache
from fitvision.data.dataset import load_dataset
from fitvision.errors import FitVisionError

ROOT = Path(__file__).resolve().parent.parent


def _images(tmp_path: Path, n_train: int = 6, n_valid: int = 2, size: int = 16) -> Path:
    return make_image_folder(tmp_path / "images", ["ant", "bee"], n_train, n_valid, size=size)


def _digest(ds) -> str:
    h = hashlib.sha256()
    for a in (ds.train_x, ds.train_y, ds.valid_x, ds.valid_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _reference(src: Path, tmp_path: Path, monkeypatch) -> str:
    """The arrays' digest from an undisturbed build in a cache folder of its own."""
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(tmp_path / "reference-cache"))
    digest = _digest(load_dataset(src))
    monkeypatch.delenv("FITVISION_CACHE_DIR")
    return digest


def _use_cache(monkeypatch, folder: Path) -> Path:
    monkeypatch.setenv("FITVISION_CACHE_DIR", str(folder))
    return folder


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected variant covers this case")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: too small for the test's decoded arrays (about 3 MiB)."""
    mnt = tmp_path / "small-disk"
    _mount_tmpfs(mnt, "2m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# A child process that runs `fitvision datasets info SRC`, optionally with every image's decode
# slowed down (so it can be caught mid-write) and the free-space check fooled (as when another
# process fills the disk between the check and the write).
CHILD = textwrap.dedent("""
    import shutil, sys, time
    from fitvision.data import decode
    delay, lie = float(sys.argv[2]), sys.argv[3] == "lie"
    real_decode, real_usage = decode._decode, shutil.disk_usage
    def slow(*a, **k):
        time.sleep(delay)
        return real_decode(*a, **k)
    if delay:
        decode._decode = slow
    if lie:
        shutil.disk_usage = lambda p: real_usage(p)._replace(free=1 << 40)
    if sys.argv[4] == "digest":
        import hashlib, numpy as np
        from fitvision.data.dataset import load_dataset
        ds = load_dataset(sys.argv[1])
        h = hashlib.sha256()
        for a in (ds.train_x, ds.train_y, ds.valid_x, ds.valid_y):
            h.update(np.ascontiguousarray(a).tobytes())
        print(h.hexdigest())
    else:
        from fitvision.cli import main
        sys.exit(main(["datasets", "info", sys.argv[1]]))
""")


def _child(src: Path, cache_folder: Path, delay: float = 0.0, lie: bool = False, mode: str = "cli"):
    env = dict(os.environ, FITVISION_CACHE_DIR=str(cache_folder))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(delay), "lie" if lie else "-", mode],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_space_message(line: str, folder: Path) -> None:
    assert "\n" not in line.strip()
    assert "not enough free space for the decoded cache" in line
    assert str(folder) in line and "FITVISION_CACHE_DIR" in line
    assert " needs " in line and " free" in line


# --------------------------------------------------------------------------- (1) a full disk
def test_full_disk_injected_enospc_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    """Reservation fails with ENOSPC (os.posix_fallocate monkeypatched): a FitVisionError naming the
    folder, the space needed and free, and the env var; no temporary folder left. Before the fix
    the arrays were mapped as sparse files, never reserved, so nothing failed here (and a real
    full disk killed the process with SIGBUS)."""
    src = _images(tmp_path)
    folder = _use_cache(monkeypatch, tmp_path / "cache")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(FitVisionError) as info:
        load_dataset(src)
    _assert_space_message(str(info.value), folder)
    assert list(folder.iterdir()) == []


def test_full_disk_real_tmpfs_cli_exits_1_with_one_line(tmp_path, small_disk):
    """`fitvision datasets info` with the cache on a 2 MiB tmpfs and 3 MiB of arrays: exit status 1
    and one line on stderr, the tmpfs left empty. Before the fix: exit by SIGBUS (-7 / 135), no
    message, a temporary folder left on the disk."""
    src = _images(tmp_path, n_train=20, n_valid=5, size=128)  # 50 x 128x128x3 = 2.4 MiB
    proc = _child(src, small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    _assert_space_message(err, small_disk)
    assert list(small_disk.iterdir()) == []


def test_full_disk_after_the_check_fails_at_reservation_not_by_sigbus(tmp_path, small_disk):
    """The free-space check fooled (another process fills the disk after it): posix_fallocate on
    the real tmpfs raises ENOSPC, so the error is still one line and exit status 1, never SIGBUS."""
    src = _images(tmp_path, n_train=20, n_valid=5, size=128)
    proc = _child(src, small_disk, lie=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.count("\n") == 1, err
    _assert_space_message(err, small_disk)
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("how", ["unsupported", "absent"])
def test_without_fallocate_the_space_is_reserved_by_writing_zeros(tmp_path, monkeypatch, how):
    """A filesystem without fallocate (EOPNOTSUPP), or a platform without os.posix_fallocate: the
    arrays are still reserved (zeros written, no sparse file) and the cache is correct."""
    src = _images(tmp_path)
    want = _reference(src, tmp_path, monkeypatch)
    folder = _use_cache(monkeypatch, tmp_path / "cache")
    if how == "absent":
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    else:
        def unsupported(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    ds = load_dataset(src)
    assert _digest(ds) == want
    (built,) = folder.iterdir()
    x = built / "train_x.npy"
    assert os.stat(x).st_blocks * 512 >= os.path.getsize(x) - 4096  # not sparse


def test_zero_fill_on_a_full_disk_is_the_same_clear_error(tmp_path, monkeypatch):
    """Without fallocate, a write of the zeros that hits ENOSPC gives the same one-line error."""
    src = _images(tmp_path)
    folder = _use_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    real_write = os.write

    def full(fd, data):
        if os.fstat(fd).st_size > 0 and str(os.readlink(f"/proc/self/fd/{fd}")).startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(FitVisionError) as info:
        load_dataset(src)
    _assert_space_message(str(info.value), folder)
    assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- (9) kill -9
def _temp_folders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


def test_kill_9_mid_write_leaves_a_folder_the_next_load_removes(tmp_path, monkeypatch):
    """A build killed with SIGKILL while writing leaves its temporary folder; the next load finds no
    valid cache, rebuilds the same arrays and removes the dead process's folder at once. Before
    the fix the leftover was kept until it was 6 hours old."""
    src = _images(tmp_path)
    want = _reference(src, tmp_path, monkeypatch)
    folder = _use_cache(monkeypatch, tmp_path / "cache")
    proc = _child(src, folder, delay=0.5, mode="digest")
    try:
        deadline = time.monotonic() + 60
        while not any((t / "train_x.npy").exists() for t in _temp_folders(folder)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    (leftover,) = _temp_folders(folder)
    assert [p for p in folder.iterdir() if not p.name.startswith(".")] == []  # nothing committed
    assert _digest(load_dataset(src)) == want
    assert not leftover.exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    assert len(list(folder.iterdir())) == 1


def test_old_style_leftovers_are_removed_only_when_stale(tmp_path, monkeypatch):
    """Temporary folders of older versions (`.NAME.tmp-XXXX`, no pid in the name) are removed once
    older than 6 hours, and a fresh one (perhaps a live older process's) is kept."""
    src = _images(tmp_path)
    folder = _use_cache(monkeypatch, tmp_path / "cache")
    old, young = folder / ".x-s160-0.tmp-0badc0de", folder / ".y-s160-0.tmp-0fedcba9"
    for p in (old, young):
        p.mkdir(parents=True)
        (p / "train_x.npy").write_bytes(b"\0" * 64)
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    load_dataset(src)
    assert not old.exists() and young.exists()


# --------------------------------------------------------------------------- two builders
def test_two_processes_building_one_cache_agree_and_leave_one_folder(tmp_path, monkeypatch):
    """Two processes decode the same source at once (decoding slowed so they overlap): both exit
    cleanly with the same arrays as an undisturbed build, one cache folder, no temporary folder."""
    src = _images(tmp_path)
    want = _reference(src, tmp_path, monkeypatch)
    folder = tmp_path / "cache"
    procs = [_child(src, folder, delay=0.1, mode="digest") for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == [want, want]
    assert len(list(folder.iterdir())) == 1 and _temp_folders(folder) == []


def test_a_later_commit_never_replaces_a_valid_cache(tmp_path, monkeypatch):
    """The slower of two builders keeps the cache the faster one committed (a third process may be
    mapping it right now) and discards its own. Before the fix it deleted the valid folder and
    renamed its own in, so a reader between the two steps found no cache and failed."""
    _use_cache(monkeypatch, tmp_path / "cache")
    target = cache.cache_dir() / "demo-s32-000000000000"
    arrays = {"train_x": np.ones((2, 4, 4, 3), np.uint8), "train_y": np.arange(2),
              "valid_x": np.zeros((1, 4, 4, 3), np.uint8), "valid_y": np.arange(1)}
    first, second = cache.CacheWriter(target), cache.CacheWriter(target)
    first.commit(arrays, {"classes": ["a", "b"]})
    inode = os.stat(target / "meta.json").st_ino
    second.commit(dict(arrays, train_x=np.full((2, 4, 4, 3), 7, np.uint8)), {"classes": ["a", "b"]})
    assert os.stat(target / "meta.json").st_ino == inode
    _, loaded = cache.load(target)
    assert (loaded["train_x"] == 1).all()
    assert _temp_folders(target.parent) == []
    # a cache made by an older version (fewer meta fields) is replaced, not kept
    cache.CacheWriter(target).commit(arrays, {"classes": ["a", "b"], "added_later": 1})
    assert cache.load(target)[0]["added_later"] == 1 and _temp_folders(target.parent) == []


# --------------------------------------------------------------------------- a read-only cache
def _loads_in_memory_with_one_warning(src: Path, folder: Path, want: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(src)
    about = [str(w.message) for w in caught if "cache" in str(w.message)]
    assert len(about) == 1, about
    assert str(folder) in about[0] and "FITVISION_CACHE_DIR" in about[0] and "\n" not in about[0]
    assert "without caching" in about[0]
    assert _digest(ds) == want
    assert not isinstance(ds.train_x, np.memmap)


def test_read_only_cache_folder_injected_decodes_in_memory_with_one_warning(tmp_path, monkeypatch):
    """Creating anything in the cache folder fails with EROFS (os.mkdir monkeypatched): the data set
    is decoded into memory, one warning names the folder and the env var. Before the fix: a
    traceback-less 'OSError' and no data."""
    src = _images(tmp_path)
    want = _reference(src, tmp_path, monkeypatch)
    folder = _use_cache(monkeypatch, tmp_path / "cache")
    folder.mkdir()
    real_mkdir = os.mkdir

    def read_only(path, *a, **k):
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)
    _loads_in_memory_with_one_warning(src, folder, want)
    assert list(folder.iterdir()) == []


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only folder: a tmpfs remounted read-only as root (root ignores chmod), else
    chmod 0o555. Yields (folder, make_read_only) so a test can fill it first."""
    folder = tmp_path / "ro-cache"
    if os.geteuid() != 0:
        folder.mkdir()
        yield folder, lambda: folder.chmod(0o555)
        folder.chmod(0o755)
        return
    _mount_tmpfs(folder, "128m")  # room for the 64 MB margin the space check keeps
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_cache_folder_real_decodes_in_memory_with_one_warning(tmp_path, monkeypatch, read_only_folder):
    folder, make_read_only = read_only_folder
    src = _images(tmp_path)
    want = _reference(src, tmp_path, monkeypatch)
    make_read_only()
    _use_cache(monkeypatch, folder)
    _loads_in_memory_with_one_warning(src, folder, want)
    assert list(folder.iterdir()) == []


def test_a_valid_cache_in_a_read_only_folder_is_used(tmp_path, monkeypatch, read_only_folder):
    """A cache prepared beforehand (a shared, read-only cache) is memory-mapped without a warning."""
    folder, make_read_only = read_only_folder
    src = _images(tmp_path)
    _use_cache(monkeypatch, folder)
    want = _digest(load_dataset(src))
    make_read_only()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(src)
    assert _digest(ds) == want and isinstance(ds.train_x, np.memmap)
