"""`pear-bench gpu-run`: run a command on N GPUs of this node that no other job holds.

Snakemake's local executor counts a global ``gpu`` resource (``--resources gpu=8``) so that no more
GPU jobs start than the node has, but it never says *which* GPUs a job gets: every job would see
all of them and start on GPU 0. The workflow's GPU rules therefore run their command through

    pear-bench gpu-run --gpus {resources.gpu} -- pear-bench sft ...

which picks N GPU ids no other ``gpu-run`` holds, sets ``CUDA_VISIBLE_DEVICES`` to exactly those,
runs the command as a child and returns its exit code. Inside a SLURM job the same wrapper only
hands out the GPUs SLURM allocated (they are in ``CUDA_VISIBLE_DEVICES``), so one rule body serves
the local executor and the SLURM executor.

    pear-bench gpu-run --gpus 2 -- torchrun --nproc-per-node 2 -m pear_bench sft ...
    pear-bench gpu-run --gpus 0 -- pear-bench make-data ...        # CPU job: CUDA_VISIBLE_DEVICES=""
    PEAR_BENCH_GPUS=0,1,2,3 pear-bench gpu-run --gpus 1 -- python -c \
        'import os; print(os.environ["CUDA_VISIBLE_DEVICES"])'

How it works:

- **The node's GPU ids**, first source that applies: ``--gpu-ids``; ``PEAR_BENCH_GPUS`` (tests, or
  to keep some GPUs out); ``CUDA_VISIBLE_DEVICES`` (set by SLURM inside an allocation); the indices
  ``nvidia-smi`` lists; ``range(torch.cuda.device_count())``. Ids are strings: indices, ``GPU-<uuid>``
  or ``MIG-<uuid>`` all work. A set but empty variable means "no GPUs".
- **One lock file per id** in a lock directory, held with an exclusive non-blocking ``fcntl.flock``.
  The kernel drops a flock when the last descriptor of it closes, so a crashed or killed wrapper
  leaves no stale state: there is nothing to clean up, ever. The child inherits the descriptors,
  so the GPUs stay locked until the command itself has exited, even if the wrapper dies first.
- **Waiting**: when fewer than N ids are free it releases what it took (no partial holds, so no
  deadlock between jobs), says once on stderr that it waits, and retries with capped exponential
  backoff plus jitter; ``--timeout`` bounds the wait.
- **The child** gets ``CUDA_VISIBLE_DEVICES`` = the chosen ids and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
  (unless set: nvidia-smi numbers GPUs in PCI order, CUDA by default fastest first).
  SIGINT/SIGTERM/SIGHUP sent to the wrapper are forwarded to it, except those the kernel sends to
  the whole foreground process group (Ctrl-C in a terminal), which the child already receives; if
  the wrapper is killed outright, the child gets SIGTERM (``PR_SET_PDEATHSIG``). The exit status is
  the child's (``128 + n`` when signal ``n`` killed it, as in a shell).
- **Nesting**: the child also gets ``PEAR_BENCH_GPUS`` = its ids and a lock directory of its own
  under the parent's, so a ``gpu-run`` inside a ``gpu-run`` (``gpu-run --gpus 4 -- snakemake ...``)
  shares out the parent's GPUs among its siblings only.

Lock directory: ``--lock-dir``, else ``PEAR_BENCH_GPU_LOCK_DIR``, else ``/tmp/pear-bench-gpu-locks-<uid>``
(per user, mode 0700; inside a SLURM job ``.../slurm-<SLURM_JOB_ID>``, because GPU numbering is per
job there: two jobs on one node may both see their own GPU "0"). Always ``/tmp`` rather than
``$TMPDIR``, so that every process on the node agrees. Users who share a node and want to share
its GPUs politely point ``PEAR_BENCH_GPU_LOCK_DIR`` at one directory all of them can write.

Linux only (``flock``, ``prctl``, ``sigtimedwait``).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import functools
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_GPUS = "PEAR_BENCH_GPUS"
ENV_LOCK_DIR = "PEAR_BENCH_GPU_LOCK_DIR"
# Exit statuses of the wrapper itself (the child's own status is passed through unchanged).
EXIT_BAD_REQUEST = 2  # like an argparse usage error: more GPUs than the node has, malformed ids
EXIT_TIMEOUT = 75  # EX_TEMPFAIL (sysexits.h): the GPUs did not become free within --timeout
EXIT_NOT_EXECUTABLE = 126  # shell conventions for a command that cannot run
EXIT_NOT_FOUND = 127
# si_code of a signal the kernel itself raised (terminal Ctrl-C, hangup): <asm-generic/siginfo.h>.
SI_KERNEL = 0x80
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class GpuRequestError(Exception):
    """A request that cannot be met on this node (bad ids, more GPUs than exist, unusable lock dir)."""


@dataclass(frozen=True)
class NodeGpus:
    """The GPU ids this node offers to jobs, and where that list came from (for error messages)."""

    ids: tuple[str, ...]
    source: str


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """Split a ``CUDA_VISIBLE_DEVICES``-style list: ``"0, 1,3"`` -> ``("0", "1", "3")``.

    Blanks are ignored. As in CUDA, a negative index ends the list (``"-1"`` hides every GPU).
    Ids stay strings: ``GPU-<uuid>`` and ``MIG-<uuid>`` are valid ids.

    Raises:
        GpuRequestError: an id appears twice (CUDA refuses such a list too).
    """
    ids: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lstrip("-").isdigit() and int(part) < 0:
            break
        if part in ids:
            raise GpuRequestError(f"GPU id {part!r} appears twice in {text!r}")
        ids.append(part)
    return tuple(ids)


def probe_gpus() -> tuple[str, ...]:
    """The node's GPU indices: ``nvidia-smi``'s list, else ``range(torch.cuda.device_count())``, else none."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
            return parse_gpu_ids(",".join(out.split()))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch
    except ImportError:
        return ()
    return tuple(str(i) for i in range(torch.cuda.device_count()))


