"""`pear-bench collect`: sample a behaviour model on a task's prompts, keep the graded-correct responses.

    problems (pear-bench make-data JSONL) --chat template--> prompt_ids
        --behaviour model, n samples each (pear_bench.generation)--> response_ids + behavior_logprobs
        --pear_bench.grading--> reward --keep correct (rejection sampling) or all--> SFT dataset

    pear-bench collect --problems data/chain_sum/train.jsonl --model ./teacher --output sft.parquet --n 8
    pear-bench collect --problems train.jsonl --model Qwen/Qwen2.5-7B-Instruct --backend vllm \\
        --temperature 0.7 --max-new-tokens 4096 --keep all --output sft.jsonl

Outputs: the dataset (``pear_bench.data`` records; reward on every record) and
``<output stem>.summary.json``: prompts, samples, correct, kept, acceptance rate, tokens, seconds,
tokens/s, truncated responses, the resolved settings and library versions.

Resumable. Prompts are processed in chunks of ``--chunk-size``; each finished chunk is written to
``<output>.parts/`` (its records as parquet, then its counts as JSON, each file atomically; the
counts mark the chunk done). Chunk ``c`` is sampled with seed ``derive_seed(seed, c)``, so its
content does not depend on which chunks ran before or in which process. A rerun with the same
settings skips finished chunks and redoes the rest; the final dataset is the chunks' records in
order, exactly what an uninterrupted run writes. A rerun with different settings is refused (the
message lists what differs) rather than mixing two runs. When the dataset and summary are written,
the parts directory is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pear_bench.atomic import write_atomic
from pear_bench.errors import InputError

KEEP_MODES = ("correct", "all")
CORRECT = 1.0  # the grader's reward for a correct response


def chat_prompt_ids(tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The prompt as the model sees it: the chat template with the assistant turn opened, as ids."""
    return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def parts_dir(output: str | Path) -> Path:
    """Where the finished chunks of a collection into ``output`` are kept until it completes."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _grade_chunk(responses: list[str], problems: list[Mapping[str, str]]) -> list[float]:
    """The grader's reward for each (response, problem), grading each task's problems together."""
    from pear_bench.grading import grade_batch

    rewards = [0.0] * len(responses)
    for task in dict.fromkeys(p["task"] for p in problems):
        rows = [i for i, p in enumerate(problems) if p["task"] == task]
        for i, reward in zip(rows, grade_batch([responses[i] for i in rows], [problems[i] for i in rows], task,
                                               progress=False)):
            rewards[i] = reward
    return rewards


def collect_chunk(backend, problems: Sequence[Mapping[str, str]], prompt_ids: Sequence[list[int]], sampling,
                  seed: int, keep: str,
                  progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Sample, grade and filter one chunk of problems; return its records and counts.

    Records are in problem order, then sample order; with ``keep="correct"`` only those with reward
    1.0 remain. Counts cover every sample, kept or not. ``progress`` goes to ``backend.sample``.
    """
    start = time.perf_counter()
    groups = backend.sample(prompt_ids, sampling, seed, progress)
    sample_seconds = time.perf_counter() - start
    flat = [(problem, ids, k, s) for problem, ids, group in zip(problems, prompt_ids, groups)
            for k, s in enumerate(group)]
    responses = [backend.tokenizer.decode(s.response_ids, skip_special_tokens=True) for _, _, _, s in flat]
    rewards = _grade_chunk(responses, [problem for problem, _, _, _ in flat])
    records = []
    for (problem, ids, k, s), response, reward in zip(flat, responses, rewards):
        if keep == "all" or reward == CORRECT:
            records.append({
                "id": f"{problem['id']}/{k}", "task": problem["task"], "prompt_id": problem["id"], "sample_index": k,
                "messages": [{"role": "user", "content": problem["prompt"]}], "prompt_ids": ids,
                "response_ids": s.response_ids, "response": response, "behavior_logprobs": s.logprobs,
                "behavior_model": backend.model_id, "sampling": sampling.to_record(backend.name), "seed": seed,
                "finish_reason": s.finish_reason, "reward": reward,
            })
    samples = [s for _, _, _, s in flat]
    counts = {
        "prompts": len(problems), "samples": len(samples), "correct": sum(r == CORRECT for r in rewards),
        "kept": len(records), "response_tokens": sum(len(s.response_ids) for s in samples),
        "kept_tokens": sum(len(r["response_ids"]) for r in records),
        "truncated": sum(s.finish_reason == "length" for s in samples),
        "sample_seconds": sample_seconds, "seconds": time.perf_counter() - start,
    }
    return records, counts


