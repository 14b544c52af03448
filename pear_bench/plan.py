"""`pear-bench plan`: memory per GPU, GPU-hours and disk of every job of a grid, before it runs.

    pear-bench plan --configfile workflows/config/paper.yaml            # table, totals, refusals
    pear-bench plan --configfile workflows/config/paper.yaml --json plan.json

The dry run (``snakemake -n``) makes the same check: a GPU job that cannot fit its GPUs stops the
workflow before anything is submitted, saying what to change.

Model shapes come from the model's ``config.json`` (a local directory, or the hub cache; nothing is
downloaded), else from ``SHAPES``, the paper's models as published. A model a rule builds (the CPU
grids) has no shape until it is built; its jobs are listed without estimates.

Every estimate is a formula of the shape and the grid's settings, in bytes (P parameters, L layers,
hidden h, K key-value heads of size d, MLP width i, vocabulary V; T tokens of one micro-batch):

- **Training** (sft, rl), per GPU with FSDP over G GPUs:
  - states: float32 master weights, float32 gradients and AdamW's two float32 moments = 16 P / G,
    plus 4 P / G for the foreach AdamW step's temporary; pure bf16 (``pure_bf16: true``) 8 P / G (+ the
    same temporary); LoRA: the frozen base at its dtype plus the adapters' 16 bytes per trainable
    parameter;
  - FSDP all-gathers one layer while it computes and prefetches the next: 2 layers of bf16 weights;
  - activations: with gradient checkpointing the input of every layer (L T h values) plus one layer
    recomputed in full; without it, every layer in full. One layer keeps about T (4 h + 3 q + 3 kv +
    4 i) values (q = heads x d, kv = K x d) for its backward, in bf16 with autocast, else float32;
  - logits: the chunked token-logprob primitive (SFT) holds ``LOGIT_CHUNK`` rows of V at a time;
    TRL's GRPO holds the logits of the micro-batch's completions, T x V entries of 16 bytes (the
    logits, their log-softmax and both gradients); this is what limits GRPO's
    ``per_device_train_batch_size``;
  - rl adds the reference model (``beta > 0``, sharded like the policy, at the training dtype) and
    the colocated vLLM engine's share, ``vllm_gpu_memory_utilization`` of the card.
- **vLLM** (collect, rescore, transfer, evaluate): weights P b / G (tensor parallelism G), KV cache
  2 L K d b / G bytes per token (K < G: one head per GPU), ``VLLM_OVERHEAD`` for the CUDA context
  and the start-up profile; vLLM needs room for at least one sequence of ``max_model_len`` tokens.
- **Time** from this project's H100 anchors (DESIGN.md section 8, Qwen2.5-1.5B shape): a training
  step of 2 x 4096 tokens in 0.297 s and of 1 x 16384 in 0.708 s, scaled by parameters (a fitted
  seconds-per-token line in sequence length); forward-only scoring 0.080 s per 8192 tokens.
  Decoding has no anchor yet: it is a roofline, the weights streamed from HBM once per decode step
  for all running sequences, or compute-bound at ``DECODE_MFU``, whichever is slower.
- **Disk**: a training run's final model (P x its dtype) plus ``save_total_limit`` checkpoints of
  weights and AdamW moments (3 x P x 4 bytes for float32 full fine-tuning), the tokenizer files.

Data sizes a grid fixes only after collect (SFT records, response lengths) are assumptions, printed
with the plan (``--acceptance``, ``--response-fill``); once collect has run, its summary's figures
are used instead.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pear_bench.errors import InputError, looks_like_path
from pear_bench.resources import backend_setting, job_resources, max_model_len, uses_vllm

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# H100 anchors (DESIGN.md section 8): training steps of the Qwen2.5-1.5B shape, bf16, checkpointing.
ANCHOR_PARAMS = 1.54e9
ANCHOR_STEPS = ((4096, 0.297 / 8192), (16384, 0.708 / 16384))  # (sequence length, seconds per token)
ANCHOR_SCORE_SECONDS_PER_TOKEN = 0.080 / 8192
# Decoding roofline of an H100 SXM: HBM bandwidth and bf16 peak at the efficiencies reached in practice.
HBM_BYTES_PER_S = 3.35e12 * 0.7
PEAK_FLOPS = 989e12
DECODE_MFU = 0.3
VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs
VLLM_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
VLLM_OVERHEAD = 3 * GIB
# Bytes per logit entry in a training step: the logits, their log-softmax and the gradients of both.
LOGIT_BYTES = 16
LOGIT_CHUNK = 4096  # rows of V the chunked primitive holds at once (TRL's kernel and ours are in this range)
TOKENIZER_BYTES = 12 * 2**20  # a Qwen tokenizer's files, when the model is not on disk
ACCEPTANCE = 0.5
RESPONSE_FILL = 0.5


@dataclass(frozen=True)
class Shape:
    """What memory and time depend on in a decoder-only transformer (Llama / Qwen2 / Qwen3 layout)."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> "Shape":
        heads = cfg["num_attention_heads"]
        kind = cfg.get("model_type", "")
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=kind == "qwen2" or bool(cfg.get("attention_bias", False)), qk_norm=kind == "qwen3")