def find_node_gpus(
    flag: str | None, env: Mapping[str, str], probe: Callable[[], Sequence[str]] = probe_gpus,
) -> NodeGpus:
    """The node's GPU ids from the first source that applies (see the module docstring).

    Args:
        flag: the ``--gpu-ids`` value, or None when not given.
        env: the environment to read ``PEAR_BENCH_GPUS`` and ``CUDA_VISIBLE_DEVICES`` from.
        probe: called only when neither flag nor environment names the GPUs.
    """
    if flag is not None:
        return NodeGpus(parse_gpu_ids(flag), "--gpu-ids")
    for name in (ENV_GPUS, "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return NodeGpus(parse_gpu_ids(env[name]), name)
    return NodeGpus(tuple(probe()), "nvidia-smi / torch.cuda.device_count()")


def check_request(n: int, node: NodeGpus) -> None:
    """Raise a ``GpuRequestError`` naming both numbers when ``n`` GPUs can never be free at once."""
    if n < 0:
        raise GpuRequestError(f"--gpus must be >= 0; got {n}")
    if n > len(node.ids):
        listed = ",".join(node.ids) or "none"
        raise GpuRequestError(
            f"asked for {n} GPU{'s' * (n != 1)} but this node has {len(node.ids)} "
            f"(ids: {listed}; from {node.source})")


def default_lock_dir(uid: int, slurm_job_id: str | None) -> Path:
    """``/tmp/pear-bench-gpu-locks-<uid>``, plus ``/slurm-<job id>`` inside a SLURM job (ids are per job there)."""
    base = Path("/tmp") / f"pear-bench-gpu-locks-{uid}"
    return base / f"slurm-{slurm_job_id}" if slurm_job_id else base


def lock_file_name(gpu_id: str) -> str:
    """``gpu-<id>.lock``, with anything but letters, digits, ``-`` and ``_`` replaced by ``_``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu_id)
    return f"gpu-{safe}.lock"


def backoff_delays(first: float = 0.05, cap: float = 2.0, factor: float = 1.6,
                   rng: random.Random | None = None) -> Iterator[float]:
    """Endless waits between lock attempts: ``first * factor**k`` capped at ``cap``, times U(0.5, 1).

    The jitter keeps jobs that wait for the same GPUs from retrying in lockstep.
    """
    rng = rng or random.Random()
    delay = first
    while True:
        yield delay * rng.uniform(0.5, 1.0)
        delay = min(cap, delay * factor)


def try_acquire(ids: Sequence[str], n: int, try_lock: Callable[[str], int | None],
                release: Callable[[int], None]) -> dict[str, int] | None:
    """Take the first ``n`` ids, in order, whose lock ``try_lock`` obtains; all or nothing.

    Args:
        ids: candidate GPU ids in preference order.
        n: how many to take.
        try_lock: returns a handle for a lock it obtained, or None when another holder has it.
        release: gives a handle back.

    Returns:
        ``{id: handle}`` with exactly ``n`` entries, or None (and nothing held) when fewer than
        ``n`` were free: holding a partial set while waiting for the rest could deadlock two jobs.
    """
    held: dict[str, int] = {}
    for gpu_id in ids:
        if len(held) == n:
            break
        handle = try_lock(gpu_id)
        if handle is not None:
            held[gpu_id] = handle
    if len(held) == n:
        return held
    for handle in held.values():
        release(handle)
    return None


class LockDir:
    """The lock files of one lock directory; a handle is an open file descriptor holding a flock."""

    def __init__(self, path: Path, private: bool):
        """Create ``path`` if needed. ``private``: mode 0700 and refuse a directory another user owns."""
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
            st = path.stat()
        except OSError as e:
            raise GpuRequestError(f"cannot use lock directory {path}: {e}") from e
        if not stat.S_ISDIR(st.st_mode):
            raise GpuRequestError(f"lock directory {path} is not a directory")
        if private and st.st_uid != os.getuid():
            raise GpuRequestError(f"lock directory {path} belongs to uid {st.st_uid}, not to you "
                                  f"(uid {os.getuid()}); pass --lock-dir or set {ENV_LOCK_DIR}")

    def try_lock(self, gpu_id: str) -> int | None:
        """An fd holding an exclusive flock on ``gpu_id``'s lock file, or None when someone else holds it."""
        file = self.path / lock_file_name(gpu_id)
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except PermissionError:  # a shared directory, another user's file: flock needs no write access
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:  # who holds it, for the "waiting" message of others; the flock alone is the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return fd

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # the flock goes with the last descriptor of it (the child may still hold one)

    def holders(self, ids: Sequence[str]) -> str:
        """``"0 (pid 123), 1 (pid 456)"`` for the ids whose lock file names a holder (best effort)."""
        parts = []
        for gpu_id in ids:
            try:
                pid = (self.path / lock_file_name(gpu_id)).read_text().strip()
            except OSError:
                continue
            if pid:
                parts.append(f"{gpu_id} (pid {pid})")
        return ", ".join(parts) or "unknown"


def acquire(node: NodeGpus, n: int, locks: LockDir, timeout: float | None = None,
            log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
            delays: Iterator[float] | None = None) -> dict[str, int]:
    """Wait until ``n`` of ``node``'s GPUs are free and lock them; ``{id: fd}``.

    Raises:
        TimeoutError: ``timeout`` seconds passed without ``n`` free GPUs.
    """
    delays = delays or backoff_delays()
    start = time.monotonic()
    said = False
    while True:
        held = try_acquire(node.ids, n, locks.try_lock, locks.release)
        if held is not None:
            if said:
                log(f"pear-bench gpu-run: got GPU {','.join(held)} after {time.monotonic() - start:.1f} s")
            return held
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"{n} of the GPUs {','.join(node.ids)} were not free within {timeout:g} s "
                               f"(held: {locks.holders(node.ids)}; locks in {locks.path})")
        if not said:
            log(f"pear-bench gpu-run: waiting for {n} free GPU{'s' * (n != 1)} of {len(node.ids)} "
                f"({','.join(node.ids)}; held: {locks.holders(node.ids)}; locks in {locks.path})")
            said = True
        delay = next(delays)
        if timeout is not None:
            delay = min(delay, max(0.0, timeout - waited))
        time.sleep(delay)


