"""pear_bench.grading: equivalence table, extraction, adversarial inputs, time bounds, game verifiers.

Expected values come from the mathematics of each pair (and, for games, from reasoning-gym's own
scorer called directly), never from the grader's output.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pear_bench.grading import GAMES, TASKS, extract_answer, grade, grade_batch, math_equal
from pear_bench.grading import math as grading_math
from pear_bench.grading.extraction import last_tagged
from pear_bench.grading.workers import WorkerError, WorkerPool, WorkerTimeout

SLACK_S = 1.0  # allowance over a deadline for killing a worker and scheduling on a busy 2-core machine


def start_idle_workers(count: int) -> None:
    """Have ``count`` warm grading workers idle, so that timed calls do not include a start-up
    (which is untimed by design: see pear_bench.grading.workers)."""
    with ThreadPoolExecutor(count) as pool:
        assert all(pool.map(lambda _: math_equal(r"\frac{2}{2}", "1", timeout=60), range(count)))


@pytest.fixture(scope="module")
def game_docs():
    """One seeded problem record per supported game."""
    from pear_bench.problems import game_splits

    return {game: game_splits(game, seed=0, eval_size=1)["eval"][0] for game in GAMES}


# ---------------------------------------------------------------------------------------------
# Equivalence: (pred, gold, equal?) decided by hand.

EQUIVALENCE_CASES = [
    # AIME formats and integers (fast path)
    (r"\boxed{070}", "70", True),
    ("70", "70", True),
    ("$70$", "70", True),
    ("70.", "70", True),
    ("070", "70", True),
    ("0070", "070", True),
    ("+70", "70", True),
    ("70.0", "70", True),
    ("  70 \n", "70", True),
    (r"$\boxed{70}$.", "70", True),
    ("000", "0", True),
    ("-0", "0", True),
    ("71", "70", False),
    ("-70", "70", False),
    ("700", "70", False),
    ("7", "70", False),
    ("", "70", False),
    ("1" + "0" * 5000, "1" + "0" * 5000, True),  # beyond int()'s 4300-digit limit
    ("1" + "0" * 5000, "1" + "0" * 4999, False),
    # fractions vs decimals
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac12", "0.5", True),
    ("1/2", "0.5", True),
    (r"\dfrac{1}{2}", "0.5", True),
    (r"\tfrac{3}{4}", "0.75", True),
    (r"\frac{2}{4}", r"\frac{1}{2}", True),
    (r"\frac{140}{2}", "70", True),
    (r"-\frac{3}{2}", "-1.5", True),
    ("0.51", r"\frac{1}{2}", False),
    (r"\frac{3}{2}", "-1.5", False),
    (r"\frac{1}{3}", "0.3", False),
    # radicals
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"\sqrt[3]{8}", "2", True),
    (r"\sqrt{3}", r"\sqrt{2}", False),
    (r"3\sqrt{2}", r"2\sqrt{3}", False),
    # pi
    (r"2\pi", r"\pi+\pi", True),
    (r"\pi/2", r"\frac{\pi}{2}", True),
    (r"\frac{3\pi}{4}", r"0.75\pi", True),
    ("3.14", r"\pi", False),
    (r"\pi", r"2\pi", False),
    # sets
    (r"\{1,2\}", r"\{2,1\}", True),
    (r"\{1, 2, 3\}", r"\{3,1,2\}", True),
    (r"\{1,2\}", r"\{1,3\}", False),
    (r"\{1,2\}", r"\{1,2,3\}", False),
    # intervals: open and closed ends differ
    ("(1,2]", "(1,2]", True),
    (r"(-\infty, 3)", r"(-\infty,3)", True),
    ("[0,1)", "[0, 1)", True),
    ("(1,2)", "(1,2]", False),
    ("[1,2]", "(1,2)", False),
    (r"(-\infty,3]", r"(-\infty,3)", False),
    # tuples
    ("(1,2)", "(1, 2)", True),
    ("(1,2,3)", "(1, 2, 3)", True),
    (r"(\frac{1}{2}, 3)", "(0.5, 3)", True),
    ("(2,1)", "(1,2)", False),
    ("(1,2,3)", "(1,2,4)", False),
    # percentages
    (r"50\%", "50", True),
    (r"50\%", "0.5", True),
    (r"50\%", r"\frac{1}{2}", True),
    ("50%", "50", True),
    (r"25\%", "50", False),
    # simple equations
    ("x=3", "3", True),
    ("x = 3", "3", True),
    ("3", "x=3", True),
    ("x=3", "x=3", True),
    ("y=4", "3", False),
    ("x=4", "x=3", False),
    # units and text wrappers
    (r"5\text{ cm}", "5", True),
    (r"5 \text{cm}", "5", True),
    (r"30^\circ", "30", True),
    (r"30^{\circ}", "30", True),
    (r"\text{(A)}", "A", True),
    (r"31^\circ", "30", False),
    (r"\text{five}", "5", False),
    # expressions
    ("x^2+2x+1", "(x+1)^2", True),
    ("10^{3}", "1000", True),
    ("2^{10}", "1024", True),
    ("x^2+1", "(x+1)^2", False),
    # look-alike digits are not digits
    ("７０", "70", False),  # fullwidth
    ("٧٠", "70", False),  # Arabic-Indic
    ("𝟕𝟎", "70", False),  # mathematical bold
    ("7O", "70", False),  # letter O
]


def test_equivalence_table_is_large_and_balanced():
    assert len(EQUIVALENCE_CASES) >= 60
    assert sum(expected for *_, expected in EQUIVALENCE_CASES) >= 25
    assert sum(not expected for *_, expected in EQUIVALENCE_CASES) >= 25


@pytest.mark.parametrize(("pred", "gold", "expected"), EQUIVALENCE_CASES, ids=lambda v: repr(v)[:30])
def test_math_equal_matches_hand_decided_equivalence(pred, gold, expected):
    assert math_equal(pred, gold, timeout=30) is expected  # generous: correctness, not speed, on a busy machine


def test_integer_answers_never_reach_a_worker_process(monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("the integer fast path must not use a worker process")

    monkeypatch.setattr(grading_math, "run_with_timeout", no_workers)
    assert math_equal(r"\boxed{070}", "70") and math_equal("70.", "70") and not math_equal("$71$", "70")
    assert grade(r"so the answer is \boxed{070}", {"answer": 70}, "aime2025") == 1.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="pred must be a str"):
        math_equal(70, "70")
    with pytest.raises(TypeError, match="gold must be a str"):
        math_equal("70", None)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        math_equal("70", "70", timeout=0)
    with pytest.raises(ValueError, match="grade: timeout must be a positive"):
        grade("<answer>1</answer>", {"answer": "1", "metadata": "{}"}, "maze", timeout=float("nan"))
    with pytest.raises(ValueError, match="unknown task 'gsm8k'; known tasks: aime2025"):
        extract_answer("x", "gsm8k")
    with pytest.raises(TypeError, match="response must be a str"):
        grade(None, {"answer": "1"}, "aime2025")
    with pytest.raises(ValueError, match="'answer' field"):
        grade(r"\boxed{1}", {"solution": "1"}, "aime2025")
    with pytest.raises(ValueError, match="needs 'metadata'"):
        grade("<answer>1</answer>", {"id": "g1", "answer": "1"}, "maze")
    with pytest.raises(ValueError, match="not valid JSON"):
        grade("<answer>1</answer>", {"id": "g1", "answer": "1", "metadata": "{oops"}, "maze")
    with pytest.raises(ValueError, match="3 responses but 2 docs"):
        grade_batch(["a", "b", "c"], [{"answer": "1"}] * 2, "aime2025")


# ---------------------------------------------------------------------------------------------
# Extraction

EXTRACTION_CASES = [
    # (response, task, expected answer)
    (r"The answer is \boxed{70}.", "aime2025", "70"),
    (r"so $x = \boxed{\frac{1}{2}}$", "math", r"\frac{1}{2}"),
    (r"\boxed{\left(\frac{a}{b^{2}}, 3\right)}", "math", r"\left(\frac{a}{b^{2}}, 3\right)"),
    (r"\boxed{\{1,2\}}", "math", r"\{1,2\}"),  # escaped braces do not close the box
    (r"First \boxed{1}, then \boxed{2}. Final: \boxed{ 3 }", "aime2025", "3"),  # several boxes: last
    (r"\fbox{5}", "math", "5"),
    ("So the final answer is 42.", "aime2025", "42"),
    ("Answer: $\\frac{3}{4}$\nDone.", "math", "$\\frac{3}{4}$"),
    ("**Answer:** 12", "aime2025", "12"),
    ("I think it is 70", "aime2025", None),  # no box, no answer phrase
    (r"Thus \boxed{7", "aime2025", None),  # truncated
    (r"\boxed{1} is a draft; the answer is \boxed{\frac{2", "math", None),  # truncated last box wins
    (r"The answer is 5, so \boxed{", "math", None),  # an opened box overrides the phrase
    (r"\boxed{}", "aime2025", None),
    ("<answer>5</answer>", "aime2025", "5"),  # no box: math falls back to tags
    (r"\boxed{5} <answer>6</answer>", "math", "5"),  # a box wins over tags
    ("<answer> 3 + 4 </answer>", "countdown", "3 + 4"),
    ("<answer>1</answer> then <answer>2</answer>", "maze", "2"),
    ("<answer>1</answer> then <answer>2", "maze", "1"),
    ("<answer>unfinished", "maze", None),
    ("<answer> </answer>", "chain_sum", None),
    (r"\boxed{5}", "countdown", None),  # games read tags, not boxes
    ("<answer>Yes</answer>", "synlogic", "Yes"),
]


@pytest.mark.parametrize(("response", "task", "expected"), EXTRACTION_CASES, ids=lambda v: repr(v)[:30])
def test_extract_answer(response, task, expected):
    assert extract_answer(response, task) == expected


# Answer forms real models write for AIME/MATH, each with twins that must stay wrong.
# (response, task, gold, expected grade), decided by hand.
ANSWER_FORM_CASES = [
    # 1. <answer> tags in a math task without a box
    ("<answer>42</answer>", "aime2025", "42", 1.0),
    ("<answer>43</answer>", "aime2025", "42", 0.0),
    ("reasoning...\n<answer>$\\frac{1}{2}$</answer>", "math", "0.5", 1.0),
    ("<answer>\\frac{1}{3}</answer>", "math", "0.5", 0.0),
    # 2. a final-answer phrase and a short sentence: its last number/expression
    ("Final Answer: The largest $n$ is 34.", "aime2025", "34", 1.0),
    ("Final Answer: The largest $n$ is 35.", "aime2025", "34", 0.0),
    ("**Final Answer:** There are 34 ways in total.", "aime2025", "34", 1.0),
    ("**Final Answer:** There are 33 ways in total.", "aime2025", "34", 0.0),
    ("Final Answer: the ratio is $\\frac{3}{4}$.", "math", "0.75", 1.0),
    ("Final Answer: the ratio is $\\frac{4}{3}$.", "math", "0.75", 0.0),
    ("Final Answer: The final answer is $\\boxed{34}$. I hope it is correct.", "aime2025", "34", 1.0),
    ("Final Answer: The final answer is $\\boxed{35}$. I hope it is correct.", "aime2025", "34", 0.0),
    # 3. a modulus annotation after the value
    ("\\boxed{70 \\pmod{1000}}", "aime2025", "70", 1.0),
    ("\\boxed{71 \\pmod{1000}}", "aime2025", "70", 0.0),
    ("\\boxed{70 \\text{ (mod } 1000)}", "aime2025", "70", 1.0),
    ("\\boxed{71 \\text{ (mod } 1000)}", "aime2025", "70", 0.0),
    ("$\\boxed{70 \\pmod {1000}}$.", "aime2025", "70", 1.0),
    ("\\boxed{\\pmod{1000}}", "aime2025", "1000", 0.0),  # an annotation with no value is no answer
    # 4. trailing punctuation or spacing inside the box
    ("\\boxed{70,}", "aime2025", "70", 1.0),
    ("\\boxed{71,}", "aime2025", "70", 0.0),
    ("\\boxed{70;}", "aime2025", "70", 1.0),
    ("\\boxed{71;}", "aime2025", "70", 0.0),
    ("\\boxed{70\\ }", "aime2025", "70", 1.0),
    ("\\boxed{71\\ }", "aime2025", "70", 0.0),
    ("\\boxed{70.}", "aime2025", "70", 1.0),
    ("\\boxed{71.}", "aime2025", "70", 0.0),
    # 5. thousands separators
    ("\\boxed{1\\,000}", "aime2025", "1000", 1.0),
    ("\\boxed{1\\,001}", "aime2025", "1000", 0.0),
    ("\\boxed{1{,}000}", "aime2025", "1000", 1.0),
    ("\\boxed{1{,}001}", "aime2025", "1000", 0.0),
    ("\\boxed{1\\,000\\,000}", "math", "10^6", 1.0),
    ("\\boxed{1\\,000}", "aime2025", "100", 0.0),
    # 6. AMC-style choice labels: the letter goes, the value stays
    ("\\boxed{\\textbf{(B) }70}", "math", "70", 1.0),
    ("\\boxed{\\textbf{(B) }71}", "math", "70", 0.0),
    ("$\\boxed{\\textbf{(B)}\\ 70}$", "math", "70", 1.0),
    ("$\\boxed{\\textbf{(B)}\\ 71}$", "math", "70", 0.0),
    ("The answer is $\\textbf{(B)}\\ 70$.", "math", "70", 1.0),
    ("The answer is $\\textbf{(B)}\\ 71$.", "math", "70", 0.0),
    # 7. an unbraced box
    ("so the answer is \\boxed 70", "aime2025", "70", 1.0),
    ("so the answer is \\boxed 71", "aime2025", "70", 0.0),
    ("$\\boxed 70$.", "aime2025", "70", 1.0),
    # 8. one answer over several boxes: right only when together they equal the reference
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "math", "{1,2,3}", 1.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "math", "\\{1,2,3\\}", 1.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "math", "1, 2, 3", 1.0),
    ("$x = \\boxed{3}$, $\\boxed{1}$, and $\\boxed{2}$", "math", "1, 2, 3", 1.0),  # a set: any order
    ("\\boxed{1}, \\boxed{2}", "math", "{1,2,3}", 0.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{4}", "math", "{1,2,3}", 0.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}, \\boxed{4}", "math", "{1,2,3}", 0.0),
    ("\\boxed{(1,2)} and \\boxed{(3,4)}", "math", "(1,2),(3,4)", 1.0),
    ("\\boxed{(1,2)} and \\boxed{(3,5)}", "math", "(1,2),(3,4)", 0.0),
    ("\\boxed{(1,2)}", "math", "(1,2),(3,4)", 0.0),
    # hedges are not answers; a restated value is
    ("\\boxed{70} or \\boxed{71}", "aime2025", "70", 0.0),
    ("\\boxed{70} or \\boxed{71}", "aime2025", "71", 0.0),
    ("\\boxed{70}, \\boxed{-70}", "math", "70", 0.0),
    ("\\boxed{\\pm 70}", "math", "70", 0.0),
    ("$\\pm 70$", "math", "70", 0.0),
    ("The answer is $\\pm 70$.", "math", "70", 0.0),
    ("\\boxed{70}\n\n\\boxed{70}", "aime2025", "70", 1.0),
    ("$\\boxed{70}$ $\\boxed{ 70 }$", "aime2025", "70", 1.0),
    # boxes separated by other text are drafts: the last one decides
    ("First \\boxed{71}. Checking again, it is \\boxed{70}", "aime2025", "70", 1.0),
    ("First \\boxed{70}. Checking again, it is \\boxed{71}", "aime2025", "70", 0.0),
]


@pytest.mark.parametrize(("response", "task", "gold", "expected"), ANSWER_FORM_CASES, ids=lambda v: repr(v)[:40])
def test_answer_forms_real_models_write(response, task, gold, expected):
    assert grade(response, {"answer": gold}, task, timeout=30) == expected  # generous: a busy machine


def test_each_answer_form_has_wrong_twins():
    assert sum(expected == 1.0 for *_, expected in ANSWER_FORM_CASES) >= 25
    assert sum(expected == 0.0 for *_, expected in ANSWER_FORM_CASES) >= 30


def test_integer_answer_forms_take_the_fast_path(monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("an integer answer form must not need a worker process")

    monkeypatch.setattr(grading_math, "run_with_timeout", no_workers)
    for response in ("\\boxed{70 \\pmod{1000}}", "\\boxed{70 \\text{ (mod } 1000)}", "\\boxed{70\\ }", "\\boxed{70;}",
                     "\\boxed{\\textbf{(B) }70}", "\\boxed 70", "<answer>70</answer>", "Final Answer: It is 70.",
                     "\\boxed{70} \\boxed{70}"):
        assert grade(response, {"answer": "70"}, "aime2025") == 1.0, response
    assert grade("\\boxed{1\\,000}", {"answer": "1000"}, "aime2025") == 1.0


@pytest.mark.parametrize(("response", "expected"), [
    (r"\boxed{1}, \boxed{2}, and $\boxed{3}$", "1, 2, 3"),
    (r"\boxed{70} \boxed{ 70 }", "70"),  # restated: counted once
    (r"\boxed{1} \text{ and } \boxed{2}", "1, 2"),
    (r"\boxed{1}; then \boxed{2}", "2"),  # a word between boxes: a draft and a revision
    (r"\boxed{1}, \boxed{2", None),  # the last box is truncated
    (r"\boxed{1}, \boxed{}", None),
    (r"\boxed{\boxed{3}}", "3"),
    (r"\boxed 70", "70"),
    (r"\boxed {70}", "70"),
    (r"It goes in \boxed. The answer is 5", "5"),  # a bare \boxed is no box
    (r"It goes in \boxed it", "it"),  # but a word after one is boxed
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: The largest $n$ is $34$.", "$34$"),
    ("Answer: x^2 + 1", "x^2 + 1"),  # one word at most: an expression, kept whole
])
def test_extract_math_answer_forms(response, expected):
    assert extract_answer(response, "math") == expected


def test_extract_answer_keeps_at_most_the_last_32_boxes_of_a_group():
    response = ", ".join(f"\\boxed{{{i}}}" for i in range(40))
    assert extract_answer(response, "math") == ", ".join(str(i) for i in range(8, 40))


@pytest.mark.parametrize("response", [
    "\\boxed{1}, " * 40_000,
    "\\boxed " * 40_000,
    "\\boxed{" * 40_000,
    "Final Answer: " + "the value is 1,2 " * 20_000,
    "Final Answer: " + "$" * 100_000,
    "\\boxed{70" + " \\pmod" * 30_000 + "}",
    "\\boxed{70" + " " * 100_000 + "\\pmod{" + "1" * 100_000 + "x}",
    "\\boxed{" + "1\\," * 60_000 + "}",
    "\\boxed{" + "\\textbf{(B)}\\ " * 20_000 + "}",
    "\\boxed{70" + ",\\ ;" * 40_000 + "}",
])
def test_answer_form_parsing_is_linear(response):
    """Extraction and normalisation of a 200k-character response in well under a second (a
    quadratic scan would take minutes)."""
    start = time.perf_counter()
    answer = extract_answer(response, "math")
    if answer is not None:
        grading_math.normalise_answer(answer)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("response", [
    "<answer>3 + 4</answer>",
    "think...\n<answer>\nA is a knight\n</answer>",
    "<answer>a</answer> x <answer>b c</answer> tail",
    "<answer>1 2\n3 4</answer>",
])
def test_answer_tags_match_reasoning_gym_extract_answer(response):
    from reasoning_gym.utils import extract_answer as reference

    assert last_tagged(response) == reference(response)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}\\$<>/answerboxd 0123456789.:is\n")), max_size=60),
       task=st.sampled_from(TASKS))
def test_extract_answer_never_raises(text, task):
    result = extract_answer(text, task)
    assert result is None or (isinstance(result, str) and result == result.strip() and result)


# ---------------------------------------------------------------------------------------------
# Adversarial input: bounded, silent, inert


def adversarial_answers(marker_file) -> dict[str, str]:
    return {
        "code": f"__import__('os').system('touch {marker_file}')",
        "python power tower": "10**10**10**10",
        "latex power tower": r"9^{9^{9^{9}}}",
        "factorial": r"(10^{9})!",
        "100k characters": "9" * 50_000 + "x+" * 25_000,
        "500 nested parentheses": "(" * 500 + "1" + ")" * 500,
        "look-alike digits": "٧٠",
        "unclosed box": "\\boxed{",
    }


@pytest.mark.parametrize("name", list(adversarial_answers("f")))
def test_adversarial_answer_is_graded_false_within_its_timeout_without_side_effects(name, tmp_path, game_docs):
    marker = tmp_path / "executed"
    answer = adversarial_answers(marker)[name]
    timeout = 0.5
    start_idle_workers(1)

    start = time.perf_counter()
    assert math_equal(answer, "70", timeout=timeout) is False
    assert time.perf_counter() - start < timeout + SLACK_S

    response = f"Reasoning... \\boxed{{{answer}}} <answer>{answer}</answer>"
    for task, doc in (("aime2025", {"answer": "70"}), ("countdown", game_docs["countdown"])):
        start_idle_workers(1)
        start = time.perf_counter()
        found = extract_answer(response, task)
        assert found is None or isinstance(found, str)
        assert grade(response, doc, task, timeout=timeout) == 0.0
        assert time.perf_counter() - start < timeout + SLACK_S
    assert not marker.exists()


def test_code_payload_is_live_but_never_executed_by_the_grader(tmp_path, game_docs):
    """The countdown payload really runs under reasoning-gym's raw scorer (which evals the answer),
    so the grader's silence below is evidence, not luck."""
    import reasoning_gym

    doc = game_docs["countdown"]
    guarded, raw = tmp_path / "through_grader", tmp_path / "through_raw_scorer"
    assert grade(f"<answer>__import__('os').system('touch {guarded}')</answer>", doc, "countdown") == 0.0
    assert math_equal(f"__import__('os').system('touch {guarded}')", "70") is False
    assert not guarded.exists()

    entry = {"question": doc["question"], "answer": doc["answer"], "metadata": json.loads(doc["metadata"])}
    reasoning_gym.get_score_answer_fn("countdown")(f"__import__('os').system('touch {raw}')", entry)
    assert raw.exists(), "the payload should be live; otherwise the test above proves nothing"


