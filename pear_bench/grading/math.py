"""Equivalence of two math answer strings: an exact integer fast path, then math-verify + sympy.

Order of checks in ``math_equal(pred, gold)``:

1. Unwrap presentation: surrounding ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``, a
   ``\\boxed{...}`` spanning the whole answer, surrounding whitespace and a final full stop
   (``70.`` is how sentences end, not a decimal).
2. Fast path, in the calling thread: if both are plain integers (ASCII digits, optional sign,
   optional ``.0``), compare their canonical digit strings exactly (``070`` = ``70``). No process,
   no sympy: AIME answers take this path.
3. Otherwise math-verify (LaTeX extraction only) and sympy, in a worker process under a hard
   deadline (``pear_bench.grading.workers``): fractions vs decimals, radicals, pi, sets, intervals
   (open and closed ends differ), tuples, percentages (``50\\%`` = ``0.5`` = ``50``), simple
   equations (``x=3`` = ``3``), units and degrees (``5\\text{ cm}`` = ``5``, ``30^\\circ`` = ``30``).

Deviations and choices:

- Only math-verify's LaTeX extractor is used; its plain-expression extractor calls sympy's
  ``parse_expr``, which runs ``eval``. Plain answers (``1/2``, ``0.5``, ``x=3``) parse fine as
  LaTeX, so nothing is lost, and no answer text ever reaches ``eval``/``sympify``/``parse_expr``.
- Digits must be ASCII. Python's ``int()`` accepts look-alikes (``int("٧٠") == 70``), so the fast
  path matches ``[0-9]`` only; look-alikes go to math-verify, which does not read them as numbers.
- A call that hits its deadline returns False (not provably equal), as does an error inside
  math-verify (logged as a warning).
- ``verify(gold, pred)`` is order-sensitive (the gold side decides how e.g. ``x=3`` is read);
  ``math_equal`` always passes the reference as gold.
"""

from __future__ import annotations

import logging
import re

from pear_bench.grading.extraction import matching_brace
from pear_bench.grading.workers import WorkerError, WorkerTimeout, check_timeout, run_with_timeout

logger = logging.getLogger(__name__)


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once per process that its timeouts are off; here that is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())

# One greedy digit run and no nested quantifiers: linear time on any input.
_INTEGER = re.compile(r"([+-]?)([0-9]+)(?:\.0*)?", re.ASCII)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_MAX_UNWRAP_ROUNDS = 4  # e.g. "$\boxed{70}$." needs 3; a bound keeps adversarial "$$$$..." linear


def unwrap_answer(answer: str) -> str:
    """Strip presentation around an answer: math delimiters, a whole-answer ``\\boxed{}``, a final '.'."""
    for _ in range(_MAX_UNWRAP_ROUNDS):
        before = answer
        answer = answer.strip()
        if answer.endswith(".") and not answer.endswith(".."):
            answer = answer[:-1].rstrip()
        for left, right in _DELIMITERS:
            if len(answer) >= len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
                answer = answer[len(left):-len(right)]
                break
        else:
            if answer.startswith("\\boxed{") and matching_brace(answer, len("\\boxed")) == len(answer) - 1:
                answer = answer[len("\\boxed{"):-1]
        if answer == before:
            break
    return answer


def canonical_integer(answer: str) -> str | None:
    """``"-007"`` -> ``"-7"``, ``"70.0"`` -> ``"70"``, ``"-0"`` -> ``"0"``; None if not a plain integer."""
    match = _INTEGER.fullmatch(answer)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    return digits if sign != "-" or digits == "0" else "-" + digits


def sympy_equal(pred: str, gold: str) -> bool:
    """math-verify's ``verify(gold, pred)`` on both strings read as LaTeX; no time bound of its own.

    Runs inside a grading worker (see ``math_equal``); call it directly only on trusted input.
    """
    # Imported here: only grading workers need sympy (the forkserver preloads it for them).
    from math_verify import LatexExtractionConfig, parse, verify

    latex_only = [LatexExtractionConfig()]
    gold_parsed = parse(f"${gold}$", extraction_config=latex_only, parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", extraction_config=latex_only, parsing_timeout=None)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def warm_up() -> None:
    """Build math-verify's LaTeX parser and sympy's caches; grading workers call this at start-up."""
    sympy_equal(r"\frac{1}{2}", "0.5")


def math_equal(pred: str, gold: str, timeout: float = 2.0) -> bool:
    """Whether answer ``pred`` equals reference ``gold``, within ``timeout`` seconds.

    See the module docstring for the families handled and the order of checks.

    Args:
        pred: the model's answer string (already extracted from its response).
        gold: the reference answer string.
        timeout: seconds the sympy path may take; on expiry the answer counts as not equal.
            The integer fast path never waits. (A process's first sympy call also waits, untimed,
            for the grading workers to start: about 3 s once.)

    Returns:
        True if equivalent, False otherwise (also on timeout).

    Raises:
        TypeError: ``pred`` or ``gold`` is not a str.
        ValueError: ``timeout`` is not a positive finite number.
    """
    for name, value in (("pred", pred), ("gold", gold)):
        if not isinstance(value, str):
            raise TypeError(f"math_equal: {name} must be a str, got {type(value).__name__}: {value!r:.80}")
    check_timeout(timeout, "math_equal")
    pred, gold = unwrap_answer(pred), unwrap_answer(gold)
    pred_int, gold_int = canonical_integer(pred), canonical_integer(gold)
    if pred_int is not None and gold_int is not None:
        return pred_int == gold_int
    if not pred or not gold:
        return False
    try:
        return run_with_timeout(sympy_equal, (pred, gold), timeout)
    except WorkerTimeout:
        return False
    except WorkerError as exc:
        logger.warning("math_equal: math-verify raised %s on pred=%.80r gold=%.80r", exc, pred, gold)
        return False
