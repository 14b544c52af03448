"""The CPU miniature's base models (pear_bench.miniature): solvers, shared tokenizer, pretraining, CLI.

References are independent of the code under test: reasoning-gym's own answers and scorer (through
``pear_bench.grading``), and step lines checked by parsing their digits here (never eval).
"""

from __future__ import annotations

import json
import random
import re

import pytest

from pear_bench import miniature
from pear_bench.grading import grade, grade_batch
from pear_bench.problems import make_record, write_problems
from pear_bench.prompts import problem_messages

STEP = re.compile(r"(-?\d+) ?([+-]) ?(-?\d+) ?= ?(-?\d+)")
ANSWER = re.compile(r"<answer>(-?\d+)</answer>")


def gym_problems(n: int, seed: int, **config) -> list[dict[str, str]]:
    """Problem records straight from reasoning-gym (not through pear_bench.problems.game_splits)."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("chain_sum", seed=seed, size=n, **config)
    return [make_record(f"chain_sum-{seed}-{i}", "chain_sum", e["question"], e["answer"], e["metadata"])
            for i, e in enumerate(dataset)]


CONFIGS = [
    dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1),
    dict(min_terms=2, max_terms=6, min_digits=1, max_digits=4),
    dict(min_terms=2, max_terms=5, min_digits=1, max_digits=3, allow_negation=True),
]


@pytest.fixture(scope="module")
def problems():
    return [p for k, config in enumerate(CONFIGS) for p in gym_problems(120, seed=100 + k, **config)]


def _to_int(text: str) -> int:
    """A decimal integer parsed digit by digit (the reference does not share the solver's int())."""
    negative = text.startswith("-")
    value = 0
    for ch in text.lstrip("-"):
        assert ch in "0123456789", text
        value = 10 * value + "0123456789".index(ch)
    return -value if negative else value


def _expression_terms(problem) -> list[int]:
    """Signed terms of the problem's expression: "4 - 1 + 7" -> [4, -1, 7]."""
    words = json.loads(problem["metadata"])["expression"].split()
    signs = [1] + [1 if w == "+" else -1 for w in words[1::2]]
    return [s * _to_int(w) for s, w in zip(signs, words[0::2])]


@pytest.mark.parametrize("style", miniature.STYLES)
def test_solver_answers_match_reasoning_gym_and_grade_correct(problems, style):
    rng = random.Random(1)
    responses = [miniature.solve(p, style, rng) for p in problems for _ in range(2)]
    docs = [p for p in problems for _ in range(2)]
    for response, doc in zip(responses, docs):
        found = ANSWER.findall(response)
        assert len(found) == 1 and found[0] == doc["answer"], (response, doc["answer"])
        assert response.endswith(f"<answer>{doc['answer']}</answer>")
    assert grade_batch(responses, docs, "chain_sum", progress=False) == [1.0] * len(responses)
    assert grade(responses[0], docs[0], "chain_sum") == 1.0


@pytest.mark.parametrize("style", miniature.STYLES)
def test_basic_arithmetic_chains_are_solved_as_reasoning_gym_answers_them(style):
    """The SmolLM2 grid's game: +/- of one-digit terms, negatives allowed ("5 - -3")."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("basic_arithmetic", seed=3, size=80, min_terms=2, max_terms=3,
                                           min_digits=1, max_digits=1, operators=["+", "-"],
                                           allow_parentheses=False, allow_negation=True)
    docs = [make_record(f"ba-{i}", "basic_arithmetic", e["question"], e["answer"], e["metadata"])
            for i, e in enumerate(dataset)]
    assert any(" -" in json.loads(d["metadata"])["expression"] for d in docs)  # negative operands occur
    responses = [miniature.solve(d, style, random.Random(i)) for i, d in enumerate(docs)]
    for response, doc in zip(responses, docs):
        assert ANSWER.findall(response) == [doc["answer"]], (response, doc["answer"])
        assert _to_int(doc["answer"]) == sum(_expression_terms(doc))
    assert grade_batch(responses, docs, "basic_arithmetic", progress=False) == [1.0] * len(docs)


def test_teacher_steps_are_true_and_use_every_term_once(problems):
    rng = random.Random(2)
    for problem in problems:
        terms = _expression_terms(problem)
        for _ in range(3):
            response = miniature.solve(problem, "teacher", rng)
            body = response[:response.index("<answer>")]
            lines = [line for line in re.split(r"\n|, ", body) if line]
            assert len(lines) == len(terms) - 1, response
            used, previous = [], None
            for line in lines:
                match = STEP.fullmatch(line)
                assert match, (line, response)
                a, op, b, c = match.groups()
                a, b, c = _to_int(a), _to_int(b), _to_int(c)
                assert c == (a + b if op == "+" else a - b), line  # the step is arithmetically true
                if previous is None:
                    used.append(a)
                else:
                    assert a == previous, response  # each step continues from the last result
                used.append(b if op == "+" else -b)
                previous = c
            assert sorted(used) == sorted(terms), (response, terms)  # every signed term exactly once
            assert _to_int(ANSWER.search(response).group(1)) == previous == _to_int(problem["answer"])


def test_teacher_is_varied_and_student_style_differs(problems):
    # "a - b + c": reordering (added terms first) changes the steps
    problem = next(p for p in problems if re.fullmatch(r"\d+ - \d+ \+ \d+", json.loads(p["metadata"])["expression"]))
    rng = random.Random(3)
    teacher = [miniature.solve(problem, "teacher", rng) for _ in range(300)]
    student = [miniature.solve(problem, "student", rng) for _ in range(300)]
    assert len(set(teacher)) >= 6  # order x spacing x separator
    assert max(teacher.count(t) for t in set(teacher)) / len(teacher) < 0.5  # no variant dominates
    assert len(set(student)) == 2
    assert not set(teacher) & set(student)
    assert not {t[0] for t in teacher} & {s[0] for s in student}  # they differ from the first character
    assert all(not STEP.search(s) for s in student)  # the student shows no working


def test_teacher_noise_gives_wrong_answers(problems):
    rng = random.Random(4)
    responses = [miniature.solve(p, "teacher", rng, noise=1.0) for p in problems[:50]]
    assert grade_batch(responses, problems[:50], "chain_sum", progress=False) == [0.0] * 50
    with pytest.raises(ValueError):
        miniature.solve(problems[0], "student", rng, noise=0.5)


def test_parse_expression_rejects_non_chains():
    assert miniature.parse_expression("4 - 1 + 17") == ([4, 1, 17], ["-", "+"])
    assert miniature.parse_expression("-4 - -1") == ([-4, -1], ["-"])
    for bad in ("", "4 -", "4 * 2", "4 - x", "4 + 1e3", "__import__('os')"):
        with pytest.raises(ValueError):
            miniature.parse_expression(bad)


def test_filter_problems_excludes_eval_questions(problems):
    evals, rest = problems[:40], problems[20:]
    kept = miniature.filter_problems(rest + rest[:5], evals)
    questions = {p["question"] for p in evals}
    assert not any(p["question"] in questions for p in kept)
    assert len({p["question"] for p in kept}) == len(kept)


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory, problems):
    path = tmp_path_factory.mktemp("problems") / "pre.jsonl"
    write_problems(path, problems[:120])  # the 3-term one-digit chains
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, problem_file):
    from pear_bench.cli import main

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    assert main(["bootstrap", "tokenizer", "--problems", str(problem_file), "--vocab-size", "320",
                 "--out", str(out)]) == 0
    return out


def test_tokenizer_round_trips_after_save_and_load(tokenizer_dir, problems, tmp_path):
    from transformers import AutoTokenizer

    from pear_bench.prompts import prompt_ids as chat_prompt_ids

    record = json.loads((tokenizer_dir / miniature.BOOTSTRAP_RECORD).read_text())
    assert record["kind"] == "tokenizer" and record["versions"]["transformers"]
    assert not list(tokenizer_dir.parent.glob(".*tmp*"))
    fresh = miniature.build_tokenizer(problems[:120], vocab_size=320)  # what was saved, before saving
    loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(loaded) == len(fresh) == record["vocab_size"]
    loaded.save_pretrained(tmp_path / "again")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    rng = random.Random(5)
    for problem in problems[::7]:  # all three configs: unseen multi-digit numbers too
        messages = problem_messages(problem)
        ids = chat_prompt_ids(fresh, messages)
        assert ids == chat_prompt_ids(loaded, messages) == chat_prompt_ids(reloaded, messages)
        for style in miniature.STYLES:
            text = miniature.solve(problem, style, rng)
            ids = fresh.encode(text, add_special_tokens=False)
            for tok in (loaded, reloaded):
                assert tok.encode(text, add_special_tokens=False) == ids
            assert loaded.decode(ids) == text
    assert all(len(loaded.encode(d, add_special_tokens=False)) == 1 for d in "0123456789")
    assert loaded.encode("123", add_special_tokens=False) == [loaded.convert_tokens_to_ids(d) for d in "123"]
    assert loaded.eos_token == "<|im_end|>" and loaded.chat_template


def test_pretraining_lowers_loss_and_saves_a_loadable_model(tokenizer_dir, problem_file, problems, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.prompts import prompt_ids as chat_prompt_ids

    eval_file = tmp_path / "eval.jsonl"
    write_problems(eval_file, problems[:10])
    out = tmp_path / "teacher"
    miniature.make_model(tokenizer_dir, "teacher", [problem_file], out, exclude_files=[eval_file], steps=12,
                         batch_size=8, learning_rate=3e-3, warmup_steps=0, seed=0, logging_steps=1,
                         shape_overrides=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                              num_attention_heads=1, num_key_value_heads=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "teacher"]  # no temp dirs left
    record = json.loads((out / miniature.BOOTSTRAP_RECORD).read_text())
    assert record["style"] == "teacher" and record["seed"] == 0 and record["versions"]["torch"]
    pretrain = problems[:120]
    eval_questions = {p["question"] for p in problems[:10]}
    assert record["num_excluded"] == sum(p["question"] in eval_questions for p in pretrain)
    assert record["num_unique_kept"] == len({p["question"] for p in pretrain} - eval_questions)
    assert record["num_records"] == 12 * 8
    assert record["loss_last"] < record["loss_first"] - 0.5, record["loss_curve"]
    assert not list(out.glob("checkpoint-*"))

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()  # shared ids
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])  # generation stops at <|im_end|>
    prompt = torch.tensor([chat_prompt_ids(tokenizer, problem_messages(problems[0]))])
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt.shape[1]

    with pytest.raises(FileExistsError):
        miniature.make_model(tokenizer_dir, "student", [problem_file], out, steps=1, batch_size=2)


def test_a_pretrained_model_is_fine_tuned_in_the_style_with_its_own_tokenizer(tokenizer_dir, problem_file, tmp_path):
    """--init: start from a saved model (here a from-scratch one), not a random init; its tokenizer and
    parameter count carry over, and the loss on the style's records falls."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                 num_key_value_heads=1)
    base = miniature.make_model(tokenizer_dir, "student", [problem_file], tmp_path / "base", steps=2, batch_size=4,
                                shape_overrides=shape)
    tuned = miniature.make_model(None, "teacher", [problem_file], tmp_path / "tuned", steps=8, batch_size=8,
                                 learning_rate=3e-3, warmup_steps=0, logging_steps=1, init=base)
    record = json.loads((tuned / miniature.BOOTSTRAP_RECORD).read_text())
    assert record["init"] == str(base.resolve()) and record["shape"] is None
    assert record["parameters"] == sum(t.numel() for t in load_file(base / "model.safetensors").values())
    assert record["loss_last"] < record["loss_first"], record["loss_curve"]
    assert AutoTokenizer.from_pretrained(tuned).get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    before, after = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="--tokenizer .* or --init"):
        miniature.make_model(tokenizer_dir, "teacher", [problem_file], tmp_path / "both", steps=1, init=base)


