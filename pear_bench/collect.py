"""`pear-bench collect`: sample a behaviour model on a task's prompts, keep the graded-correct responses.

    problems (pear-bench make-data JSONL) --pear_bench.prompts--> messages, prompt_ids
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

from pear_bench import prompts
from pear_bench.atomic import write_atomic
from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings

KEEP_MODES = ("correct", "all")
CORRECT = 1.0  # the grader's reward for a correct response


def parts_dir(output: str | Path) -> Path:
    """Where the finished chunks of a collection into ``output`` are kept until it completes."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _grade_chunk(responses: list[str], problems: list[Mapping[str, str]], finish_reasons: list[str]) -> list[float]:
    """The grader's reward for each (response, problem, finish reason), grading each task's problems together."""
    from pear_bench.grading import grade_batch

    rewards = [0.0] * len(responses)
    for task in dict.fromkeys(p["task"] for p in problems):
        rows = [i for i, p in enumerate(problems) if p["task"] == task]
        for i, reward in zip(rows, grade_batch([responses[i] for i in rows], [problems[i] for i in rows], task,
                                               progress=False, finish_reasons=[finish_reasons[i] for i in rows])):
            rewards[i] = reward
    return rewards


def collect_chunk(backend, problems: Sequence[Mapping[str, str]], messages: Sequence[list[dict]], sampling,
                  seed: int, keep: str, prompt: PromptSettings = PromptSettings(),
                  progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Sample, grade and filter one chunk of problems; return its records and counts.

    ``messages[i]`` is problem i's prompt (``pear_bench.prompts.problem_messages``). Records are in
    problem order, then sample order; with ``keep="correct"`` only those with reward 1.0 remain (a
    response cut at the length limit never has it). Counts cover every sample, kept or not.
    ``progress`` goes to ``backend.sample``.
    """
    start = time.perf_counter()
    prompt_ids = [prompts.prompt_ids(backend.tokenizer, m, prompt) for m in messages]
    groups = backend.sample(prompt_ids, sampling, seed, progress)
    sample_seconds = time.perf_counter() - start
    flat = [(problem, m, ids, k, s) for problem, m, ids, group in zip(problems, messages, prompt_ids, groups)
            for k, s in enumerate(group)]
    responses = [backend.tokenizer.decode(s.response_ids, skip_special_tokens=True) for *_, s in flat]
    rewards = _grade_chunk(responses, [problem for problem, *_ in flat], [s.finish_reason for *_, s in flat])
    records = []
    for (problem, m, ids, k, s), response, reward in zip(flat, responses, rewards):
        if keep == "all" or reward == CORRECT:
            records.append({
                "id": f"{problem['id']}/{k}", "task": problem["task"], "prompt_id": problem["id"], "sample_index": k,
                "messages": m, "prompt_ids": ids,
                "response_ids": s.response_ids, "response": response, "behavior_logprobs": s.logprobs,
                "behavior_model": backend.model_id, "sampling": sampling.to_record(backend.name), "seed": seed,
                "finish_reason": s.finish_reason, "reward": reward,
            })
    samples = [s for *_, s in flat]
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
            prompt: PromptSettings = PromptSettings(), check_records: int = 8, progress: bool = True) -> dict[str, Any]:
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
        prompt: system prompt and thinking switch (``pear_bench.prompts``).
        check_records: re-score this many kept records with the same model (``check_logprobs``).
        progress: show a tqdm bar over samples.

    Returns:
        The summary written to ``<output stem>.summary.json``.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        InputError: bad ``keep``/``chunk_size``, duplicate problem ids, an unfinished collection in
            the parts directory made with different settings, or no record kept (nothing to train
            on: the message gives the acceptance figures and what to change; nothing is written).
    """
    from tqdm.auto import tqdm

    from pear_bench.config import package_versions
    from pear_bench.data import load_records, save_records, summary_path
    from pear_bench.problems import check_unique_ids
    from pear_bench.generation import derive_seed
    from pear_bench.prompts import problem_messages
    from pear_bench.snapshot import model_revision

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
        "model": backend.model_id, "model_revision": model_revision(backend.model_id), "backend": backend.name, "sampling": sampling.to_record(backend.name),
        "seed": seed, "keep": keep, "chunk_size": chunk_size, "prompt": prompt.to_record(), "problems": len(problems),
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
        messages = [problem_messages(p, prompt) for p in chunk_problems]
        # A records file without its counts is left by an interrupted attempt at this chunk: drop it.
        records_files[c].unlink(missing_ok=True)
        records, counts = collect_chunk(backend, chunk_problems, messages, sampling, derive_seed(seed, c), keep,
                                        prompt, bar.update)
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
    if totals["kept"] == 0:
        shutil.rmtree(parts)  # a rerun with other settings starts afresh
        raise InputError(nothing_kept_message(totals, sampling))
    dataset = load_records([path for path in records_files if path.exists()])
    logprob_check = check_logprobs(backend, dataset, sampling, check_records)
    save_records(dataset, output, overwrite=overwrite)
    summary = {
        "output": str(output), **run,
        **totals, "acceptance_rate": totals["correct"] / totals["samples"],
        "response_tokens_per_s": totals["response_tokens"] / totals["sample_seconds"],
        "chunks": len(chunks), "resumed_chunks": len(resumed), "logprob_check": logprob_check,
        "wall_seconds": time.perf_counter() - wall_start,
        "versions": package_versions(),
    }
    write_atomic(summary_path(output), json.dumps(summary) + "\n")  # last: a workflow takes the summary as the done marker
    shutil.rmtree(parts)
    return summary


def check_logprobs(backend, dataset, sampling, records: int) -> dict[str, Any] | None:
    """Recorded-versus-rescored logprobs on ``records`` kept records, evenly spread: the backend scores
    their exact ids in one forward pass (``pear_bench.score.logprob_differences``).

    In float32 the two agree to ~1e-5; a bf16 run shows how far its recorded logprobs are from a
    forward pass of the same weights (up to ~0.4 with vLLM), which is what ``collect.rescore`` fixes.
    Returns None when ``records`` is 0; ``{"skipped": why}`` when the backend cannot score at the
    sampling temperature (vLLM scores at 1 only).
    """
    from pear_bench.score import logprob_differences

    if records <= 0 or len(dataset) == 0:
        return None
    rows = sorted({round(i * (len(dataset) - 1) / max(records - 1, 1)) for i in range(min(records, len(dataset)))})
    sample = dataset.select(rows)
    try:
        scores = backend.score(list(sample["prompt_ids"]), list(sample["response_ids"]), sampling.temperature)
    except InputError as exc:
        return {"skipped": str(exc)}
    return logprob_differences(sample["behavior_logprobs"], scores)


def nothing_kept_message(totals: Mapping[str, float], sampling) -> str:
    """Why a collection that kept no record stops here, with its figures and what to change."""
    return (f"kept 0 of {totals['samples']:.0f} samples ({totals['prompts']:.0f} prompts x {sampling.n}): "
            f"{totals['correct']:.0f} correct, {totals['truncated']:.0f} cut at --max-new-tokens "
            f"{sampling.max_new_tokens}, acceptance 0.000, so there is nothing to train on. Raise --n or "
            f"--max-new-tokens, lower --temperature (now {sampling.temperature}), make the problems easier, or "
            "use a stronger teacher (its pass@1 on these problems, from pear-bench eval, is the acceptance to expect)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.generation import add_backend_arguments
    from pear_bench.prompts import add_prompt_arguments

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
    parser.add_argument("--check-logprobs", type=int, default=8, metavar="N",
                        help="re-score N kept records and report recorded-vs-rescored differences (default 8; 0: off)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="hf backend: sequences (prompts x n) per generate call (default 64)")
    add_prompt_arguments(parser)
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from pear_bench.generation import SamplingConfig, backend_options, load_backend
    from pear_bench.problems import read_problems
    from pear_bench.prompts import prompt_settings

    sampling = SamplingConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              top_p=args.top_p, top_k=args.top_k)
    problems = [record for path in args.problems for record in read_problems(path)][:args.limit]
    prompt = prompt_settings(args)  # a bad few-shot file fails before the model loads
    options = backend_options(args)
    backend = load_backend(args.backend, args.model, **options)
    # What else changes the samples: numerics (dtype, device, sharding) and, for HF, which
    # sequences share a generate call's random stream (batch size).
    settings = {k: options[k] for k in ("dtype", "batch_size", "tensor_parallel_size") if k in options}
    if args.backend == "hf":
        settings["device"] = str(backend.device)
    try:
        summary = collect(backend, problems, args.output, sampling, seed=args.seed, keep=args.keep,
                          chunk_size=args.chunk_size, overwrite=args.overwrite, settings=settings,
                          prompt=prompt, check_records=args.check_logprobs)
    finally:
        backend.close()
    check = summary["logprob_check"]
    if check and "max_abs" in check:
        print(f"logprobs of {check['records']} kept records re-scored by the same model: max |diff| "
              f"{check['max_abs']:.3g}, mean {check['mean_abs']:.3g}")
    print(f"{summary['prompts']} prompts, {summary['samples']} samples, {summary['correct']} correct "
          f"(acceptance {summary['acceptance_rate']:.3f}), {summary['kept']} kept, {summary['kept_tokens']} tokens "
          f"kept, {summary['truncated']} truncated, {summary['seconds']:.1f} s "
          f"({summary['response_tokens_per_s']:,.0f} sampled tokens/s) -> {args.output}")
    return 0
