"""``fitvision tune --workers N``: N processes on this machine share the search's study.

Each worker is ``fitvision tune --resume --out OUT --join``, a process of its own (the GIL, and
CUDA state, rule out threads): it takes waiting trials from the study until none is left. The
command the user ran waits for them, then writes the results and retrains, once. A SIGTERM to
it is passed on to the workers, which give their trials back (fitvision.tune.claim).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from fitvision.errors import FitVisionError, Terminated


def worker_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "fitvision", "tune", "--resume", "--out", str(out), "--join"]


def run_workers(n: int, out: Path, advice: Callable[[], str]) -> None:
    """Run ``n`` workers to the end of the study; ``advice()`` says how to go on if they stop."""
    procs: list[subprocess.Popen] = []
    signalled: list[int] = []

    def forward(signum: int, frame) -> None:
        signalled.append(signum)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        procs.extend(subprocess.Popen(worker_command(out)) for _ in range(n))
        codes = _wait(procs)
    except KeyboardInterrupt:  # Ctrl-C reached the workers too (one process group): they give their trials back
        _wait(procs)
        raise KeyboardInterrupt(advice()) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if signalled:
        raise Terminated(advice(), signalled[0])
    failed = [(i, code) for i, code in enumerate(codes, 1) if code != 0]
    if failed:
        i, code = failed[0]
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise FitVisionError(f"worker {i} of {n} {how} (its output is above); {advice()}")


def _wait(procs: list[subprocess.Popen]) -> list[int]:
    codes = []
    for p in procs:
        while True:
            try:
                codes.append(p.wait())
                break
            except KeyboardInterrupt:  # a second Ctrl-C while the workers stop: keep waiting for them
                continue
    return codes
