"""Reasoning-gym game verifiers, made safe to call on model output.

``score_game`` runs reasoning-gym's own ``score_answer`` for an entry and is meant to run in a
grading worker (``pear_bench.grading.workers``), which bounds its time. Only the games in
``GAMES`` are accepted: their scorers were read for what they do with the answer text.

- countdown: the scorer calls sympy's ``parse_expr`` (that is, ``eval``) on the answer. Answers
  are first checked against ``COUNTDOWN_ANSWER`` (digits, spaces, ``+ - * / ( )``, no ``**``,
  at most 256 characters); anything else scores 0 without reaching the scorer.
- knights_knaves, mini_sudoku, maze, chain_sum, basic_arithmetic: string and ``Decimal``
  operations on the answer, nothing evaluated.

Reasoning-gym gives partial credit (0.01 for a malformed answer, 0.05 for a wrong countdown
expression, fractions for near-miss grids); ``pear_bench.grading.grade`` counts a response as
correct only when the score is exactly 1.0.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

GAMES = ("countdown", "knights_knaves", "mini_sudoku", "maze", "chain_sum", "basic_arithmetic")

# Digits, spaces and + - * / ( ); "**" (power) is refused separately. Bounded length.
COUNTDOWN_ANSWER = re.compile(r"[0-9+\-*/() ]{1,256}", re.ASCII)


@functools.cache
def _scorer(game: str) -> Callable[[str, dict], float]:
    # Imported here: only grading workers need reasoning-gym (the forkserver preloads it for them).
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(game)


def warm_up() -> None:
    """Build every supported game's scorer; grading workers call this at start-up."""
    for game in GAMES:
        _scorer(game)


def score_game(game: str, answer: str, entry: Mapping[str, Any]) -> float:
    """Reasoning-gym's score of ``answer`` for ``entry`` (question, answer, metadata), in [0, 1].

    This is the safety boundary: it refuses unsupported games and unsafe countdown answers itself.

    Raises:
        ValueError: ``game`` is not in ``GAMES``.
    """
    if game not in GAMES:
        raise ValueError(f"score_game: game {game!r} is not supported; supported: {', '.join(GAMES)}")
    if game == "countdown" and (not COUNTDOWN_ANSWER.fullmatch(answer) or "**" in answer):
        return 0.0
    return float(_scorer(game)(answer, dict(entry)))
