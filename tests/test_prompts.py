"""pear_bench.prompts: problem -> messages -> template -> ids, against hand-written conversations and
rendered text (the references), and few-shot files with their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings, problem_messages, problem_prompt_ids, prompt_text, read_fewshot
from tokenizer_family import CHATML, PROBLEM, TEXTS, base_bpe, build

SHOTS = [{"prompt": "Calculate 2 + 6.", "response": "2 + 6 = 8.\n<answer>8</answer>"},
         {"prompt": "Calculate 7 - 9.", "response": "7 - 9 = -2.\n<answer>-2</answer>"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    from transformers import AutoTokenizer

    path = build(tmp_path_factory.mktemp("chatml") / "tok", base_bpe(TEXTS, 300),
                 [("<|im_start|>", True), ("<|im_end|>", True)], CHATML, "<|im_end|>")
    return AutoTokenizer.from_pretrained(path)


def test_fewshot_examples_are_earlier_turns_between_system_and_problem(tmp_path):
    settings = PromptSettings(system_prompt="Be brief.", fewshot=read_fewshot(write_jsonl(tmp_path / "s.jsonl", SHOTS)))
    assert problem_messages(PROBLEM, settings) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Calculate 2 + 6."},
        {"role": "assistant", "content": "2 + 6 = 8.\n<answer>8</answer>"},
        {"role": "user", "content": "Calculate 7 - 9."},
        {"role": "assistant", "content": "7 - 9 = -2.\n<answer>-2</answer>"},
        {"role": "user", "content": PROBLEM["prompt"]},
    ]
    assert problem_messages(PROBLEM) == [{"role": "user", "content": PROBLEM["prompt"]}]
    record = json.loads(json.dumps(settings.to_record()))  # what run records store
    assert record["fewshot"] == [[s["prompt"], s["response"]] for s in SHOTS]
    assert record == settings.to_record()  # a resumed job compares its settings with the stored ones


def test_fewshot_prompt_ids_are_the_rendered_conversation(chatml, tmp_path):
    settings = PromptSettings(fewshot=read_fewshot(write_jsonl(tmp_path / "s.jsonl", SHOTS[:1])))
    expected = ("<|im_start|>user\nCalculate 2 + 6.<|im_end|>\n<|im_start|>assistant\n2 + 6 = 8.\n<answer>8</answer>"
                f"<|im_end|>\n<|im_start|>user\n{PROBLEM['prompt']}<|im_end|>\n<|im_start|>assistant\n")
    ids = problem_prompt_ids(chatml, PROBLEM, settings)
    assert chatml.decode(ids) == expected
    assert prompt_text(chatml, problem_messages(PROBLEM, settings), settings) == expected
    assert ids == chatml(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("", "has no examples"),
    ('{"prompt": "a", "response": "b"}\nnot json\n', ":2: not valid JSON"),
    ('{"prompt": "a"}\n', ":1: a few-shot example needs non-empty str 'prompt' and 'response'"),
    ('{"prompt": "a", "response": "  "}\n', ":1: a few-shot example needs"),
    ('["a", "b"]\n', ":1: expected a JSON object"),
])
def test_bad_fewshot_files_are_refused_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "shots.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_fewshot(path)


def test_cli_refuses_a_bad_fewshot_file_in_one_line(tmp_path):
    """Before any model is loaded (here --model is no model at all)."""
    from pear_bench.problems import make_record

    write_jsonl(tmp_path / "p.jsonl", [make_record("p0", "chain_sum", "What is 2 + 3?", "5")])
    (tmp_path / "shots.jsonl").write_text('{"prompt": "a"}\n')
    proc = subprocess.run([sys.executable, "-m", "pear_bench", "eval", "--model", str(tmp_path), "--problems",
                           str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "out"),
                           "--fewshot", str(tmp_path / "shots.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "shots.jsonl:1: a few-shot example needs" in proc.stderr
