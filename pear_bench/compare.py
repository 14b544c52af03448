"""`pear-bench compare`: does a grid's regenerated results match a reference? Cell by cell.

    pear-bench compare --run results/mini --reference results/reference/mini             # exact
    pear-bench compare --run results/mini --reference results/reference/mini --tolerance 0.02

The default grid ends with this check (rule ``reproduce``): on the CPU the committed reference was
made on, every cell is expected to match exactly; on other hardware, floating-point differences in
training change samples, and ``--tolerance`` says how far a cell may move.

What is compared, for each file present in the reference:

- ``metrics.csv`` and ``metrics_ci.csv``, cell by cell: a cell is one value column (``value``;
  ``ci_low``, ``ci_high``) of one row, a row is identified by every other column (model, task,
  method, stage, seed, k, metric, ...). Each cell is *exact* (the same number), *within* the tolerance
  (``|run - reference| <= tolerance``), *differs*, *missing* from the run or *extra* in the run.
- the tables (``tables/*.md``, ``tables/*.tex``): identical bytes or not. They are rendered from the
  metrics, so they differ only where the cells do, or where the rendering code changed.
- the plots (``plots/*.png``): identical bytes or not, reported but not part of the verdict (a
  matplotlib upgrade changes the bytes of an identical figure).

Bit-exact results need the same CPU instruction set and the same library versions: torch picks its
CPU kernels (and so the order of floating-point sums) by what the processor supports. The compare
step writes the platform it ran on to ``<run>/platform.json``; a reference keeps the one it was made
on in its own ``platform.json``, and the report shows both side by side.

The verdict: *reproduced exactly* (every cell exact, every table identical), *reproduced within
tolerance* (every cell exact or within, every table identical or its cells within), or *differs*.
It is printed and written to ``--out`` (default ``<run>/reproducibility.md`` and ``.json``). Exit code:
0 when reproduced, 1 when not (``--exit-zero`` gives 0 anyway, for a workflow that should finish and
show the verdict), 2 for bad input (no reference, unreadable CSV).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pear_bench.atomic import write_atomic
from pear_bench.errors import InputError

CELL_FILES = ("metrics.csv", "metrics_ci.csv")
VALUE_COLUMNS = ("value", "ci_low", "ci_high")
TABLE_GLOBS = ("tables/*.md", "tables/*.tex")
PLOT_GLOBS = ("plots/*.png",)
STATUSES = ("exact", "within", "differs", "missing", "extra")
ROUNDING_SLACK = 1e-12
SHOWN_CELLS = 20  # differing cells printed; the written report lists all of them


@dataclass(frozen=True)
class Cell:
    """One compared number: ``file``, the row's identifying ``key``, the value ``column``, both values."""

    file: str
    key: tuple[tuple[str, str], ...]
    column: str
    run: float | None
    reference: float | None
    status: str

    @property
    def diff(self) -> float | None:
        """``|run - reference|``; 0 where both are NaN (an empty interval in both); None if one is absent."""
        if self.run is None or self.reference is None:
            return None
        if math.isnan(self.run) and math.isnan(self.reference):
            return 0.0
        return abs(self.run - self.reference)


def cell_status(run: float | None, reference: float | None, tolerance: float) -> str:
    """``exact`` (equal, or both NaN), ``within`` (``|run - reference| <= tolerance``), ``differs``,
    ``missing`` (no run value) or ``extra`` (no reference value)."""
    if run is None:
        return "missing"
    if reference is None:
        return "extra"
    if run == reference or (math.isnan(run) and math.isnan(reference)):
        return "exact"
    if math.isnan(run) or math.isnan(reference):
        return "differs"
    # The slack absorbs binary rounding of decimal figures (0.52 - 0.5 > 0.02 in floating point).
    return "within" if abs(run - reference) <= tolerance + ROUNDING_SLACK else "differs"


