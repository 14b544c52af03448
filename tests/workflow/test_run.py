"""The workflow run for real on a micro grid: done, killed mid-SFT and resumed, rerun as a no-op,
and one arm's settings changed (only that arm's jobs rerun).

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

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SFT_STEPS, SAVE_STEPS = 120, 10


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


def snakemake(workdir: pathlib.Path, configfile: pathlib.Path, *args: str, **popen) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--cores", "2", *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEAR_BENCH_GPUS": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("micro")


def test_interrupted_mid_sft_then_rerun_resumes_without_cleanup(teacher, workdir):
    configfile = workdir / "micro.yaml"
    configfile.write_text(yaml.safe_dump(micro_grid(str(teacher))))
    sft_run = workdir / "results/micro/sft/student/chain_sum/sft"
    # Only the plain-SFT arm, so the kill lands while it trains.
    target = "results/micro/sft/student/chain_sum/sft/run_config.json"
    proc = subprocess.Popen(snakemake(workdir, configfile, target), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PEAR_BENCH_GPUS": ""})
    deadline = time.monotonic() + 600
    # Wait for a complete checkpoint (its run record is written last), so there is one to resume from.
    while not list(sft_run.glob("checkpoint-*/run_config.json")):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no SFT checkpoint within 10 minutes"
        time.sleep(0.05)
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group, Snakemake and its job.
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not (sft_run / "run_config.json").exists(), "SFT finished before the kill; the test needs a longer run"
    # The newest complete one; a newer checkpoint cut short by the interrupt must not be resumed from.
    checkpoints = sorted(int(p.parent.name.split("-")[1]) for p in sft_run.glob("checkpoint-*/run_config.json"))

    out = run(snakemake(workdir, configfile))  # the whole grid, with no cleanup in between
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = json.loads((sft_run / "trainer_state.json").read_text())
    assert state["global_step"] == SFT_STEPS
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert len(steps) == len(set(steps)), steps  # resuming did not log any step twice
    # It resumed (the rerun's log replaces the interrupted one's): from the newest checkpoint left behind.
    log = (workdir / "logs/micro/sft/student/chain_sum/sft.log").read_text()
    assert re.search(rf"resuming from \S*checkpoint-{checkpoints[-1]}\b", log), log[-2000:]
    for path in ("results/micro/metrics.csv", "results/micro/tables/main.md"):
        assert (workdir / path).is_file(), path


def test_rerun_with_nothing_changed_does_nothing(teacher, workdir):
    configfile = workdir / "micro.yaml"
    out = run(snakemake(workdir, configfile, "--dry-run"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-3000:]


def test_changing_one_arm_reruns_only_what_depends_on_it(teacher, workdir):
    grid = micro_grid(str(teacher))
    grid["methods"]["pear-token"]["gamma"] = 0.9
    configfile = workdir / "micro-changed.yaml"
    configfile.write_text(yaml.safe_dump(grid))
    out = run(snakemake(workdir, configfile, "--dry-run", "--quiet", "rules"))
    assert out.returncode == 0, out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, flags=re.M))
    # pear-token's SFT, its GRPO run, their two evaluations, and the tables; nothing of the sft arm.
    assert counts == {"sft": "1", "rl": "1", "evaluate": "2", "tables": "1", "all": "1", "total": "6"}, out.stdout


def test_run_ends_with_the_reproducibility_verdict(teacher, workdir, tmp_path):
    import shutil

    reference = tmp_path / "reference"
    (reference / "tables").mkdir(parents=True)
    for name in ("metrics.csv", "metrics_ci.csv", "tables/main.md", "tables/main.tex", "tables/chain_sum.md",
                 "tables/chain_sum.tex"):
        shutil.copy(workdir / "results/micro" / name, reference / name)
    grid = {**micro_grid(str(teacher)), "reference": str(reference)}
    configfile = workdir / "micro-reference.yaml"
    configfile.write_text(yaml.safe_dump(grid))
    out = run(snakemake(workdir, configfile))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Only the comparison ran (the grid itself was done), and its verdict reached the terminal.
    assert re.search(r"^reproduce\s+1$", out.stdout + out.stderr, flags=re.M), out.stderr[-3000:]
    assert "Reproducibility: REPRODUCED EXACTLY" in out.stdout + out.stderr
    assert "Nothing to be done" in run(snakemake(workdir, configfile, "--dry-run")).stdout

    # A reference that disagrees in one cell: the comparison reruns, names the cell, and the run still succeeds.
    lines = (reference / "metrics.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[-1] = repr(float(fields[-1]) + 0.5)
    (reference / "metrics.csv").write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    out = run(snakemake(workdir, configfile))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Reproducibility: DIFFERS" in out.stdout + out.stderr and "| 0.5 | differs |" in out.stdout + out.stderr
    verdict = json.loads((workdir / "results/micro/reproducibility.json").read_text())
    assert verdict["verdict"] == "differs" and verdict["cells"]["differs"] == 1
