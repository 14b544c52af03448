"""`pear-bench bench grade`: grader throughput, in answers per second, on AIME-style responses.

Two workloads of ``--n`` responses each (default 10,000), built from a seeded generator: a ~1,500
character reasoning text ending in a boxed answer, against an integer gold answer 0-999, half of
them correct. Both go through ``pear_bench.grading.grade_batch`` (extraction included):

    fast    ``\\boxed{070}``-style integers (zero-padded, as AIME answers are written): the exact
            integer fast path, in the calling threads, no worker process
    sympy   ``\\boxed{\\frac{140}{2}}``-style fractions: math-verify + sympy in grading worker
            processes, one per thread, each call under its deadline

The grading workers are started before timing (their one-off start-up is reported separately).
The "agree" column counts grades equal to the known label: it must be n/n.

    pear-bench bench grade
    pear-bench bench grade --n 2000 --workers 4
"""

from __future__ import annotations

import argparse
import os
import random
import time


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=10_000, help="responses per workload")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grading threads/processes")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per sympy check")
    parser.add_argument("--seed", type=int, default=0)


def aime_style_responses(n: int, path: str, seed: int) -> tuple[list[str], list[dict], list[float]]:
    """``n`` (response, doc, label) triples; ``path`` picks the answer format ("fast" or "sympy")."""
    rng = random.Random(seed)
    filler = "We consider the cases in turn and simplify each expression carefully. " * 21  # ~1,500 chars
    responses, docs, labels = [], [], []
    for i in range(n):
        gold = rng.randrange(1000)
        correct = i % 2 == 0
        value = gold if correct else (gold + rng.randrange(1, 1000)) % 1000
        boxed = f"{value:03d}" if path == "fast" else f"\\frac{{{2 * value}}}{{2}}"
        responses.append(f"{filler}Therefore the answer is $\\boxed{{{boxed}}}$.")
        docs.append({"id": f"bench-{i}", "answer": str(gold)})
        labels.append(1.0 if correct else 0.0)
    return responses, docs, labels


def main(args: argparse.Namespace) -> int:
    from pear_bench.grading import grade_batch

    print(f"grading {args.n} AIME-style responses per path, {args.workers} workers, timeout {args.timeout} s")
    start = time.perf_counter()
    # Start one worker per thread (the sympy path needs them) before any timing.
    grade_batch([r"\boxed{\frac{2}{2}}"] * args.workers, [{"answer": "1"}] * args.workers, "aime2025",
                max_workers=args.workers, progress=False)
    print(f"worker start-up (once per process): {time.perf_counter() - start:.2f} s")
    print(f"{'path':<6} {'answers':>8} {'seconds':>8} {'answers/s':>10} {'agree':>12}")
    for path in ("fast", "sympy"):
        responses, docs, labels = aime_style_responses(args.n, path, args.seed)
        start = time.perf_counter()
        grades = grade_batch(responses, docs, "aime2025", timeout=args.timeout, max_workers=args.workers,
                             progress=False)
        seconds = time.perf_counter() - start
        agree = sum(g == y for g, y in zip(grades, labels))
        print(f"{path:<6} {args.n:>8} {seconds:>8.2f} {args.n / seconds:>10.0f} {f'{agree}/{args.n}':>12}")
    return 0
