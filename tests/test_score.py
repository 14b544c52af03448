"""`pear-bench score`: logprobs from one forward pass against the full-softmax reference, batching,
agreement with the logprobs recorded at sampling time, and the refusals that protect existing data."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TEACHER_QUESTIONS, reference_logprobs
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from pear_bench.bench.scoring import format_results, in_fresh_process, peak_memory, synthetic_records, time_variants
from pear_bench.cli import main as cli_main
from pear_bench.prompts import prompt_ids as chat_prompt_ids
from pear_bench.data import load_records, save_records, summary_path
from pear_bench.generation import SamplingConfig, load_backend
from pear_bench.score import length_sorted_batches, score_responses


@pytest.fixture(scope="module")
def model(teacher):
    return AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()


@given(st.lists(st.integers(1, 100), min_size=1, max_size=40), st.integers(1, 300))
@settings(deadline=None, max_examples=200)
def test_length_sorted_batches_cover_every_record_once_within_the_budget(lengths, budget):
    batches = length_sorted_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert widths == sorted(widths, reverse=True)  # the first row sets the padded width
        assert len(b) == 1 or len(b) * widths[0] <= budget  # only a lone record may exceed the budget
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_responses_equal_the_full_softmax_in_input_order(model, temperature):
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    sizes = [(3, 5), (17, 40), (1, 1), (9, 2), (30, 50), (4, 12), (2, 90)]  # 92 tokens > the 64-token budget
    prompts = [torch.randint(0, vocab, (p,), generator=g).tolist() for p, _ in sizes]
    responses = [torch.randint(0, vocab, (r,), generator=g).tolist() for _, r in sizes]
    assert len(length_sorted_batches([p + r for p, r in sizes], 64)) > 2  # several batches, reordered
    got = score_responses(model, prompts, responses, temperature, max_batch_tokens=64, progress=False)
    for p, r, logp in zip(prompts, responses, got):
        assert logp.dtype == np.float32 and logp.shape == (len(r),)
        np.testing.assert_allclose(logp, reference_logprobs(model, p, r, temperature), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="record 1: empty prompt_ids"):
        score_responses(model, [[1], []], [[2], [3]], progress=False)


@pytest.fixture(scope="module")
def unscored(teacher, tmp_path_factory):
    """Responses sampled at T=0.7 with their recorded logprobs, saved without them (as foreign traces)."""
    backend = load_backend("hf", str(teacher), device="cpu")
    prompts = [chat_prompt_ids(backend.tokenizer, [{"role": "user", "content": q}]) for q in TEACHER_QUESTIONS[:4]]
    config = SamplingConfig(n=3, temperature=0.7, max_new_tokens=12)
    samples = backend.sample(prompts, config, seed=3)
    records = [{"id": f"q{i}/{k}", "prompt_ids": p, "response_ids": s.response_ids,
                "sampling": config.to_record("hf"), "behavior_logprobs": None}
               for i, (p, group) in enumerate(zip(prompts, samples)) for k, s in enumerate(group)]
    path = save_records(records, tmp_path_factory.mktemp("unscored") / "traces.jsonl", require_logprobs=False)
    recorded = {r["id"]: s.logprobs for r, s in zip(records, [s for g in samples for s in g])}
    return path, recorded


@pytest.mark.slow
def test_score_cli_reproduces_the_logprobs_recorded_at_sampling_time(unscored, teacher, tmp_path):
    path, recorded = unscored
    output = tmp_path / "scored.parquet"
    proc = subprocess.run([sys.executable, "-m", "pear_bench", "score", str(path), "--model", str(teacher),
                           "--output", str(output), "--temperature", "0.7", "--max-batch-tokens", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s" in proc.stdout and "score:" in proc.stderr  # the summary line and the progress bar
    scored = load_records(output).to_list()
    assert [r["id"] for r in scored] == list(recorded)
    for r in scored:
        np.testing.assert_allclose(r["behavior_logprobs"], recorded[r["id"]], rtol=0, atol=1e-4)
        assert r["behavior_model"] == str(teacher) and r["sampling"]["temperature"] == 0.7
    summary = json.loads(summary_path(output).read_text())
    assert summary["response_tokens"] == sum(len(r["response_ids"]) for r in scored)
    assert summary["total_tokens_per_s"] > 0 and summary["temperature"] == 0.7 and summary["versions"]["torch"]


def test_score_refuses_a_wrong_temperature_rescoring_and_an_existing_output(unscored, teacher, tmp_path, capsys):
    path, _ = unscored
    base = ["score", str(path), "--model", str(teacher), "--device", "cpu"]
    assert cli_main([*base, "--output", str(tmp_path / "a.jsonl")]) == 2
    assert re.search(r"pear-bench score: error: .*record 0 \(id 'q0/0'\) was sampled at temperature 0.7 but "
                     r"--temperature is 1.0", capsys.readouterr().err)
    assert not (tmp_path / "a.jsonl").exists()

    scored = tmp_path / "scored.jsonl"
    assert cli_main([*base, "--output", str(scored), "--temperature", "0.7"]) == 0
    assert cli_main([*base, "--output", str(scored), "--temperature", "0.7"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    again = ["score", str(scored), "--model", str(teacher), "--temperature", "0.7",
             "--output", str(tmp_path / "b.jsonl")]
    assert cli_main(again) == 2
    assert re.search(r"12 records already have behavior_logprobs \(first: record 0, id 'q0/0'\); pass --rescore",
                     capsys.readouterr().err)
    assert cli_main([*again, "--rescore"]) == 0
    np.testing.assert_allclose(np.concatenate(load_records(tmp_path / "b.jsonl")["behavior_logprobs"]),
                               np.concatenate(load_records(scored)["behavior_logprobs"]), rtol=0, atol=1e-6)


def test_text_traces_are_tokenised_through_the_prompt_module_and_scored(model, teacher, tmp_path):
    """Three ways to bring text; the references: the tokenizer's own chat template and encode, and a
    float64 full-softmax forward pass."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    question = TEACHER_QUESTIONS[0]
    rows = [{"id": "a", "prompt": question, "response": "<answer>2</answer>"},
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "<answer>3</answer>"}]},
            {"id": "c", "prompt": question, "response": "<answer>1", "finish_reason": "length"}]
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["score", str(traces), "--model", str(teacher), "--output", str(tmp_path / "s.jsonl"),
                     "--system-prompt", "Be brief."]) == 0
    scored = load_records(tmp_path / "s.jsonl").to_list()
    assert [r["id"] for r in scored] == ["a", "trace-1", "c"]
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    without = [{"role": "user", "content": question}]
    for r, messages, text, ends in zip(scored, [with_system, without, with_system],
                                       ["<answer>2</answer>", "<answer>3</answer>", "<answer>1"], [True, True, False]):
        assert r["prompt_ids"] == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert r["response_ids"] == tok(text)["input_ids"] + ([tok.convert_tokens_to_ids("<|im_end|>")] if ends else [])
        np.testing.assert_allclose(r["behavior_logprobs"], reference_logprobs(model, r["prompt_ids"], r["response_ids"],
                                                                              1.0), rtol=0, atol=1e-4)
    summary = json.loads(summary_path(tmp_path / "s.jsonl").read_text())
    assert summary["from_text"] is True and summary["rescored_vs_recorded"] is None


