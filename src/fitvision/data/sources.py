"""Where datasets come from: the catalog, local resolution, and checked atomic downloads.

A catalog name resolves in FITVISION_DATA_DIR first (DESIGN.md order): a folder `<prefix>*/`,
an archive `<prefix>*.tgz|.tar.gz`, the official archive, or its official extracted folder.
Only if none exists is the official archive downloaded there. FITVISION_DATA_DIR may be
read-only: nothing is written to it except by a download.

A download is kept only once it is whole: the announced length, the pinned checksum if any, and,
for every archive, one full reading pass (the checks and caps of extract.py): a truncated body or
an HTML error page is never renamed into place, where every later run would fail on it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fitvision.data.extract import (
    ARCHIVE_SUFFIXES,
    CorruptArchive,
    archive_kind,
    archive_stem,
    list_members,
)
from fitvision.errors import FitVisionError, did_you_mean
from fitvision.files import disk_error, remove_leftovers, temp_prefix


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    url: str
    archive: str  # official archive file name, as downloaded
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>"; None = not pinned
    prefix: str  # local folders/archives named `<prefix>*` count (not followed by a digit)
    official_folder: str  # the official archive's top folder, also accepted on its own


CATALOG: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10: 60,000 32x32 images, 10 classes",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "md5:c58f30108f718f92721af3b95e74349a", "cifar10", "cifar-10-batches-py"),
    "cifar100": DatasetSpec(
        "cifar100", "CIFAR-100: 60,000 32x32 images, 100 classes",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "md5:eb9058c3a382ffc7106e4002c42a8d85", "cifar100", "cifar-100-python"),
    "imagenette": DatasetSpec(
        "imagenette", "Imagenette v2: 13,394 ImageNet images, 10 easy classes",
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "imagenette2-160.tgz",
        "md5:e793b78cc4c9e9a4ccc0c1155377a412", "imagenette2", "imagenette2-160"),
    # Published md5s of imagewoof2-160.tgz disagree (the file was re-uploaded), so none is pinned.
    "imagewoof": DatasetSpec(
        "imagewoof", "Imagewoof v2: 12,954 ImageNet images, 10 dog breeds",
        "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz", "imagewoof2-160.tgz",
        None, "imagewoof2", "imagewoof2-160"),
}


def data_dir() -> Path:
    value = os.environ.get("FITVISION_DATA_DIR", "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fitvision" / "data"


def cache_dir() -> Path:
    value = os.environ.get("FITVISION_CACHE_DIR", "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fitvision" / "cache"


# --------------------------------------------------------------------------- local lookup
def _matches_prefix(name: str, prefix: str) -> bool:
    # "cifar10*" must not match "cifar100.tgz"
    return name.startswith(prefix) and not name[len(prefix):len(prefix) + 1].isdigit()


def accepted_names(spec: DatasetSpec) -> list[str]:
    return [f"{spec.prefix}*/", f"{spec.prefix}*.tgz", f"{spec.prefix}*.tar.gz", spec.archive,
            f"{spec.official_folder}/"]


def find_local(spec: DatasetSpec, root: Path) -> Path | None:
    """The first local copy in DESIGN.md's order, or None."""
    if not root.is_dir():
        return None
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    candidates = [
        [e for e in entries if e.is_dir() and _matches_prefix(e.name, spec.prefix)],
        [e for e in entries if e.is_file() and _matches_prefix(e.name, spec.prefix)
         and e.name.lower().endswith((".tgz", ".tar.gz"))],
        [e for e in entries if e.is_file() and e.name == spec.archive],
        [e for e in entries if e.is_dir() and e.name == spec.official_folder],
    ]
    return next((group[0] for group in candidates if group), None)


def resolve_spec(spec: DatasetSpec, download: bool = True, root: Path | None = None) -> Path:
    """A local folder or archive for `spec`, downloading the official archive if needed."""
    root = data_dir() if root is None else root
    local = find_local(spec, root)
    if local is not None:
        return local
    looked = f"looked in {root} for {', '.join(accepted_names(spec))}"
    hint = (f"download {spec.url} yourself and put it there, set FITVISION_DATA_DIR to the folder "
            "holding a copy, or pass --data PATH")
    if not download:
        raise FitVisionError(f"{spec.name} not found locally ({looked}); {hint}")
    try:
        return download_file(spec.url, root / spec.archive, spec.checksum)
    except _Offline as e:
        raise FitVisionError(f"{spec.name} not found locally ({looked}) and the download failed ({e}); "
                             f"{hint}") from None


