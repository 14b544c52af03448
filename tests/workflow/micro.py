"""The micro grid the workflow tests run for real (locally in test_run.py, on SLURM in test_slurm.py), and the
steps they share: the Snakemake command, its job stats, Ctrl-C once SFT has a checkpoint, and the checks of
the resume.

The micro grid uses the session's tiny `teacher` model (tests/conftest.py) as teacher and student,
a chain_sum split of a few problems, two arms, one RL seed and budgets of a few steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SFT_STEPS, SAVE_STEPS = 120, 10
# The plain-SFT arm's run directory and log, relative to the workdir: the job the interrupt lands in.
SFT_RUN = "results/micro/sft/student/chain_sum/sft"
SFT_LOG = "logs/micro/sft/student/chain_sum/sft.log"


def micro_grid(model: str) -> dict:
    return {
        "grid": "micro",
        "data": {"chain_sum": "game chain_sum --seed 0 --train-size 12 --eval-size 6 --set min_terms=2 "
                              "--set max_terms=2 --set min_digits=1 --set max_digits=1"},
        "models": {"teacher": model, "student": model},
        "tasks": {"chain_sum": {"train": "chain_sum/train.jsonl", "eval": "chain_sum/eval.jsonl",
                                "teacher": "teacher"}},
        "students": ["student"],
        "methods": {"sft": {"method": "sft"}, "pear-token": {"method": "pear-token"}},
        "sft_seed": 0,
        "rl_seeds": [1],
        "collect": {"n": 2, "temperature": 1.0, "max_new_tokens": 12, "keep": "all", "seed": 0},
        "evaluation": {"samples": 2, "ks": [1, 2], "temperature": 1.0, "max_new_tokens": 12, "seed": 0},
        "sft": {"max_steps": SFT_STEPS, "save_steps": SAVE_STEPS, "per_device_train_batch_size": 4,
                "learning_rate": 1.0e-4, "logging_steps": 5},
        "rl": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 4,
               "max_completion_length": 12, "generation_backend": "hf", "save_steps": 1, "logging_steps": 1},
        "resources": {"default": {"gpu": 0, "threads": 1}},
    }


def snakemake(workdir: pathlib.Path, configfile: pathlib.Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--cores", "2", *args]


def job_counts(stdout: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (the first one printed) as {rule: jobs, "total": jobs}."""
    table = stdout.split("Job stats:")[1].split("\n\n")[0]
    return {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def interrupt_after_sft_checkpoint(proc: subprocess.Popen, workdir: pathlib.Path) -> list[int]:
    """Ctrl-C a Snakemake run started with `start_new_session=True` once the plain-SFT job has a checkpoint.

    Returns the steps of the complete checkpoints left behind, oldest first. Fails if Snakemake ends
    first, if no checkpoint appears within 10 minutes, or if SFT finished before the interrupt landed.
    """
    sft_run = workdir / SFT_RUN
    deadline = time.monotonic() + 600
    # Wait for a complete checkpoint (its run record is written last), so there is one to resume from.
    while not list(sft_run.glob("checkpoint-*/run_config.json")):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no SFT checkpoint within 10 minutes"
        time.sleep(0.05)
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group, Snakemake and its local jobs.
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not (sft_run / "run_config.json").exists(), "SFT finished before the kill; the test needs a longer run"
    # The newest complete one; a newer checkpoint cut short by the interrupt must not be resumed from.
    return sorted(int(p.parent.name.split("-")[1]) for p in sft_run.glob("checkpoint-*/run_config.json"))


def assert_sft_resumed(workdir: pathlib.Path, checkpoints: list[int]) -> None:
    """The rerun finished SFT from the newest complete checkpoint, without logging any step twice."""
    state = json.loads((workdir / SFT_RUN / "trainer_state.json").read_text())
    assert state["global_step"] == SFT_STEPS
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert len(steps) == len(set(steps)), steps
    log = (workdir / SFT_LOG).read_text()  # the rerun's log replaces the interrupted one's
    assert re.search(rf"resuming from \S*checkpoint-{checkpoints[-1]}\b", log), log[-2000:]
