"""The `pear-bench` command line, run as a user runs it (a subprocess)."""

import json
import subprocess
import sys


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pear_bench", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "bench" in out.stdout


def test_unknown_subcommand_is_a_clear_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice: 'frobnicate'" in out.stderr


def test_bench_step_prints_each_variant_with_ratios(tmp_path):
    out = run_cli("bench", "step", "--vocab-size", "300", "--seq-len", "32", "--steps", "2", "--warmup", "1",
                  "--variants", "hf", "nll", "pear-block", "--json", str(tmp_path / "step.json"))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()}
    assert {"hf", "nll", "pear-block"} <= rows.keys()
    assert rows["hf"][3] == "1.000" and rows["nll"][5] == "1.000"  # each ratio column's own baseline
    data = json.loads((tmp_path / "step.json").read_text())
    assert [r["variant"] for r in data["results"]] == ["hf", "nll", "pear-block"]
    assert all(r["median_s"] > 0 and r["peak_bytes"] > 0 for r in data["results"])
    assert data["settings"]["seq_len"] == 32
