"""`pear-bench compare`: a run's results against a reference, checked on hand-made result directories
whose differences are known in advance."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from pear_bench.compare import cell_status, compare

HEADER = "model,task,method,stage,seed,k,metric,value\n"
CI_HEADER = "model,task,method,stage,seed,k,metric,ci_low,ci_high\n"
ROWS = ["student,chain_sum,base,base,,1,pass@1,0.25\n",
        "student,chain_sum,sft,sft,,1,pass@1,0.5\n",
        "student,chain_sum,sft,rl,1,1,pass@1,0.625\n"]
CI_ROWS = ["student,chain_sum,base,base,,1,pass@1,0.2,0.3\n",
           "student,chain_sum,sft,rl,1,1,pass@1,,\n"]  # one RL seed: no interval


def write_results(directory, rows=ROWS, ci_rows=CI_ROWS, table="| method | pass@1 |\n"):
    (directory / "tables").mkdir(parents=True)
    (directory / "metrics.csv").write_text(HEADER + "".join(rows))
    (directory / "metrics_ci.csv").write_text(CI_HEADER + "".join(ci_rows))
    (directory / "tables" / "main.md").write_text(table)
    return directory


@pytest.fixture
def reference(tmp_path):
    return write_results(tmp_path / "reference")


def statuses(report):
    return {(c["key"]["method"], c["key"]["stage"], c["column"]): c["status"] for c in report["not_exact"]}


def test_identical_results_are_reproduced_exactly(reference, tmp_path):
    report = compare(write_results(tmp_path / "run"), reference)
    # 3 values + 2 rows x 2 interval bounds; the empty interval counts as equal to itself.
    assert report["cells"] == {"exact": 7, "within": 0, "differs": 0, "missing": 0, "extra": 0, "total": 7}
    assert report["verdict"] == "reproduced exactly" and report["max_abs_diff"] == 0.0
    assert report["tables"] == {"tables/main.md": "identical"}


def test_moved_missing_and_extra_cells_are_named(reference, tmp_path):
    run_rows = ["student,chain_sum,base,base,,1,pass@1,0.255\n",      # moved by 0.005
                "student,chain_sum,sft,rl,1,1,pass@1,0.625\n",        # sft/sft row dropped
                "student,chain_sum,pear-token,sft,,1,pass@1,0.5\n"]   # a row the reference lacks
    run = write_results(tmp_path / "run", rows=run_rows)
    report = compare(run, reference, tolerance=0.0)
    assert statuses(report) == {("base", "base", "value"): "differs", ("sft", "sft", "value"): "missing",
                                ("pear-token", "sft", "value"): "extra"}
    assert report["verdict"] == "differs"
    assert report["max_abs_diff"] == pytest.approx(0.005)
    # A tolerance excuses the moved cell, never a missing or an extra one.
    loose = compare(run, reference, tolerance=0.01)
    assert statuses(loose)[("base", "base", "value")] == "within" and loose["verdict"] == "differs"


def test_within_tolerance_is_its_own_verdict(reference, tmp_path):
    run = write_results(tmp_path / "run", rows=[ROWS[0].replace("0.25", "0.26")] + ROWS[1:],
                        table="| method | pass@1 (moved) |\n")
    assert compare(run, reference, tolerance=0.0)["verdict"] == "differs"
    report = compare(run, reference, tolerance=0.02)
    # The table's text moved with the cell: excused, since every cell is within the tolerance.
    assert report["verdict"] == "reproduced within tolerance" and report["tables"]["tables/main.md"] == "differs"


def test_a_changed_table_with_exact_cells_is_not_reproduced(reference, tmp_path):
    report = compare(write_results(tmp_path / "run", table="| method | pass@8 |\n"), reference)
    assert report["cells"]["exact"] == report["cells"]["total"] and report["verdict"] == "differs"


def test_interval_present_on_one_side_only_differs(reference, tmp_path):
    run = write_results(tmp_path / "run", ci_rows=[CI_ROWS[0], "student,chain_sum,sft,rl,1,1,pass@1,0.5,0.7\n"])
    report = compare(run, reference, tolerance=1.0)
    assert statuses(report) == {("sft", "rl", "ci_low"): "differs", ("sft", "rl", "ci_high"): "differs"}


def test_cell_status_rules():
    assert cell_status(0.5, 0.5, 0.0) == "exact"
    assert cell_status(math.nan, math.nan, 0.0) == "exact"
    assert cell_status(0.5, 0.52, 0.02) == "within" and cell_status(0.5, 0.5201, 0.02) == "differs"
    assert cell_status(None, 0.5, 1.0) == "missing" and cell_status(0.5, None, 1.0) == "extra"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pear_bench", "compare", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_written_report(reference, tmp_path):
    same = write_results(tmp_path / "same")
    out = cli("--run", same, "--reference", reference)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Reproducibility: REPRODUCED EXACTLY — 7 of 7 cells exact")
    written = json.loads((same / "reproducibility.json").read_text())
    assert written["verdict"] == "reproduced exactly"
    assert (same / "reproducibility.md").read_text().startswith("Reproducibility: REPRODUCED EXACTLY")

    moved = write_results(tmp_path / "moved", rows=[ROWS[0].replace("0.25", "0.375")] + ROWS[1:])
    out = cli("--run", moved, "--reference", reference)
    assert out.returncode == 1 and "DIFFERS" in out.stdout
    assert "method=base stage=base k=1 metric=pass@1 | value | 0.375 | 0.25 | 0.125 | differs" in out.stdout
    assert cli("--run", moved, "--reference", reference, "--exit-zero").returncode == 0


def test_cli_bad_input_is_one_line(reference, tmp_path):
    out = cli("--run", tmp_path / "nothing-here", "--reference", reference)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "nothing-here/metrics.csv" in out.stderr
    out = cli("--run", reference, "--reference", tmp_path / "no-reference")
    assert out.returncode == 2 and "no-reference: no reference results" in out.stderr
