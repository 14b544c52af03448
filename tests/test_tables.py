"""`pear-bench tables`: metrics.json -> metrics.csv, the paper-layout tables against hand-written golden
files, means and t-intervals over seeds against the textbook formula, and the plots.

Golden data (tests/data/tables_small/): metrics.csv was written by hand; chain_sum.md, chain_sum.tex and
main.md were written by hand from it. Their numbers, worked by hand: sft's post-RL pass@1 on chain_sum
is 0.50, 0.52, 0.54 -> mean 0.520, s = 0.02, h = 4.302653 * 0.02 / sqrt(3) = 0.0497 -> "0.520 ± 0.050";
on countdown two seeds 0.30, 0.32 -> s = 0.01414, h = 12.706205 * 0.01414 / sqrt(2) = 0.127.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pear_bench import cli
from pear_bench.plots import diagnostic_keys, read_log_history
from pear_bench.tables import (COLUMNS, cell_summaries, collect_metrics, method_rank, metrics_rows,
                               read_metrics_csv, seed_mean_ci, write_tables)

GOLDEN = Path(__file__).parent / "data" / "tables_small"
T_975 = {1: 12.706205, 2: 4.302653, 4: 2.776445}  # Student t quantiles t_{0.975, dof}, from a table


def test_golden_tables_are_rendered_exactly(tmp_path, capsys):
    argv = ["tables", "--from-csv", str(GOLDEN / "metrics.csv"), "--out", str(tmp_path),
            "--method-order", "pear-token", "--no-plots"]
    assert cli.main(argv) == 0
    for name in ("chain_sum.md", "chain_sum.tex", "main.md"):
        assert (tmp_path / "tables" / name).read_text() == (GOLDEN / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "chain_sum.md", "chain_sum.tex", "countdown.md", "countdown.tex", "main.md", "main.tex"]
    assert not (tmp_path / "metrics.csv").exists()  # --from-csv rewrites tables only
    countdown = (tmp_path / "tables" / "countdown.md").read_text()
    assert "## student" in countdown and "## teacher" not in countdown  # the teacher has no countdown results
    assert "tables" in capsys.readouterr().out


@pytest.mark.parametrize("values", [[0.41, 0.47, 0.52], [0.1, 0.15, 0.12, 0.3, 0.22], [0.6, 0.64]])
def test_mean_and_interval_over_seeds_follow_the_t_formula(values):
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    got_mean, half, got_n = seed_mean_ci(values)
    assert got_n == n and got_mean == pytest.approx(mean, abs=1e-15)
    assert half == pytest.approx(T_975[n - 1] * s / math.sqrt(n), rel=1e-6)


def test_one_seed_has_no_interval():
    assert seed_mean_ci([0.4]) == (0.4, None, 1)


def test_cell_summaries_of_the_golden_data():
    summary = cell_summaries(read_metrics_csv(GOLDEN / "metrics.csv")).set_index(
        ["model", "task", "method", "column", "metric"])
    row = summary.loc[("student", "chain_sum", "pear-token", "rl", "pass@1")]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.58)
    assert row["half_width"] == pytest.approx(4.302653 * 0.03 / math.sqrt(3), rel=1e-6)
    base = summary.loc[("student", "chain_sum", "base", "sft", "pass@8")]  # base values sit in the post-SFT column
    assert base["n"] == 1 and base["mean"] == 0.6


def test_rows_are_base_then_sft_then_the_given_order_then_alphabetical():
    methods = ["pear-token", "dft", "sft", "base", "iw-sft"]
    assert method_rank(methods) == ["base", "sft", "dft", "iw-sft", "pear-token"]
    assert method_rank(methods, ["pear-token", "absent"]) == ["base", "sft", "pear-token", "dft", "iw-sft"]


def eval_result(labels, values, task="chain_sum", model="out/some/checkpoint"):
    """A metrics.json as `pear-bench eval` writes it (the fields `tables` reads, and some it ignores)."""
    return {"labels": labels, "model": model, "task": task, "num_problems": 10, "samples_per_problem": 8,
            "metrics": [{"metric": name, "k": k, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
                        for (name, k), v in zip([("pass@1", 1), ("pass@8", 8), ("avg@8", 8)], values)]}


def write_results(directory, results):
    paths = []
    for i, result in enumerate(results):
        path = directory / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
        paths.append(str(path))
    return paths


def test_collect_writes_the_long_csv_from_the_labels(tmp_path):
    paths = write_results(tmp_path, [
        eval_result({"model": "student", "method": "pear-token", "stage": "rl", "seed": "2"}, [0.5, 0.75, 0.5]),
        eval_result({"model": "student", "stage": "base", "seed": "7", "task": "chain_sum"}, [0.1, 0.25, 0.1]),
        eval_result({"model": "student", "method": "pear-token", "stage": "rl", "seed": "10"}, [0.5, 0.625, 0.5]),
        eval_result({"model": "student", "method": "pear-token", "stage": "sft"}, [0.25, 0.5, 0.25]),
        eval_result({"method": "sft", "stage": "sft", "seed": "0"}, [0.3, 0.4, 0.3], model="models/student"),
    ])
    out = tmp_path / "results"
    assert cli.main(["tables", "--metrics", *paths, "--out", str(out), "--no-plots"]) == 0
    expected = """\
