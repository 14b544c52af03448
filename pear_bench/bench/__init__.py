"""`pear-bench bench NAME`: benchmarks that print figures and ratios (never timed assertions in tests).

Each benchmark module exposes ``configure_parser(parser)`` and ``main(args)``, like the CLI's
subcommands; `pear-bench bench ...` imports them all to build its parser, so keep their top-level
imports light (torch, transformers and friends are imported inside the functions that use them).
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "step": ("pear_bench.bench.step", "SFT step time and peak memory: plain HF vs PEAR at each level"),
    "grade": ("pear_bench.bench.grading", "grader throughput on AIME-style responses"),
    "score": ("pear_bench.bench.scoring", "behaviour scoring throughput vs a bare forward pass"),
    "sft-methods": ("pear_bench.bench.sft_methods", "SFT step time of each method relative to plain sft"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench_module=module)
        importlib.import_module(module).configure_parser(p)


def main(args: argparse.Namespace) -> int | None:
    module = importlib.import_module(args._bench_module)
    return module.main(args)
