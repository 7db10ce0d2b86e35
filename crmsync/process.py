"""Child processes and how they end (used by `crmsync run`, the demo, the dashboard and every service).

Children get the resolved broker and database through the environment, so they connect to exactly the same
infrastructure as the parent without starting anything themselves.

Rules, so that nothing crmsync starts outlives what started it:
- A parent that keeps children (the supervisor of `crmsync run`, the demo) turns SIGTERM and SIGHUP into
  `StopRequested` (a KeyboardInterrupt, like Ctrl-C), so its `finally:` stops them: `interrupt_on_stop_signals`.
- A child started by `spawn` dies with its parent even when the parent is killed (kill -9): the child asks
  Linux for SIGTERM when its parent goes (prctl PR_SET_PDEATHSIG, `die_with_parent`, called by the CLI first
  thing). Linux sends it when the *thread* that started the child ends: spawn from a thread that lives as long
  as the children (the main thread, in crmsync).
- A service exits within `grace` seconds of SIGTERM / SIGINT / SIGHUP whatever it is waiting for — a broker
  that is gone, a database that does not answer: `exit_within`. `docker stop` kills after 10 s.
- A service's memory stays flat however long it runs: `steady_heap` (glibc's malloc otherwise keeps a backfill's
  page-sized buffers in its heap for good).
- A service does not spend its CPU on Python's cycle collector: `fewer_collections` (a backfill allocates millions of
  short-lived container objects; the default thresholds ran a collection every 700 of them).
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from crmsync import private
from crmsync.infra import Endpoints

PARENT_ENV = "CRMSYNC_DIE_WITH_PARENT"  # the pid a child must not outlive (set by spawn, read once by the child)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP (systemd, `docker stop`, a closed terminal), handled like Ctrl-C."""


def interrupt_on_stop_signals() -> None:
    """Make the first SIGTERM, SIGHUP or SIGINT raise StopRequested in the main thread, so `finally:` blocks
    run (the default action of the first two would end the process on the spot and leave its children behind).
    Later ones are ignored: they must not interrupt that clean-up, which is bounded by `stop_all`'s timeout."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if not received:
            received.append(signum)
            raise StopRequested(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


# -- children ---------------------------------------------------------------------------------------------------
def spawn(command: list[str], *, env: dict[str, str] | None = None, log_file: Path | None = None) -> subprocess.Popen:
    """A child in its own session (a terminal's Ctrl-C reaches the parent, which stops it in order) that dies
    with this process; its output goes to `log_file` (mode 0600) or nowhere."""
    output = private.open_log(log_file) if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, env={**(env or os.environ), PARENT_ENV: str(os.getpid())}, stdout=output,
                                stderr=output, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if output is not subprocess.DEVNULL:
            output.close()  # the child has its own copy


def die_with_parent() -> None:
    """In a child made by `spawn`: get SIGTERM when the parent dies (Linux), or stop now if it already has."""
    parent = os.environ.pop(PARENT_ENV, None)  # popped: this process's own children are its business
    if not parent:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before prctl: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def steady_heap() -> None:
    """Serve every allocation of 1 MiB or more by its own mmap, returned to the system when freed (glibc).

    glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), so from then on a page of
    CSV or JSON text (a Bulk result page is ~20 MB as a Python str) comes from the heap, which never shrinks past
    what is still in use above it: a poller's peak RSS grew with the records it had read, though Python held
    less than 15 MB (tracemalloc). A fixed threshold turns that adjustment off: measured on the poller's first
    read of 50,000 contacts, RSS stayed at 146 MB instead of growing 138 → 184 MB (docs/benchmarks.md).
    Nothing happens on other C libraries."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: no mallopt of this kind
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


GC_THRESHOLDS = (50_000, 20, 20)  # gen0 every 50,000 net container allocations (Python's default: 700, 10, 10)


def fewer_collections() -> None:
    """Collect cycles rarely and never walk the objects that live as long as the process.

    Services allocate a few dicts, lists and dataclasses per record change; with the default thresholds the
    collector ran every 700 allocations and every tenth of those walked the younger generations, and py-spy put
    ~15 % of the streams' CPU in the line that happened to allocate when it ran (docs/benchmarks.md). crmsync's
    records hold no reference cycles, so collecting every 50,000 allocations instead keeps memory as flat as
    before (what cycles there are, are few) and frees the CPU. `gc.freeze()` moves what the imports made (modules,
    classes, functions) out of every later collection's way."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def service_env(found: Endpoints, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = found.bootstrap_servers
    env["CAMPAIGN_DSN"] = found.campaign_dsn
    env.update(extra or {})
    return env


def spawn_service(name: str, found: Endpoints, *, config_file: Path | None = None, log_file: Path | None = None,
                  extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "crmsync"]
    if config_file:
        command += ["--config", str(config_file)]
    command += ["service", name, *(args or [])]
    return spawn(command, env=service_env(found, extra_env), log_file=log_file)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process does not finish in time."""
    stop_all([process], timeout)


def stop_all(processes: Iterable[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM to all at once, then SIGKILL to those still there after `timeout`: one wait, not one per child."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- a service's own end ----------------------------------------------------------------------------------------
def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP: a service's loop finishes its batch or cycle and returns."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # signals can only be set from the main thread
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda *_: stop.set())
    return stop


def exit_within(grace: float) -> None:
    """From the first SIGTERM, SIGINT or SIGHUP on, this process has `grace` seconds: then it ends (exit status
    128 + the signal) whatever it is still waiting for. The service's own graceful stop keeps working: every
    handler installed for these signals afterwards — by the service, or by asyncio for faust — is chained
    after the one that starts the clock (this wraps `signal.signal` for the rest of the process's life)."""
    install = signal.signal
    clock = threading.Lock()

    def start_clock(signum: int) -> None:
        if clock.acquire(blocking=False):  # the first stop signal only
            timer = threading.Timer(grace, _exit_now, args=(signum, grace))
            timer.daemon = True
            timer.start()

    def chained(handler: Any) -> Callable[[int, Any], Any]:
        def on_signal(signum: int, frame: Any) -> Any:
            start_clock(signum)
            if callable(handler):
                return handler(signum, frame)
            if handler == signal.SIG_IGN:
                return None
            raise StopRequested(signal.Signals(signum).name)  # the default action, through finally blocks
        return on_signal

    def install_chained(signum: int, handler: Any) -> Any:
        return install(signum, chained(handler) if signum in STOP_SIGNALS else handler)

    signal.signal = install_chained  # type: ignore[assignment]
    for signum in STOP_SIGNALS:
        install_chained(signum, signal.getsignal(signum))


def _exit_now(signum: int, grace: float) -> None:
    logging.getLogger("crmsync.process").error(
        "still running %.0f s after %s: exiting now (what it was waiting for is retried on restart)",
        grace, signal.Signals(signum).name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(128 + signum)
