"""Finding the final answer in a model response: last ``\\boxed{...}``, last ``<answer>...</answer>``,
or the text after "the answer is".

Every scan is linear in the response length (``rfind``, one regex pass without nested
quantifiers), so extraction needs no time bound of its own even on a 100k-character response.

Choices:

- The *last* box decides. If it is unclosed (a truncated response), there is no answer: an earlier
  box may be a draft the model was revising, and crediting it would reward truncation.
- Escaped braces ``\\{`` ``\\}`` do not count when matching braces, so ``\\boxed{\\{1,2\\}}`` works.
- ``<answer>`` tags: the last closing tag and the last opening tag before it. On well-formed text
  this equals ``reasoning_gym.utils.extract_answer`` (its non-greedy DOTALL regex is quadratic on a
  response with many unclosed ``<answer>`` tags, hence this reimplementation).
- An empty answer (``\\boxed{}``, ``<answer> </answer>``) is no answer: None.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed{", "\\fbox{")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)


def matching_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``text[open_index]``, or None if it never closes."""
    if text[open_index:open_index + 1] != "{":
        raise ValueError(f"matching_brace: text[{open_index}] is not '{{'")
    depth = 0
    for token in _BRACE_TOKENS.finditer(text, open_index):
        brace = token.group()
        if brace == "{":
            depth += 1
        elif brace == "}":
            depth -= 1
            if depth == 0:
                return token.start()
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    open_index = start + len(command) - 1
    close_index = matching_brace(text, open_index)
    if close_index is None:
        return None
    return text[open_index + 1:close_index].strip() or None


def last_tagged(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>``, stripped."""
    close_index = text.rfind(f"</{tag}>")
    if close_index < 0:
        return None
    open_index = text.rfind(f"<{tag}>", 0, close_index)
    if open_index < 0:
        return None
    return text[open_index + len(tag) + 2:close_index].strip() or None


def answer_after_phrase(text: str) -> str | None:
    """The rest of the sentence after the last "answer is" / "answer:" (case-insensitive).

    The answer ends at the line end or at the first ". " (a full stop, not a decimal point);
    surrounding whitespace, Markdown bold markers and a final full stop are removed.
    """
    last = None
    for last in _ANSWER_PHRASE.finditer(text):
        pass
    if last is None:
        return None
    end = len(text)
    for stop in ("\n", ". "):
        found = text.find(stop, last.end(), end)
        if found >= 0:
            end = found
    answer = text[last.end():end].strip().strip("*").strip().removesuffix(".").rstrip()
    return answer or None


def final_math_answer(text: str) -> str | None:
    """The answer of a math response: its last box; only a response without any box falls back
    to "the answer is ..." (a truncated last box stays unanswered, see the module docstring)."""
    if any(command in text for command in _BOX_COMMANDS):
        return last_boxed(text)
    return answer_after_phrase(text)
