"""pear-bench plan: closed forms against transformers' own models, CPU peaks, and the paper grid's verdicts."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from pear_bench.errors import InputError
from pear_bench.plan import (GIB, SHAPES, Shape, check_grid, kv_bytes_per_token, parameter_count, plan_grid,
                             training_memory, vllm_memory)
from pear_bench.resources import job_resources, vllm_flags

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())


def hf_config(shape: Shape):
    """The transformers config of a shape, written out independently of Shape.from_hf_config."""
    common = dict(hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                  num_key_value_heads=shape.kv_heads, intermediate_size=shape.intermediate, vocab_size=shape.vocab,
                  tie_word_embeddings=shape.tied)
    if shape.qk_norm:
        return Qwen3Config(head_dim=shape.head_dim, **common)
    assert shape.head_dim == shape.hidden // shape.heads
    return Qwen2Config(**common)


@pytest.mark.parametrize("hub_id", sorted(SHAPES))
def test_parameter_count_equals_the_transformers_model(hub_id):
    shape = SHAPES[hub_id]
    with torch.device("meta"):  # no memory: only the parameters' shapes
        model = AutoModelForCausalLM.from_config(hf_config(shape))
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    assert Shape.from_hf_config(hf_config(shape).to_dict()) == shape


def test_published_sizes():
    # The model cards' parameter counts (Qwen3-8B 8.2B, Qwen3-32B 32.8B, Qwen2.5-7B 7.61B, Qwen2.5-1.5B 1.54B).
    sizes = {h: parameter_count(s) / 1e9 for h, s in SHAPES.items()}
    assert round(sizes["Qwen/Qwen3-8B"], 1) == 8.2
    assert round(sizes["Qwen/Qwen3-32B"], 1) == 32.8
    assert round(sizes["Qwen/Qwen2.5-7B-Instruct"], 2) == 7.62
    assert round(sizes["Qwen/Qwen2.5-1.5B-Instruct"], 2) == 1.54


def test_kv_cache_per_token_equals_a_real_cache():
    config = Qwen2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=50)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        cache = model(torch.zeros(1, 7, dtype=torch.long), use_cache=True).past_key_values
    stored = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * 4  # float32
    assert kv_bytes_per_token(Shape.from_hf_config(config.to_dict()), 4) == stored / 7
    # Qwen3-8B in bf16: 2 x 36 layers x 8 heads x 128 x 2 bytes; over TP 4, 2 heads per GPU; TP 16, still one.
    assert kv_bytes_per_token(SHAPES["Qwen/Qwen3-8B"], 2) == 147456
    assert kv_bytes_per_token(SHAPES["Qwen/Qwen3-8B"], 2, 4) == 147456 / 4
    assert kv_bytes_per_token(SHAPES["Qwen/Qwen3-8B"], 2, 16) == 147456 / 8


def test_vllm_room_for_qwen3_32b_by_hand():
    p = 32_762_123_264  # parameter_count(Qwen3-32B), checked against transformers above
    assert parameter_count(SHAPES["Qwen/Qwen3-32B"]) == p
    one = vllm_memory(SHAPES["Qwen/Qwen3-32B"], dtype="bfloat16", gpus=1, max_len=40960, gpu_bytes=80 * GIB)
    kv = 0.9 * 80 * GIB - 2 * p - 3 * GIB
    assert one["kv_budget"] == pytest.approx(kv)
    assert one["sequences"] == pytest.approx(kv / (2 * 64 * 8 * 128 * 2 * 40960))
    assert one["sequences"] < 1  # Qwen3's default 40,960-token length does not fit one card: vLLM refuses
    four = vllm_memory(SHAPES["Qwen/Qwen3-32B"], dtype="bfloat16", gpus=4, max_len=9216, gpu_bytes=80 * GIB)
    assert four["sequences"] > 50


def test_training_states_by_precision_and_sharding():
    shape = SHAPES["Qwen/Qwen3-8B"]
    p = parameter_count(shape)
    kwargs = dict(bf16=True, use_lora=False, lora_r=8, tokens=1, gradient_checkpointing=True, logits="chunked")
    fp32 = training_memory(shape, gpus=1, dtype="float32", pure_bf16=False, **kwargs)["states"]
    pure = training_memory(shape, gpus=1, dtype="bfloat16", pure_bf16=True, **kwargs)["states"]
    sharded = training_memory(shape, gpus=8, dtype="float32", pure_bf16=False, **kwargs)["states"]
    assert fp32 == 20 * p  # weights, grads, two moments in float32, one foreach temporary
    assert pure == 12 * p
    assert sharded == fp32 / 8


MEASURE = r"""
import json, sys, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
checkpointing, tokens, batch = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0); torch.set_num_threads(1)
config = Qwen2Config(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                     intermediate_size=1536, vocab_size=8192, tie_word_embeddings=True)
model = Qwen2ForCausalLM(config)
if checkpointing:
    model.gradient_checkpointing_enable()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randint(0, 8192, (batch, tokens))
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
for _ in range(2):
    model(input_ids=x, labels=x, use_cache=False).loss.backward(); optimizer.step(); optimizer.zero_grad()
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"config": config.to_dict(), "grown": peak - before}))
"""


@pytest.mark.parametrize("checkpointing, tokens, batch", [(False, 512, 4), (True, 1024, 4)])
def test_training_memory_against_a_measured_cpu_peak(checkpointing, tokens, batch):
    """Two AdamW steps of a 29M-parameter model: the resident memory they add (gradients, moments, the
    optimizer's temporary, activations, logits; the weights exist before) against the estimate."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(int(checkpointing)), str(tokens), str(batch)],
                         capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(out.stdout)
    shape = Shape.from_hf_config(measured["config"])
    estimate = training_memory(shape, gpus=1, dtype="float32", bf16=False, pure_bf16=False, use_lora=False,
                               lora_r=8, tokens=batch * tokens, gradient_checkpointing=checkpointing, logits="full")
    grown = sum(estimate.values()) - 4 * parameter_count(shape)
    assert 0.85 < measured["grown"] / grown < 1.3, (measured["grown"] / 1e6, grown / 1e6)


def test_paper_grid_fits_80gb_cards_and_its_old_resources_did_not():
    check_grid(PAPER)  # the committed grid is accepted
    jobs = plan_grid(PAPER)
    assert not [j for j in jobs if j.refused]
    by_rule = {}
    for job in jobs:
        by_rule[job.rule] = by_rule.get(job.rule, 0) + job.count
    # The job counts of `snakemake -n` on this grid (tests/workflow/test_dag.py checks them there too).
    students, tasks, arms = len(PAPER["students"]), len(PAPER["tasks"]), len(PAPER["methods"])
    assert by_rule == {"collect": tasks, "rescore": tasks, "transfer": tasks * students, "sft": tasks * students * arms,
                       "rl": tasks * students * arms * len(PAPER["rl_seeds"]),
                       "evaluate": tasks * (students * (1 + arms * (1 + len(PAPER["rl_seeds"]))) + 1)}

    old = copy.deepcopy(PAPER)  # the resources before the plan existed
    old["resources"].update(collect={"gpu": 1, "runtime": 720}, evaluate={"gpu": 1, "runtime": 240},
                            rl={"gpu": 4, "runtime": 1440})
    old["rl"].update(per_device_train_batch_size=16, gradient_accumulation_steps=4)
    with pytest.raises(InputError) as refused:
        check_grid(old)
    message = str(refused.value)
    assert "\n" not in message
    assert "collect on qwen3-32b" in message and "runtime (720 min)" in message
    assert "evaluate on qwen3-32b" in message
    assert "rl on qwen3-8b" in message and "largest: logits" in message and "per_device_train_batch_size (now 16)" in message


def test_a_model_too_long_for_its_kv_cache_is_refused():
    grid = copy.deepcopy(PAPER)
    grid["evaluation"]["max_new_tokens"] = 40960
    grid["resources"]["evaluate"]["models"] = {}  # the 32B teacher on one card
    with pytest.raises(InputError, match=r"evaluate on qwen3-32b: vLLM on 1 GPU\(s\) of 80 GiB has 8.0 GiB for the KV "
                                         r"cache after 61.0 GiB of bfloat16 weights per GPU, less than one sequence of "
                                         r"41984 tokens \(10.2 GiB\): raise resources.evaluate.gpu"):
        check_grid(grid)


def test_per_model_resources_and_vllm_flags():
    assert job_resources(PAPER, "evaluate", "qwen3-32b")["gpu"] == 4
    assert job_resources(PAPER, "evaluate", "qwen3-8b")["gpu"] == 1
    assert job_resources(PAPER, "make_data")["threads"] == PAPER["resources"]["default"]["threads"]
    assert vllm_flags(PAPER, "evaluate", "qwen3-32b") == ["--max-model-len", str(1024 + 16384), "--tensor-parallel-size", "4"]
    assert vllm_flags(PAPER, "evaluate", "qwen3-8b") == ["--max-model-len", str(1024 + 16384)]
    grid = copy.deepcopy(PAPER)
    grid["evaluation"]["args"] += " --tensor-parallel-size 2"
    with pytest.raises(InputError, match="evaluation.args: remove --tensor-parallel-size"):
        vllm_flags(grid, "evaluate", "qwen3-8b")
    grid["resources"]["evaluate"]["models"] = {"qwen4": {"gpu": 2}}
    with pytest.raises(InputError, match="resources.evaluate.models: 'qwen4' is not under models"):
        job_resources(grid, "evaluate", "qwen3-8b")
    mini = yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text())
    assert vllm_flags(mini, "collect") == []  # HF grids keep their commands


def test_cli_prints_the_plan_and_refuses_bad_input(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "pear_bench", "plan", *a], capture_output=True, text=True,
                                    timeout=120)
    ok = run("--configfile", str(ROOT / "workflows/config/paper.yaml"), "--json", str(tmp_path / "plan.json"))
    assert ok.returncode == 0, ok.stderr
    assert "| **grid** | 706 |" in ok.stdout
    assert {j["rule"] for j in json.loads((tmp_path / "plan.json").read_text())} == {
        "collect", "rescore", "transfer", "sft", "rl", "evaluate"}
    missing = run("--configfile", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.yaml: no such file" in missing.stderr
