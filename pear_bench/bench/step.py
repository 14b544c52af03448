"""`pear-bench bench step`: time and peak memory of one SFT training step, plain HF vs PEAR.

Variants, all on the same random-init model, batch and AdamW optimizer:

    hf             ``model(input_ids, labels=labels).loss``: what a user of plain transformers runs
                   (full ``[B, T, V]`` logits, float32 upcast inside the loss)
    nll            unweighted NLL on the chunked primitive (``pear_bench.logprobs.token_logprobs``)
    pear-token     PEAR token-level weights on the same primitive
    pear-block     PEAR block-level weights (block size 4)
    pear-sequence  PEAR sequence-level weights

Each variant runs in its own spawned process, so peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS (``ru_maxrss``) minus its RSS
after the imports (so model, optimizer state, activations and logits all count). The median of the
timed steps is reported after warm-up steps; ratios are against ``hf`` and against ``nll`` (the
same kernel without weights, which isolates the cost of PEAR's weights).

    pear-bench bench step                                   # tiny shape, CPU
    pear-bench bench step --shape qwen2.5-1.5b --batch 2 --seq-len 4096 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

VARIANTS = ("hf", "nll", "pear-token", "pear-block", "pear-sequence")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.tiny_models import SHAPES

    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="model shape (random init)")
    parser.add_argument("--vocab-size", type=int, default=32_000,
                        help="vocabulary size for shapes that do not fix one (tiny); default 32000")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="masked prompt tokens per sequence (default: seq-len // 8)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="parameter dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def _peak_memory_bytes(device, rss_before: int) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_variant(variant: str, settings: dict) -> dict:
    """Build the model, run warm-up + timed steps of ``variant``; return times and peak memory."""
    import torch
    from transformers import Qwen2ForCausalLM

    from pear_bench.logprobs import token_logprobs
    from pear_bench.objectives import pear_weights, weighted_sft_loss
    from pear_bench.tiny_models import tiny_config

    rss_before = _current_rss_bytes()
    device = torch.device(settings["device"])
    dtype = getattr(torch, settings["dtype"])
    torch.manual_seed(0)
    config = tiny_config(settings["vocab_size"], settings["shape"], attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    if settings["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    B, T, P = settings["batch"], settings["seq_len"], settings["prompt_len"]
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=g).to(device)
    attention_mask = torch.ones(B, T, dtype=torch.long, device=device)
    response_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    response_mask[:, P:] = True
    labels = input_ids.masked_fill(~response_mask, -100)
    # Synthetic behaviour logprobs near the random model's own (about -log V), so weights vary.
    behavior = (-torch.rand(B, T, generator=g) * 0.5 - torch.log(torch.tensor(float(config.vocab_size)))).to(device)
    level = variant.removeprefix("pear-")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if variant == "hf":
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        else:
            logp = token_logprobs(model, input_ids, attention_mask, response_mask).logprobs
            weights = None if variant == "nll" else pear_weights(logp, behavior, response_mask, level=level)
            loss = weighted_sft_loss(logp, response_mask, weights)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(settings["warmup"]):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(settings["steps"]):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_bytes": _peak_memory_bytes(device, rss_before),
    }


def _worker(variant: str, settings: dict, queue) -> None:
    try:
        queue.put(run_variant(variant, settings))
    except Exception as exc:  # reported by the parent, which names the variant
        queue.put({"variant": variant, "error": f"{type(exc).__name__}: {exc}"})


def main(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    import torch

    import pear_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {
        "shape": args.shape,
        "vocab_size": args.vocab_size,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "prompt_len": args.seq_len // 8 if args.prompt_len is None else args.prompt_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": device,
        "dtype": args.dtype or ("bfloat16" if device == "cuda" else "float32"),
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    if not 0 <= settings["prompt_len"] < settings["seq_len"]:
        raise SystemExit(f"--prompt-len must be in [0, seq-len); got {settings['prompt_len']}")
    ctx = mp.get_context("spawn")
    results = []
    for variant in args.variants:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(variant, settings, queue))
        proc.start()
        result = queue.get()
        proc.join()
        results.append(result)
        if "error" in result:
            print(f"{variant}: failed: {result['error']}", file=sys.stderr)

    ok = {r["variant"]: r for r in results if "error" not in r}
    gib = 1024**3
    print(f"device={device} torch={torch.__version__} pear_bench={pear_bench.__version__} " +
          " ".join(f"{k}={v}" for k, v in settings.items() if k not in ("device",)))
    header = f"{'variant':<14} {'median s':>9} {'peak GiB':>9} {'time/hf':>8} {'mem/hf':>7} {'time/nll':>9}"
    print(header)
    print("-" * len(header))
    for variant, r in ok.items():
        def ratio(key, base):
            return f"{r[key] / ok[base][key]:.3f}" if base in ok and ok[base][key] else "-"
        print(f"{variant:<14} {r['median_s']:>9.4f} {r['peak_bytes'] / gib:>9.3f} "
              f"{ratio('median_s', 'hf'):>8} {ratio('peak_bytes', 'hf'):>7} {ratio('median_s', 'nll'):>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "torch": torch.__version__, "results": results}, f, indent=2)
    return 1 if len(ok) < len(results) else 0
