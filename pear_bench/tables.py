"""`pear-bench tables`: evaluation results -> one long CSV -> tables in the paper's layout, and plots.

    metrics.json (pear-bench eval, one per checkpoint x task)
        --collect_metrics--> results/<grid>/metrics.csv      model, task, method, stage, seed, k, metric, value
                             results/<grid>/metrics_ci.csv   the same keys + ci_low, ci_high (over problems)
        --render_*------->  results/<grid>/tables/<task>.md, <task>.tex, main.md, main.tex
        --pear_bench.plots-> results/<grid>/plots/sft_vs_rl_<task>.png, plots/weights_diagnostics.png

    pear-bench tables --metrics results/mini/eval/*/*/*/*/metrics.json --out results/mini \\
        --method-order sft pear-token pear-block --sft-runs sft=out/sft/sft pear-token=out/sft/pear-token
    pear-bench tables --from-csv results/mini/metrics.csv --out results/mini     # tables and plots only

Rows of metrics.csv come from each metrics.json's labels (``pear-bench eval --label``):

    model   label ``model`` (default: the checkpoint path recorded in metrics.json)
    task    label ``task`` (the grid's name for the evaluation set; default: the graded task,
            metrics.json ``task``)
    stage   label ``stage``: base (the model before any SFT), sft (after SFT) or rl (after GRPO)
    method  label ``method``; always "base" for stage base
    seed    label ``seed`` (the RL seed): required for stage rl, empty for stage base, empty for stage sft
            unless labelled
    k, metric, value   one row per entry of metrics.json ``metrics`` (pass@1, pass@8, avg@8, ...)

The table layout (one table per model; the task file has one task, main.md every task side by side):

    rows     methods: base, sft, then ``method_order``, then the rest alphabetically
    columns  task x {post-SFT, post-RL} x shown metrics (``--show``; by default every pass@k present,
             in order of k); the base row's post-SFT cells hold the base model itself (no SFT), its
             post-RL cells RL run straight from the base model (method "base", stage "rl"), if any
    cells    the mean over seeds; with n >= 2 seeds also "± h", the half-width of the 95% Student-t
             interval over seeds, h = t_{0.975, n-1} * s / sqrt(n) (s: sample standard deviation); every
             row but sft also shows "(+d)", its mean minus the sft row's mean in the same column;
             the best mean of each column (at 3 decimals, ties included) is bold; "–" where nothing
             was evaluated. Numbers have 3 decimals.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pear_bench.atomic import write_atomic
from pear_bench.errors import InputError

COLUMNS = ["model", "task", "method", "stage", "seed", "k", "metric", "value"]
CI_COLUMNS = ["model", "task", "method", "stage", "seed", "k", "metric", "ci_low", "ci_high"]
STAGES = ("base", "sft", "rl")
STAGE_HEADERS = {"sft": "post-SFT", "rl": "post-RL"}  # base-stage values go in the post-SFT columns
SHOWN_METRICS = ("pass@1", "pass@8")
CONFIDENCE = 0.95
MISSING = "–"
_KEY_COLUMNS = ["model", "task", "method", "stage", "seed", "metric"]
_STR_COLUMNS = ["model", "task", "method", "stage", "seed", "metric"]


# ---------------------------------------------------------------------------------------------
# metrics.json files -> metrics.csv


def metrics_rows(result: Mapping[str, Any], source: str = "<metrics.json>") -> tuple[list[dict], list[dict]]:
    """The metrics.csv rows and metrics_ci.csv rows of one ``pear-bench eval`` result.

    Raises:
        ValueError: a missing or unknown stage, a missing method (stages sft, rl), a missing seed
            (stage rl), a base run labelled with another method or an SFT run with method "base";
            the message names ``source``.
    """
    labels = {k: str(v) for k, v in result.get("labels", {}).items()}
    stage = labels.get("stage")
    if stage not in STAGES:
        raise InputError(f"{source}: label stage must be one of {', '.join(STAGES)}; got {stage!r} "
                         "(pass --label stage=... to pear-bench eval)")
    method = labels.get("method", "")
    if stage == "base":
        if method not in ("", "base"):
            raise InputError(f"{source}: stage base is the model before SFT, its method is 'base'; got {method!r}")
        method, seed = "base", ""
    else:
        if not method:
            raise InputError(f"{source}: stage {stage} needs a method label (e.g. --label method=pear-token)")
        if method == "base" and stage == "sft":
            raise InputError(f"{source}: method 'base' names the model before SFT (stage base, or stage rl for "
                             "RL straight from it); an SFT run needs its own method label")
        seed = labels.get("seed", "")
        if stage == "rl" and not seed:
            raise InputError(f"{source}: stage rl needs the RL seed as a label (e.g. --label seed=2)")
    key = {"model": labels.get("model") or str(result["model"]), "task": labels.get("task") or str(result["task"]),
           "method": method,
           "stage": stage, "seed": seed}
    rows, ci_rows = [], []
    for entry in result["metrics"]:
        common = {**key, "k": int(entry["k"]), "metric": str(entry["metric"])}
        rows.append({**common, "value": float(entry["value"])})
        ci_rows.append({**common, "ci_low": float(entry["ci_low"]), "ci_high": float(entry["ci_high"])})
    return rows, ci_rows


def method_rank(methods: Sequence[str], method_order: Sequence[str] = ()) -> list[str]:
    """Methods in table order: base, sft, then ``method_order``, then the rest alphabetically."""
    first = ["base", "sft", *[m for m in method_order if m not in ("base", "sft")]]
    present = list(dict.fromkeys(methods))
    return [m for m in first if m in present] + sorted(m for m in present if m not in first)


def _sort(df: pd.DataFrame, method_order: Sequence[str] = ()) -> pd.DataFrame:
    methods = method_rank(df["method"].tolist(), method_order)

    def seed_key(seed: str) -> tuple:
        return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)

    keys = df.assign(_stage=df["stage"].map(STAGES.index), _method=df["method"].map(methods.index),
                     _seed=df["seed"].map(seed_key))
    keys = keys.sort_values(["model", "task", "_stage", "_method", "_seed", "k", "metric"], kind="stable")
    return df.loc[keys.index].reset_index(drop=True)


def collect_metrics(paths: Sequence[str | Path], method_order: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``metrics.json`` files into the metrics.csv and metrics_ci.csv tables, sorted.

    Sort order: model, task, stage (base, sft, rl), method (``method_rank``), seed (numeric), k, metric.

    Raises:
        ValueError: no files, a file that breaks ``metrics_rows``' rules, or two files giving the same
            (model, task, method, stage, seed, metric) (the message names both).
    """
    if not paths:
        raise InputError("no metrics.json files given")
    rows, ci_rows, origin = [], [], {}
    for path in paths:
        file_rows, file_ci = metrics_rows(json.loads(Path(path).read_text()), str(path))
        for row in file_rows:
            key = tuple(row[c] for c in _KEY_COLUMNS)
            if key in origin:
                raise InputError(f"{path} and {origin[key]} both give {dict(zip(_KEY_COLUMNS, key))}; "
                                 "label each evaluation distinctly (model, method, stage, seed)")
            origin[key] = path
        rows += file_rows
        ci_rows += file_ci
    metrics = _sort(pd.DataFrame(rows, columns=COLUMNS), method_order)
    ci = _sort(pd.DataFrame(ci_rows, columns=CI_COLUMNS), method_order)
    return metrics, ci


