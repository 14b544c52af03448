"""A teacher's records carried to students whose tokenizers differ as Qwen2.5, Qwen3 and R1-Distill do.

Three local tokenizers share one byte-level BPE vocabulary (the V regular tokens of a model family)
and differ where the real ones do:

    id      qwen3-like ("teacher")   qwen2.5-like           r1-like
    V       <|endoftext|>            <|endoftext|>          <｜end▁of▁sentence｜>   (R1's eos)
    V+1     <|im_start|>             <|im_start|>           <｜User｜>
    V+2     <|im_end|>  (eos)        <|im_end|>  (eos)      <｜Assistant｜>         (two meanings)
    V+3     <think>                  -  (len V+3)           <｜begin▁of▁sentence｜>
    V+4     </think>                                        <|EOT|>
    V+5                                                     <think>
    V+6                                                     </think>

and in their chat templates (Qwen2.5's adds a default system prompt; R1's is not ChatML). The
references are independent of the code under test: decoded text compared as strings, ids looked up
by hand in the table above, logprobs from a float64 full-softmax forward pass of the teacher.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import reference_logprobs
from tokenizer_family import PLAIN, PROBLEM, QWEN_SYSTEM, THINKING, build_family
from transformers import AutoModelForCausalLM, AutoTokenizer

from pear_bench.data import RecordError, load_records, save_records
from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings, problem_messages, prompt_ids
from pear_bench.token_transfer import check_pair, load_side, pair_tokenizers, transfer_records



@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="module")
def teacher_records(family):
    """Two records sampled (here: written) by the qwen3-like teacher, with its exact float64 logprobs."""
    tok = AutoTokenizer.from_pretrained(family["qwen3"])
    model = AutoModelForCausalLM.from_pretrained(family["qwen3"], dtype=torch.float32).eval()
    messages = problem_messages(PROBLEM)
    prompt = prompt_ids(tok, messages)
    records = []
    for n, text in enumerate([THINKING, PLAIN]):
        response = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        records.append({"id": f"p0/{n}", "messages": messages, "prompt_ids": prompt, "response_ids": response,
                        "behavior_logprobs": reference_logprobs(model, prompt, response, 1.0).tolist(),
                        "finish_reason": "stop", "sampling": {"temperature": 1.0}})
    return records


def side(family, name):
    return load_side(name, str(family[name]))


def teacher_rescore(family):
    """The teacher's scoring, as `pear-bench transfer` loads it: the HF backend in float32."""
    from pear_bench.generation import load_backend

    backend = load_backend("hf", str(family["qwen3"]), device="cpu", dtype="float32")
    return backend.score


def test_the_local_tokenizers_differ_as_the_real_ones_do(family):
    V = family["V"]
    t, q25, r1 = (AutoTokenizer.from_pretrained(family[n]) for n in ("qwen3", "qwen2.5", "r1"))
    assert (len(t), len(q25), len(r1)) == (V + 5, V + 3, V + 7)
    assert t.convert_tokens_to_ids(["<think>", "</think>", "<|im_end|>"]) == [V + 3, V + 4, V + 2]
    assert r1.convert_ids_to_tokens([V, V + 2, V + 5]) == ["<｜end▁of▁sentence｜>", "<｜Assistant｜>", "<think>"]
    assert t.encode(THINKING, add_special_tokens=False)[0] == V + 3  # <think> is one token of the teacher


def test_teacher_ids_beyond_the_students_vocabulary_fail_sft_loading_unless_transferred(family, teacher_records,
                                                                                         tmp_path):
    """The bug this module fixes: Qwen3's <think> ids are past Qwen2.5's len(tokenizer)."""
    save_records(teacher_records, tmp_path / "teacher.jsonl")
    student_len = len(AutoTokenizer.from_pretrained(family["qwen2.5"]))
    with pytest.raises(RecordError, match=rf"outside the vocabulary \[0, {student_len}\)"):
        load_records(tmp_path / "teacher.jsonl", vocab_size=student_len)
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "qwen2.5"))
    out, _ = transfer_records(teacher_records, pair, PromptSettings(), teacher_rescore(family))
    save_records(out, tmp_path / "student.jsonl")
    assert len(load_records(tmp_path / "student.jsonl", vocab_size=student_len)) == 2


def test_same_tokenizer_carries_records_unchanged(family, teacher_records):
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "qwen3"))
    out, kinds = transfer_records(teacher_records, pair, PromptSettings())
    assert kinds == {"identical": 2, "mapped": 0, "retokenized": 0}
    for before, after in zip(teacher_records, out):
        assert after["prompt_ids"] == before["prompt_ids"] and after["response_ids"] == before["response_ids"]
        assert after["behavior_logprobs"] == before["behavior_logprobs"]