def test_a_failed_run_leaves_nothing_that_looks_finished(tokenizer_dir, problem_file, tmp_path, monkeypatch):
    def boom(config):  # killed mid-training, after the trainer wrote part of its output
        from pathlib import Path

        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(miniature, "_train", boom)
    with pytest.raises(KeyboardInterrupt):
        miniature.make_model(tokenizer_dir, "student", [problem_file], tmp_path / "student", steps=1, batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_model_refuses_bad_arguments(tokenizer_dir, problem_file, tmp_path):
    with pytest.raises(ValueError, match="style"):
        miniature.make_model(tokenizer_dir, "oracle", [problem_file], tmp_path / "m", steps=1)
    with pytest.raises(ValueError, match="noise"):
        miniature.make_model(tokenizer_dir, "student", [problem_file], tmp_path / "m", steps=1, noise=0.1)
    with pytest.raises(ValueError, match="teacher_mix"):
        miniature.make_model(tokenizer_dir, "teacher", [problem_file], tmp_path / "m", steps=1, teacher_mix=0.1)
    with pytest.raises(ValueError, match="excluded"):
        miniature.make_model(tokenizer_dir, "student", [problem_file], tmp_path / "m", steps=1,
                             exclude_files=[problem_file])


def test_student_teacher_mix_writes_that_fraction_in_the_teacher_style(tokenizer_dir, problems):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    records = miniature.pretraining_records(tokenizer, problems[:50], "student", samples=1000, seed=0,
                                            teacher_mix=0.2)
    stepwise = [bool(STEP.search(r["response"])) for r in records]
    assert 0.15 < sum(stepwise) / len(stepwise) < 0.25
    for r in records[:50]:
        assert r["response_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(r["response_ids"][:-1]) == r["response"]
    pure = miniature.pretraining_records(tokenizer, problems[:50], "student", samples=200, seed=0)
    assert not any(STEP.search(r["response"]) for r in pure)