def collect(backend, problems: Sequence[Mapping[str, str]], output: str | Path, sampling, *, seed: int = 0,
            keep: str = "correct", chunk_size: int = 64, overwrite: bool = False, settings: Mapping | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Collect an SFT dataset from ``backend`` on ``problems`` into ``output``; resume if interrupted.

    Args:
        backend: a loaded ``pear_bench.generation.GenerationBackend``.
        problems: ``pear_bench.problems`` records (id, task, prompt, answer, metadata, ...).
        output: dataset file (``.jsonl`` or ``.parquet``).
        sampling: a ``pear_bench.generation.SamplingConfig``.
        seed: run seed; chunk ``c`` samples with ``derive_seed(seed, c)``.
        keep: "correct" (rejection sampling: reward 1.0 only) or "all".
        chunk_size: prompts per chunk (the unit of resumption).
        overwrite: replace ``output`` if it exists.
        settings: further settings that change the samples (e.g. the backend's dtype and batch
            size), checked on resume and recorded in the summary.
        progress: show a tqdm bar over samples.

    Returns:
        The summary written to ``<output stem>.summary.json``.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        ValueError: bad ``keep``/``chunk_size``, duplicate problem ids, or an unfinished collection in
            the parts directory made with different settings.
    """
    from tqdm.auto import tqdm

    from pear_bench.config import package_versions
    from pear_bench.data import empty_dataset, load_records, save_records, summary_path
    from pear_bench.problems import check_unique_ids
    from pear_bench.generation import derive_seed

    output = Path(output)
    if keep not in KEEP_MODES:
        raise InputError(f"keep must be one of {KEEP_MODES}; got {keep!r}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1; got {chunk_size}")
    if not problems:
        raise InputError("no problems to collect on")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    check_unique_ids(problems)

    run = {
        "model": backend.model_id, "backend": backend.name, "sampling": sampling.to_record(backend.name),
        "seed": seed, "keep": keep, "chunk_size": chunk_size, "problems": len(problems),
        "problems_sha256": hashlib.sha256(json.dumps(list(problems), sort_keys=True).encode()).hexdigest(),
        **dict(settings or {}),
    }
    parts = parts_dir(output)
    parts.mkdir(parents=True, exist_ok=True)
    run_file = parts / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        differs = sorted(k for k in run.keys() | previous.keys() if run.get(k) != previous.get(k))
        if differs:
            raise InputError(f"{parts} holds an unfinished collection with other settings ("
                             + ", ".join(f"{k}: {previous.get(k)!r} there, {run.get(k)!r} now" for k in differs)
                             + "); rerun with its settings to resume it, or delete the directory")
    else:
        write_atomic(run_file, json.dumps(run) + "\n")

    chunks = [range(start, min(start + chunk_size, len(problems))) for start in range(0, len(problems), chunk_size)]
    # chunk-NNNNNN.json (its counts) is written last and marks the chunk done; chunk-NNNNNN.parquet
    # holds its records (absent when none were kept).
    counts_files = [parts / f"chunk-{c:06d}.json" for c in range(len(chunks))]
    records_files = [parts / f"chunk-{c:06d}.parquet" for c in range(len(chunks))]
    resumed = {c for c, path in enumerate(counts_files) if path.exists()}
    wall_start = time.perf_counter()
    # Counted in samples and moved by the backend as it samples (HF: per generate batch).
    bar = tqdm(total=len(problems) * sampling.n, initial=sum(len(chunks[c]) for c in resumed) * sampling.n,
               unit="sample", desc=f"collect {backend.name}", disable=not progress)
    kept = correct = samples = 0
    for c, rows in enumerate(chunks):
        if c in resumed:
            continue
        chunk_problems = [problems[i] for i in rows]
        prompt_ids = [chat_prompt_ids(backend.tokenizer, [{"role": "user", "content": p["prompt"]}])
                      for p in chunk_problems]
        # A records file without its counts is left by an interrupted attempt at this chunk: drop it.
        records_files[c].unlink(missing_ok=True)
        records, counts = collect_chunk(backend, chunk_problems, prompt_ids, sampling, derive_seed(seed, c), keep,
                                        bar.update)
        if records:
            save_records(records, records_files[c])
        write_atomic(counts_files[c], json.dumps(counts) + "\n")
        kept, correct, samples = kept + counts["kept"], correct + counts["correct"], samples + counts["samples"]
        bar.set_postfix(kept=kept, acceptance=f"{correct / samples:.2f}")
    bar.close()

    totals: dict[str, float] = {}
    for path in counts_files:
        for key, value in json.loads(path.read_text()).items():
            totals[key] = totals.get(key, 0) + value
    kept_files = [path for path in records_files if path.exists()]
    dataset = load_records(kept_files) if kept_files else empty_dataset()
    save_records(dataset, output, overwrite=overwrite)
    summary = {
        "output": str(output), **run,
        **totals, "acceptance_rate": totals["correct"] / totals["samples"],
        "response_tokens_per_s": totals["response_tokens"] / totals["sample_seconds"],
        "chunks": len(chunks), "resumed_chunks": len(resumed), "wall_seconds": time.perf_counter() - wall_start,
        "versions": package_versions(),
    }
    write_atomic(summary_path(output), json.dumps(summary) + "\n")  # last: a workflow takes the summary as the done marker
    shutil.rmtree(parts)
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.generation import add_backend_arguments

    parser.add_argument("--problems", required=True, nargs="+",
                        help="problem files written by `pear-bench make-data` (JSONL records)")
    parser.add_argument("--model", required=True, help="behaviour model: hub id or local path")
    parser.add_argument("--output", required=True, help="SFT dataset to write (.jsonl or .parquet)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length limit (default 1024)")
    parser.add_argument("--top-p", type=float, default=1.0, help="only 1.0: truncated sampling is refused")
    parser.add_argument("--top-k", type=int, default=0, help="only 0: truncated sampling is refused")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--keep", default="correct", choices=KEEP_MODES,
                        help="correct: rejection sampling, keep reward 1.0 only (default); all: keep every sample")
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT problems")
    parser.add_argument("--chunk-size", type=int, default=64, help="prompts per resumable chunk (default 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="hf backend: sequences (prompts x n) per generate call (default 64)")
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from pear_bench.generation import SamplingConfig, backend_options, load_backend
    from pear_bench.problems import read_problems

    sampling = SamplingConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              top_p=args.top_p, top_k=args.top_k)
    problems = [record for path in args.problems for record in read_problems(path)][:args.limit]
    options = backend_options(args)
    backend = load_backend(args.backend, args.model, **options)
    # What else changes the samples: numerics (dtype, device, sharding) and, for HF, which
    # sequences share a generate call's random stream (batch size).
    settings = {k: options[k] for k in ("dtype", "batch_size", "tensor_parallel_size") if k in options}
    if args.backend == "hf":
        settings["device"] = str(backend.device)
    try:
        summary = collect(backend, problems, args.output, sampling, seed=args.seed, keep=args.keep,
                          chunk_size=args.chunk_size, overwrite=args.overwrite, settings=settings)
    finally:
        backend.close()
    print(f"{summary['prompts']} prompts, {summary['samples']} samples, {summary['correct']} correct "
          f"(acceptance {summary['acceptance_rate']:.3f}), {summary['kept']} kept, {summary['kept_tokens']} tokens "
          f"kept, {summary['truncated']} truncated, {summary['seconds']:.1f} s "
          f"({summary['response_tokens_per_s']:,.0f} sampled tokens/s) -> {args.output}")
    return 0
