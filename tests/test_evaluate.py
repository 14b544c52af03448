"""`pear-bench eval`: the recorded grades against an independent answer check, pass@k against an exact
enumeration over the recorded flags, the run's metadata, atomic writes and the refusals.

The model is scripted: a tiny Qwen2 whose layers add nothing to the residual stream, so the logits
at a position depend only on its own token (a bigram model), with the bigrams set by hand. After any
prompt it writes ``\\boxed{``, then ``1``, ``2`` or ``3`` (probability 1/3 each), then ``}`` and
``<|im_end|>``. The problems are math records: four whose answer is 1, 2 or 3 (right about a third
of the time) and two whose answer is larger (never right).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from math import comb

import pytest
import torch

from pear_bench import cli
from pear_bench.prompts import prompt_ids as chat_prompt_ids
from pear_bench.atomic import write_atomic
from pear_bench.evaluate import evaluate, parse_labels, single_task
from pear_bench.generation import SamplingConfig, load_backend
from pear_bench.problems import make_record, write_problems

K = 8
KS = [1, 2, 8]
MAX_NEW_TOKENS = 16
LABELS = ["model=scripted", "method=pear-token", "stage=rl", "seed=2", "note=a=b c"]
DIGITS = ("1", "2", "3")
SUMS = [(0, 1), (1, 1), (1, 2), (2, 1), (3, 4), (5, 7)]  # answers 1, 2, 3, 3, 7, 12


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    records = [make_record(f"sum-{i}", "math", f"What is {a} + {b}?", str(a + b)) for i, (a, b) in enumerate(SUMS)]
    path = tmp_path_factory.mktemp("problems") / "eval.jsonl"
    write_problems(path, records)
    return records, path


@pytest.fixture(scope="module")
def scripted_model(problems, tmp_path_factory):
    """Path of the scripted bigram model (see the module docstring), float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.tiny_models import build_tiny_model

    texts = [p["prompt"] for p in problems[0]] + [f"\\boxed{{{d}}}" for d in range(10)]
    path = build_tiny_model(tmp_path_factory.mktemp("scripted"), texts, vocab_size=300, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prefix, suffix = tokenizer("\\boxed{")["input_ids"], tokenizer("}")["input_ids"] + [tokenizer.eos_token_id]
    digits = [tokenizer(d)["input_ids"] for d in DIGITS]
    assert all(len(d) == 1 for d in digits)
    assert tokenizer("\\boxed{2}")["input_ids"] == prefix + digits[1] + suffix[:-1]
    prompt_ends = {chat_prompt_ids(tokenizer, [{"role": "user", "content": p["prompt"]}])[-1] for p in problems[0]}
    assert len(prompt_ends) == 1  # the chat template's "assistant\n"
    chain = [*prompt_ends, *prefix]
    transitions = {a: [b] for a, b in zip(chain, chain[1:])}
    transitions[prefix[-1]] = [d[0] for d in digits]
    for d in digits:
        transitions[d[0]] = [suffix[0]]
    transitions.update({a: [b] for a, b in zip(suffix, suffix[1:])})
    assert len(transitions) == len(chain) + len(digits) + len(suffix) - 1  # no token plays two roles
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:  # attention and MLP write nothing into the residual stream
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (state, following) in enumerate(transitions.items()):
            model.model.embed_tokens.weight[state, i] = 1.0  # the final RMSNorm scales it to sqrt(hidden)
            for token in following:
                model.lm_head.weight[token, i] = 40.0 / math.sqrt(hidden)  # logit 40, every other token 0
    model.save_pretrained(path)
    return path


def eval_command(model, problems_path, output, *extra):
    return [sys.executable, "-m", "pear_bench", "eval", "--model", str(model), "--problems", str(problems_path),
            "--samples", str(K), "--ks", *map(str, KS), "--max-new-tokens", str(MAX_NEW_TOKENS), "--seed", "3",
            "--device", "cpu", *[arg for label in LABELS for arg in ("--label", label)], "--output", str(output),
            *extra]


@pytest.fixture(scope="module")
def evaluated(scripted_model, problems, tmp_path_factory):
    """One `pear-bench eval` run, as a user runs it; returns (output dir, stdout)."""
    output = tmp_path_factory.mktemp("eval") / "run"
    out = subprocess.run(eval_command(scripted_model, problems[1], output), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return output, out.stdout


def read_rows(output):
    return [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]


def boxed(response):
    """The test's own extraction: the text inside the last \\boxed{...} (no nested braces here)."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", response)
    return found[-1].strip() if found else None


def test_every_sample_is_recorded_and_graded_as_an_independent_check_grades_it(evaluated, problems):
    output, _ = evaluated
    records = problems[0]
    rows = read_rows(output)
    assert [(r["problem_id"], r["sample_index"]) for r in rows] == [(p["id"], i) for p in records for i in range(K)]
    answers = {p["id"]: p["answer"] for p in records}
    for r in rows:
        assert r["task"] == "math" and r["finish_reason"] == "stop"
        assert r["response"] in {f"\\boxed{{{d}}}" for d in DIGITS}
        assert r["extracted_answer"] == boxed(r["response"])
        assert r["correct"] == (boxed(r["response"]) == answers[r["problem_id"]])
    correct = [r["correct"] for r in rows]
    assert 0 < sum(correct) < len(correct), "the model should be right sometimes, not always"
    assert not any(r["correct"] for r in rows if int(answers[r["problem_id"]]) > 3)


def test_pass_at_k_equals_an_exact_enumeration_over_the_recorded_flags(evaluated, problems):
    output, stdout = evaluated
    rows = read_rows(output)
    metrics = json.loads((output / "metrics.json").read_text())
    flags = {p["id"]: [r["correct"] for r in rows if r["problem_id"] == p["id"]] for p in problems[0]}
    expected = {}
    for k in KS:  # the fraction of k-subsets of each problem's samples holding a correct one, averaged
        per_problem = [Fraction(sum(any(f[i] for i in subset) for subset in itertools.combinations(range(K), k)),
                                comb(K, k)) for f in flags.values()]
        expected[f"pass@{k}"] = (k, sum(per_problem) / len(per_problem))
    expected[f"avg@{K}"] = (K, sum(Fraction(sum(f), K) for f in flags.values()) / len(flags))
    assert [m["metric"] for m in metrics["metrics"]] == ["pass@1", "pass@2", "pass@8", "avg@8"]
    for m in metrics["metrics"]:
        k, value = expected[m["metric"]]
        assert m["k"] == k
        assert m["value"] == pytest.approx(float(value), abs=1e-12)
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
        assert 0.0 <= m["ci_low"] and m["ci_high"] <= 1.0
    assert 0 < expected["pass@1"][1] < expected["pass@8"][1] < 1  # the problems are neither all solved nor none
    assert stdout.count("\n") == 1 and "pass@8" in stdout and "avg@8" in stdout


def test_metrics_json_records_labels_problems_and_every_setting(evaluated, problems, scripted_model):
    output, _ = evaluated
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["labels"] == {"model": "scripted", "method": "pear-token", "stage": "rl", "seed": "2",
                                 "note": "a=b c"}
    assert metrics["model"] == str(scripted_model) and metrics["task"] == "math"
    assert metrics["problems"]["file"] == str(problems[1])
    assert metrics["problems"]["sha256"] == hashlib.sha256(problems[1].read_bytes()).hexdigest()
    assert metrics["num_problems"] == 6 and metrics["samples_per_problem"] == K and metrics["seed"] == 3
    sampling = metrics["sampling"]
    assert (sampling["backend"], sampling["n"], sampling["temperature"], sampling["max_new_tokens"]) == \
        ("hf", K, 1.0, MAX_NEW_TOKENS)
    assert sampling["dtype"] == "float32" and sampling["device"] == "cpu" and sampling["batch_size"] == 64
    assert metrics["ci"]["confidence"] == 0.95
    assert metrics["versions"]["torch"] and metrics["seconds"] > 0
    rows = read_rows(output)
    assert metrics["responses"]["truncated"] == sum(r["finish_reason"] == "length" for r in rows)


def test_the_library_call_reproduces_the_command_line_run(evaluated, problems, scripted_model, tmp_path):
    backend = load_backend("hf", str(scripted_model), device="cpu", dtype="float32", batch_size=64)
    result = evaluate(backend, problems[0], tmp_path, SamplingConfig(n=K, max_new_tokens=MAX_NEW_TOKENS), ks=KS,
                      seed=3, labels=parse_labels(LABELS), progress=False)
    assert (tmp_path / "samples.jsonl").read_bytes() == (evaluated[0] / "samples.jsonl").read_bytes()
    cli_metrics = json.loads((evaluated[0] / "metrics.json").read_text())
    assert result["metrics"] == cli_metrics["metrics"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == result


def test_an_existing_evaluation_is_not_overwritten(evaluated, problems, scripted_model, capsys):
    output, _ = evaluated
    before = {name: (output / name).read_bytes() for name in ("samples.jsonl", "metrics.json")}
    argv = eval_command(scripted_model, problems[1], output)[3:]  # what follows "python -m pear_bench"
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {name: (output / name).read_bytes() for name in before} == before


def test_ks_above_samples_is_rejected_before_loading_the_model(problems, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--problems", str(problems[1]), "--samples", "4",
            "--ks", "1", "8", "--output", str(output)]
    assert cli.main(argv) == 2
    assert "--ks 8 exceeds --samples 4" in capsys.readouterr().err
    assert not output.exists()


def test_a_problems_file_mixing_tasks_is_refused(problems, tmp_path, capsys):
    mixed = [*problems[0], {**problems[0][0], "id": "other-0", "task": "countdown"}]
    with pytest.raises(ValueError, match=r"mix tasks: math \(6\), countdown \(1\)"):
        single_task(mixed)
    path = tmp_path / "mixed.jsonl"
    write_problems(path, mixed)
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--problems", str(path),
            "--output", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    assert "evaluate one task per run" in capsys.readouterr().err


def test_labels_are_key_value_pairs_kept_verbatim():
    assert parse_labels(["seed=02", "note= x=y "]) == {"seed": "02", "note": " x=y "}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_labels(["stage"])
    with pytest.raises(ValueError, match="given twice"):
        parse_labels(["stage=rl", "stage=sft"])


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    monkeypatch.undo()
    write_atomic(tmp_path / "fresh.json", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "metrics.json"]


def test_each_sample_carries_its_reference_answer(evaluated, problems):
    output, _ = evaluated
    answers = {p["id"]: p["answer"] for p in problems[0]}  # from the problems as written, not the run
    rows = read_rows(output)
    assert rows and all(row["reference_answer"] == answers[row["problem_id"]] for row in rows)


def test_a_response_cut_at_the_length_limit_is_not_counted_correct(scripted_model, problems, tmp_path):
    """Limit the scripted model to "\\boxed{d}" without its end-of-turn token: every answer reads right
    (the test's own extraction), none counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scripted_model)
    limit = len(tokenizer("\\boxed{2}")["input_ids"])  # the answer, one token short of the eos
    backend = load_backend("hf", str(scripted_model), device="cpu")
    result = evaluate(backend, problems[0], tmp_path / "cut", SamplingConfig(n=2, max_new_tokens=limit), ks=[1],
                      progress=False)
    rows = read_rows(tmp_path / "cut")
    by_id = {p["id"]: p for p in problems[0]}
    assert all(r["finish_reason"] == "length" for r in rows)
    assert any(boxed(r["response"]) == by_id[r["problem_id"]]["answer"] for r in rows)
    assert not any(r["correct"] for r in rows)
    assert result["metrics"][0]["value"] == 0.0 and result["responses"]["truncated"] == len(rows)
