"""`pear-bench collect`: the rejection filter against the grader applied independently, exact logprobs,
and resumption after a failure or a SIGKILL ending with the dataset an uninterrupted run writes.

Problems are real reasoning-gym chain_sum records (``pear_bench.problems``) whose answer is 1, 2 or 3;
the tiny teacher (conftest) answers one of those about equally often, so some samples are correct.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TEACHER_ANSWERS, reference_logprobs
from transformers import AutoModelForCausalLM

from pear_bench.collect import collect, parts_dir
from pear_bench.prompts import prompt_ids as chat_prompt_ids
from pear_bench.data import load_records, summary_path
from pear_bench.errors import InputError
from pear_bench.generation import SamplingConfig, load_backend
from pear_bench.grading import grade
from pear_bench.problems import game_splits, write_problems

N = 4
SAMPLING = SamplingConfig(n=N, temperature=1.0, max_new_tokens=16)
CHUNK = 1  # one prompt per chunk: many resumption points


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    """Twelve chain_sum problems with answer 1, 2 or 3, and the problems file they are written to."""
    splits = game_splits("chain_sum", seed=0, eval_size=150,
                         config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    records = [r for r in splits["eval"] if r["answer"] in TEACHER_ANSWERS][:12]
    path = tmp_path_factory.mktemp("problems") / "train.jsonl"
    write_problems(path, records)
    return records, path


@pytest.fixture(scope="module")
def backend(teacher):
    # The CLI's defaults for the hf backend, so in-process and CLI runs sample identically.
    return load_backend("hf", str(teacher), device="cpu", dtype="float32", batch_size=64)


@pytest.fixture(scope="module")
def keep_all(backend, problems, tmp_path_factory):
    """An uninterrupted keep-all collection: the reference of the other tests."""
    output = tmp_path_factory.mktemp("all") / "all.jsonl"
    summary = collect(backend, problems[0], output, SAMPLING, seed=0, keep="all", chunk_size=CHUNK, progress=False)
    return output, summary


def test_keep_all_records_the_graders_reward_and_the_exact_logprobs(keep_all, problems, backend, teacher):
    output, summary = keep_all
    tokenizer = backend.tokenizer
    records = load_records(output, vocab_size=len(tokenizer)).to_list()
    by_id = {p["id"]: p for p in problems[0]}
    assert [r["id"] for r in records] == [f"{p['id']}/{k}" for p in problems[0] for k in range(N)]
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    for r in records:
        problem = by_id[r["prompt_id"]]
        messages = [{"role": "user", "content": problem["prompt"]}]  # no system prompt by default
        assert r["messages"] == messages
        assert r["prompt_ids"] == tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                tokenize=True)["input_ids"]
        assert r["response"] == tokenizer.decode(r["response_ids"], skip_special_tokens=True)
        assert r["reward"] == grade(r["response"], problem, "chain_sum")
        np.testing.assert_allclose(r["behavior_logprobs"], reference_logprobs(model, r["prompt_ids"],
                                                                               r["response_ids"], 1.0),
                                   rtol=0, atol=1e-4)
        assert r["behavior_model"] == str(teacher) and r["sampling"] == SAMPLING.to_record("hf")
        assert (r["finish_reason"] == "stop") == (r["response_ids"][-1] == tokenizer.eos_token_id)
    rewards = [r["reward"] for r in records]
    assert 0 < sum(rewards) < len(rewards), "the teacher should be right sometimes, not always"
    assert summary["prompts"] == 12 and summary["samples"] == 12 * N == summary["kept"]
    assert summary["correct"] == sum(rewards) and summary["acceptance_rate"] == sum(rewards) / (12 * N)
    assert summary["response_tokens"] == sum(len(r["response_ids"]) for r in records)
    assert summary["truncated"] == sum(r["finish_reason"] == "length" for r in records)
    assert summary["model"] == str(teacher) and summary["seed"] == 0 and summary["versions"]["torch"]
    assert json.loads(summary_path(output).read_text()) == summary
    assert not parts_dir(output).exists()


def test_rejection_filter_keeps_exactly_the_responses_the_grader_marks_correct(keep_all, backend, problems, tmp_path):
    output = tmp_path / "correct.parquet"
    summary = collect(backend, problems[0], output, SAMPLING, seed=0, keep="correct", chunk_size=CHUNK,
                      progress=False)
    by_id = {p["id"]: p for p in problems[0]}
    every_sample = load_records(keep_all[0]).to_list()  # same seed: the same samples
    expected = [r for r in every_sample if grade(r["response"], by_id[r["prompt_id"]], "chain_sum") == 1.0]
    assert load_records(output).to_list() == expected
    assert summary["kept"] == summary["correct"] == len(expected) and summary["samples"] == len(every_sample)


class FailingBackend:
    """The backend, until its ``fail_at``-th call to ``sample``, which raises: a crash mid-collection."""

    def __init__(self, backend, fail_at):
        self.backend, self.calls, self.fail_at = backend, 0, fail_at

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return self.backend.sample(*args, **kwargs)


def test_collect_resumes_after_a_failure_to_the_uninterrupted_dataset(keep_all, backend, problems, tmp_path):
    output = tmp_path / "resumed.jsonl"
    with pytest.raises(RuntimeError, match="injected failure"):
        collect(FailingBackend(backend, fail_at=6), problems[0], output, SAMPLING, seed=0, keep="all",
                chunk_size=CHUNK, progress=False)
    assert not output.exists() and len(list(parts_dir(output).glob("chunk-*.json"))) == 5
    summary = collect(backend, problems[0], output, SAMPLING, seed=0, keep="all", chunk_size=CHUNK, progress=False)
    assert summary["resumed_chunks"] == 5 and summary["samples"] == 12 * N
    assert load_records(output).to_list() == load_records(keep_all[0]).to_list()


def test_a_fewshot_collection_resumes(backend, problems, tmp_path):
    """The settings stored with the parts (JSON) must compare equal to the same settings given again."""
    from pear_bench.prompts import PromptSettings

    prompt = PromptSettings(fewshot=(("What is 1 + 1?", "<answer>2</answer>"),))
    output = tmp_path / "fewshot.jsonl"
    with pytest.raises(RuntimeError, match="injected failure"):
        collect(FailingBackend(backend, fail_at=2), problems[0][:4], output, SAMPLING, seed=0, keep="all",
                chunk_size=2, progress=False, prompt=prompt)
    summary = collect(backend, problems[0][:4], output, SAMPLING, seed=0, keep="all", chunk_size=2,
                      progress=False, prompt=prompt)
    assert summary["resumed_chunks"] == 1 and summary["samples"] == 4 * N
    assert all(r["messages"][0]["content"] == "What is 1 + 1?" for r in load_records(output).to_list())


def test_resuming_with_other_settings_is_refused(backend, problems, tmp_path):
    output = tmp_path / "d.jsonl"
    with pytest.raises(RuntimeError, match="injected failure"):
        collect(FailingBackend(backend, fail_at=2), problems[0], output, SAMPLING, seed=0, keep="all",
                chunk_size=CHUNK, progress=False)
    hotter = SamplingConfig(n=N, temperature=0.7, max_new_tokens=16)
    with pytest.raises(ValueError, match=r"unfinished collection with other settings \(sampling: .*'temperature': 1.0"
                                         r".*'temperature': 0.7.*\); rerun with its settings"):
        collect(backend, problems[0], output, hotter, seed=0, keep="all", chunk_size=CHUNK, progress=False)
    with pytest.raises(ValueError, match=r"keep: 'all' there, 'correct' now.*seed: 0 there, 1 now"):
        collect(backend, problems[0], output, SAMPLING, seed=1, keep="correct", chunk_size=CHUNK, progress=False)


def test_keeping_no_sample_stops_with_the_figures_and_writes_nothing(backend, tmp_path):
    splits = game_splits("chain_sum", seed=0, eval_size=40, config={"min_digits": 2, "max_digits": 2})
    hopeless = [r for r in splits["eval"] if r["answer"] not in TEACHER_ANSWERS][:3]  # the teacher says 1, 2 or 3
    output = tmp_path / "none.jsonl"
    with pytest.raises(InputError, match=r"kept 0 of 12 samples \(3 prompts x 4\): 0 correct, .* nothing to train "
                                         r"on\. Raise --n or --max-new-tokens, lower --temperature \(now 1\.0\)"):
        collect(backend, hopeless, output, SAMPLING, seed=0, keep="correct", chunk_size=CHUNK, progress=False)
    assert not output.exists() and not summary_path(output).exists() and not parts_dir(output).exists()


def test_a_response_cut_at_the_length_limit_is_never_correct_nor_kept(backend, problems, tmp_path):
    """Six new tokens end the teacher's "<answer>k</answer>" just before its end-of-turn token."""
    cut = SamplingConfig(n=N, temperature=1.0, max_new_tokens=6)
    summary = collect(backend, problems[0], tmp_path / "cut.jsonl", cut, seed=0, keep="all", chunk_size=CHUNK,
                      progress=False)
    records = load_records(tmp_path / "cut.jsonl").to_list()
    by_id = {p["id"]: p for p in problems[0]}
    cut_right = [r for r in records if r["finish_reason"] == "length"
                 and grade(r["response"], by_id[r["prompt_id"]], "chain_sum") == 1.0]
    assert cut_right, "some cut responses should read as right answers, or this test shows nothing"
    assert all(r["reward"] == 0.0 for r in cut_right)
    assert all(r["reward"] == grade(r["response"], by_id[r["prompt_id"]], "chain_sum")
               for r in records if r["finish_reason"] == "stop")
    kept = collect(backend, problems[0], tmp_path / "cut-correct.jsonl", cut, seed=0, keep="correct",
                   chunk_size=CHUNK, progress=False) if summary["correct"] else None
    if kept is not None:
        assert all(r["finish_reason"] == "stop" for r in load_records(tmp_path / "cut-correct.jsonl").to_list())