def _qwen(hidden, layers, heads, kv_heads, intermediate, vocab, tied, kind, head_dim=128):
    return Shape(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied,
                 qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3")


# The paper grid's models, from their published config.json files (for planning without the hub).
SHAPES: dict[str, Shape] = {
    "Qwen/Qwen2.5-1.5B-Instruct": _qwen(1536, 28, 12, 2, 8960, 151936, True, "qwen2"),
    "Qwen/Qwen2.5-7B-Instruct": _qwen(3584, 28, 28, 4, 18944, 152064, False, "qwen2"),
    "Qwen/Qwen3-1.7B": _qwen(2048, 28, 16, 8, 6144, 151936, True, "qwen3"),
    "Qwen/Qwen3-4B": _qwen(2560, 36, 32, 8, 9728, 151936, True, "qwen3"),
    "Qwen/Qwen3-8B": _qwen(4096, 36, 32, 8, 12288, 151936, False, "qwen3"),
    "Qwen/Qwen3-32B": _qwen(5120, 64, 64, 8, 25600, 151936, False, "qwen3"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _qwen(1536, 28, 12, 2, 8960, 151936, False, "qwen2"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _qwen(3584, 28, 28, 4, 18944, 152064, False, "qwen2"),
}


# ---------------------------------------------------------------------------------------------
# Closed forms


def layer_parameters(s: Shape) -> int:
    """One decoder layer: q, k, v, o projections (+ q/k/v biases, + q/k norms), the gated MLP, two norms."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attention = s.hidden * q + 2 * s.hidden * kv + q * s.hidden
    if s.qkv_bias:
        attention += q + 2 * kv
    if s.qk_norm:
        attention += 2 * s.head_dim
    return attention + 3 * s.hidden * s.intermediate + 2 * s.hidden


def parameter_count(s: Shape) -> int:
    """P = V h (embedding) + [V h (untied head)] + L x layer + h (final norm)."""
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.layers * layer_parameters(s) + s.hidden


def layer_activation_values(s: Shape, tokens: int) -> int:
    """Values one layer keeps for its backward: T (4 h + 3 q + 3 kv + 4 i).

    Norm inputs and outputs (4 h), q and the attention output before and after o (3 q), k, v and rotated k
    (3 kv), the MLP's gate, up, activation and product (4 i); flash/SDPA attention keeps no T x T matrix."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return tokens * (4 * s.hidden + 3 * q + 3 * kv + 4 * s.intermediate)


def kv_bytes_per_token(s: Shape, dtype_bytes: int, tensor_parallel: int = 1) -> float:
    """KV cache per token and GPU: 2 (k and v) L K d b / G, with at least one head per GPU."""
    heads_per_gpu = max(1.0, s.kv_heads / tensor_parallel)
    return 2 * s.layers * heads_per_gpu * s.head_dim * dtype_bytes


def training_memory(s: Shape, *, gpus: int, dtype: str, bf16: bool, pure_bf16: bool, use_lora: bool,
                    lora_r: int, tokens: int, gradient_checkpointing: bool, logits: str) -> dict[str, float]:
    """Peak bytes per GPU of a training step, by component (see the module docstring)."""
    p, shards = parameter_count(s), max(1, gpus)
    weight_bytes = BYTES[dtype]
    if use_lora:
        # LoRA on every linear layer: r (in + out) per matrix, 7 matrices a layer.
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        dims = [(s.hidden, q), (s.hidden, kv), (s.hidden, kv), (q, s.hidden),
                (s.hidden, s.intermediate), (s.hidden, s.intermediate), (s.intermediate, s.hidden)]
        adapters = s.layers * lora_r * sum(a + b for a, b in dims)
        states = p * weight_bytes + 16 * adapters
    else:
        # + one weight-sized float32 temporary of torch's foreach AdamW step (sqrt of the second moment)
        states = p * (8 if pure_bf16 else 16) + 4 * p
    act_bytes = 2 if (bf16 or dtype == "bfloat16") else 4
    gathered = 2 * layer_parameters(s) * 2 if shards > 1 else 0
    one_layer = layer_activation_values(s, tokens) * act_bytes
    if gradient_checkpointing:
        activations = s.layers * tokens * s.hidden * act_bytes + one_layer
    else:
        activations = s.layers * one_layer
    rows = tokens if logits == "full" else min(tokens, LOGIT_CHUNK)
    return {"states": states / shards, "gathered_layers": gathered, "activations": activations,
            "logits": rows * s.vocab * LOGIT_BYTES}


def vllm_memory(s: Shape, *, dtype: str, gpus: int, max_len: int, gpu_bytes: float,
                utilization: float = VLLM_UTILIZATION) -> dict[str, float]:
    """Per GPU: weights, what is left for the KV cache, and how many max-length sequences that holds."""
    b = BYTES[dtype]
    weights = parameter_count(s) * b / gpus
    kv_budget = utilization * gpu_bytes - weights - VLLM_OVERHEAD
    per_token = kv_bytes_per_token(s, b, gpus)
    return {"weights": weights, "overhead": VLLM_OVERHEAD, "kv_budget": kv_budget,
            "kv_per_token": per_token, "sequences": kv_budget / (per_token * max_len)}


def training_seconds(s: Shape, tokens: float, seq_len: int, gpus: int) -> float:
    """Forward + backward + optimizer time: tokens x (P / P_anchor) x seconds-per-token(seq_len) / G.

    Seconds per token is the line through the two H100 anchors (attention grows with the length)."""
    (l0, t0), (l1, t1) = ANCHOR_STEPS
    per_token = t0 + (t1 - t0) * (seq_len - l0) / (l1 - l0)
    return tokens * parameter_count(s) / ANCHOR_PARAMS * max(per_token, t0 * 0.5) / max(1, gpus)


def scoring_seconds(s: Shape, tokens: float, gpus: int) -> float:
    """Forward-only scoring: tokens x (P / P_anchor) x 0.080 s / 8192 / G."""
    return tokens * parameter_count(s) / ANCHOR_PARAMS * ANCHOR_SCORE_SECONDS_PER_TOKEN / max(1, gpus)


def decode_seconds(s: Shape, *, tokens: float, dtype: str, gpus: int, concurrency: float) -> float:
    """Roofline decoding time of ``tokens`` response tokens with ``concurrency`` sequences running.

    A decode step streams the weights once (P b / G bytes per GPU) and produces one token for each
    running sequence; it cannot be faster than 2 P FLOPs per token at ``DECODE_MFU`` of the peak."""
    running = max(1.0, min(concurrency, VLLM_MAX_SEQS))
    step = parameter_count(s) * BYTES[dtype] / gpus / HBM_BYTES_PER_S
    bandwidth_rate = running / step
    compute_rate = gpus * PEAK_FLOPS * DECODE_MFU / (2 * parameter_count(s))
    return tokens / min(bandwidth_rate, compute_rate)


def checkpoint_disk(s: Shape, *, dtype: str, use_lora: bool, lora_r: int, saves: int,
                    tokenizer_bytes: float) -> dict[str, float]:
    """A training run's disk: the final model, ``saves`` checkpoints and one copy of the tokenizer each."""
    p = parameter_count(s)
    b = BYTES[dtype]
    if use_lora:
        adapters = training_memory(s, gpus=1, dtype=dtype, bf16=False, pure_bf16=False, use_lora=True,
                                   lora_r=lora_r, tokens=0, gradient_checkpointing=True, logits="chunked")
        trainable = (adapters["states"] - p * b) / 16
        checkpoint = trainable * (4 + 8)
        final = p * b + trainable * 4  # the merged model plus the saved adapter
    else:
        checkpoint = p * b + p * 2 * (2 if dtype == "bfloat16" else 4)  # weights + AdamW's two moments
        final = p * b
    return {"final": final + tokenizer_bytes, "checkpoints": saves * (checkpoint + tokenizer_bytes)}


# ---------------------------------------------------------------------------------------------
# Shapes of a grid's models


def load_shape(source: str) -> Shape | None:
    """The shape of a model directory, a hub id in the local cache or in ``SHAPES``; None if unknown."""
    path = Path(source)
    if path.is_dir():
        cfg = path / "config.json"
        return Shape.from_hf_config(json.loads(cfg.read_text())) if cfg.is_file() else None
    if not looks_like_path(source):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # a malformed id is not ours to judge here
            cached = None
        if isinstance(cached, str):
            return Shape.from_hf_config(json.loads(Path(cached).read_text()))
        return SHAPES.get(source)
    return None


def tokenizer_bytes(source: str) -> float:
    path = Path(source)
    if path.is_dir():
        names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "chat_template.jinja", "generation_config.json", "config.json")
        return float(sum((path / n).stat().st_size for n in names if (path / n).is_file()))
    return float(TOKENIZER_BYTES)


# ---------------------------------------------------------------------------------------------
# The jobs of a grid


@dataclass
class Job:
    """One kind of job of a grid (a rule on one model): how many, and each one's estimates."""
    rule: str
    model: str
    count: int
    gpus: int
    memory: dict[str, float]
    gpu_bytes: float  # what one GPU of the job holds (0 on CPU)
    hours: float  # wall hours of one job
    disk: float  # bytes one job leaves behind
    note: str = ""
    refused: str = ""

    @property
    def peak(self) -> float:
        return sum(v for k, v in self.memory.items() if k not in ("kv_budget", "kv_per_token", "sequences"))


def _model_sources(config: Mapping[str, Any], results: str) -> dict[str, str]:
    """Where each model's shape is read: the directory a rule builds or fetches once it exists, else the
    hub id of a model still to be fetched (hub cache or SHAPES), else a local path as given."""
    sources = {}
    for name, spec in config["models"].items():
        local = f"{results}/models/{name}"
        hub = spec.get("hub") if isinstance(spec, dict) else (None if looks_like_path(str(spec)) else str(spec))
        if isinstance(spec, dict) and hub is None or Path(local).is_dir():
            sources[name] = local
        else:
            sources[name] = hub or str(spec)
    return sources


def _stage_settings(config: Mapping[str, Any], stage: str, overrides: Mapping[str, Any] | None = None):
    from pear_bench.config import CONFIG_CLASSES

    fields = CONFIG_CLASSES[stage].__dataclass_fields__
    values = {**(config.get(stage) or {}), **(overrides or {})}
    return {name: values.get(name, f.default) for name, f in fields.items() if not callable(f.default)}


def _collect_figures(config: Mapping[str, Any], results: str, task: str, acceptance: float, fill: float) -> dict:
    """Prompts, kept records and tokens of a task's SFT data: collect's summary, else the assumptions."""
    summary = Path(f"{results}/sft_data/{task}/collected.summary.json")
    collect = config["collect"]
    if summary.is_file():
        s = json.loads(summary.read_text())
        return {"prompts": s["prompts"], "samples": s["samples"], "kept": s["kept"],
                "response_tokens": s["response_tokens"], "kept_tokens": s["kept_tokens"], "measured": True}
    limit = backend_setting(config, "collect", "--limit")
    prompts = int(limit) if limit else 1000
    samples = prompts * int(collect["n"])
    mean = fill * int(collect["max_new_tokens"])
    return {"prompts": prompts, "samples": samples, "kept": samples * acceptance,
            "response_tokens": samples * mean, "kept_tokens": samples * acceptance * mean, "measured": False}


def plan_grid(config: Mapping[str, Any], *, gpu_memory_gib: float = 80.0, acceptance: float = ACCEPTANCE,
              response_fill: float = RESPONSE_FILL, eval_problems: int | None = None) -> list[Job]:
    """Every kind of GPU-relevant job of a grid, with its estimates and a refusal where it cannot fit."""
    grid = config["grid"]
    results = f"results/{grid}"
    sources = _model_sources(config, results)
    gpu_bytes = gpu_memory_gib * GIB
    students, tasks, arms = list(config["students"]), dict(config["tasks"]), list(config["methods"])
    rl_seeds = list(config.get("rl_seeds") or [])
    prompt_limit = int(_stage_settings(config, "rl")["max_prompt_length"])
    jobs: list[Job] = []

    def vllm_job(rule: str, model: str, count: int, tokens_out: float, tokens_scored: float, note: str) -> Job:
        res = job_resources(config, rule, model)
        shape = load_shape(sources[model])
        if shape is None:
            return Job(rule, model, count, res["gpu"], {}, 0.0, 0.0, 0.0, note="shape unknown until the model is built")
        gpus = max(1, res["gpu"])
        dtype = backend_setting(config, rule, "--dtype", "float32")
        utilization = float(backend_setting(config, rule, "--gpu-memory-utilization", str(VLLM_UTILIZATION)))
        length = max_model_len(config, rule)
        if res["gpu"] == 0:
            weights = parameter_count(shape) * BYTES[dtype]
            return Job(rule, model, count, 0, {"weights": weights}, 0.0, 0.0, 0.0, note=f"CPU; {note}")
        mem = vllm_memory(shape, dtype=dtype, gpus=gpus, max_len=length, gpu_bytes=gpu_bytes, utilization=utilization)
        seconds = scoring_seconds(shape, tokens_scored, gpus)
        if tokens_out:
            concurrency = mem["kv_budget"] / (mem["kv_per_token"] * (prompt_limit / 2 + response_fill * (length - prompt_limit)))
            seconds += decode_seconds(shape, tokens=tokens_out, dtype=dtype, gpus=gpus, concurrency=concurrency)
        job = Job(rule, model, count, gpus, {"weights": mem["weights"], "overhead": mem["overhead"],
                                               "kv_cache": max(mem["kv_budget"], 0.0)},
                  utilization * gpu_bytes, seconds / 3600, 0.0,
                  note=f"TP {gpus}, max_model_len {length}, {mem['sequences']:.1f} max-length sequences of KV; {note}")
        if not uses_vllm(config, rule):
            job.note = f"HF backend (one GPU used); {note}"
        if mem["sequences"] < 1:
            job.refused = (f"{rule} on {model}: vLLM on {gpus} GPU(s) of {gpu_memory_gib:g} GiB has "
                           f"{mem['kv_budget'] / GIB:.1f} GiB for the KV cache after {mem['weights'] / GIB:.1f} GiB of "
                           f"{dtype} weights per GPU, less than one sequence of {length} tokens "
                           f"({mem['kv_per_token'] * length / GIB:.1f} GiB): raise resources.{rule}.gpu "
                           f"(tensor parallelism) or lower the max_new_tokens behind max_model_len")
        return job

    def training_job(stage: str, model: str, count: int, settings: Mapping[str, Any], tokens_per_seq: int,
                     steps: float, tokens_total: float, extra: Mapping[str, float], note: str,
                     logit_tokens: int | None = None) -> Job:
        res = job_resources(config, stage, model)
        shape = load_shape(sources[model])
        if shape is None:
            return Job(stage, model, count, res["gpu"], {}, 0.0, 0.0, 0.0, note="shape unknown until the model is built")
        gpus = max(1, res["gpu"])
        micro = int(settings["per_device_train_batch_size"])
        mem = training_memory(shape, gpus=gpus, dtype=settings["dtype"], bf16=bool(settings["bf16"]),
                              pure_bf16=bool(settings.get("pure_bf16")), use_lora=bool(settings["use_lora"]),
                              lora_r=int(settings["lora_r"]), tokens=micro * tokens_per_seq,
                              gradient_checkpointing=bool(settings["gradient_checkpointing"]),
                              logits="full" if stage == "rl" else "chunked")
        if logit_tokens is not None:  # TRL keeps the logits of the completions only
            mem["logits"] = micro * logit_tokens * shape.vocab * LOGIT_BYTES
        mem.update(extra)
        limit = settings.get("save_total_limit")
        saves = min(int(steps // int(settings["save_steps"])), limit if limit is not None else 10**9)
        disk = checkpoint_disk(shape, dtype=settings["dtype"], use_lora=bool(settings["use_lora"]),
                               lora_r=int(settings["lora_r"]), saves=saves, tokenizer_bytes=tokenizer_bytes(sources[model]))
        seconds = training_seconds(shape, tokens_total, tokens_per_seq, gpus)
        job = Job(stage, model, count, res["gpu"], mem, gpu_bytes if res["gpu"] else 0.0, seconds / 3600,
                  disk["final"] + disk["checkpoints"], note=f"{steps:.0f} steps, {saves} checkpoint(s) kept; {note}")
        if res["gpu"] and job.peak > gpu_bytes:
            biggest = max(mem, key=mem.get)
            job.refused = (f"{stage} on {model}: about {job.peak / GIB:.0f} GiB per GPU on {gpus} GPU(s) of "
                           f"{gpu_memory_gib:g} GiB (largest: {biggest} {mem[biggest] / GIB:.0f} GiB): lower "
                           f"{stage}.per_device_train_batch_size (now {micro}) and raise gradient_accumulation_steps, "
                           f"raise resources.{stage}.gpu, or shorten the sequences")
        return job

    for task, spec in tasks.items():
        teacher = spec["teacher"]
        figures = _collect_figures(config, results, task, acceptance, response_fill)
        origin = "measured by collect" if figures["measured"] else \
            f"assumed: acceptance {acceptance:g}, responses {response_fill:g} of max_new_tokens"
        jobs.append(vllm_job("collect", teacher, 1, figures["response_tokens"], figures["prompts"] * prompt_limit / 2,
                             f"{figures['samples']:.0f} samples ({origin})"))
        if config["collect"].get("rescore") is not None:
            jobs.append(vllm_job("rescore", teacher, 1, 0, figures["kept_tokens"], f"{figures['kept']:.0f} records"))
        sft = _stage_settings(config, "sft")
        records = figures["kept"]
        length = int(sft["max_length"] or prompt_limit + int(config["collect"]["max_new_tokens"]))
        for student in students:
            jobs.append(vllm_job("transfer", teacher, 1, 0, 0, "one per student; re-scores only re-tokenised responses"))
            for arm in arms:
                settings = _stage_settings(config, "sft", config["methods"][arm])
                per_step = (int(settings["per_device_train_batch_size"]) * int(settings["gradient_accumulation_steps"])
                            * max(1, job_resources(config, "sft", student)["gpu"]))
                steps = (int(settings["max_steps"]) if int(settings["max_steps"]) > 0
                         else math.ceil(records / per_step) * float(settings["num_train_epochs"]))
                tokens = min(steps * per_step, records * float(settings["num_train_epochs"])) * \
                    (figures["kept_tokens"] / max(records, 1) + prompt_limit / 2)
                jobs.append(training_job("sft", student, 1, settings, length, steps, tokens, {}, "per arm"))
            rl = _stage_settings(config, "rl")
            res = job_resources(config, "rl", student)
            completion = int(rl["max_completion_length"])
            seq = int(rl["max_prompt_length"]) + completion
            sequences_per_step = (int(rl["per_device_train_batch_size"]) * int(rl["gradient_accumulation_steps"])
                                  * max(1, res["gpu"]))
            steps = int(rl["max_steps"])
            extra, colocated_refusal = {}, ""
            shape = load_shape(sources[student])
            if shape is not None and res["gpu"]:
                if float(rl["beta"]) > 0:
                    extra["reference_model"] = parameter_count(shape) * BYTES[rl["dtype"]] / max(1, res["gpu"])
                if rl["generation_backend"] in ("vllm", "auto"):
                    extra["colocated_vllm"] = float(rl["vllm_gpu_memory_utilization"]) * gpu_bytes
                    colocated = parameter_count(shape) * BYTES["bfloat16"] + VLLM_OVERHEAD  # TRL: one engine per GPU
                    if colocated > extra["colocated_vllm"]:
                        colocated_refusal = (
                            f"rl on {student}: the colocated vLLM needs about {colocated / GIB:.0f} GiB for bf16 weights "
                            f"and overhead, more than rl.vllm_gpu_memory_utilization {rl['vllm_gpu_memory_utilization']} "
                            f"of {gpu_memory_gib:g} GiB: raise it (and leave training room) or use generation_backend hf")
            gen_tokens = steps * sequences_per_step * response_fill * completion
            train_tokens = steps * sequences_per_step * (int(rl["max_prompt_length"]) / 2 + response_fill * completion)
            # x 1.5: the reference model's forward pass on top of the policy's forward and backward
            job = training_job("rl", student, len(arms) * len(rl_seeds), rl, seq, steps, train_tokens * 1.5, extra,
                               f"{sequences_per_step} completions a step", logit_tokens=completion)
            if shape is not None and res["gpu"]:
                # Each GPU's colocated engine decodes its share of the step's completions.
                job.hours += decode_seconds(shape, tokens=gen_tokens, dtype="bfloat16", gpus=max(1, res["gpu"]),
                                            concurrency=sequences_per_step / max(1, res["gpu"])) / 3600 / max(1, res["gpu"])
            job.refused = job.refused or colocated_refusal
            jobs.append(job)
        evaluation = config["evaluation"]
        problems = eval_problems or 500
        models = students + ([teacher] if evaluation.get("teachers") and teacher not in students else [])
        for model in models:
            count = 1 + (len(arms) * (1 + len(rl_seeds)) if model in students else 0)
            tokens = problems * int(evaluation["samples"]) * response_fill * int(evaluation["max_new_tokens"])
            jobs.append(vllm_job("evaluate", model, count, tokens, 0,
                                 f"{problems} problems x {evaluation['samples']} samples (assumed problem count)"))
    for job in jobs:
        _check_runtime(job, job_resources(config, job.rule, job.model)["runtime"])
    return _merge(jobs)


def _check_runtime(job: Job, runtime_minutes: int) -> None:
    """Refuse a GPU job estimated to run past its time limit (SLURM kills it there)."""
    if job.gpus and not job.refused and job.hours * 60 > runtime_minutes:
        job.refused = (f"{job.rule} on {job.model}: about {job.hours:.1f} h on {job.gpus} GPU(s), beyond "
                       f"resources.{job.rule}.runtime ({runtime_minutes} min): raise the runtime or the GPUs")


def _merge(jobs: list[Job]) -> list[Job]:
    """One row per (rule, model, estimate): transfer jobs of one teacher, say, become one row with a count."""
    merged: dict[tuple, Job] = {}
    for job in jobs:
        key = (job.rule, job.model, round(job.hours, 6), round(job.peak), round(job.disk))
        if key in merged:
            merged[key].count += job.count
        else:
            merged[key] = job
    return list(merged.values())


def refusals(jobs: list[Job]) -> list[str]:
    return sorted({job.refused for job in jobs if job.refused})


def check_grid(config: Mapping[str, Any], gpu_memory_gib: float = 80.0) -> None:
    """The dry run's check: raise InputError naming every GPU job that cannot fit its GPUs."""
    if not any(job_resources(config, rule)["gpu"] for rule in ("collect", "rescore", "transfer", "sft", "rl", "evaluate")):
        return  # a CPU grid: nothing to fit
    problems = refusals(plan_grid(config, gpu_memory_gib=gpu_memory_gib))
    if problems:
        raise InputError(f"grid {config['grid']!r} does not fit {gpu_memory_gib:g} GiB GPUs (pear-bench plan): "
                         + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# CLI


def format_plan(jobs: list[Job], gpu_memory_gib: float) -> str:
    rows = ["| rule | model | jobs | GPUs | GiB per GPU | wall h per job | GPU-h | disk GB | notes |",
            "|---|---|--:|--:|--:|--:|--:|--:|---|"]
    totals: dict[str, list[float]] = {}
    for job in jobs:
        gpu_h = job.count * job.hours * max(job.gpus, 0)
        total = totals.setdefault(job.rule, [0, 0.0, 0.0])
        total[0] += job.count
        total[1] += gpu_h
        total[2] += job.count * job.disk
        memory = f"{job.peak / GIB:.1f}" if job.memory else "?"
        mark = " REFUSED" if job.refused else ""
        rows.append(f"| {job.rule} | {job.model} | {job.count} | {job.gpus} | {memory}{mark} | {job.hours:.2f} | "
                    f"{gpu_h:.1f} | {job.count * job.disk / 1e9:.1f} | {job.note} |")
    rows += ["", "| rule | jobs | GPU-h | disk GB |", "|---|--:|--:|--:|"]
    for rule, (count, gpu_h, disk) in totals.items():
        rows.append(f"| {rule} | {count} | {gpu_h:.1f} | {disk / 1e9:.1f} |")
    grand = [sum(t[i] for t in totals.values()) for i in range(3)]
    rows.append(f"| **grid** | {grand[0]:.0f} | {grand[1]:.1f} | {grand[2] / 1e9:.1f} |")
    rows.append(f"\nGPU memory per card: {gpu_memory_gib:g} GiB. Estimates, not measurements: see `pear_bench/plan.py`.")
    return "\n".join(rows)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", required=True, type=Path, help="the grid config (workflows/config/<grid>.yaml)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU (default 80, an H100)")
    parser.add_argument("--acceptance", type=float, default=ACCEPTANCE,
                        help=f"share of teacher samples kept, until collect has run (default {ACCEPTANCE})")
    parser.add_argument("--response-fill", type=float, default=RESPONSE_FILL,
                        help=f"mean response length as a share of max_new_tokens (default {RESPONSE_FILL})")
    parser.add_argument("--eval-problems", type=int, default=None, help="problems per evaluation (default 500)")
    parser.add_argument("--json", type=Path, default=None, help="also write every job's estimates here")


def main(args: argparse.Namespace) -> int:
    if not args.configfile.is_file():
        raise InputError(f"--configfile {args.configfile}: no such file")
    config = yaml.safe_load(args.configfile.read_text())
    if not isinstance(config, dict) or "grid" not in config:
        raise InputError(f"--configfile {args.configfile}: not a grid config (no grid: key)")
    jobs = plan_grid(config, gpu_memory_gib=args.gpu_memory_gib, acceptance=args.acceptance,
                     response_fill=args.response_fill, eval_problems=args.eval_problems)
    print(format_plan(jobs, args.gpu_memory_gib))
    if args.json:
        args.json.write_text(json.dumps([asdict(job) for job in jobs], indent=1) + "\n")
    problems = refusals(jobs)
    for problem in problems:
        print(f"refused: {problem}")
    return 1 if problems else 0