def resolve(name_or_path, download: bool = True) -> Path:
    """A local folder or archive (.tgz/.tar.gz/.tar/.zip) holding a readable layout."""
    if isinstance(name_or_path, DatasetSpec):
        return resolve_spec(name_or_path, download)
    key = str(name_or_path)
    if key.lower() in CATALOG:
        return resolve_spec(CATALOG[key.lower()], download)
    path = Path(key).expanduser()
    if path.is_dir() or (path.is_file() and archive_kind(path)):
        return path
    if path.is_file():
        raise FitVisionError(f"{path} is not a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    hint = did_you_mean(key.lower(), CATALOG).rstrip()
    raise FitVisionError(f"unknown dataset '{key}': not a catalog name ({', '.join(CATALOG)}) "
                         "nor an existing folder or archive" + (f"; {hint}" if hint else ""))


def dataset_name(name_or_path) -> str:
    if isinstance(name_or_path, DatasetSpec):
        return name_or_path.name
    key = str(name_or_path)
    return key.lower() if key.lower() in CATALOG else archive_stem(Path(key).expanduser().resolve())


def catalog_status() -> list[dict]:
    root = data_dir()
    return [{"name": s.name, "description": s.description,
             "location": str(loc) if (loc := find_local(s, root)) else None} for s in CATALOG.values()]


# --------------------------------------------------------------------------- download
class _Offline(Exception):
    """The server could not be reached or the transfer broke off."""


def _hasher(checksum: str | None):
    if checksum is None:
        return None, None
    algo, _, digest = checksum.partition(":")
    if algo not in ("md5", "sha256") or not digest:
        raise FitVisionError(f"checksum must be 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return hashlib.new(algo), digest.lower()


def _fetch(url: str, out, hasher, timeout: float) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, file=sys.stderr,
                      disable=None, leave=False) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    got += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise _Offline(f"connection closed after {got} of {total} bytes from {url}")
    except urllib.error.HTTPError as e:
        raise _Offline(f"HTTP {e.code} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        # HTTPException covers IncompleteRead: the connection dropped mid-body
        reason = getattr(e, "reason", e)
        raise _Offline(f"cannot fetch {url}: {reason}") from None


def corrupt_remedy(path) -> str:
    """What to do about an archive that cannot be read: one the catalog resolved in the data folder
    is downloaded afresh once it is deleted; any other must be replaced by hand."""
    path = Path(path)
    quoted = shlex.quote(str(path))
    root = data_dir()
    spec = next((s for s in CATALOG.values() if (local := find_local(s, root)) is not None
                 and local.resolve() == path.resolve()), None)
    if spec is None:
        return f"replace it with a good copy (or delete it: rm {quoted})"
    return (f"delete it (rm {quoted}) and run `fitvision datasets info {spec.name}` (or your command "
            "again) to download a fresh copy")


def _verify(tmp: Path, dest: Path, url: str) -> None:
    """The download reads to its end as the archive its name says, or it is not kept."""
    kind = archive_kind(dest)
    if kind is None:
        return
    try:
        list_members(tmp, kind=kind, label=url)
    except CorruptArchive as e:
        with open(tmp, "rb") as f:
            head = f.read(64).lstrip().lower()
        what = (f"an HTML page, not the archive {dest.name}" if head.startswith((b"<!doctype html", b"<html"))
                else f"not a readable {kind} archive ({e.reason})")
        raise FitVisionError(f"the download of {url} is {what}; it was discarded (nothing is left in "
                             f"{dest.parent}): try again, or download it by hand to {dest}") from None


def download_file(url: str, dest, checksum: str | None = None, timeout: float = 30.0) -> Path:
    """Download to `dest` through a temporary file, renamed only once it is whole: the announced
    length, the checksum if given, and an archive that reads to its end (_verify).

    The `.part` files killed downloads left in the folder are removed first (files.remove_leftovers).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(dest.parent)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(dest), suffix=".part")
    except OSError as e:
        raise FitVisionError(f"cannot write the download to {dest.parent} ({e}); set FITVISION_DATA_DIR "
                             "to a writable folder") from None
    tmp = Path(name)
    hasher, expected = _hasher(checksum)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, hasher, timeout)
        if hasher is not None and hasher.hexdigest() != expected:
            raise FitVisionError(f"checksum mismatch for {url}: expected {checksum}, got "
                                 f"{checksum.split(':')[0]}:{hasher.hexdigest()}; the download was discarded, "
                                 "try again or fetch the file by hand")
        _verify(tmp, dest, url)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a data set is shared like any file
        os.replace(tmp, dest)
    except OSError as e:  # a full disk mid-download: one line naming the file, nothing kept
        raise (disk_error(dest, e, "download") or e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# Contract name (docs/internals.md): download(url, dest, checksum)
download = download_file