def test_qwen25_student_gets_its_template_and_a_retokenised_rescored_think_block(family, teacher_records):
    V = family["V"]
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "qwen2.5"))
    assert pair.missing == [V + 3, V + 4]  # <think>, </think>
    out, kinds = transfer_records(teacher_records, pair, PromptSettings(), teacher_rescore(family))
    assert kinds == {"identical": 1, "mapped": 0, "retokenized": 1}
    student = AutoTokenizer.from_pretrained(family["qwen2.5"])
    teacher = AutoTokenizer.from_pretrained(family["qwen3"])
    model = AutoModelForCausalLM.from_pretrained(family["qwen3"], dtype=torch.float32).eval()
    for before, after in zip(teacher_records, out):
        # The prompt is the student's own, default system prompt included; the teacher's had none.
        assert student.decode(after["prompt_ids"]) == (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                                                       f"{PROBLEM['prompt']}<|im_end|>\n<|im_start|>assistant\n")
        assert QWEN_SYSTEM not in teacher.decode(before["prompt_ids"])
        # Same text, ended by the student's <|im_end|> (id V+2), every id inside its vocabulary.
        assert student.decode(after["response_ids"][:-1]) == teacher.decode(before["response_ids"][:-1])
        assert after["response_ids"][-1] == V + 2 and max(after["response_ids"]) < len(student)
    thinking = out[0]
    assert thinking["response_transfer"] == "retokenized" and thinking["response_ids"][:3] != [V + 3]
    # Re-scored: the teacher's probabilities of exactly these tokens (its ids = the student's here).
    # In the teacher's context (its prompt), as the teacher sampled it.
    expected = reference_logprobs(model, teacher_records[0]["prompt_ids"], thinking["response_ids"], 1.0)
    np.testing.assert_allclose(thinking["behavior_logprobs"], expected, rtol=0, atol=1e-4)
    # The plain record kept its ids and logprobs: nothing needed changing.
    assert out[1]["response_ids"] == teacher_records[1]["response_ids"]
    assert out[1]["behavior_logprobs"] == teacher_records[1]["behavior_logprobs"]


def test_r1_student_gets_moved_think_ids_and_its_own_end_of_turn_never_the_id_with_two_meanings(family,
                                                                                                teacher_records):
    V = family["V"]
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "r1"))
    assert V + 2 in pair.two_meanings  # <|im_end|> in the teacher, <｜Assistant｜> in R1
    out, kinds = transfer_records(teacher_records, pair, PromptSettings())
    assert kinds == {"identical": 0, "mapped": 2, "retokenized": 0}
    thinking, plain = out
    expected = [V + 5 if i == V + 3 else V + 6 if i == V + 4 else i for i in teacher_records[0]["response_ids"][:-1]]
    assert thinking["response_ids"] == expected + [V]  # <think> -> V+5, </think> -> V+6, end: <｜end▁of▁sentence｜>
    assert all(V + 2 not in r["response_ids"] for r in out)
    assert plain["response_ids"] == teacher_records[1]["response_ids"][:-1] + [V]
    # The same tokens, so the teacher's logprobs stay (the end-of-turn event keeps its probability).
    assert [r["behavior_logprobs"] for r in out] == [r["behavior_logprobs"] for r in teacher_records]
    r1 = AutoTokenizer.from_pretrained(family["r1"])
    assert r1.decode(thinking["prompt_ids"]) == f"<｜begin▁of▁sentence｜><｜User｜>{PROBLEM['prompt']}<｜Assistant｜>"


def test_a_cut_response_gets_no_end_of_turn_token(family, teacher_records):
    cut = {**teacher_records[1], "response_ids": teacher_records[1]["response_ids"][:-1],
           "behavior_logprobs": teacher_records[1]["behavior_logprobs"][:-1], "finish_reason": "length"}
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "r1"))
    (out,), _ = transfer_records([cut], pair, PromptSettings())
    assert out["response_ids"] == cut["response_ids"] and family["V"] not in out["response_ids"]


def test_the_thinking_switch_reaches_the_students_template(family, teacher_records):
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "qwen3"))
    (out, _), _ = transfer_records(teacher_records, pair, PromptSettings(enable_thinking=False))
    tok = AutoTokenizer.from_pretrained(family["qwen3"])
    assert tok.decode(out["prompt_ids"]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_pair_from_another_vocabulary_is_refused_naming_the_pair_the_id_and_both_meanings(family):
    pair = pair_tokenizers(side(family, "qwen3"), side(family, "other"))
    with pytest.raises(InputError, match=r"teacher qwen3 -> student other: teacher token \d+: .*id \d+ is '.+' in the "
                                         r"teacher, '.+' in the student"):
        check_pair(pair)


def test_the_family_pairs_pass_the_check(family):
    for student in ("qwen3", "qwen2.5", "r1"):
        summary = check_pair(pair_tokenizers(side(family, "qwen3"), side(family, student)))
        assert summary["student_end_of_turn"] == (family["V"] if student == "r1" else family["V"] + 2)


def test_transfer_cli_writes_the_students_records_and_counts(family, teacher_records, tmp_path):
    save_records(teacher_records, tmp_path / "teacher.parquet")
    out = subprocess.run([sys.executable, "-m", "pear_bench", "transfer", "--teacher", str(family["qwen3"]),
                          "--student", str(family["qwen2.5"]), "--dataset", str(tmp_path / "teacher.parquet"),
                          "--output", str(tmp_path / "student.parquet"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "student.summary.json").read_text())
    assert (summary["identical"], summary["mapped"], summary["retokenized"]) == (1, 0, 1)
    assert summary["rescore"] == {"backend": "hf", "dtype": "float32"}
    assert summary["pair"]["ids_missing_in_student"] == 2
    records = load_records(tmp_path / "student.parquet",
                           vocab_size=len(AutoTokenizer.from_pretrained(family["qwen2.5"]))).to_list()
    assert [r["response_transfer"] for r in records] == ["retokenized", "identical"]