def child_environment(env: Mapping[str, str], gpu_ids: Sequence[str], nested_lock_dir: Path) -> dict[str, str]:
    """The command's environment: ``env`` with exactly ``gpu_ids`` visible (see the module docstring)."""
    child = dict(env)
    child["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    if gpu_ids:
        child.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    child[ENV_GPUS] = ",".join(gpu_ids)  # a nested gpu-run shares out these ...
    child[ENV_LOCK_DIR] = str(nested_lock_dir)  # ... among its siblings only
    return child


def exit_status(returncode: int) -> int:
    """A ``Popen.returncode`` as a shell reports it: ``-n`` (killed by signal n) -> ``128 + n``."""
    return 128 - returncode if returncode < 0 else returncode


@functools.cache
def _prctl():
    """libc's prctl, or None off Linux (cached: the child's preexec_fn must not load libraries after fork)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def exit_with_parent(parent_pid: int) -> None:
    """Get SIGTERM (forwarded to the command like any other) when the process that started the wrapper dies.

    The workflow starts the wrapper from a shell; when that shell is killed (by hand, or by
    Snakemake, which signals only the shell of a job it stops inside a failed group), the wrapper and
    the command would otherwise live on as orphans, still writing the outputs of an abandoned job.
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _child_setup(parent_pid: int, saved_mask: set) -> Callable[[], None]:
    """preexec_fn: restore the signal mask and die with SIGTERM if the wrapper dies (Linux prctl)."""
    _prctl()  # looked up before fork (ctypes loading after fork is not safe), used by exit_with_parent after

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        exit_with_parent(parent_pid)

    return setup


def run_command(command: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = ()) -> int:
    """Run ``command`` as a child, forward signals to it, and return its exit status (shell style).

    Signals are received synchronously (blocked, then ``sigtimedwait``) so that the wrapper can
    tell a signal sent to it (forwarded) from one the kernel sent to the whole foreground process
    group, e.g. Ctrl-C (``si_code == SI_KERNEL``: the child got it too; forwarding would deliver it twice).

    Raises:
        OSError: the command cannot be started (the caller maps it to 126/127).
    """
    watched = {*FORWARDED_SIGNALS, signal.SIGCHLD}  # SIGCHLD wakes the loop when the child exits
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    exit_with_parent(os.getppid())
    try:
        proc = subprocess.Popen(list(command), env=dict(env), pass_fds=tuple(pass_fds),
                                preexec_fn=_child_setup(os.getpid(), saved_mask))
        while proc.poll() is None:
            info = signal.sigtimedwait(watched, 1.0)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_code == SI_KERNEL:
                continue
            proc.send_signal(info.si_signo)
        return exit_status(proc.returncode)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run COMMAND with CUDA_VISIBLE_DEVICES set to N GPUs of this node that no other gpu-run holds; "
        "wait until N are free. --gpus 0 runs it with no GPU visible.")
    parser.usage = "pear-bench gpu-run --gpus N [options] -- COMMAND [ARG ...]"
    parser.add_argument("--gpus", type=int, required=True, metavar="N", help="GPUs the command gets (0: none)")
    parser.add_argument("--gpu-ids", default=None, metavar="IDS",
                        help=f"the node's GPU ids, comma-separated (default: ${ENV_GPUS}, else "
                             "$CUDA_VISIBLE_DEVICES, else nvidia-smi, else torch.cuda.device_count())")
    parser.add_argument("--lock-dir", default=None,
                        help=f"lock directory (default: ${ENV_LOCK_DIR}, else /tmp/pear-bench-gpu-locks-<uid>"
                             "[/slurm-<job id>])")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"give up (exit {EXIT_TIMEOUT}) if N GPUs are not free within this time "
                             "(default: wait for ever)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")