def test_deadlines_hold_when_called_from_threads():
    slow = [r"9^{9^{9^{9}}}", r"(10^{9})!", r"9^{9^{9^{8}}}", r"(10^{8})!"]
    fast = [r"\frac{140}{2}", "070", r"\sqrt{4900}", "70."]
    timeout = 0.5

    def timed(pred):
        start = time.perf_counter()
        return math_equal(pred, "70", timeout=timeout), time.perf_counter() - start

    start_idle_workers(len(slow) + len(fast))
    start = time.perf_counter()
    with ThreadPoolExecutor(len(slow) + len(fast)) as pool:
        results = list(pool.map(timed, slow + fast))
    wall = time.perf_counter() - start
    assert [r for r, _ in results] == [False] * len(slow) + [True] * len(fast)
    assert all(elapsed < timeout + SLACK_S for _, elapsed in results)
    assert wall < timeout + 2 * SLACK_S  # in parallel: not one timeout after another


def _grade_in_child(pred: str) -> tuple[bool, float]:
    math_equal(r"\frac{2}{2}", "1", timeout=5.0)  # starts this process's own grading workers, untimed
    start = time.perf_counter()
    return math_equal(pred, "70", timeout=0.5), time.perf_counter() - start


@pytest.mark.slow
def test_deadlines_hold_inside_a_process_pool():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        results = list(pool.map(_grade_in_child, [r"(10^{9})!", r"\frac{140}{2}"]))
    assert [r for r, _ in results] == [False, True]
    assert all(elapsed < 0.5 + SLACK_S for _, elapsed in results)