def test_an_existing_dataset_is_not_overwritten(keep_all, backend, problems):
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        collect(backend, problems[0], keep_all[0], SAMPLING, seed=0, keep="all", chunk_size=CHUNK, progress=False)


def test_chat_prompt_ids_are_the_templated_prompt(backend):
    messages = [{"role": "user", "content": "hi"}]
    ids = chat_prompt_ids(backend.tokenizer, messages)
    assert backend.tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_killed_collect_resumes_to_the_uninterrupted_dataset(keep_all, problems, teacher, tmp_path):
    output = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "pear_bench", "collect", "--problems", str(problems[1]), "--model", str(teacher),
               "--output", str(output), "--n", str(N), "--max-new-tokens", "16", "--chunk-size", str(CHUNK),
               "--keep", "all", "--device", "cpu", "--seed", "0"]
    # Own session: the kill reaches the grading worker processes too.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(parts_dir(output).glob("chunk-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts_dir(output).glob("chunk-*.json")))
    assert not output.exists() and 3 <= done < 12, f"killed too late: {done} chunks were done"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "12 prompts, 48 samples" in rerun.stdout
    assert json.loads(summary_path(output).read_text())["resumed_chunks"] == done
    assert load_records(output).to_list() == load_records(keep_all[0]).to_list()