def _read_cells(path: Path) -> dict[tuple[tuple[str, str], str], float]:
    """``(row key, value column) -> value`` of a results CSV; the key is every non-value column."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        values = [c for c in columns if c in VALUE_COLUMNS]
        if not values:
            raise InputError(f"{path}: no value column ({', '.join(VALUE_COLUMNS)}) in header {columns}")
        keys = [c for c in columns if c not in VALUE_COLUMNS]
        cells: dict[tuple[tuple[str, str], str], float] = {}
        for line, row in enumerate(reader, start=2):
            key = tuple((k, row[k]) for k in keys)
            for column in values:
                text = row[column]
                try:
                    value = float(text) if text != "" else math.nan
                except ValueError:
                    raise InputError(f"{path}:{line}: column {column!r} is not a number: {text!r}") from None
                if (key, column) in cells:
                    raise InputError(f"{path}:{line}: row {dict(key)} appears twice")
                cells[(key, column)] = value
    return cells


def compare_cells(run: Mapping, reference: Mapping, file: str, tolerance: float) -> list[Cell]:
    """Every cell of ``reference`` and ``run`` (``(key, column) -> value`` maps), reference order first."""
    order = list(reference) + [k for k in run if k not in reference]
    return [Cell(file, key, column, run.get((key, column)), reference.get((key, column)),
                 cell_status(run.get((key, column)), reference.get((key, column)), tolerance))
            for key, column in order]


def compare_files(run_dir: Path, reference_dir: Path, globs: Sequence[str]) -> dict[str, str]:
    """``relative path -> identical | differs | missing | extra`` for the files matching ``globs``."""
    ref = {str(p.relative_to(reference_dir)) for g in globs for p in reference_dir.glob(g)}
    got = {str(p.relative_to(run_dir)) for g in globs for p in run_dir.glob(g)}
    result = {}
    for name in sorted(ref | got):
        if name not in got:
            result[name] = "missing"
        elif name not in ref:
            result[name] = "extra"
        else:
            same = (run_dir / name).read_bytes() == (reference_dir / name).read_bytes()
            result[name] = "identical" if same else "differs"
    return result


def verdict(cells: Sequence[Cell], tables: Mapping[str, str]) -> str:
    """``reproduced exactly``, ``reproduced within tolerance`` or ``differs`` (see the module docstring).

    A table that differs in bytes is excused only when its cells are all within the tolerance (the
    rendering rounds, so moved cells can change a table's text).
    """
    counts = {s: sum(c.status == s for c in cells) for s in STATUSES}
    if counts["differs"] or counts["missing"] or counts["extra"] or not cells:
        return "differs"
    if any(state in ("missing", "extra") for state in tables.values()):
        return "differs"
    if counts["within"] == 0:
        return "reproduced exactly" if all(s == "identical" for s in tables.values()) else "differs"
    return "reproduced within tolerance"


def compare(run_dir: str | Path, reference_dir: str | Path, tolerance: float = 0.0) -> dict:
    """Compare a grid's results directory with a reference directory; the report as a dict.

    Raises:
        FileNotFoundError: ``reference_dir`` has none of ``CELL_FILES``, or the run lacks one the
            reference has (the grid has not produced its results yet).
        InputError: a negative tolerance, or a CSV that cannot be read as results.
    """
    run_dir, reference_dir = Path(run_dir), Path(reference_dir)
    if not tolerance >= 0:
        raise InputError(f"--tolerance must be >= 0; got {tolerance}")
    files = [name for name in CELL_FILES if (reference_dir / name).exists()]
    if not files:
        raise FileNotFoundError(f"{reference_dir}: no reference results ({' or '.join(CELL_FILES)})")
    cells: list[Cell] = []
    for name in files:
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name}: the run has no {name} to compare (run the grid first)")
        cells += compare_cells(_read_cells(run_dir / name), _read_cells(reference_dir / name), name, tolerance)
    tables = compare_files(run_dir, reference_dir, TABLE_GLOBS)
    plots = compare_files(run_dir, reference_dir, PLOT_GLOBS)
    diffs = [c.diff for c in cells if c.diff is not None]
    return {
        "run": str(run_dir), "reference": str(reference_dir), "tolerance": tolerance,
        "verdict": verdict(cells, tables),
        "cells": {s: sum(c.status == s for c in cells) for s in STATUSES} | {"total": len(cells)},
        "max_abs_diff": max(diffs, default=0.0),
        "tables": tables, "plots": plots,
        "not_exact": [asdict(c) | {"key": dict(c.key), "diff": c.diff} for c in cells if c.status != "exact"],
    }


def platform_info() -> dict:
    """What decides bit-exactness on a CPU: the processor, torch's kernel level, the package versions."""
    import torch

    from pear_bench.config import package_versions

    processor = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            processor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor)
    except OSError:
        pass
    return {"machine": platform.machine(), "processor": processor, "cpus": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "versions": package_versions()}


