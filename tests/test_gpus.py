"""`pear-bench gpu-run`: exclusive GPU ids for concurrent jobs, checked on what the children record.

The wrappers run as a user runs them (subprocesses of ``python -m pear_bench``) on a pretend node
with ``PEAR_BENCH_GPUS=0,1,2,3`` and a temporary lock directory. The oracle is independent of the
locking code: each child records the ``CUDA_VISIBLE_DEVICES`` it was given and the interval it ran
in, and the test checks those intervals, per GPU id, for overlaps.
"""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pear_bench.gpus import (
    GpuRequestError,
    LockDir,
    NodeGpus,
    backoff_delays,
    check_request,
    default_lock_dir,
    exit_status,
    find_node_gpus,
    lock_file_name,
    parse_gpu_ids,
    try_acquire,
)

NODE = "0,1,2,3"


def wrapper_env(lock_dir, gpus=NODE):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(PEAR_BENCH_GPUS=gpus, PEAR_BENCH_GPU_LOCK_DIR=str(lock_dir))
    return env


def gpu_run(n, *command, extra=()):
    return [sys.executable, "-m", "pear_bench", "gpu-run", "--gpus", str(n), *extra, "--", *command]


def python_child(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


RECORDER = """
    import json, os, sys, time
    start = time.monotonic()   # CLOCK_MONOTONIC: one clock for every process of the machine
    time.sleep(float(sys.argv[2]))
    end = time.monotonic()
    with open(sys.argv[1], "w") as f:
        json.dump({"cuda": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": end}, f)
"""


def overlapping_uses(records):
    """(gpu id, record a, record b) for every pair of children that held one id at the same time."""
    by_gpu = {}
    for r in records:
        for gpu_id in r["cuda"].split(","):
            by_gpu.setdefault(gpu_id, []).append(r)
    clashes = []
    for gpu_id, uses in by_gpu.items():
        uses = sorted(uses, key=lambda r: r["start"])
        for a, b in zip(uses, uses[1:]):
            if b["start"] < a["end"]:
                clashes.append((gpu_id, a, b))
    return clashes


def test_overlap_check_finds_a_shared_gpu():
    # The oracle itself: two children on GPU 1 at overlapping times must be reported.
    records = [{"cuda": "0,1", "start": 0.0, "end": 1.0}, {"cuda": "1", "start": 0.5, "end": 2.0},
               {"cuda": "2", "start": 0.2, "end": 3.0}]
    assert [c[0] for c in overlapping_uses(records)] == ["1"]
    assert overlapping_uses(records[::2]) == []


def test_concurrent_wrappers_never_share_a_gpu(tmp_path):
    rng = random.Random(0)
    wants = [rng.choice([1, 2]) for _ in range(12)]
    env = wrapper_env(tmp_path / "locks")
    procs = [subprocess.Popen(gpu_run(n, *python_child(RECORDER), str(tmp_path / f"child{i}.json"), "0.4"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, n in enumerate(wants)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(wants), [err for _, err in outs]

    records = [json.loads((tmp_path / f"child{i}.json").read_text()) for i in range(len(wants))]
    for n, r in zip(wants, records):
        ids = r["cuda"].split(",")
        assert len(ids) == n and len(set(ids)) == n and set(ids) <= set(NODE.split(","))
    assert overlapping_uses(records) == []
    # The run exercised what it claims: jobs ran side by side, and some had to wait for GPUs.
    assert any(a["start"] < b["end"] and b["start"] < a["end"] for a in records for b in records if a is not b)
    assert any("waiting for" in err for _, err in outs)


def test_sigkilled_wrapper_releases_its_gpus(tmp_path):
    env = wrapper_env(tmp_path / "locks")
    ready, terminated = tmp_path / "ready", tmp_path / "terminated"
    holder = subprocess.Popen(gpu_run(4, *python_child(f"""
        import signal, sys, time
        def on_term(*_):
            open({str(terminated)!r}, "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)), env=env)
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.05)

    # While it runs, all four GPUs are taken: a request for one times out.
    busy = subprocess.run(gpu_run(1, "true", extra=["--timeout", "0.5"]), env=env, capture_output=True, text=True)
    assert busy.returncode == 75 and "not free within" in busy.stderr

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    after = subprocess.run(gpu_run(4, *python_child("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"),
                                   extra=["--timeout", "20"]), env=env, capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == NODE
    assert terminated.exists()  # the orphaned command was told to stop (PR_SET_PDEATHSIG)


def test_more_gpus_than_the_node_has_is_a_clear_error(tmp_path):
    out = subprocess.run(gpu_run(5, "true"), env=wrapper_env(tmp_path / "locks"), capture_output=True, text=True)
    assert out.returncode == 2
    assert "asked for 5 GPUs but this node has 4" in out.stderr


@pytest.mark.parametrize("code, status", [("raise SystemExit(3)", 3), ("pass", 0),
                                          ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137)])
def test_exit_status_of_the_command_is_passed_through(tmp_path, code, status):
    out = subprocess.run(gpu_run(1, *python_child(code)), env=wrapper_env(tmp_path / "locks"))
    assert out.returncode == status


def test_sigterm_reaches_the_command(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen(gpu_run(2, *python_child(f"""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)), env=wrapper_env(tmp_path / "locks"))
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 42


def test_zero_gpus_runs_at_once_with_no_gpu_visible(tmp_path):
    locks = LockDir(tmp_path / "locks", private=False)
    held = [locks.try_lock(g) for g in NODE.split(",")]  # every GPU busy
    assert all(fd is not None for fd in held)
    out = subprocess.run(gpu_run(0, *python_child("import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"),
                                 extra=["--timeout", "5"]),
                         env=wrapper_env(tmp_path / "locks"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "''"
    for fd in held:
        LockDir.release(fd)


def test_nested_gpu_run_shares_out_the_parents_gpus(tmp_path):
    # Three inner jobs of one GPU each inside an outer job of two: they may use only the outer
    # job's two GPUs, and never one at the same time.
    inner = [shlex.join(gpu_run(1, *python_child(RECORDER), str(tmp_path / f"inner{i}.json"), "0.3"))
             for i in range(3)]
    outer = gpu_run(2, "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; ' + " & ".join(inner) + " & wait")
    out = subprocess.run(outer, env=wrapper_env(tmp_path / "locks"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    outer_ids = out.stdout.split()[0].split(",")
    records = [json.loads((tmp_path / f"inner{i}.json").read_text()) for i in range(3)]
    assert len(outer_ids) == 2 and all(r["cuda"] in outer_ids for r in records)
    assert overlapping_uses(records) == []
    assert not any(p.name.startswith("run-") for p in (tmp_path / "locks").iterdir())  # cleaned up


# ---- pure logic ----

def test_parse_gpu_ids_reads_cuda_visible_devices_lists():
    assert parse_gpu_ids("0, 1,3,") == ("0", "1", "3")
    assert parse_gpu_ids("") == ()
    assert parse_gpu_ids("2,-1,3") == ("2",)  # CUDA stops at an invalid index
    assert parse_gpu_ids("GPU-8a2f,MIG-1c") == ("GPU-8a2f", "MIG-1c")
    with pytest.raises(GpuRequestError, match="twice"):
        parse_gpu_ids("0,1,0")


def test_node_gpus_come_from_the_first_source_that_applies():
    probe = lambda: ("0", "1", "2")  # noqa: E731
    env = {"PEAR_BENCH_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "6"}
    assert find_node_gpus("7", env, probe) == NodeGpus(("7",), "--gpu-ids")
    assert find_node_gpus(None, env, probe).ids == ("4", "5")
    assert find_node_gpus(None, {"CUDA_VISIBLE_DEVICES": "6"}, probe).ids == ("6",)
    assert find_node_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}, probe).ids == ()  # set and empty: no GPUs
    assert find_node_gpus(None, {}, probe).ids == ("0", "1", "2")


def test_check_request_names_both_numbers():
    node = NodeGpus(("0", "1"), "CUDA_VISIBLE_DEVICES")
    check_request(2, node)
    with pytest.raises(GpuRequestError, match=r"asked for 3 GPUs but this node has 2 \(ids: 0,1; from CUDA"):
        check_request(3, node)
    with pytest.raises(GpuRequestError, match=">= 0"):
        check_request(-1, node)


def test_try_acquire_takes_the_first_free_ids_or_nothing():
    busy = {"1"}
    released = []
    lock = lambda g: None if g in busy else int(g)  # noqa: E731
    assert try_acquire(["0", "1", "2", "3"], 2, lock, released.append) == {"0": 0, "2": 2}
    busy = {"0", "1", "2"}
    assert try_acquire(["0", "1", "2", "3"], 2, lock, released.append) is None
    assert released == [3]  # the one it could take was given back


def test_lock_dir_and_file_names():
    assert str(default_lock_dir(1000, None)) == "/tmp/pear-bench-gpu-locks-1000"
    assert str(default_lock_dir(1000, "4242")) == "/tmp/pear-bench-gpu-locks-1000/slurm-4242"
    assert lock_file_name("3") == "gpu-3.lock"
    assert lock_file_name("MIG-ab/c:d") == "gpu-MIG-ab_c_d.lock"


def test_lock_is_exclusive_until_released(tmp_path):
    locks = LockDir(tmp_path, private=True)
    fd = locks.try_lock("0")
    assert fd is not None and locks.try_lock("0") is None  # a second open file description is refused
    assert locks.holders(["0"]) == f"0 (pid {os.getpid()})"
    LockDir.release(fd)
    fd = locks.try_lock("0")
    assert fd is not None
    LockDir.release(fd)


def test_backoff_grows_to_the_cap_with_jitter():
    delays = backoff_delays(first=0.1, cap=1.0, factor=2.0, rng=random.Random(0))
    got = [next(delays) for _ in range(10)]
    bases = [0.1, 0.2, 0.4, 0.8] + [1.0] * 6
    assert all(0.5 * b <= d <= b for d, b in zip(got, bases))


def test_exit_status_follows_the_shell():
    assert exit_status(0) == 0 and exit_status(3) == 3 and exit_status(-9) == 137
