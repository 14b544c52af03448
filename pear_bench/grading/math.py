"""Equivalence of two math answer strings: an exact integer fast path, then math-verify + sympy.

Order of checks in ``math_equal(pred, gold)``:

1. Normalise (``normalise_answer``, plain string work): unwrap surrounding ``$...$``,
   ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``, a ``\\boxed{...}`` spanning the whole answer,
   surrounding whitespace and trailing spacing or punctuation (``70.`` is how sentences end, not a
   decimal; ``70,`` ``70;`` ``70\\ ``); drop a leading choice label (``\\textbf{(B) }70``) and a
   trailing modulus (``70 \\pmod{1000}``, ``70 \\text{ (mod } 1000)``); join digit groups
   (``1\\,000``, ``1{,}000``).
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
_MAX_UNWRAP_ROUNDS = 8  # e.g. "$\boxed{70,\ }$." needs 5; a bound keeps adversarial "$$$$..." linear
# Spacing and punctuation that end a written answer rather than belong to it; longest first.
_TRAILING = ("\\qquad", "\\quad", "\\ ", "\\,", "\\;", "\\:", "\\!", "~", ",", ";")
# A leading multiple-choice label: "\textbf{(B) }70", "\textbf{(B)}\ 70", "(B) 70".
_CHOICE_LABEL = re.compile(
    r"(?:\\(?:textbf|text|mathbf|mathrm)\{\s*\(\s*[A-E]\s*\)\s*\}|\(\s*[A-E]\s*\))(?:\s|\\[ ,;]|~)*")
# A trailing modulus: "\pmod{1000}", "\pmod 1000", "\bmod 1000", "(\mod 1000)", "\text{ (mod } 1000)",
# "\text{(mod 1000)}"; searched for only near the last "mod", so linear in the answer.
_MODULUS = re.compile(
    r"(?:\s|\\[ ,;])*(?:"
    r"\\pmod\s*(?:\{\s*[0-9]+\s*\}|[0-9]+)"
    r"|\(?\s*\\b?mod\s*(?:\{\s*[0-9]+\s*\}|[0-9]+)\s*\)?"
    r"|\(?\s*\\text\{\s*\(?\s*mod\s*\}\s*(?:\{\s*[0-9]+\s*\}|[0-9]+)\s*\)?"
    r"|\\text\{\s*\(?\s*mod\s*[0-9]+\s*\)?\s*\}"
    r")\Z")
_MODULUS_LOOKBACK = 24  # characters between the annotation's start and its "mod"
# A thin space or braced comma between digit groups: "1\,000", "1{,}000".
_THOUSANDS_SEPARATOR = re.compile(r"(?<=[0-9])(?:\\,|\{,\})(?=[0-9]{3}(?![0-9]))")


def strip_trailing(answer: str) -> str:
    """``answer`` without surrounding whitespace and one trailing spacing command or punctuation
    mark (``70,`` ``70;`` ``70\\ `` ``70.``, but not ``...``)."""
    answer = answer.strip()
    if answer.endswith("\\") and not answer.endswith("\\\\"):
        return answer[:-1].rstrip()  # "70\ " lost its space to strip()
    if answer.endswith(".") and not answer.endswith(".."):
        return answer[:-1].rstrip()
    for suffix in _TRAILING:
        if answer.endswith(suffix):
            return answer[:-len(suffix)].rstrip()
    return answer


def unwrap_answer(answer: str) -> str:
    """Strip presentation around an answer: math delimiters, a whole-answer ``\\boxed{}``, trailing
    spacing and punctuation (``strip_trailing``)."""
    for _ in range(_MAX_UNWRAP_ROUNDS):
        before = answer
        answer = strip_trailing(answer)
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


def drop_choice_label(answer: str) -> str:
    """``\\textbf{(B) }70`` -> ``70``: a leading choice label (A-E) goes when a value follows it."""
    label = _CHOICE_LABEL.match(answer)
    return answer[label.end():] if label and label.end() < len(answer) else answer


def drop_modulus(answer: str) -> str:
    """``70 \\pmod{1000}`` -> ``70``: a trailing modulus annotation goes when a value precedes it."""
    mod = answer.rfind("mod")
    if mod < 0:
        return answer
    annotation = _MODULUS.search(answer, max(0, mod - _MODULUS_LOOKBACK))
    return answer[:annotation.start()] if annotation and answer[:annotation.start()].strip() else answer


def join_thousands(answer: str) -> str:
    """``1\\,000`` -> ``1000`` and ``1{,}000`` -> ``1000``: digit-group separators go."""
    return _THOUSANDS_SEPARATOR.sub("", answer)


def normalise_answer(answer: str) -> str:
    """The value an answer string states: ``unwrap_answer``, then choice label and modulus dropped
    and thousands joined (each of those may leave presentation to unwrap again)."""
    answer = unwrap_answer(answer)
    return unwrap_answer(join_thousands(drop_modulus(drop_choice_label(answer))))


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
    pred, gold = normalise_answer(pred), normalise_answer(gold)
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