def _error(message: str, status: int) -> int:
    print(f"pear-bench gpu-run: error: {message}", file=sys.stderr, flush=True)
    return status


def main(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        return _error("no command given; usage: pear-bench gpu-run --gpus N -- COMMAND [ARG ...]", EXIT_BAD_REQUEST)
    env = os.environ
    if args.lock_dir is not None or ENV_LOCK_DIR in env:
        lock_path, private = Path(args.lock_dir if args.lock_dir is not None else env[ENV_LOCK_DIR]), False
    else:
        lock_path, private = default_lock_dir(os.getuid(), env.get("SLURM_JOB_ID")), True
    nested_lock_dir = lock_path / f"run-{os.getpid()}"

    held: dict[str, int] = {}
    try:
        if args.gpus != 0:  # a CPU job needs neither the node's GPU list nor locks
            node = find_node_gpus(args.gpu_ids, env)
            check_request(args.gpus, node)
            held = acquire(node, args.gpus, LockDir(lock_path, private), timeout=args.timeout)
        child_env = child_environment(env, list(held), nested_lock_dir)
        try:
            return run_command(command, child_env, pass_fds=list(held.values()))
        except FileNotFoundError:
            return _error(f"command not found: {command[0]}", EXIT_NOT_FOUND)
        except PermissionError:
            return _error(f"command not executable: {command[0]}", EXIT_NOT_EXECUTABLE)
    except GpuRequestError as e:
        return _error(str(e), EXIT_BAD_REQUEST)
    except TimeoutError as e:
        return _error(str(e), EXIT_TIMEOUT)
    except KeyboardInterrupt:  # Ctrl-C while waiting for GPUs, before any child ran
        return 128 + signal.SIGINT
    finally:
        for fd in held.values():
            LockDir.release(fd)
        shutil.rmtree(nested_lock_dir, ignore_errors=True)  # only exists if the command nested a gpu-run
