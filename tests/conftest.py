"""Shared fixtures for the behaviour-data tests (generation, collect, score).

``teacher``: a tiny Qwen2 behaviour model, trained for a few seconds to answer any question with
``<answer>k</answer>`` (k = 1, 2 or 3, about equally likely) and then stop with ``<|im_end|>``. It
gives real end-of-sequence stops, a mix of near-deterministic and uncertain tokens, and (on
questions whose answer is 1, 2 or 3) a mix of correct and wrong answers for rejection sampling.
"""

from __future__ import annotations

import random

import pytest
import torch

from pear_bench.problems import ANSWER_TAG_INSTRUCTION

TEACHER_ANSWERS = ("1", "2", "3")
# Prompts shaped like pear_bench.problems' chain_sum records, so the teacher behaves on real task prompts.
TEACHER_QUESTIONS = tuple(
    f"State the final answer to the following arithmetic problem: {a} {op} {b} =\n\n{ANSWER_TAG_INSTRUCTION}"
    for a, b, op in zip(range(10), range(9, -1, -1), "+-" * 5))


def reference_logprobs(model, prompt, response, temperature):
    """log softmax(logits / T) of each response token: full vocabulary, float64, one unpadded row.

    The independent oracle of the behaviour-data tests: no chunking, no KV cache, no padding.
    """
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature  # [T, V]
    logp = logits[:-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[len(prompt) - 1:].numpy()


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """Path of the trained tiny teacher (model + tokenizer with a ChatML template), float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.tiny_models import build_tiny_model

    answers = [f"<answer>{k}</answer>" for k in TEACHER_ANSWERS]
    path = build_tiny_model(tmp_path_factory.mktemp("teacher"), list(TEACHER_QUESTIONS) + answers * 10,
                            vocab_size=320, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True)["input_ids"] for q in TEACHER_QUESTIONS]
    responses = [tokenizer(a)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    rng = random.Random(0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):  # loss ~5.6 -> ~0.2; the floor is ln 3 / 7 = 0.16 (a fair 1-of-3 digit in 7 tokens)
        rows = [(rng.choice(prompts), rng.choice(responses)) for _ in range(16)]
        width = max(len(p) + len(r) for p, r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        for i, (p, r) in enumerate(rows):
            input_ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            attention_mask[i, :len(p) + len(r)] = 1
            labels[i, len(p):len(p) + len(r)] = torch.tensor(r)  # response tokens only
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path