model,task,method,stage,seed,k,metric,value
models/student,chain_sum,sft,sft,0,1,pass@1,0.3
models/student,chain_sum,sft,sft,0,8,avg@8,0.3
models/student,chain_sum,sft,sft,0,8,pass@8,0.4
student,chain_sum,base,base,,1,pass@1,0.1
student,chain_sum,base,base,,8,avg@8,0.1
student,chain_sum,base,base,,8,pass@8,0.25
student,chain_sum,pear-token,sft,,1,pass@1,0.25
student,chain_sum,pear-token,sft,,8,avg@8,0.25
student,chain_sum,pear-token,sft,,8,pass@8,0.5
student,chain_sum,pear-token,rl,2,1,pass@1,0.5
student,chain_sum,pear-token,rl,2,8,avg@8,0.5
student,chain_sum,pear-token,rl,2,8,pass@8,0.75
student,chain_sum,pear-token,rl,10,1,pass@1,0.5
student,chain_sum,pear-token,rl,10,8,avg@8,0.5
student,chain_sum,pear-token,rl,10,8,pass@8,0.625
"""
    assert (out / "metrics.csv").read_text() == expected
    ci = (out / "metrics_ci.csv").read_text().splitlines()
    assert ci[0] == "model,task,method,stage,seed,k,metric,ci_low,ci_high" and len(ci) == 16
    df = read_metrics_csv(out / "metrics.csv")
    assert list(df.columns) == COLUMNS and df["seed"].tolist()[3:6] == ["", "", ""]
    assert (out / "tables" / "chain_sum.md").exists() and not (out / "plots").exists()


def test_the_task_label_names_the_evaluation_set():
    labels = {"model": "m", "method": "sft", "stage": "sft", "task": "chain_sum-hard"}
    rows, ci_rows = metrics_rows(eval_result(labels, [0.1, 0.2, 0.1], task="chain_sum"))
    assert {r["task"] for r in rows} == {r["task"] for r in ci_rows} == {"chain_sum-hard"}
    rows, _ = metrics_rows(eval_result({k: v for k, v in labels.items() if k != "task"}, [0.1, 0.2, 0.1]))
    assert {r["task"] for r in rows} == {"chain_sum"}


def test_tables_from_the_csv_equal_tables_from_the_metrics_files(tmp_path):
    paths = write_results(tmp_path, [
        eval_result({"model": "m", "stage": "base"}, [0.1, 0.2, 0.1]),
        eval_result({"model": "m", "method": "sft", "stage": "sft"}, [0.2, 0.3, 0.2]),
        eval_result({"model": "m", "method": "sft", "stage": "rl", "seed": "1"}, [0.3, 0.5, 0.3]),
        eval_result({"model": "m", "method": "sft", "stage": "rl", "seed": "2"}, [0.35, 0.55, 0.35]),
    ])
    assert cli.main(["tables", "--metrics", *paths, "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    assert cli.main(["tables", "--from-csv", str(tmp_path / "a" / "metrics.csv"), "--out", str(tmp_path / "b"),
                     "--no-plots"]) == 0
    for name in ("chain_sum.md", "chain_sum.tex", "main.md", "main.tex"):
        assert (tmp_path / "a" / "tables" / name).read_text() == (tmp_path / "b" / "tables" / name).read_text()


@pytest.mark.parametrize("labels, message", [
    ({"model": "m", "method": "sft", "stage": "rl"}, "stage rl needs the RL seed"),
    ({"model": "m", "method": "sft"}, "label stage must be one of base, sft, rl"),
    ({"model": "m", "stage": "sft"}, "stage sft needs a method label"),
    ({"model": "m", "method": "pear-token", "stage": "base"}, "its method is 'base'"),
    ({"model": "m", "method": "base", "stage": "sft"}, "an SFT run needs its own method label"),
])
def test_collect_refuses_results_it_cannot_place(tmp_path, labels, message):
    paths = write_results(tmp_path, [eval_result(labels, [0.1, 0.2, 0.1])])
    with pytest.raises(ValueError, match=message) as error:
        collect_metrics(paths)
    assert paths[0] in str(error.value)


def test_collect_refuses_two_results_for_the_same_cell(tmp_path, capsys):
    labels = {"model": "m", "method": "sft", "stage": "rl", "seed": "1"}
    paths = write_results(tmp_path, [eval_result(labels, [0.1, 0.2, 0.1]), eval_result(labels, [0.3, 0.4, 0.3])])
    assert cli.main(["tables", "--metrics", *paths, "--out", str(tmp_path / "out")]) == 2
    assert "both give" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def log_history(steps, keys):
    entries = [{"loss": 1.0 / s, "grad_norm": 0.5, "learning_rate": 1e-5, "epoch": s / 10, "step": s,
                **{k: 0.1 * s for k in keys}} for s in steps]
    return entries + [{"train_runtime": 3.0, "train_loss": 0.4, "epoch": 1.0, "step": steps[-1]}]


def test_plots_are_written_as_non_empty_pngs(tmp_path):
    pear = tmp_path / "sft-pear"
    pear.mkdir()
    (pear / "trainer_state.json").write_text(json.dumps({"log_history": log_history(
        [10, 20, 30], ["nll", "entropy", "pear/weight_mean", "pear/ess_fraction", "pear/delta_clipped_high"])}))
    plain = tmp_path / "sft-plain"  # no final trainer_state.json: the newest checkpoint's is used
    for step in (10, 20):
        (plain / f"checkpoint-{step}").mkdir(parents=True)
        (plain / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": log_history(list(range(10, step + 1, 10)), ["nll", "entropy"])}))
    out = tmp_path / "results"
    argv = ["tables", "--from-csv", str(GOLDEN / "metrics.csv"), "--out", str(out),
            "--sft-runs", f"pear-token={pear}", f"sft={plain}"]
    assert cli.main(argv) == 0
    for name in ("sft_vs_rl_chain_sum.png", "sft_vs_rl_countdown.png", "weights_diagnostics.png"):
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    assert len(read_log_history(plain)) == 3  # checkpoint-20: two logging steps and the summary
    histories = [read_log_history(pear), read_log_history(plain)]
    assert diagnostic_keys(histories) == ["nll", "entropy", "pear/delta_clipped_high", "pear/ess_fraction",
                                          "pear/weight_mean"]


def test_a_run_without_trainer_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        read_log_history(tmp_path)


def test_tables_write_no_partial_files(tmp_path):
    df = read_metrics_csv(GOLDEN / "metrics.csv")
    written = write_tables(df, tmp_path)
    assert all(p.stat().st_size > 0 for p in written)
    assert not [p for p in (tmp_path / "tables").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_tables_show_the_pass_at_k_the_metrics_hold(tmp_path):
    # The golden data with pass@8 relabelled pass@4 (k 4): with no --show, the tables follow the data.
    lines = (GOLDEN / "metrics.csv").read_text().splitlines()
    relabelled = [lines[0]] + [line.replace(",8,pass@8,", ",4,pass@4,").replace(",8,avg@8,", ",4,avg@4,")
                               for line in lines[1:]]
    csv = tmp_path / "metrics.csv"
    csv.write_text("\n".join(relabelled) + "\n")
    assert cli.main(["tables", "--from-csv", str(csv), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    main = (tmp_path / "out" / "tables" / "main.md").read_text()
    header = next(line for line in main.splitlines() if line.startswith("| method"))
    assert header.count("pass@4") == 2 * 2 and header.count("pass@1") == 2 * 2  # 2 tasks x post-SFT/post-RL
    assert "pass@8" not in main