# ---------------------------------------------------------------------------------------------
# The worker pool itself (builtins as jobs: they pickle by reference and import nothing)


def test_worker_pool_replaces_a_worker_that_misses_its_deadline_and_keeps_one_that_raised():
    pool = WorkerPool(modules=(), max_idle=1)
    try:
        first = pool.call(os.getpid, (), timeout=5)
        with pytest.raises(WorkerError, match="ValueError"):
            pool.call(int, ("not a number",), timeout=5)
        assert pool.call(os.getpid, (), timeout=5) == first  # an exception keeps the worker
        start = time.perf_counter()
        with pytest.raises(WorkerTimeout):
            pool.call(time.sleep, (30,), timeout=0.3)
        assert time.perf_counter() - start < 0.3 + SLACK_S
        assert pool.call(os.getpid, (), timeout=5) != first  # a timeout replaces it
        with pytest.raises(WorkerTimeout, match="died"):
            pool.call(os._exit, (3,), timeout=5)
        assert pool.call(pow, (2, 10), timeout=5) == 1024
    finally:
        pool.close()


def test_worker_memory_is_capped():
    pool = WorkerPool(modules=(), max_idle=1, memory_headroom=512 * 1024**2)
    try:
        with pytest.raises(WorkerError, match="MemoryError"):
            pool.call(bytearray, (2 * 1024**3,), timeout=10)
        assert pool.call(len, (bytearray(1024),), timeout=5) == 1024
    finally:
        pool.close()


