"""The workflow run for real on a micro grid (tests/workflow/micro.py): done, killed mid-SFT and resumed,
rerun as a no-op, and one arm's settings changed (only that arm's jobs rerun).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml
from micro import SFT_RUN, assert_sft_resumed, interrupt_after_sft_checkpoint, micro_grid, snakemake


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEAR_BENCH_GPUS": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("micro")


def test_interrupted_mid_sft_then_rerun_resumes_without_cleanup(teacher, workdir):
    configfile = workdir / "micro.yaml"
    configfile.write_text(yaml.safe_dump(micro_grid(str(teacher))))
    # Only the plain-SFT arm, so the kill lands while it trains.
    proc = subprocess.Popen(snakemake(workdir, configfile, f"{SFT_RUN}/run_config.json"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PEAR_BENCH_GPUS": ""})
    checkpoints = interrupt_after_sft_checkpoint(proc, workdir)

    out = run(snakemake(workdir, configfile))  # the whole grid, with no cleanup in between
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_sft_resumed(workdir, checkpoints)
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
