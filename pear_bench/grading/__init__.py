"""The one grader: SFT data filtering, GRPO rewards and evaluation (lm-eval tasks) all call it.

    extract_answer(response, task) -> str | None     the final answer a response gives
    math_equal(pred, gold, timeout=2.0) -> bool       LaTeX/plain answer equivalence, time-bounded
    grade(response, doc, task, timeout=2.0, finish_reason=None) -> float
                                                      1.0 correct / 0.0 not; never for a response cut at the limit
    grade_batch(responses, docs, task, ...)           the same over many, in parallel, with progress

Modules: ``extraction`` (finding answers), ``math`` (integer fast path, math-verify + sympy),
``games`` (reasoning-gym verifiers behind a safety check), ``workers`` (the hard time bound),
``grader`` (tasks, ``grade``, ``grade_batch``).
"""

from pear_bench.grading.games import GAMES
from pear_bench.grading.grader import MATH_TASKS, TASKS, extract_answer, grade, grade_batch
from pear_bench.grading.math import math_equal

__all__ = ["GAMES", "MATH_TASKS", "TASKS", "extract_answer", "grade", "grade_batch", "math_equal"]
