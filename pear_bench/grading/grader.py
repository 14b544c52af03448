"""``grade(response, doc, task)``: the one correctness check behind SFT filtering, GRPO rewards and
evaluation, and ``grade_batch`` for many responses at once.

Tasks and how they are graded:

==================  ==================================  =========================================
task                answer taken from the response      correct when
==================  ==================================  =========================================
aime2025, math      final ``\\boxed{}`` group; else     ``math_equal(answer, doc["answer"])``
                    ``<answer>``; else "answer is ..."
a game in GAMES     last ``<answer>...</answer>``       reasoning-gym's verifier scores exactly 1.0
synlogic            last ``<answer>...</answer>``       equal to ``doc["answer"]`` after case
                                                        folding and whitespace collapsing
==================  ==================================  =========================================

Deviation: SynLogic's official per-task verifiers live in its own repository, not on PyPI; the
text match above is exact for tasks with a single canonical answer string and strict (may mark a
correct answer wrong) for tasks that accept several.

Docs are mappings with at least ``answer``; game docs also need ``metadata`` (a dict, or its JSON
text as in ``pear_bench.problems`` records). Every call is bounded by ``timeout`` seconds: the
integer fast path and text matching are linear scans, everything else runs in a grading worker
process with a hard deadline (``pear_bench.grading.workers``); a timeout grades 0.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from pear_bench.errors import InputError
from pear_bench.grading.extraction import final_math_answer, last_tagged
from pear_bench.grading.games import GAMES, score_game
from pear_bench.grading.math import math_equal
from pear_bench.grading.workers import WorkerError, WorkerTimeout, check_timeout, run_with_timeout

MATH_TASKS = ("aime2025", "math")
TEXT_MATCH_TASKS = ("synlogic",)
TASKS = MATH_TASKS + GAMES + TEXT_MATCH_TASKS


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def extract_answer(response: str, task: str) -> str | None:
    """The final answer in ``response`` as the task's format defines it (see the module table).

    Returns:
        The answer text, stripped; None if the response gives no (complete) answer.

    Raises:
        TypeError: ``response`` is not a str.
        ValueError: ``task`` is unknown.
    """
    _check_task(task)
    if not isinstance(response, str):
        raise TypeError(f"extract_answer: response must be a str, got {type(response).__name__}")
    if task in MATH_TASKS:
        return final_math_answer(response)
    return last_tagged(response, "answer")


def _reference_answer(doc: Mapping[str, Any]) -> str:
    if not isinstance(doc, Mapping) or "answer" not in doc:
        raise InputError(f"doc must be a mapping with an 'answer' field; got {str(doc)[:120]!r}")
    answer = doc["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        return str(answer)  # some hub copies of AIME store answers as integers
    if not isinstance(answer, str):
        raise InputError(f"doc {doc.get('id', '')!r}: 'answer' must be a str, got {type(answer).__name__}")
    return answer


def _game_entry(doc: Mapping[str, Any], answer: str) -> dict[str, Any]:
    metadata = doc.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise InputError(f"doc {doc.get('id', '')!r}: 'metadata' is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise InputError(f"doc {doc.get('id', '')!r}: a game doc needs 'metadata' (a dict or its JSON text)")
    return {"question": doc.get("question", ""), "answer": answer, "metadata": metadata}


def _collapse(text: str) -> str:
    return " ".join(text.split()).casefold()


def grade(response: str, doc: Mapping[str, Any], task: str, timeout: float = 2.0,
          finish_reason: str | None = None) -> float:
    """1.0 if ``response`` answers ``doc`` correctly, else 0.0 (also when no answer is found).

    A response cut off by the length limit (``finish_reason == "length"``) is never correct, even if
    it closed its ``\\boxed{}`` or ``<answer>`` before the cut: it never ended its turn, so as SFT data
    it would teach not to stop, and as a GRPO reward it would pay for running on.

    Args:
        response: the model's full response text.
        doc: the problem; ``answer`` holds the reference (games: plus ``metadata``).
        task: one of ``TASKS``.
        timeout: seconds each equivalence check or game verifier may take.
        finish_reason: how sampling ended: "stop" (an end-of-turn token), "length" (the limit), or
            None when unknown (graded on the text alone).

    Raises:
        TypeError: ``response`` is not a str.
        ValueError: unknown task, a doc without the fields its task needs, or a bad timeout.
        RuntimeError: a game verifier failed on the doc (a malformed doc, not a wrong answer).
    """
    check_timeout(timeout, "grade")
    answer = extract_answer(response, task)
    reference = _reference_answer(doc)
    # Validate the doc before looking at the answer, so a malformed doc fails on every response.
    entry = _game_entry(doc, reference) if task in GAMES else None
    if answer is None or finish_reason == "length":
        return 0.0
    if task in MATH_TASKS:
        return float(math_equal(answer, reference, timeout))
    if task in TEXT_MATCH_TASKS:
        return float(_collapse(answer) == _collapse(reference))
    try:
        score = run_with_timeout(score_game, (task, answer, entry), timeout)
    except WorkerTimeout:
        return 0.0
    except WorkerError as exc:
        raise RuntimeError(f"reasoning-gym's {task} verifier failed on doc {doc.get('id', '')!r}: {exc}") from None
    return 1.0 if score == 1.0 else 0.0


def grade_batch(
    responses: Sequence[str],
    docs: Sequence[Mapping[str, Any]],
    task: str,
    *,
    timeout: float = 2.0,
    max_workers: int | None = None,
    progress: bool = True,
    finish_reasons: Sequence[str | None] | None = None,
) -> list[float]:
    """``[grade(r, d, task, timeout, f) for r, d, f in zip(responses, docs, finish_reasons)]``, in parallel, in order.

    ``max_workers`` threads (default: one per CPU) each hand their sympy and game-verifier calls
    to a grading worker process of their own, so those run in parallel across processes; the
    integer fast path runs in the threads. Threads take contiguous chunks of up to 128 responses
    (a future per response would cost several times the fast path itself). A tqdm progress bar
    counts graded responses.

    Raises:
        ValueError: ``responses`` and ``docs`` differ in length, or ``task`` is unknown; plus
            whatever ``grade`` raises for a malformed doc.
    """
    _check_task(task)
    if len(responses) != len(docs):
        raise ValueError(f"grade_batch: {len(responses)} responses but {len(docs)} docs")
    if finish_reasons is None:
        finish_reasons = [None] * len(responses)
    elif len(finish_reasons) != len(responses):
        raise ValueError(f"grade_batch: {len(responses)} responses but {len(finish_reasons)} finish reasons")
    workers = max_workers or os.cpu_count() or 1
    size = min(128, max(1, math.ceil(len(responses) / (16 * workers))))  # >= 16 chunks per thread: balance
    chunks = [range(start, min(start + size, len(responses))) for start in range(0, len(responses), size)]

    def grade_chunk(indices: range) -> list[float]:
        return [grade(responses[i], docs[i], task, timeout, finish_reasons[i]) for i in indices]

    scores: list[float] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(responses), desc=f"grading {task}", unit="answer", disable=not progress) as bar:
        for chunk_scores in pool.map(grade_chunk, chunks):
            scores.extend(chunk_scores)
            bar.update(len(chunk_scores))
    return scores
