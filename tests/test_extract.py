"""Safe extraction: hostile archives are refused and nothing lands outside the target."""

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from fitvision.data.dataset import load_dataset
from fitvision.data.extract import list_members, safe_extract
from fitvision.errors import FitVisionError


def _tar(path: Path, members: list) -> Path:
    """members: (name, kind, payload) with kind file|dir|sym|hard|chr."""
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            info.linkname = payload or ""
            tf.addfile(info)
    return path


def _zip(path: Path, members: list) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            if kind == "sym":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, payload)
            else:
                zf.writestr(info, payload)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


HOSTILE_TAR = {
    "dotdot": ([("ok.txt", "file", b"a"), ("../evil.txt", "file", b"pwned")], "contains '..'"),
    "absolute": ([("ok.txt", "file", b"a"), ("/tmp/fv-evil-abs.txt", "file", b"pwned")], "has an absolute path"),
    "symlink": ([("link", "sym", "../../outside"), ("link/evil.txt", "file", b"pwned")], "links outside the archive"),
    "symlink_abs": ([("link", "sym", "/etc"), ("link/evil.txt", "file", b"pwned")], "links to an absolute path"),
    "hardlink": ([("ok.txt", "file", b"a"), ("hard", "hard", "../../../etc/passwd")], "links outside the archive"),
    "device": ([("ok.txt", "file", b"a"), ("null", "chr", None)], "is a device file or FIFO"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TAR))
def test_hostile_tar_refused_nothing_written(tmp_path, case):
    members, why = HOSTILE_TAR[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "bad.tgz", members)
    with pytest.raises(FitVisionError, match=f"^refusing unsafe archive .*bad.tgz: member '.*' {why}"):
        safe_extract(archive, work / "out")
    assert _tree(work) == []  # no target, no temporary folder
    assert _tree(tmp_path) == ["bad.tgz", "work"]
    assert not Path("/tmp/fv-evil-abs.txt").exists()
    with pytest.raises(FitVisionError, match="refusing unsafe archive"):
        list_members(archive)


HOSTILE_ZIP = {
    "dotdot": ([("ok.txt", "file", b"a"), ("../evil.txt", "file", b"pwned")], "contains '..'"),
    "absolute": ([("/tmp/fv-evil-abs.txt", "file", b"pwned")], "has an absolute path"),
    "symlink": ([("link", "sym", "../../outside"), ("ok.txt", "file", b"a")], "links outside the archive"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIP))
def test_hostile_zip_refused_nothing_written(tmp_path, case):
    members, why = HOSTILE_ZIP[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(tmp_path / "bad.zip", members)
    with pytest.raises(FitVisionError, match=f"member '.*' {why}"):
        safe_extract(archive, work / "out")
    assert _tree(work) == []
    assert not Path("/tmp/fv-evil-abs.txt").exists()


def test_benign_links_extract_inside(tmp_path):
    archive = _tar(tmp_path / "ok.tgz", [
        ("d", "dir", None), ("d/a.txt", "file", b"hello"), ("./d/b.txt", "file", b"bee"),
        ("d/ln", "sym", "a.txt"), ("d/hard", "hard", "d/a.txt"),
    ])
    out = safe_extract(archive, tmp_path / "x" / "out")
    assert _tree(tmp_path / "x") == ["out", "out/d", "out/d/a.txt", "out/d/b.txt", "out/d/hard", "out/d/ln"]
    assert (out / "d/ln").is_symlink() and (out / "d/ln").read_bytes() == b"hello"
    assert not (out / "d/hard").is_symlink() and (out / "d/hard").read_bytes() == b"hello"
    assert (out / "d/b.txt").read_bytes() == b"bee"


def test_zip_round_trip(tmp_path):
    archive = _zip(tmp_path / "ok.zip", [("top/a.txt", "file", b"1"), ("top/b/c.txt", "file", b"22")])
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "top/b/c.txt").read_bytes() == b"22"
    assert safe_extract(archive, out) == out  # an existing target is a finished extraction


def test_hostile_archive_refused_by_the_loader(tmp_path):
    archive = _tar(tmp_path / "pets.tgz", [("pets/cat/1.jpg", "file", b"x"), ("pets/../../evil.jpg", "file", b"x")])
    with pytest.raises(FitVisionError, match="contains '..'"):
        load_dataset(archive)


def test_truncated_or_corrupt_archives_are_clear_errors(tmp_path):
    good = _tar(tmp_path / "good.tgz", [(f"pets/cat/{i}.jpg", "file", bytes(2000)) for i in range(20)])
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(FitVisionError, match=r"^cannot read archive .*cut.tgz \(truncated or corrupt\?\)"):
        load_dataset(cut)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not really a zip")
    with pytest.raises(FitVisionError, match=r"^cannot read archive .*junk.zip: File is not a zip file"):
        load_dataset(junk)
