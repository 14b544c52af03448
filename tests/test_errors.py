"""Expected errors through the CLI, run as a user runs it: one line on stderr that names what is
wrong and where (after any progress bars), exit code 2, no traceback. Each case is a mistake a user
makes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pear_bench.problems import make_record

PROBLEM = make_record("p0", "chain_sum", "What is 1 + 2?", "3", metadata={"expression": "1 + 2"})


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pear_bench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(out, command, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    # Progress bars (datasets, transformers) may come first; the error is the one last line.
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(f"pear-bench {command}: error: "), out.stderr[-2000:]
    assert sum("error" in line.lower() for line in lines) == 1, out.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    return path


def test_bad_config_value(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("sft:\n  gamma: 1.5\n")
    out = run_cli("sft", "--config", config, "--model", tmp_path, "--dataset", tmp_path / "d.jsonl",
                  "--output_dir", tmp_path / "out")
    assert_one_line_error(out, "sft", "sft.gamma must be in (0, 1]")


def test_bad_record_in_sft_dataset(teacher, tmp_path):
    dataset = tmp_path / "bad.jsonl"
    # Two response tokens but one behaviour logprob: a length mismatch in record "r1".
    dataset.write_text(json.dumps({"id": "r1", "prompt_ids": [1, 2], "response_ids": [3, 4],
                                   "behavior_logprobs": [-0.5]}) + "\n")
    out = run_cli("sft", "--model", teacher, "--dataset", dataset, "--output_dir", tmp_path / "out",
                  "--method", "pear-token", "--max_steps", 1)
    assert_one_line_error(out, "sft", "r1")


def test_a_text_trace_without_a_response_in_score(teacher, tmp_path):
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"id": "t1", "prompt": "hi", "response": "there"}) + "\n"
                      + json.dumps({"id": "t2", "prompt": "hi"}) + "\n")
    out = run_cli("score", traces, "--model", teacher, "--output", tmp_path / "scored.jsonl")
    assert_one_line_error(out, "score", "trace 1 (id 't2'): no response text")


@pytest.mark.parametrize("command", ["eval", "collect"])
def test_missing_problems_file(command, teacher, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    extra = ["--output", tmp_path / ("out" if command == "eval" else "sft.jsonl")]
    out = run_cli(command, "--model", teacher, "--problems", missing, *extra)
    assert_one_line_error(out, command, str(missing), "No such file")


@pytest.mark.parametrize("model, needle", [("no/such/model", "no such directory 'no/such/model'"),
                                           (".", "is not a model directory")])
def test_model_path_that_is_no_model(model, needle, problems, tmp_path):
    out = run_cli("eval", "--model", model, "--problems", problems, "--output", tmp_path / "out")
    assert_one_line_error(out, "eval", "--model", needle)


def test_bad_flag_value(problems, tmp_path):
    out = run_cli("collect", "--problems", problems, "--model", "m", "--output", tmp_path / "o.jsonl", "--n", "abc")
    assert_one_line_error(out, "collect", "argument --n: invalid int value: 'abc'")


def test_output_exists_without_overwrite(teacher, problems, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("{}")
    out = run_cli("eval", "--model", teacher, "--problems", problems, "--output", out_dir)
    assert_one_line_error(out, "eval", "metrics.json", "--overwrite")


def test_set_value_mangled_by_the_shell(tmp_path):
    # What a shell makes of --set operators=["+","-"]: the quotes are gone.
    out = run_cli("make-data", "game", "basic_arithmetic", "--seed", 0, "--train-size", 4, "--eval-size", 2,
                  "--set", "operators=[+,-]", "--out", tmp_path / "d")
    assert_one_line_error(out, "make-data", "--set operators=[+,-]", """--set 'operators=["+","-"]'""")
    assert not (tmp_path / "d").exists()


def test_bad_metrics_csv_in_tables(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("model,value\nstudent,0.5\n")
    out = run_cli("tables", "--from-csv", csv, "--out", tmp_path / "out")
    assert_one_line_error(out, "tables", str(csv), "columns must be exactly")
