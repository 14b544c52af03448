"""Finding the final answer in a model response: its final group of boxes, else its last
``<answer>...</answer>``, else the text after "the answer is" (a sentence there gives its last value).

Every scan is linear in the response length (``rfind``, regex passes without ambiguous nested
quantifiers, brace matching over disjoint stretches), so extraction needs no time bound of its own
even on a 100k-character response.

Choices:

- The *last* box decides. If it is unclosed (a truncated response), there is no answer: an earlier
  box may be a draft the model was revising, and crediting it would reward truncation.
- Boxes directly before the last one, separated from it only by commas, semicolons, ``$``,
  whitespace, "and" or "or", are the same answer split up (``\\boxed{1}, \\boxed{2}``): their
  contents are joined as a comma list (``1, 2``), which ``math_equal`` reads as a set. So the split
  answer is right only when the boxes together equal the reference, a hedge between two values
  (``\\boxed{70} or \\boxed{71}``) is wrong for a single-valued reference, and a value boxed twice
  in a row counts once. Boxes separated by any other text are drafts: only the last group counts.
- ``\\boxed 70`` (no braces) boxes the word after it, as models mean it (TeX would box one token).
- Escaped braces ``\\{`` ``\\}`` do not count when matching braces, so ``\\boxed{\\{1,2\\}}`` works.
- ``<answer>`` tags: the last closing tag and the last opening tag before it. On well-formed text
  this equals ``reasoning_gym.utils.extract_answer`` (its non-greedy DOTALL regex is quadratic on a
  response with many unclosed ``<answer>`` tags, hence this reimplementation). Math responses
  without a box fall back to them before the answer phrase.
- An empty answer (``\\boxed{}``, ``<answer> </answer>``) is no answer: None.
"""

from __future__ import annotations

import re

_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)
# A box command with its argument's start: "\boxed{" (spaces allowed before the brace) or
# "\boxed 70" (spaces, then a word); "\boxedx" and a bare "\boxed" are not boxes.
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)(?:\s*\{|\s+(?=[^\s${}]))")
_UNBRACED_ARGUMENT = re.compile(r"[^\s${}]+")
# What may stand between two boxes of one answer: "\boxed{1}, \boxed{2}, and $\boxed{3}$".
_BOX_SEPARATOR = re.compile(r"[\s,;$]*(?:(?:and|or|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\})[\s,;$]*)?")
_MAX_SEPARATOR_CHARS = 40
MAX_GROUP_BOXES = 32  # a longer run of boxes is cut to its last 32 (and so graded as incomplete)
_MATH_SPAN = re.compile(r"\$[^$]*\$")
# In an answer sentence: a $...$ span or a number (1,000  3.5  3/4); the last one is the answer.
_VALUE = re.compile(_MATH_SPAN.pattern + r"|[+-]?[0-9]+(?:[.,/][0-9]+)*")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # two letters or more, not a LaTeX command


def matching_brace(text: str, open_index: int, end: int | None = None) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``text[open_index]``, or None if it does not close
    before ``end`` (default: the end of ``text``)."""
    if text[open_index:open_index + 1] != "{":
        raise ValueError(f"matching_brace: text[{open_index}] is not '{{'")
    depth = 0
    for token in _BRACE_TOKENS.finditer(text, open_index, len(text) if end is None else end):
        brace = token.group()
        if brace == "{":
            depth += 1
        elif brace == "}":
            depth -= 1
            if depth == 0:
                return token.start()
    return None


def box_argument(text: str, opening: re.Match, end: int) -> tuple[str, int] | None:
    """The stripped argument of the box that ``opening`` (a ``_BOX_OPENING`` match) starts, and
    the index just after the box; None if the box does not close before ``end`` or is empty."""
    if opening.group().endswith("{"):
        close = matching_brace(text, opening.end() - 1, end)
        if close is None:
            return None
        argument, after = text[opening.end():close].strip(), close + 1
    else:
        word = _UNBRACED_ARGUMENT.match(text, opening.end(), end)
        if word is None:
            return None
        argument, after = word.group(), word.end()
    return (argument, after) if argument else None


def final_boxes(text: str) -> list[str] | None:
    """Arguments of the final group of boxes in ``text``, in order: the last box, and before it
    each box separated from the next only by ``_BOX_SEPARATOR`` (at most 40 characters; at most
    ``MAX_GROUP_BOXES`` boxes). None if there is no box or the last one is unclosed or empty.

    Each box is read only up to the start of the next one, so the scans cover disjoint stretches.
    """
    openings = list(_BOX_OPENING.finditer(text))
    arguments: list[str] = []
    next_start = len(text)
    for opening in reversed(openings):
        box = box_argument(text, opening, next_start)
        if box is None:
            break
        argument, after = box
        gap = text[after:next_start]
        if arguments and not (len(gap) <= _MAX_SEPARATOR_CHARS and _BOX_SEPARATOR.fullmatch(gap)):
            break
        arguments.append(argument)
        next_start = opening.start()
        if len(arguments) == MAX_GROUP_BOXES:
            break
    return arguments[::-1] or None


def join_boxes(arguments: list[str]) -> str:
    """One answer from a group of box arguments: repeats (up to whitespace) dropped, the rest
    joined as a comma list, which ``math_equal`` compares with the reference as a set."""
    distinct = list(dict.fromkeys(" ".join(argument.split()) for argument in arguments))
    return arguments[-1] if len(distinct) == 1 else ", ".join(distinct)


def has_box(text: str) -> bool:
    """Whether ``text`` opens any box (``\\boxed{``, ``\\fbox{``, ``\\boxed 70``), closed or not."""
    return _BOX_OPENING.search(text) is not None


def last_tagged(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>``, stripped."""
    close_index = text.rfind(f"</{tag}>")
    if close_index < 0:
        return None
    open_index = text.rfind(f"<{tag}>", 0, close_index)
    if open_index < 0:
        return None
    return text[open_index + len(tag) + 2:close_index].strip() or None


def last_value_of_sentence(answer: str) -> str:
    """The last ``$...$`` span or number of ``answer`` if it is a sentence (two words or more
    outside ``$...$``: "The largest $n$ is 34" -> "34"); otherwise ``answer`` unchanged."""
    if len(_WORD.findall(_MATH_SPAN.sub(" ", answer))) < 2:
        return answer
    last = None
    for last in _VALUE.finditer(answer):
        pass
    return answer if last is None else last.group()


def answer_after_phrase(text: str) -> str | None:
    """The rest of the sentence after the last "answer is" / "answer:" (case-insensitive), or
    its last value if that is a sentence (``last_value_of_sentence``).

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
    return last_value_of_sentence(answer) if answer else None


def final_math_answer(text: str) -> str | None:
    """The answer of a math response: its final group of boxes (``final_boxes``, joined); only a
    response without any box falls back to its last ``<answer>`` tag, then to "the answer is ..."
    (a truncated last box stays unanswered, see the module docstring)."""
    if has_box(text):
        boxes = final_boxes(text)
        return None if boxes is None else join_boxes(boxes)
    return last_tagged(text) or answer_after_phrase(text)
