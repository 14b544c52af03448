"""`pear-bench bench score`: behaviour-scoring throughput against a bare forward pass and naive scoring.

All variants run the same random-init model over the same batches: synthetic records (prompt +
response, lengths drawn uniformly in ``[min-len, seq-len]``, fixed seed) grouped exactly as
``pear-bench score`` groups them (``pear_bench.score.length_sorted_batches``, right padding):

    forward  ``model(input_ids, attention_mask).logits``: a bare forward pass, what any use of the
             model costs at least (full ``[B, T, V]`` logits, nothing done with them)
    naive    full float32 logits, ``log_softmax``, gather the response tokens: the textbook scorer
    score    ``pear_bench.score.score_responses``, the code behind `pear-bench score` (the chunked
             primitive: no ``[B, T, V]`` tensor, batches built and results copied back per record)

Throughput counts real (non-padding) tokens per second over one pass through all batches: the
median of ``--repeats`` passes after ``--warmup`` passes, the variants interleaved round by round in
one process (a shared machine's load then affects them alike). Peak memory is measured over one
pass in a fresh spawned process per variant, model weights included as in DESIGN.md's anchors
(CUDA: ``max_memory_allocated``; CPU: peak RSS over the pass above the RSS after imports).

Targets: score >= 0.9 x forward (CPU and GPU); on a GPU at the Qwen2.5-1.5B shape with 2 x 4096
tokens, score >= 1.05 x naive speed at <= 0.55 x its peak memory.

    pear-bench bench score                                             # tiny shape, CPU
    pear-bench bench score --shape qwen2.5-0.5b --records 4 --min-len 256 --seq-len 256 --max-batch-tokens 1024
    # the GPU anchor (every token scored, as in DESIGN.md's table):
    pear-bench bench score --shape qwen2.5-1.5b --records 2 --min-len 4096 --seq-len 4096 --prompt-len 1 \
        --max-batch-tokens 8192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

VARIANTS = ("forward", "naive", "score")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.tiny_models import SHAPES

    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="model shape (random init)")
    parser.add_argument("--vocab-size", type=int, default=32_000,
                        help="vocabulary size for shapes that do not fix one (tiny); default 32000")
    parser.add_argument("--records", type=int, default=32, help="synthetic records (default 32)")
    parser.add_argument("--min-len", type=int, default=128, help="shortest record, prompt + response (default 128)")
    parser.add_argument("--seq-len", type=int, default=512, help="longest record, prompt + response (default 512)")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="prompt tokens per record, not scored (default: min-len // 4)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="padded tokens per batch (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all batches (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="parameter dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def synthetic_records(settings: dict, vocab_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Seeded prompt and response ids with total lengths uniform in ``[min_len, seq_len]``."""
    import torch

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(settings["min_len"], settings["seq_len"] + 1, (settings["records"],), generator=g)
    ids = [torch.randint(0, vocab_size, (int(n),), generator=g).tolist() for n in lengths]
    P = settings["prompt_len"]
    return [x[:P] for x in ids], [x[P:] for x in ids]


def _setup(settings: dict):
    """The model and the synthetic records, and ``one_pass(variant)``: all batches through one variant."""
    import torch
    from transformers import Qwen2ForCausalLM

    from pear_bench.score import length_sorted_batches, right_padded_batch, score_responses
    from pear_bench.tiny_models import tiny_config

    device = torch.device(settings["device"])
    torch.manual_seed(0)
    config = tiny_config(settings["vocab_size"], settings["shape"], attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).to(device=device, dtype=getattr(torch, settings["dtype"])).eval()
    prompts, responses = synthetic_records(settings, config.vocab_size)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    batches = [[t.to(device) for t in right_padded_batch([prompts[i] for i in b], [responses[i] for i in b], 0)]
               for b in length_sorted_batches(lengths, settings["max_batch_tokens"])]

    def one_pass(variant: str) -> None:
        if variant == "score":
            score_responses(model, prompts, responses, max_batch_tokens=settings["max_batch_tokens"], progress=False)
        else:
            with torch.inference_mode():
                for input_ids, attention_mask, score_mask in batches:
                    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
                    if variant == "naive":
                        logp = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
                        logp.masked_fill(~score_mask[:, 1:], 0.0).cpu()  # results leave the device, as in score
                    del logits
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return device, sum(lengths), len(batches), one_pass


def time_variants(variants: list[str], settings: dict) -> dict:
    """Seconds per pass of each variant, interleaved round by round in one process.

    Interleaving (order rotated each round) exposes every variant to the same background load, so
    their ratios stay fair on a shared machine even when absolute times drift.
    """
    _, tokens, n_batches, one_pass = _setup(settings)
    for _ in range(settings["warmup"]):
        for variant in variants:
            one_pass(variant)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(settings["repeats"]):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            start = time.perf_counter()
            one_pass(variant)
            times[variant].append(time.perf_counter() - start)
    return {"tokens": tokens, "batches": n_batches, "times_s": times}


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in bytes (Linux)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # reported in kB