def test_rescoring_reports_how_far_the_recorded_logprobs_were(unscored, teacher, tmp_path, capsys):
    """Recorded logprobs off by known amounts (as bf16 sampling leaves them): the report finds them."""
    path, recorded = unscored
    records = load_records(path, require_logprobs=False).to_list()
    offsets = {0: 0.25, 3: 0.05}  # record index -> error (lower logprob) put on its first token
    for i, r in enumerate(records):
        r["behavior_logprobs"] = [x - (offsets.get(i, 0.0) if t == 0 else 0.0) for t, x in enumerate(recorded[r["id"]])]
    noisy = save_records(records, tmp_path / "noisy.jsonl")
    assert cli_main(["score", str(noisy), "--model", str(teacher), "--temperature", "0.7", "--rescore",
                     "--output", str(tmp_path / "rescored.jsonl")]) == 0
    report = json.loads(summary_path(tmp_path / "rescored.jsonl").read_text())["rescored_vs_recorded"]
    tokens = sum(len(r["response_ids"]) for r in records)
    assert report["records"] == len(records) and report["tokens"] == tokens
    assert report["max_abs"] == pytest.approx(0.25, abs=2e-4)
    assert report["share_above_0.08"] == pytest.approx(1 / tokens)
    assert report["mean_abs"] == pytest.approx(0.30 / tokens, abs=2e-4)
    assert "max |diff| 0.25" in capsys.readouterr().out


def test_token_ids_outside_the_models_vocabulary_name_the_record(teacher, tmp_path, capsys):
    path = save_records([{"id": "ok", "prompt_ids": [1, 2], "response_ids": [3]},
                         {"id": "bad", "prompt_ids": [1, 2], "response_ids": [3, 10_000]}],
                        tmp_path / "t.jsonl", require_logprobs=False)
    assert cli_main(["score", str(path), "--model", str(teacher), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "record 1 (id 'bad'): response_ids has a token id outside the vocabulary" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_score_times_every_variant_over_the_same_tokens():
    bench = {"shape": "tiny", "vocab_size": 300, "records": 4, "min_len": 16, "seq_len": 48, "prompt_len": 4,
             "max_batch_tokens": 64, "repeats": 2, "warmup": 1, "device": "cpu", "dtype": "float32"}
    timing = time_variants(["forward", "naive", "score"], bench)
    prompts, responses = synthetic_records(bench, 300)
    assert timing["tokens"] == sum(len(p) + len(r) for p, r in zip(prompts, responses))
    assert timing["batches"] == len(length_sorted_batches([len(p) + len(r) for p, r in zip(prompts, responses)], 64))
    assert {v: len(t) for v, t in timing["times_s"].items()} == {"forward": 2, "naive": 2, "score": 2}
    # Memory is measured in a fresh process, as `main` does (in this one, freed memory could mask it).
    assert in_fresh_process(multiprocessing.get_context("spawn"), peak_memory, "score", bench) > 0


def test_bench_score_table_ratios_and_targets():
    gib = 1024**3
    results = {"forward": {"tokens_per_s": 1000.0, "median_s": 1.0, "peak_bytes": 2 * gib},
               "naive": {"tokens_per_s": 800.0, "median_s": 1.25, "peak_bytes": 4 * gib},
               "score": {"tokens_per_s": 950.0, "median_s": 1.05, "peak_bytes": 2 * gib}}
    rows = {line.split()[0]: line.split() for line in format_results(results).splitlines()}
    assert rows["forward"][1:] == ["1,000", "1.0000", "2.000", "1.000", "1.250", "0.500"]
    assert rows["score"][4:] == ["0.950", "1.188", "0.500"]
    text = format_results(results)
    assert "target score >= 0.9 x forward tokens/s: met" in text
    assert "2 x 4096 tokens): met here" in text
    results["score"]["tokens_per_s"] = 850.0  # 0.85 x forward, 1.06 x naive
    assert "forward tokens/s: NOT met" in format_results(results) and "tokens): met here" in format_results(results)