def _platform_line(name: str, info: Mapping | None) -> str:
    if not info:
        return f"{name}: platform not recorded"
    versions = info.get("versions", {})
    return (f"{name}: {info.get('processor')} ({info.get('machine')}, {info.get('cpus')} CPUs, torch kernels "
            f"{info.get('torch_cpu_capability')}; torch {versions.get('torch')}, transformers "
            f"{versions.get('transformers')}, trl {versions.get('trl')})")


def _number(x: float | None) -> str:
    return "absent" if x is None else f"{x:.6g}"


def render_report(report: Mapping, limit: int | None = None) -> str:
    """The report as Markdown: the verdict line first, then counts, the cells that are not exact
    (the first ``limit`` of them, or all), the tables and the plots."""
    cells = report["cells"]
    lines = [f"Reproducibility: {report['verdict'].upper()} — {cells['exact']} of {cells['total']} cells exact, "
             f"{cells['within']} within tolerance {report['tolerance']:g}, {cells['differs']} differ, "
             f"{cells['missing']} missing, {cells['extra']} extra; largest |difference| "
             f"{report['max_abs_diff']:.6g}",
             "", f"run: `{report['run']}`  reference: `{report['reference']}`", ""]
    shown = report["not_exact"] if limit is None else report["not_exact"][:limit]
    if shown:
        lines += ["| file | row | column | run | reference | \\|difference\\| | status |", "|---|---|---|---|---|---|---|"]
        for c in shown:
            row = " ".join(f"{k}={v}" for k, v in c["key"].items() if v != "")
            lines.append(f"| {c['file']} | {row} | {c['column']} | {_number(c['run'])} | {_number(c['reference'])} "
                         f"| {_number(c['diff'])} | {c['status']} |")
        if len(shown) < len(report["not_exact"]):
            lines.append(f"| ... {len(report['not_exact']) - len(shown)} more in the written report | | | | | | |")
        lines.append("")
    platforms = report.get("platform") or {}
    lines += [_platform_line("this run", platforms.get("run")), "",
              _platform_line("the reference", platforms.get("reference")), ""]
    if report["verdict"] == "differs" and platforms.get("run") and platforms.get("reference"):
        keys = ("machine", "torch_cpu_capability", "versions")
        if any(platforms["run"].get(k) != platforms["reference"].get(k) for k in keys):
            lines += ["The platforms differ (processor kernels or versions): bit-exact agreement is not expected; "
                      "rerun with a tolerance (--tolerance, or --config reference_tolerance=...) to see how far "
                      "the results moved.", ""]
    for title, files in (("Tables", report["tables"]), ("Plots (not part of the verdict)", report["plots"])):
        if files:
            lines += [f"{title}: " + ", ".join(f"{name} {state}" for name, state in files.items()), ""]
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="the grid's results directory (results/<grid>)")
    parser.add_argument("--reference", required=True, type=Path,
                        help="the reference results directory (e.g. results/reference/<grid>)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest |run - reference| a cell may differ by and still count (default 0: exact)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report file stem (default <run>/reproducibility): writes .md and .json")
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even when the results differ")


def main(args: argparse.Namespace) -> int:
    report = compare(args.run, args.reference, args.tolerance)
    reference_platform = args.reference / "platform.json"
    report["platform"] = {"run": platform_info(),
                          "reference": json.loads(reference_platform.read_text()) if reference_platform.exists() else None}
    write_atomic(args.run / "platform.json", json.dumps(report["platform"]["run"], indent=1) + "\n")
    stem = args.out if args.out is not None else args.run / "reproducibility"
    write_atomic(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_atomic(stem.with_suffix(".md"), render_report(report) + "\n")
    print(render_report(report, limit=SHOWN_CELLS))
    print(f"(full report: {stem.with_suffix('.md')})")
    return 0 if args.exit_zero or report["verdict"] != "differs" else 1
