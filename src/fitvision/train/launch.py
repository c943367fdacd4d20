"""``fitvision train --nproc N [--nnodes M --rdzv-endpoint HOST:PORT]``: the same command again,
under torchrun, in N processes on this machine (and M machines together).

    check_launch(cfg, nproc=2, nnodes=1, endpoint=None)   # bad input: one line, nothing started
    rc = launch(sys.argv[1:], nproc=2)                    # torchrun's exit status

One machine: torchrun --standalone (a rendezvous of its own on a free port). Several: a c10d
rendezvous at HOST:PORT, hosted by the node whose address that is; every other node first checks
that it can reach it, and says so in one line when it cannot, instead of torchrun's traceback
after its own long wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from fitvision.config import TrainConfig
from fitvision.errors import FitVisionError
from fitvision.train.distributed import check_batch

RDZV_TIMEOUT_ENV = "FITVISION_RDZV_TIMEOUT"
DEFAULT_RDZV_TIMEOUT = 600  # seconds a node waits for the endpoint's node to start (torchrun's join timeout)
_OWN_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint")  # the launcher's; the processes must not launch again


def check_launch(cfg: TrainConfig, nproc: int, nnodes: int, endpoint: str | None) -> None:
    """What the flags ask for is possible: raises FitVisionError with one line when it is not."""
    if nproc < 1:
        raise FitVisionError(f"--nproc must be at least 1, got {nproc}")
    if nnodes < 1:
        raise FitVisionError(f"--nnodes must be at least 1, got {nnodes}")
    if nnodes > 1 and not endpoint:
        raise FitVisionError("--nnodes needs --rdzv-endpoint HOST:PORT: the address where the nodes meet "
                             "(the first node's host and a free port)")
    if endpoint and nnodes == 1:
        raise FitVisionError("--rdzv-endpoint is for several machines: pass --nnodes too")
    if endpoint:
        split_endpoint(endpoint)
    check_batch(cfg.bs, nproc * nnodes, cfg.accum)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FitVisionError(f"--rdzv-endpoint must be HOST:PORT (a port from 1 to 65535), got {endpoint!r}")
    return host.strip("[]"), int(port)


def launch(argv: list[str], nproc: int, nnodes: int = 1, endpoint: str | None = None) -> int:
    """Run the command in ``argv`` (without the launcher's own flags) under torchrun; returns its
    exit status. Each process gets this machine's cores / nproc threads."""
    if nnodes > 1:
        wait_for_endpoint(endpoint)
        where = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=fitvision"]
    else:
        where = ["--standalone"]
    # torchrun gives each process one thread unless told; share this machine's cores out instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
           "-m", "fitvision", *_without_own_flags(argv)]
    return subprocess.run(cmd, env=env, check=False).returncode


def _without_own_flags(argv: list[str]) -> list[str]:
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _OWN_FLAGS:
            skip = True
        elif not a.startswith(tuple(f"{flag}=" for flag in _OWN_FLAGS)):
            args.append(a)
    return args


def wait_for_endpoint(endpoint: str) -> None:
    """Return once the rendezvous at ``endpoint`` accepts a connection, at once when this machine
    hosts it; one line when its host has no address or nothing answers within the timeout."""
    host, port = split_endpoint(endpoint)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as e:
        raise FitVisionError(f"cannot reach the rendezvous endpoint {endpoint}: no address for {host!r} "
                             f"({e.strerror}); check --rdzv-endpoint") from None
    if any(_is_own(a) for a in addresses):
        return  # this node hosts the rendezvous; torchrun starts it
    seconds = _rdzv_timeout()
    # A TCP connection alone proves little (a proxy or firewall may accept it): ask the store
    # torchrun's c10d rendezvous serves there, in a process of its own so that torch's C++ log
    # lines stay out of the one line this says.
    probe = subprocess.run([sys.executable, "-c", _PROBE, host, str(port), str(seconds)], capture_output=True,
                           text=True, env={**os.environ, "TORCH_CPP_LOG_LEVEL": "FATAL"}, check=False)
    if probe.returncode:
        reason = (probe.stdout.strip().splitlines() or ["no answer"])[-1][:200]
        raise FitVisionError(f"cannot reach the rendezvous endpoint {endpoint} ({reason}) within {seconds} s: "
                             f"start the command on {host} first, or check --rdzv-endpoint and the firewall "
                             f"({RDZV_TIMEOUT_ENV} sets the wait)")


_PROBE = """
import datetime, sys, time
import torch.distributed as dist

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
while True:
    wait = datetime.timedelta(seconds=max(1.0, min(10.0, deadline - time.monotonic())))
    try:
        dist.TCPStore(host, port, is_master=False, timeout=wait, wait_for_workers=False)
        sys.exit(0)
    except Exception as e:
        if time.monotonic() >= deadline:
            print(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            sys.exit(1)
        time.sleep(1)
"""


def _is_own(address: str) -> bool:
    """Whether ``address`` is one of this machine's: only those can be bound."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def _rdzv_timeout() -> int:
    value = os.environ.get(RDZV_TIMEOUT_ENV, str(DEFAULT_RDZV_TIMEOUT))
    if not value.isdigit() or int(value) < 1:
        raise FitVisionError(f"{RDZV_TIMEOUT_ENV} must be a whole number of seconds >= 1, got {value!r}")
    return int(value)
