"""Figures for the results report (matplotlib's Agg canvas; no pyplot, no global backend switch).

    plot_sft_vs_rl(metrics, task, path)          plots/sft_vs_rl_<task>.png
        per method, post-SFT vs post-RL value of each shown metric (pass@1, pass@8), mean over seeds
        with the 95% Student-t half-width as error bar (none for a single seed): lines that cross
        between the two stages are the rank reversals the PEAR paper is about.
    plot_weight_diagnostics(runs, path)          plots/weights_diagnostics.png
        one panel per quantity the SFT trainer logs (``PEARSFTTrainer.log``): ``nll``, ``entropy``
        and the objective's diagnostics (``pear/weight_mean``, ``pear/ess_fraction``,
        ``pear/delta_mean``, ``pear/delta_clipped_*``, ``pear/logw_clipped_*``, ``iw/*``, ...) over
        SFT optimizer steps, one line per run, read from each run's ``trainer_state.json``.

Every file is written to a temporary name and renamed; PNGs carry no timestamp or version metadata.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pear_bench.atomic import write_atomic
from pear_bench.tables import SHOWN_METRICS, STAGE_HEADERS, cell_summaries, method_rank

# Keys of Trainer's own log entries that are not SFT diagnostics.
TRAINER_KEYS = frozenset({"loss", "grad_norm", "learning_rate", "epoch", "step", "num_tokens"})
FIRST_PANELS = ("nll", "entropy")


def _figure(rows: int, cols: int, panel: tuple[float, float] = (4.0, 3.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return write_atomic(path, buffer.getvalue())


def plot_sft_vs_rl(metrics: pd.DataFrame, task: str, path: str | Path, shown: Sequence[str] = SHOWN_METRICS,
                   method_order: Sequence[str] = ()) -> Path:
    """Post-SFT vs post-RL of each method (rows: models; columns: ``shown`` metrics) for ``task``.

    Args:
        metrics: a metrics.csv table (``pear_bench.tables.COLUMNS``).
        task: the task to draw.
        path: the PNG to write.
    """
    df = metrics[(metrics["task"] == task) & metrics["metric"].isin(shown)]
    summary = cell_summaries(df)
    models = list(dict.fromkeys(df["model"])) or [""]
    fig, axes = _figure(len(models), len(shown))
    colours = {}
    for i, model in enumerate(models):
        methods = method_rank(df.loc[df["model"] == model, "method"].tolist(), method_order)
        for j, metric in enumerate(shown):
            ax = axes[i][j]
            for m, method in enumerate(methods):
                colour = colours.setdefault(method, f"C{len(colours) % 10}")
                offset = (m - (len(methods) - 1) / 2) * 0.03  # keeps error bars of equal values apart
                cells = summary[(summary["model"] == model) & (summary["method"] == method)
                                & (summary["metric"] == metric)].set_index("column")
                xs, ys, errs = [], [], []
                for x, column in enumerate(STAGE_HEADERS):
                    if column in cells.index:
                        half = cells.at[column, "half_width"]
                        xs.append(x + offset)
                        ys.append(cells.at[column, "mean"])
                        errs.append(0.0 if half is None or pd.isna(half) else half)
                if xs:
                    ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colour, label=method)
            ax.set_xticks(range(len(STAGE_HEADERS)), list(STAGE_HEADERS.values()))
            ax.set_xlim(-0.4, len(STAGE_HEADERS) - 0.6)
            ax.set_ylabel(metric)
            ax.set_title(f"{task}, {model}: {metric}" if model else f"{task}: {metric}", fontsize=9)
            ax.grid(alpha=0.3)
            if not methods:
                ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
            elif i == 0 and j == 0:
                ax.legend(fontsize=7)
    return _save(fig, path)


def read_log_history(run: str | Path) -> list[dict[str, Any]]:
    """``log_history`` of an SFT run: ``run/trainer_state.json``, else its newest ``checkpoint-N``'s.

    ``run`` may also be a ``trainer_state.json`` file.

    Raises:
        FileNotFoundError: no trainer_state.json there.
    """
    run = Path(run)
    if run.is_file():
        state = run
    elif (run / "trainer_state.json").is_file():
        state = run / "trainer_state.json"
    else:
        checkpoints = sorted((p for p in run.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
                              and (p / "trainer_state.json").is_file()), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            raise FileNotFoundError(f"{run}: no trainer_state.json (neither in the run directory nor in a checkpoint)")
        state = checkpoints[-1] / "trainer_state.json"
    return json.loads(state.read_text())["log_history"]


def diagnostic_keys(histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """The logged SFT diagnostics: ``nll``, ``entropy``, then the objectives' keys, sorted.

    Training log entries are those with a ``loss``; Trainer's own keys and the end-of-training
    summary (``train_*``) are left out.
    """
    keys = {key for history in histories for entry in history if "loss" in entry for key, value in entry.items()
            if key not in TRAINER_KEYS and not key.startswith(("train_", "eval_"))
            and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return [k for k in FIRST_PANELS if k in keys] + sorted(keys - set(FIRST_PANELS))


def plot_weight_diagnostics(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | Path,
                            columns: int = 4) -> Path:
    """One panel per diagnostic over SFT steps, one line per run (runs sharing a label share a colour).

    Args:
        runs: (label, log_history) pairs, e.g. ``("pear-token", read_log_history(dir))``.
        path: the PNG to write.
    """
    keys = diagnostic_keys([history for _, history in runs])
    cols = max(1, min(columns, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = _figure(rows, cols, panel=(3.6, 2.8))
    colours: dict[str, str] = {}
    for n, key in enumerate(keys):
        ax = axes[n // cols][n % cols]
        labelled = set()
        for label, history in runs:
            points = [(e["step"], e[key]) for e in history if "loss" in e and key in e]
            if not points:
                continue
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            ax.plot(*zip(*points), color=colour, linewidth=1.2, label=None if label in labelled else label)
            labelled.add(label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("SFT step", fontsize=8)
        ax.grid(alpha=0.3)
        if n == 0:
            ax.legend(fontsize=7)
    if not keys:
        axes[0][0].text(0.5, 0.5, "no SFT diagnostics logged", ha="center", va="center",
                        transform=axes[0][0].transAxes)
    for n in range(max(1, len(keys)), rows * cols):  # unused panels of the last row
        axes[n // cols][n % cols].set_visible(False)
    return _save(fig, path)
