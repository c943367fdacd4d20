"""fitvision's messages go through the ``logging`` logger "fitvision"; ``set_verbosity`` shows them.

The library installs no handler of its own (importing it changes nothing); the CLI calls
``set_verbosity("info")``, so a terminal shows what `fitvision train` did before. In Python:

    import fitvision as fv
    fv.set_verbosity("info")      # the setup lines and the result line, as the CLI prints them
    fv.set_verbosity("warning")   # warnings only (the default of Python's logging)
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("fitvision")
# What only the run's log file gets (the epoch table: the terminal's comes from the Progress hook).
file_logger = logging.getLogger("fitvision.runlog")
file_logger.propagate = False
file_logger.setLevel(logging.INFO)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a message comes (pytest's capture, a notebook's cell)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it in __init__; the property decides
        pass


def set_verbosity(level: str | int = "info") -> None:
    """Show fitvision's messages of ``level`` and above on stdout, one plain line each."""
    if isinstance(level, str):
        if level not in LEVELS:
            from fitvision.errors import FitVisionError

            raise FitVisionError(f"unknown verbosity '{level}' (valid: {', '.join(LEVELS)})")
        level = LEVELS[level]
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # shown once, not again by a root handler the application set up


@contextlib.contextmanager
def run_log(path: str | Path) -> Iterator[None]:
    """While training, every fitvision message of level info and above is also appended to ``path``
    (RUN/train.log), each line after its local time ("2026-12-06 05:41:02 "), whatever the terminal
    shows (--quiet, --no-progress); a resumed run continues the same file."""
    handler = _LogFileHandler(_open_log(Path(path)), Path(path))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", TIME_FORMAT))
    handler.setLevel(logging.INFO)
    own, shown, saved = logger.level, logger.getEffectiveLevel(), [(h, h.level) for h in logger.handlers]
    for h, level in saved:  # the terminal keeps showing what it showed; the file gets info too
        h.setLevel(max(level, shown))
    logger.setLevel(min(shown, logging.INFO))
    logger.addHandler(handler)
    file_logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        file_logger.removeHandler(handler)
        handler.close()
        logger.setLevel(own)
        for h, level in saved:
            h.setLevel(level)


class _LogFileHandler(logging.StreamHandler):
    """A failed append (a full disk) is one warning line, once, not logging's traceback per line:
    the log is a record of the run, and the run's own files say when a write really matters."""

    def __init__(self, stream, path: Path):
        super().__init__(stream)
        self.path, self.failed = path, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        error = sys.exc_info()[1]
        print(f"warning: cannot append to {self.path} ({getattr(error, 'strerror', None) or error}); "
              "the run goes on without its log", file=sys.stderr)


def _open_log(path: Path):
    """``path`` opened for appending, refusing a symbolic link or anything but a regular file (a
    planted RUN/train.log link must not make fitvision append to the file it points at)."""
    from fitvision.errors import FitVisionError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        what = "is a symbolic link" if path.is_symlink() else f"cannot be written ({e.strerror})"
        raise FitVisionError(f"{path} {what}: fitvision appends the run's log there") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FitVisionError(f"{path} is not a regular file: fitvision appends the run's log there")
    return os.fdopen(fd, "a", encoding="utf-8")
