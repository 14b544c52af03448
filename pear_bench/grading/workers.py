"""The time bound of every grader call: persistent worker processes with a hard deadline.

Why processes: sympy can hang or eat memory on answers such as ``9^{9^{9^{9}}}`` or ``(10^9)!``,
and Python cannot interrupt a running C-level computation from another thread. math-verify's own
timeout uses ``signal.alarm``, which only works on the main thread, so it is switched off
(``parsing_timeout=None, timeout_seconds=None``) and the deadline is enforced here instead: the
call runs in a worker process, and a worker that misses its deadline is killed (SIGKILL) and
replaced. This works from any thread and from inside process pools.

Why persistent and forked from a forkserver: importing sympy, math-verify and reasoning-gym takes
about 3 s, far longer than one grading call. Workers are forked from multiprocessing's forkserver
with those modules preloaded, so a replacement after a timeout costs a fork (tens of ms), not an
interpreter start, and idle workers are reused across calls. Each worker is used by one call at a
time; concurrent callers (threads) get one worker each.

What the deadline covers: the call itself (sending the arguments, running, returning). A worker's
start-up happens before the clock starts, so a cold start never turns a correct answer into a
timeout: the forkserver's one-off preload (~1.5-3 s), the fork, and the ``warm_up()`` function of
each module in ``PRELOAD_MODULES`` that defines one (math-verify builds its LaTeX parser on first
use: ~70 ms per fresh worker, ~0.5 s when the machine is busy, enough to miss a short deadline).

Each worker also caps its address space at ``MEMORY_HEADROOM_BYTES`` above its size at start, so a
runaway computation raises MemoryError inside the worker instead of exhausting the machine.

Like every forkserver/spawn child, a worker imports the parent's ``__main__`` script (once, in the
forkserver): scripts that grade must keep their top-level code under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import resource
import threading
from collections.abc import Callable
from typing import Any

# What the workers run, heavy libraries first (the calling process never imports those); preloaded
# in the forkserver, so each fork starts with them imported. '__main__' is preloaded too, so forked
# workers do not re-import the main script.
PRELOAD_MODULES = ("math_verify", "reasoning_gym", "pear_bench.grading.math", "pear_bench.grading.games")
STARTUP_LIMIT_S = 300.0  # generous: the first start imports sympy and reasoning-gym on a busy machine
MEMORY_HEADROOM_BYTES = 2 * 1024**3

_CONTEXT = multiprocessing.get_context("forkserver")


class WorkerTimeout(TimeoutError):
    """The call did not finish within its deadline, or its worker died; the worker was killed (the
    next call starts a fresh one)."""


class WorkerError(RuntimeError):
    """The function raised inside the worker; the message carries the remote exception."""


def check_timeout(timeout: float, caller: str) -> None:
    """Raise ValueError unless ``timeout`` is a positive, finite number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"{caller}: timeout must be a positive number of seconds, got {timeout!r}")


def _limit_address_space(headroom: int) -> None:
    try:
        with open("/proc/self/statm") as f:  # first field: virtual size in pages (Linux only)
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return
    resource.setrlimit(resource.RLIMIT_AS, (current + headroom, resource.RLIM_INFINITY))


def _serve(conn, modules: tuple[str, ...], memory_headroom: int) -> None:
    """Worker loop: import and warm up, report ready, then run ``(fn, args)`` jobs until the pipe closes."""
    try:
        for name in modules:
            warm_up = getattr(importlib.import_module(name), "warm_up", None)
            if warm_up is not None:
                warm_up()
        _limit_address_space(memory_headroom)
    except BaseException as exc:  # report why start-up failed, then exit
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:  # MemoryError and RecursionError included
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class _Worker:
    def __init__(self, modules: tuple[str, ...], memory_headroom: int):
        self.conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_serve, args=(child_conn, modules, memory_headroom), daemon=True,
            name="pear-bench-grader",
        )
        self.process.start()
        child_conn.close()
        if not self.conn.poll(STARTUP_LIMIT_S):
            self.kill()
            raise RuntimeError(f"grading worker did not start within {STARTUP_LIMIT_S:.0f} s")
        try:
            status, detail = self.conn.recv()
        except EOFError:
            status, detail = "failed", f"exit code {self.process.exitcode}"
        if status != "ready":
            self.kill()
            raise RuntimeError(f"grading worker failed to start: {detail}")

    def kill(self) -> None:
        # No join: waiting for the exit status would add the forkserver's reaping delay to the
        # call. multiprocessing collects it at its next process start (or at exit).
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


class WorkerPool:
    """Idle workers kept for reuse; a call takes one (or starts one) and gives it back if healthy.

    Args:
        modules: modules each worker imports (and warms up: their ``warm_up()``, if defined)
            before it reports ready.
        max_idle: at most this many idle workers are kept (default: 2 per CPU, at least 8; an
            idle worker costs ~15 MB of private memory); extra ones are stopped.
        memory_headroom: bytes of address space each worker may grow by after start-up.
    """

    def __init__(self, modules: tuple[str, ...] = PRELOAD_MODULES, max_idle: int | None = None,
                 memory_headroom: int = MEMORY_HEADROOM_BYTES):
        self.modules = modules
        self.max_idle = max_idle if max_idle is not None else max(8, 2 * (os.cpu_count() or 1))
        self.memory_headroom = memory_headroom
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        """Run ``fn(*args)`` in a worker and return its result within ``timeout`` seconds.

        ``fn`` must be a module-level function (it is pickled by reference) and its result
        picklable. A call that finds no idle worker first starts one, untimed (a fork plus
        warm-up: ~0.1 s; the process's first start also starts the forkserver: ~2 s).

        Raises:
            WorkerTimeout: no result within ``timeout`` s, or the worker died (e.g. a C stack
                overflow); the worker is killed either way.
            WorkerError: ``fn`` raised; the worker stays in service.
        """
        worker = self._take()
        try:
            worker.conn.send((fn, args))
            if not worker.conn.poll(timeout):
                raise WorkerTimeout(f"{fn.__name__} did not finish within {timeout} s")
            status, value = worker.conn.recv()
        except (WorkerTimeout, EOFError, OSError) as exc:
            worker.kill()
            if isinstance(exc, WorkerTimeout):
                raise
            raise WorkerTimeout(f"grading worker died during {fn.__name__}: {exc!r}") from exc
        self._give_back(worker)
        if status == "error":
            raise WorkerError(value)
        return value

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their call returns and finds the pool full)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        _ensure_forkserver_preload(self.modules)
        return _Worker(self.modules, self.memory_headroom)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(worker)
                return
        worker.kill()


def _ensure_forkserver_preload(modules: tuple[str, ...]) -> None:
    # Takes effect only if the forkserver has not started yet; otherwise each worker imports the
    # modules itself during its (untimed) start-up.
    _CONTEXT.set_forkserver_preload(["__main__", *modules])


_pool: WorkerPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def run_with_timeout(fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
    """``WorkerPool.call`` on this process's shared pool of grading workers (created on first use).

    A child forked from this process (e.g. by ``datasets.map(num_proc=...)``) gets a fresh pool:
    the parent's workers and pipes belong to the parent.
    """
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = WorkerPool(), os.getpid()
        pool = _pool
    return pool.call(fn, args, timeout)