# ---------------------------------------------------------------------------------------------
# grade and grade_batch


def _near_miss(game: str, doc: dict) -> str:
    """A wrong answer that reasoning-gym gives partial credit."""
    metadata = json.loads(doc["metadata"])
    if game == "countdown":
        return " + ".join(str(n) for n in metadata["numbers"])  # right numbers, (almost surely) wrong value
    if game == "knights_knaves":  # flip the first person's role only
        knight, knave = metadata["knight_knave_terms"]["knight"], metadata["knight_knave_terms"]["knave"]
        return re.sub(rf"\b({knight}|{knave})\b", lambda m: knave if m.group() == knight else knight,
                      doc["answer"], count=1)
    if game == "mini_sudoku":
        rows = doc["answer"].split("\n")
        rows[0] = " ".join(reversed(rows[0].split()))
        return "\n".join(rows)
    return doc["answer"] + " (final)"  # maze, chain_sum, basic_arithmetic: oracle inside extra text


@pytest.mark.parametrize("game", GAMES)
def test_games_are_correct_only_at_full_score(game, game_docs):
    import reasoning_gym

    doc = game_docs[game]
    entry = {"question": doc["question"], "answer": doc["answer"], "metadata": json.loads(doc["metadata"])}
    near_miss = _near_miss(game, doc)
    raw_score = reasoning_gym.get_score_answer_fn(game)(near_miss, entry)
    assert 0.0 < raw_score < 1.0, f"{game}: the near miss should earn partial credit, got {raw_score}"

    assert grade(f"thinking...<answer>{doc['answer']}</answer>", doc, game) == 1.0
    assert grade(f"<answer>{near_miss}</answer>", doc, game) == 0.0
    assert grade(doc["answer"], doc, game) == 0.0  # no tags, no answer
    assert grade(f"<answer>{doc['answer']}</answer>", {**doc, "metadata": entry["metadata"]}, game) == 1.0


def test_synlogic_is_graded_by_folded_text_match():
    doc = {"answer": "Alice, Bob"}
    assert grade("<answer>  alice,\n bob </answer>", doc, "synlogic") == 1.0
    assert grade("<answer>Alice Bob</answer>", doc, "synlogic") == 0.0


def test_grade_batch_equals_grading_one_by_one_in_order(game_docs, capsys):
    responses = [r"\boxed{070}", r"\boxed{\frac{140}{2}}", r"\boxed{71}", "no answer", r"\boxed{9^{9^{9^{9}}}}"] * 4
    docs = [{"answer": "70"}] * len(responses)
    expected = [1.0, 1.0, 0.0, 0.0, 0.0] * 4
    assert grade_batch(responses, docs, "aime2025", timeout=0.5, max_workers=3) == expected
    assert "grading aime2025" in capsys.readouterr().err  # the progress bar

    doc = game_docs["maze"]
    answers = [f"<answer>{doc['answer']}</answer>", "<answer>-1</answer>"]
    assert grade_batch(answers, [doc, doc], "maze", progress=False) == [1.0, 0.0]
