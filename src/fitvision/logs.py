"""fitvision's messages go through the ``logging`` logger "fitvision"; ``set_verbosity`` shows them.

The library installs no handler of its own (importing it changes nothing); the CLI calls
``set_verbosity("info")``, so a terminal shows what `fitvision train` did before. In Python:

    import fitvision as fv
    fv.set_verbosity("info")      # the setup lines and the result line, as the CLI prints them
    fv.set_verbosity("warning")   # warnings only (the default of Python's logging)
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("fitvision")
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