def peak_memory(variant: str, settings: dict) -> int:
    """Peak memory during one pass of ``variant``, in a fresh process; model weights included.

    CUDA: ``max_memory_allocated`` over the pass. CPU: the peak RSS over the pass (``VmHWM``, reset
    just before it through ``/proc/self/clear_refs``) minus the RSS once the libraries are imported,
    so weights, activations and logits count and the interpreter does not.
    """
    import torch
    import transformers  # noqa: F401  (imported before the baseline is read)

    import pear_bench.score  # noqa: F401

    rss_after_imports = _proc_status_bytes("VmRSS")
    device, _, _, one_pass = _setup(settings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        one_pass(variant)
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    one_pass(variant)
    return _proc_status_bytes("VmHWM") - rss_after_imports


def _worker(function, args: tuple, queue) -> None:
    try:
        queue.put(function(*args))
    except Exception as exc:  # reported by the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def in_fresh_process(ctx, function, *args):
    """``function(*args)`` in a new process of multiprocessing context ``ctx``; its failure exits with the error."""
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(function, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if isinstance(result, dict) and "error" in result:
        raise SystemExit(f"{function.__name__}{args[:1]}: failed: {result['error']}")
    return result


def format_results(results: dict[str, dict]) -> str:
    """The results table (tokens/s, median, peak memory, ratios to forward and naive) and the targets."""
    def ratio(variant: str, key: str, base: str) -> float | None:
        return results[variant][key] / results[base][key] if base in results else None

    def cell(value: float | None, width: int) -> str:
        return f"{'-' if value is None else f'{value:.3f}':>{width}}"

    header = (f"{'variant':<8} {'tokens/s':>10} {'median s':>9} {'peak GiB':>9} {'speed/forward':>13} "
              f"{'speed/naive':>11} {'mem/naive':>9}")
    lines = [header, "-" * len(header)]
    for variant, r in results.items():
        lines.append(f"{variant:<8} {r['tokens_per_s']:>10,.0f} {r['median_s']:>9.4f} "
                     f"{r['peak_bytes'] / 1024**3:>9.3f} {cell(ratio(variant, 'tokens_per_s', 'forward'), 13)} "
                     f"{cell(ratio(variant, 'tokens_per_s', 'naive'), 11)} "
                     f"{cell(ratio(variant, 'peak_bytes', 'naive'), 9)}")
    if {"score", "forward"} <= results.keys():
        met = ratio("score", "tokens_per_s", "forward") >= 0.9
        lines.append(f"target score >= 0.9 x forward tokens/s: {'met' if met else 'NOT met'}")
    if {"score", "naive"} <= results.keys():
        met = ratio("score", "tokens_per_s", "naive") >= 1.05 and ratio("score", "peak_bytes", "naive") <= 0.55
        lines.append("target score >= 1.05 x naive speed at <= 0.55 x its memory (GPU anchor: 1.5B shape, "
                     f"2 x 4096 tokens): {'met' if met else 'NOT met'} here")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    import torch

    from pear_bench.config import package_versions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {
        "shape": args.shape, "vocab_size": args.vocab_size, "records": args.records, "min_len": args.min_len,
        "seq_len": args.seq_len, "prompt_len": args.min_len // 4 if args.prompt_len is None else args.prompt_len,
        "max_batch_tokens": args.max_batch_tokens, "repeats": args.repeats, "warmup": args.warmup,
        "device": device, "dtype": args.dtype or ("bfloat16" if device == "cuda" else "float32"),
    }
    if not 1 <= settings["prompt_len"] < settings["min_len"] <= settings["seq_len"]:
        raise SystemExit("need 1 <= prompt-len < min-len <= seq-len")
    ctx = mp.get_context("spawn")
    timing = in_fresh_process(ctx, time_variants, list(args.variants), settings)
    results = {v: {"median_s": statistics.median(t), "times_s": t,
                   "tokens_per_s": timing["tokens"] / statistics.median(t),
                   "peak_bytes": in_fresh_process(ctx, peak_memory, v, settings)}
               for v, t in timing["times_s"].items()}

    print(f"device={device} torch={torch.__version__} tokens={timing['tokens']} batches={timing['batches']} " +
          " ".join(f"{k}={v}" for k, v in settings.items() if k != "device"))
    print(format_results(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "tokens": timing["tokens"], "batches": timing["batches"],
                       "versions": package_versions(), "results": results}, f, indent=2)
    return 0
