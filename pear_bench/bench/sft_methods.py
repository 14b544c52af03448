"""`pear-bench bench sft-methods`: time of one SFT step per registered objective, relative to plain `sft`.

A step is what ``pear-bench sft`` runs per optimizer step: ``PEARSFTTrainer.compute_loss`` (the
chunked token-logprob pass with entropy, the objective and its logged diagnostics), ``backward``,
and an AdamW step. All methods share one random-init model, optimizer and batch (step time does not
depend on the weights' values). Steps are timed in rounds: each round runs every method once, in a
fresh random order, so that load from other work on a shared machine falls on every method alike.
Reported per method: the median, min and max step time, the *paired* ratio (the median over rounds
of this method's time over ``sft``'s time in the same round: slow drifts in background load cancel)
and the ratio of the minima (the steadiest estimate of what a step costs on a busy machine).
``hf`` is the reference a plain transformers user runs: ``model(labels=...).loss`` on the same
batch (full ``[B, T, V]`` logits, no entropy, no diagnostics).

    pear-bench bench sft-methods                                   # tiny shape, 2 x 256 tokens, CPU
    pear-bench bench sft-methods --shape qwen2.5-0.5b --batch 2 --seq-len 2048 --device cuda
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.tiny_models import SHAPES

    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="model shape (random init)")
    parser.add_argument("--vocab-size", type=int, default=32_000,
                        help="vocabulary size for shapes that do not fix one (tiny); default 32000")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="prompt tokens per sequence (default: seq-len // 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="parameter dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--methods", nargs="+", default=None, help="objectives to time (default: all registered)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def build_step_functions(methods, settings: dict, workdir: str) -> dict:
    """One zero-argument step function per method (plus "hf"), all on one model, optimizer and batch."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM, TrainingArguments

    from pear_bench.config import SFTConfig
    from pear_bench.tiny_models import tiny_config
    from pear_bench.trainers.sft import PEARSFTTrainer, SFTCollator

    device = torch.device(settings["device"])
    torch.manual_seed(0)
    config = tiny_config(settings["vocab_size"], settings["shape"], attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).to(device=device, dtype=getattr(torch, settings["dtype"]))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    rng = random.Random(1)
    B, T, P = settings["batch"], settings["seq_len"], settings["prompt_len"]
    log_v = float(torch.log(torch.tensor(float(config.vocab_size))))
    records = [{"prompt_ids": [rng.randrange(config.vocab_size) for _ in range(P)],
                "response_ids": [rng.randrange(config.vocab_size) for _ in range(T - P)],
                # near the random model's own logprobs (about -log V), so PEAR weights vary
                "behavior_logprobs": [-log_v - 0.5 * rng.random() for _ in range(T - P)]} for _ in range(B)]
    batch = {k: v.to(device) for k, v in SFTCollator(pad_token_id=0)(records).items()}

    def step_with(loss_fn):
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()
            optimizer.step()
        return step

    steps = {"hf": step_with(lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           labels=batch["labels"]).loss)}
    args = TrainingArguments(output_dir=workdir, report_to="none", use_cpu=device.type == "cpu")
    for method in methods:
        trainer = PEARSFTTrainer(sft_config=SFTConfig(method=method), model=model, args=args,
                                 train_dataset=Dataset.from_list(records), data_collator=SFTCollator(0))
        steps[method] = step_with(lambda trainer=trainer: trainer.compute_loss(model, batch))
    return steps


def main(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    import pear_bench
    from pear_bench.sft_objectives import OBJECTIVES

    methods = args.methods or list(OBJECTIVES)
    unknown = [m for m in methods if m not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"--methods: unknown objective(s) {unknown}; registered: {', '.join(OBJECTIVES)}")
    if "sft" not in methods:
        methods = ["sft", *methods]  # the baseline of every ratio
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {
        "shape": args.shape, "vocab_size": args.vocab_size, "batch": args.batch, "seq_len": args.seq_len,
        "prompt_len": args.seq_len // 8 if args.prompt_len is None else args.prompt_len,
        "steps": args.steps, "warmup": args.warmup, "device": device,
        "dtype": args.dtype or ("bfloat16" if device == "cuda" else "float32"),
    }
    if not 1 <= settings["prompt_len"] < settings["seq_len"]:
        raise SystemExit(f"--prompt-len must be in [1, seq-len); got {settings['prompt_len']}")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as workdir:
        steps = build_step_functions(methods, settings, workdir)
        names = list(steps)
        for _ in range(settings["warmup"]):
            for name in names:
                steps[name]()
        times: dict[str, list[float]] = {name: [] for name in names}  # times[name][round]
        order = random.Random(0)
        for _ in range(settings["steps"]):
            for name in order.sample(names, len(names)):
                sync()
                start = time.perf_counter()
                steps[name]()
                sync()
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    minima = {name: min(t) for name, t in times.items()}
    paired = {name: statistics.median(a / b for a, b in zip(t, times["sft"], strict=True)) for name, t in times.items()}
    print(f"device={device} torch={torch.__version__} pear_bench={pear_bench.__version__} threads="
          f"{torch.get_num_threads()} " + " ".join(f"{k}={v}" for k, v in settings.items() if k != "device"))
    header = f"{'method':<18} {'median s':>9} {'min s':>8} {'max s':>8} {'paired/sft':>11} {'min/sft':>8}"
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:<18} {medians[name]:>9.4f} {minima[name]:>8.4f} {max(times[name]):>8.4f} "
              f"{paired[name]:>11.3f} {minima[name] / minima['sft']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "torch": torch.__version__, "times_s": times, "median_s": medians,
                       "min_s": minima, "paired_ratio_to_sft": paired,
                       "min_ratio_to_sft": {k: v / minima["sft"] for k, v in minima.items()}}, f, indent=2)
    sys.stdout.flush()
    return 0