def pass_k_metrics(df: pd.DataFrame) -> list[str]:
    """The pass@k metrics present in ``df``, in order of k (``["pass@1", "pass@4"]``)."""
    ks = sorted({int(m.split("@", 1)[1]) for m in df["metric"].unique() if m.startswith("pass@")})
    return [f"pass@{k}" for k in ks]


def metrics_csv_text(df: pd.DataFrame) -> str:
    """``df`` as CSV text: floats as their shortest round-trip repr, '\\n' line ends."""
    return df.to_csv(index=False, lineterminator="\n")


def read_metrics_csv(path: str | Path) -> pd.DataFrame:
    """metrics.csv back as written: text columns as str (an empty seed stays ""), k int, value float.

    Raises:
        ValueError: the header is not exactly ``COLUMNS``.
    """
    df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    if list(df.columns) != COLUMNS:
        raise InputError(f"{path}: columns must be exactly {COLUMNS}; got {list(df.columns)}")
    return df.astype({"k": int, "value": float})


# ---------------------------------------------------------------------------------------------
# Means over seeds, cells, tables


def t_quantile(q: float, dof: int) -> float:
    """Student t quantile (scipy)."""
    from scipy.stats import t

    return float(t.ppf(q, dof))


def seed_mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, int]:
    """Mean of ``values`` (one per seed), the half-width of its Student-t interval, and n.

    ``h = t_{(1+confidence)/2, n-1} * s / sqrt(n)``, ``s`` the sample standard deviation (ddof 1);
    None for a single value.
    """
    n = len(values)
    if n == 0:
        raise InputError("seed_mean_ci: no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None, 1
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile((1 + confidence) / 2, n - 1) * s / math.sqrt(n), n


def cell_summaries(df: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (model, task, method, column stage, metric): mean over seeds, CI half-width, n.

    The column stage is "sft" for stages base and sft (the model RL starts from), "rl" for rl.
    """
    rows = []
    for (model, task, method, stage, metric), group in df.groupby(
            ["model", "task", "method", "stage", "metric"], sort=False):
        mean, half, n = seed_mean_ci(group["value"].tolist(), confidence)
        rows.append({"model": model, "task": task, "method": method, "column": "rl" if stage == "rl" else "sft",
                     "metric": metric, "mean": mean, "half_width": half, "n": n})
    return pd.DataFrame(rows, columns=["model", "task", "method", "column", "metric", "mean", "half_width", "n"])


def _number(x: float, signed: bool = False) -> str:
    x = round(x, 3) + 0.0  # + 0.0 turns -0.0 into 0.0, so a zero difference reads +0.000
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _table_cells(summary: pd.DataFrame, model: str, columns: Sequence[tuple[str, str, str]],
                 methods: Sequence[str]) -> list[list[dict | None]]:
    """``[method][column]`` -> {"value", "half", "delta", "best"} or None; columns are (task, stage, metric)."""
    lookup = {(r.task, r.method, r.column, r.metric): r for r in summary[summary["model"] == model].itertuples()}
    grid: list[list[dict | None]] = []
    for method in methods:
        row = []
        for task, column, metric in columns:
            r = lookup.get((task, method, column, metric))
            if r is None:
                row.append(None)
                continue
            ref = lookup.get((task, "sft", column, metric))
            delta = None if method == "sft" or ref is None else r.mean - ref.mean
            half = None if r.half_width is None or pd.isna(r.half_width) else float(r.half_width)
            row.append({"value": r.mean, "half": half, "delta": delta, "best": False})
        grid.append(row)
    for j in range(len(columns)):
        shown = [round(row[j]["value"], 3) for row in grid if row[j] is not None]
        for row in grid:
            if row[j] is not None and round(row[j]["value"], 3) == max(shown):
                row[j]["best"] = True
    return grid


def _format_cell(cell: dict | None, latex: bool) -> str:
    if cell is None:
        return "--" if latex else MISSING
    value = _number(cell["value"])
    text = (f"\\textbf{{{value}}}" if latex else f"**{value}**") if cell["best"] else value
    if cell["half"] is not None:
        text += (" $\\pm$ " if latex else " ± ") + _number(cell["half"])
    if cell["delta"] is not None:
        text += f" ({_number(cell['delta'], signed=True)})"
    return text


_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                  "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _layout(df: pd.DataFrame, tasks: Sequence[str], shown: Sequence[str], method_order: Sequence[str]):
    summary = cell_summaries(df[df["task"].isin(tasks) & df["metric"].isin(shown)])
    columns = [(task, stage, metric) for task in tasks for stage in STAGE_HEADERS for metric in shown]
    models = list(dict.fromkeys(df.loc[df["task"].isin(tasks), "model"]))  # those evaluated on these tasks
    per_model = []
    for model in models:
        methods = method_rank(df.loc[(df["model"] == model) & df["task"].isin(tasks), "method"].tolist(), method_order)
        per_model.append((model, methods, _table_cells(summary, model, columns, methods)))
    return columns, per_model, summary


def _seed_note(summary: pd.DataFrame, model: str, methods: Sequence[str], tasks: Sequence[str]) -> str:
    """"RL seeds: sft 3, pear-token 3." (per task when there are several); the n behind each post-RL mean."""
    parts = []
    for task in tasks:
        counts = []
        for method in methods:
            n = summary.loc[(summary["model"] == model) & (summary["task"] == task) & (summary["method"] == method)
                            & (summary["column"] == "rl"), "n"]
            if len(n):
                lo, hi = int(n.min()), int(n.max())
                counts.append(f"{method} {lo}" if lo == hi else f"{method} {lo}-{hi}")
        parts.append((task, ", ".join(counts)))
    if not any(counts for _, counts in parts):
        return "RL seeds: none."
    if len(parts) == 1:
        return f"RL seeds: {parts[0][1]}."
    return "RL seeds: " + "; ".join(f"{task}: {counts or 'none'}" for task, counts in parts) + "."


NOTE = ("Cells: mean over seeds ± half-width of the 95% Student-t interval over seeds (value only with one seed); "
        "(±d): difference from the sft row in the same column; bold: best in column; the base row's post-SFT "
        "cells are the model before SFT.")


def render_markdown(df: pd.DataFrame, tasks: Sequence[str] | None = None, shown: Sequence[str] = SHOWN_METRICS,
                    method_order: Sequence[str] = (), title: str | None = None) -> str:
    """Markdown tables (one per model) for ``tasks`` side by side (default: every task in ``df``)."""
    tasks = list(dict.fromkeys(df["task"])) if tasks is None else list(tasks)
    columns, per_model, summary = _layout(df, tasks, shown, method_order)
    one_task = len(tasks) == 1
    headers = [f"{STAGE_HEADERS[stage]} {metric}" if one_task else f"{task} {STAGE_HEADERS[stage]} {metric}"
               for task, stage, metric in columns]
    lines = [f"# {title or (tasks[0] if one_task else 'Results')}", ""]
    for model, methods, grid in per_model:
        lines += [f"## {model}", "", "| method | " + " | ".join(headers) + " |",
                  "|:--" + "|--:" * len(headers) + "|"]
        for method, row in zip(methods, grid):
            lines.append(f"| {method} | " + " | ".join(_format_cell(c, latex=False) for c in row) + " |")
        lines += ["", _seed_note(summary, model, methods, tasks), ""]
    lines += [NOTE, ""]
    return "\n".join(lines)


def render_latex(df: pd.DataFrame, tasks: Sequence[str] | None = None, shown: Sequence[str] = SHOWN_METRICS,
                 method_order: Sequence[str] = ()) -> str:
    """booktabs ``tabular``s (one per model) for ``tasks``, to ``\\input`` into a table environment."""
    tasks = list(dict.fromkeys(df["task"])) if tasks is None else list(tasks)
    columns, per_model, summary = _layout(df, tasks, shown, method_order)
    width = len(shown)
    lines = [f"% pear-bench tables: {', '.join(tasks)}. {NOTE}", ""]
    for model, methods, grid in per_model:
        lines += [f"% model: {model}", "\\begin{tabular}{l" + "r" * len(columns) + "}", "\\toprule"]
        if len(tasks) > 1:
            span = 2 * width
            lines.append(" & " + " & ".join(f"\\multicolumn{{{span}}}{{c}}{{{_latex_escape(t)}}}" for t in tasks)
                         + " \\\\")
            lines.append(" ".join(f"\\cmidrule(lr){{{2 + i * span}-{1 + (i + 1) * span}}}" for i in range(len(tasks))))
        stages = [(task, stage) for task in tasks for stage in STAGE_HEADERS]
        lines.append(" & " + " & ".join(f"\\multicolumn{{{width}}}{{c}}{{{STAGE_HEADERS[s]}}}" for _, s in stages)
                     + " \\\\")
        lines.append(" ".join(f"\\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(stages))))
        lines.append("method & " + " & ".join(_latex_escape(m) for _, _, m in columns) + " \\\\")
        lines.append("\\midrule")
        for method, row in zip(methods, grid):
            lines.append(_latex_escape(method) + " & " + " & ".join(_format_cell(c, latex=True) for c in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", f"% {_seed_note(summary, model, methods, tasks)}", ""]
    return "\n".join(lines)


def write_tables(df: pd.DataFrame, out: str | Path, shown: Sequence[str] = SHOWN_METRICS,
                 method_order: Sequence[str] = ()) -> list[Path]:
    """``out/tables/<task>.md`` and ``.tex`` per task, and ``main.md`` / ``main.tex`` with every task."""
    tables = Path(out) / "tables"
    written = []
    for task in dict.fromkeys(df["task"]):
        written.append(write_atomic(tables / f"{task}.md", render_markdown(df, [task], shown, method_order)))
        written.append(write_atomic(tables / f"{task}.tex", render_latex(df, [task], shown, method_order)))
    written.append(write_atomic(tables / "main.md", render_markdown(df, None, shown, method_order)))
    written.append(write_atomic(tables / "main.tex", render_latex(df, None, shown, method_order)))
    return written


# ---------------------------------------------------------------------------------------------
# Command line


def parse_runs(items: Sequence[str]) -> list[tuple[str, Path]]:
    """``["sft=out/sft/0", "pear-token=out/pt/0"]`` -> [(label, dir), ...] (a label may repeat: seeds)."""
    runs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise InputError(f"--sft-runs {item!r}: expected LABEL=DIR (e.g. pear-token=out/sft/pear-token)")
        runs.append((label, Path(path)))
    return runs


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics", nargs="+", metavar="FILE", help="metrics.json files written by `pear-bench eval`")
    source.add_argument("--from-csv", metavar="CSV", help="rebuild tables and plots from an existing metrics.csv")
    parser.add_argument("--out", required=True, help="results directory (results/<grid>)")
    parser.add_argument("--method-order", nargs="+", default=[], metavar="METHOD",
                        help="row order after base and sft (the rest follow alphabetically)")
    parser.add_argument("--show", nargs="+", default=None, metavar="METRIC",
                        help="metrics shown in the tables and plots (default: every pass@k in the metrics, by k)")
    parser.add_argument("--sft-runs", nargs="+", default=[], metavar="LABEL=DIR",
                        help="SFT run directories (with trainer_state.json) for plots/weights_diagnostics.png")
    parser.add_argument("--no-plots", action="store_true", help="write metrics.csv and tables only")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    runs = parse_runs(args.sft_runs)
    if args.metrics:
        try:
            df, ci = collect_metrics(args.metrics, args.method_order)
        except KeyError as exc:
            raise InputError(f"--metrics: a metrics.json lacks the field {exc} (is it from `pear-bench eval`?)") from None
        write_atomic(out / "metrics.csv", metrics_csv_text(df))
        write_atomic(out / "metrics_ci.csv", metrics_csv_text(ci))
    else:
        df = read_metrics_csv(args.from_csv)
    shown = args.show or pass_k_metrics(df)
    written = write_tables(df, out, shown, args.method_order)
    if not args.no_plots:
        from pear_bench.plots import plot_sft_vs_rl, plot_weight_diagnostics, read_log_history

        for task in dict.fromkeys(df["task"]):
            written.append(plot_sft_vs_rl(df, task, out / "plots" / f"sft_vs_rl_{task}.png", shown,
                                          args.method_order))
        if runs:
            histories = [(label, read_log_history(path)) for label, path in runs]
            written.append(plot_weight_diagnostics(histories, out / "plots" / "weights_diagnostics.png"))
    print(f"pear-bench tables: {len(df)} metric rows, {df['task'].nunique()} tasks, "
          f"{df['method'].nunique()} methods -> {len(written)} files under {out}")
    return 0
