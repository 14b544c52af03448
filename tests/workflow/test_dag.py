"""The Snakemake workflow: every grid config validates and its DAG builds (dry run, no jobs run)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "workflows" / "config").glob("*.yaml"))
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_builds_the_dag(config, tmp_path):
    out = subprocess.run(
        [*SNAKEMAKE, "--dry-run", "--cores", "1", "--configfile", str(config), "--directory", str(ROOT),
         "--snakefile", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bench_step" in out.stdout  # the DAG reaches its jobs


def test_config_violating_the_schema_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: mini\nbench: {step_args: '--steps 1'}\nmodles: []\n")  # a typo'd key
    out = subprocess.run(
        [*SNAKEMAKE, "--dry-run", "--cores", "1", "--configfile", str(bad), "--snakefile", str(ROOT / "Snakefile")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode != 0
    assert "modles" in out.stdout + out.stderr
