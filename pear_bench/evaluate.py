"""`pear-bench eval`: k samples per problem from one checkpoint, graded, reduced to pass@k with CIs.

    problems (pear-bench make-data JSONL, one task) --pear_bench.prompts--> prompt_ids
        --checkpoint, K samples each (pear_bench.generation, n=K per request)--> responses
        --pear_bench.grading.grade_batch (the one grader)--> correct flags
        --pear_bench.metrics--> pass@k, avg@K per problem --mean over problems, bootstrap CI--> metrics.json

    pear-bench eval --model out/rl/pear-token/2 --problems data/chain_sum/eval.jsonl --samples 8 --ks 1 8 \\
        --label model=student --label method=pear-token --label stage=rl --label seed=2 \\
        --output results/mini/eval/student/pear-token/rl/2
    pear-bench eval --backend vllm --model Qwen/Qwen2.5-1.5B-Instruct --problems data/aime2025/test.jsonl \\
        --samples 32 --ks 1 8 32 --temperature 0.6 --max-new-tokens 8192 --label model=qwen2.5-1.5b --label stage=base --output ...

Outputs, in ``--output DIR`` (each written to a temporary name and renamed, so a file under its final
name is always complete; ``metrics.json`` is written last and marks a finished evaluation):

- ``samples.jsonl``: one row per (problem, sample), in problem then sample order: ``problem_id``,
  ``task``, ``sample_index``, ``response`` (decoded without special tokens), ``extracted_answer``
  (``pear_bench.grading.extract_answer``; null when the response gives none), ``reference_answer``
  (the problem's ``answer``, so a wrong sample reads without a join), ``correct`` (the
  grader's reward is 1.0), ``finish_reason`` ("stop" or "length"), ``response_tokens``.
- ``metrics.json``: labels, model, task, problems file and its sha256, counts, one entry per metric
  (pass@k for each requested k, then avg@K) with its 95% percentile-bootstrap interval over problems
  (``pear_bench.metrics.bootstrap_ci``, 10,000 resamples, resampling seed 0), every sampling setting,
  seed, library versions and seconds. See ``evaluate`` for the exact shape.

Choices:
  1. One task per run. A problems file that mixes tasks is refused (the message lists the tasks and
     counts); ``pear-bench make-data`` writes one file per task, and a run's metrics are per task.
  2. Sampling goes through the generation backends unchanged (no truncation, no penalties, the
     checkpoint's sampling defaults ignored; ``pear_bench.generation``). Prompts are sent in chunks of
     ``--chunk-size`` (each one ``backend.sample`` call with n=K, seeded ``derive_seed(seed, c)``) so
     the progress bar moves; with vLLM a chunk is one batched ``generate``.
  3. Labels (``--label key=value``) are free text recorded verbatim; ``pear-bench tables`` reads
     ``model``, ``method``, ``stage`` (base|sft|rl) and ``seed`` (the RL seed) from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pear_bench.atomic import write_atomic
from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings

SAMPLES_FILE = "samples.jsonl"
METRICS_FILE = "metrics.json"
CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CORRECT = 1.0  # the grader's reward for a correct response


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["model=student", "seed=2"]`` -> ``{"model": "student", "seed": "2"}`` (values verbatim).

    Raises:
        ValueError: an item without ``=``, an empty key, or a key given twice.
    """
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--label {item!r}: expected key=value (e.g. method=pear-token)")
        if key in labels:
            raise InputError(f"--label {key}: given twice ({labels[key]!r} and {value!r})")
        labels[key] = value
    return labels


def check_ks(ks: Sequence[int] | None, samples: int) -> list[int]:
    """The pass@k values to report, sorted and unique; default ``pear_bench.metrics.pass_ks(samples)``.

    Raises:
        ValueError: ``samples < 1``, a k < 1, or a k > ``samples`` (pass@k needs k samples per problem).
    """
    from pear_bench.metrics import pass_ks

    if samples < 1:
        raise InputError(f"--samples must be >= 1; got {samples}")
    if ks is None:
        return pass_ks(samples)
    bad = [k for k in ks if k < 1]
    if bad:
        raise InputError(f"--ks must be >= 1; got {bad[0]}")
    too_big = [k for k in ks if k > samples]
    if too_big:
        raise InputError(f"--ks {max(too_big)} exceeds --samples {samples}: pass@{max(too_big)} needs at least "
                         f"{max(too_big)} samples per problem (raise --samples or drop that k)")
    return sorted(set(ks))


def single_task(problems: Sequence[Mapping[str, str]]) -> str:
    """The one task of ``problems``.

    Raises:
        ValueError: no problems, or problems of several tasks (the message lists them with counts).
    """
    if not problems:
        raise InputError("no problems to evaluate")
    tasks = Counter(p["task"] for p in problems)
    if len(tasks) > 1:
        listing = ", ".join(f"{task} ({n})" for task, n in tasks.items())
        raise InputError(f"the problems mix tasks: {listing}; evaluate one task per run (give each task its own "
                         "problems file, as `pear-bench make-data` writes them)")
    return next(iter(tasks))


def check_output(output: str | Path, overwrite: bool) -> None:
    """Refuse to evaluate into a directory that already holds results, unless ``overwrite``.

    Raises:
        FileExistsError: ``output/samples.jsonl`` or ``output/metrics.json`` exists and not ``overwrite``.
    """
    existing = [Path(output) / name for name in (SAMPLES_FILE, METRICS_FILE) if (Path(output) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace the evaluation in {output}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_responses(backend, problems: Sequence[Mapping[str, str]], sampling, seed: int, *, chunk_size: int = 256,
                     prompt: PromptSettings = PromptSettings(), progress: bool = True) -> list[dict[str, Any]]:
    """``sampling.n`` responses per problem: rows of ``samples.jsonl`` without the grading fields.

    Chunk ``c`` of ``chunk_size`` prompts is one ``backend.sample`` call seeded ``derive_seed(seed, c)``;
    prompts come from ``pear_bench.prompts`` with ``prompt``'s settings.
    """
    from tqdm.auto import tqdm

    from pear_bench.generation import derive_seed
    from pear_bench.prompts import problem_prompt_ids

    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1; got {chunk_size}")
    rows: list[dict[str, Any]] = []
    # Counted in samples, updated by the backend as it goes (HF: per generate batch), so a slow
    # model shows movement long before a chunk of prompts is done.
    with tqdm(total=len(problems) * sampling.n, unit="sample", desc=f"sampling {backend.name} n={sampling.n}",
              disable=not progress) as bar:
        for c, start in enumerate(range(0, len(problems), chunk_size)):
            chunk = problems[start:start + chunk_size]
            prompt_ids = [problem_prompt_ids(backend.tokenizer, p, prompt) for p in chunk]
            for problem, group in zip(chunk, backend.sample(prompt_ids, sampling, derive_seed(seed, c), bar.update)):
                for index, s in enumerate(group):
                    rows.append({
                        "problem_id": problem["id"], "task": problem["task"], "sample_index": index,
                        "response": backend.tokenizer.decode(s.response_ids, skip_special_tokens=True),
                        "finish_reason": s.finish_reason, "response_tokens": len(s.response_ids),
                    })
    return rows


def grade_responses(rows: Sequence[dict[str, Any]], problems: Sequence[Mapping[str, str]], task: str, *,
                    progress: bool = True) -> list[dict[str, Any]]:
    """``rows`` with ``extracted_answer`` and ``correct`` (grader reward == 1.0), in the row order.

    A row cut at the length limit (``finish_reason`` "length") is not correct, whatever it says.
    """
    from pear_bench.grading import extract_answer, grade_batch

    by_id = {p["id"]: p for p in problems}
    rewards = grade_batch([r["response"] for r in rows], [by_id[r["problem_id"]] for r in rows], task,
                          progress=progress, finish_reasons=[r["finish_reason"] for r in rows])
    return [{"problem_id": r["problem_id"], "task": r["task"], "sample_index": r["sample_index"],
             "response": r["response"], "extracted_answer": extract_answer(r["response"], task),
             "reference_answer": by_id[r["problem_id"]]["answer"], "correct": reward == CORRECT, "finish_reason": r["finish_reason"],
             "response_tokens": r["response_tokens"]} for r, reward in zip(rows, rewards)]


def metric_entries(correct: Sequence[Sequence[bool]], ks: Sequence[int], *, confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, bootstrap_seed: int = BOOTSTRAP_SEED) -> list[dict[str, Any]]:
    """pass@k for each k, then avg@K: the mean over problems and a percentile-bootstrap CI over problems.

    Args:
        correct: per problem, its K samples' correctness in sampling order (every problem the same K).
        ks: the pass@k to report (each <= K).

    Returns:
        ``[{"metric": "pass@1", "k": 1, "value": v, "ci_low": l, "ci_high": h}, ..., {"metric": "avg@K", ...}]``.

    Raises:
        ValueError: no problems, problems with different sample counts, or a k > K.
    """
    from pear_bench.metrics import bootstrap_ci, problem_metrics

    if not correct:
        raise InputError("metric_entries: no problems")
    counts = Counter(len(c) for c in correct)
    if len(counts) > 1:
        raise InputError(f"metric_entries: problems have different sample counts {dict(counts)}")
    samples = len(correct[0])
    per_problem = [problem_metrics([float(x) for x in c], ks) for c in correct]
    entries = []
    for name, k in [(f"pass@{k}", k) for k in ks] + [(f"avg@{samples}", samples)]:
        ci = bootstrap_ci([m[name] for m in per_problem], "problems", confidence, n_resamples, bootstrap_seed)
        entries.append({"metric": name, "k": k, "value": ci.estimate, "ci_low": ci.low, "ci_high": ci.high})
    return entries


def evaluate(backend, problems: Sequence[Mapping[str, str]], output: str | Path, sampling, *,
             ks: Sequence[int] | None = None, seed: int = 0, labels: Mapping[str, str] | None = None,
             problems_file: str | Path | None = None, limit: int | None = None,
             settings: Mapping[str, Any] | None = None, chunk_size: int = 256, overwrite: bool = False,
             prompt: PromptSettings = PromptSettings(), progress: bool = True) -> dict[str, Any]:
    """Sample ``sampling.n`` responses per problem, grade them, write ``samples.jsonl`` and ``metrics.json``.

    Args:
        backend: a loaded ``pear_bench.generation.GenerationBackend``.
        problems: ``pear_bench.problems`` records, all of one task.
        output: the output directory.
        sampling: a ``pear_bench.generation.SamplingConfig``; ``sampling.n`` is K.
        ks: pass@k values to report (default ``pass_ks(K)``).
        seed: sampling seed.
        labels: free labels recorded verbatim (``pear-bench tables`` reads model/method/stage/seed).
        problems_file: the file the problems came from (recorded with its sha256).
        limit: the ``--limit`` applied to that file, if any (recorded).
        settings: further settings that change the samples (backend dtype, device, batch size, ...).
        chunk_size: prompts per ``backend.sample`` call.
        overwrite: replace an existing evaluation in ``output``.
        prompt: system prompt and thinking switch (``pear_bench.prompts``; recorded).
        progress: tqdm bars for sampling and grading.

    Returns:
        The ``metrics.json`` object::

            {"labels": {...}, "model": id, "model_revision": {"repo", "revision", "commit"} | null,
             "task": task,
             "problems": {"file": path, "sha256": hex, "limit": int|null},
             "num_problems": P, "samples_per_problem": K,
             "metrics": [{"metric": "pass@1", "k": 1, "value": v, "ci_low": l, "ci_high": h}, ...,
                         {"metric": "avg@K", "k": K, ...}],
             "ci": {"method": "percentile bootstrap over problems", "confidence": 0.95,
                    "n_resamples": 10000, "seed": 0},
             "sampling": {"backend", "n", "temperature", "max_new_tokens", "top_p", "top_k", "chunk_size",
                          ...settings},
             "responses": {"truncated": int, "mean_tokens": float},
             "seed": seed, "versions": package_versions(), "seconds": s,
             "sample_seconds": s, "grade_seconds": s}

    Raises:
        FileExistsError: ``output`` holds an evaluation and not ``overwrite``.
        ValueError: mixed tasks, no problems, duplicate problem ids, or a k outside 1..K.
    """
    from pear_bench.config import package_versions
    from pear_bench.problems import check_unique_ids
    from pear_bench.snapshot import model_revision

    start = time.perf_counter()
    output = Path(output)
    check_output(output, overwrite)
    task = single_task(problems)
    ks = check_ks(ks, sampling.n)
    check_unique_ids(problems)

    rows = sample_responses(backend, problems, sampling, seed, chunk_size=chunk_size, prompt=prompt, progress=progress)
    sample_seconds = time.perf_counter() - start
    rows = grade_responses(rows, problems, task, progress=progress)
    grade_seconds = time.perf_counter() - start - sample_seconds

    correct: dict[str, list[bool]] = {p["id"]: [] for p in problems}
    for r in rows:
        correct[r["problem_id"]].append(r["correct"])
    result = {
        "labels": dict(labels or {}),
        "model": backend.model_id,
        "model_revision": model_revision(backend.model_id),
        "task": task,
        "problems": {"file": None if problems_file is None else str(problems_file),
                     "sha256": None if problems_file is None else file_sha256(problems_file), "limit": limit},
        "num_problems": len(problems),
        "samples_per_problem": sampling.n,
        "metrics": metric_entries(list(correct.values()), ks),
        "ci": {"method": "percentile bootstrap over problems", "confidence": CONFIDENCE,
               "n_resamples": N_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "sampling": {**sampling.to_record(backend.name), "chunk_size": chunk_size, **dict(settings or {})},
        "prompt": prompt.to_record(),
        "responses": {"truncated": sum(r["finish_reason"] == "length" for r in rows),
                      "mean_tokens": sum(r["response_tokens"] for r in rows) / len(rows)},
        "seed": seed,
        "versions": package_versions(),
        "seconds": time.perf_counter() - start,
        "sample_seconds": sample_seconds,
        "grade_seconds": grade_seconds,
    }
    if overwrite:  # a metrics.json must never describe samples other than those next to it
        (output / METRICS_FILE).unlink(missing_ok=True)
    write_atomic(output / SAMPLES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(output / METRICS_FILE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def summary_line(result: Mapping[str, Any], output: str | Path) -> str:
    """One line: model, task, sizes, each metric with its CI, seconds, where it went."""
    metrics = ", ".join(f"{m['metric']} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                        for m in result["metrics"])
    labels = " ".join(f"{k}={v}" for k, v in result["labels"].items())
    return (f"eval {result['model']} on {result['task']}{' (' + labels + ')' if labels else ''}: "
            f"{result['num_problems']} problems x {result['samples_per_problem']} samples: {metrics}; "
            f"{result['responses']['truncated']} truncated; {result['seconds']:.1f} s -> {output}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.generation import add_backend_arguments
    from pear_bench.prompts import add_prompt_arguments

    parser.add_argument("--model", required=True, help="checkpoint to evaluate: hub id or local path")
    parser.add_argument("--problems", required=True,
                        help="problem file written by `pear-bench make-data` (JSONL records of one task)")
    parser.add_argument("--output", required=True, help="directory for samples.jsonl and metrics.json")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem, K (default 8)")
    parser.add_argument("--ks", type=int, nargs="+", default=None,
                        help="pass@k values to report, each <= K (default: 1, 2, 4, ..., K)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length limit (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first LIMIT problems")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="free label recorded verbatim in metrics.json (repeatable), e.g. model=student "
                             "method=pear-token stage=rl seed=2; `pear-bench tables` reads model, method, stage, seed")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="prompts per sampling call (default 256; the progress bar moves per chunk)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="hf backend: sequences (prompts x K) per generate call (default 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing evaluation in --output")
    add_prompt_arguments(parser)
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from pear_bench.generation import SamplingConfig, backend_options, load_backend
    from pear_bench.problems import read_problems
    from pear_bench.prompts import prompt_settings

    labels = parse_labels(args.label)
    ks = check_ks(args.ks, args.samples)
    sampling = SamplingConfig(n=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    check_output(args.output, args.overwrite)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1; got {args.limit}")
    problems = read_problems(args.problems)[:args.limit]
    single_task(problems)
    prompt = prompt_settings(args)  # a bad few-shot file fails before the model loads
    options = backend_options(args)
    backend = load_backend(args.backend, args.model, **options)
    settings = {k: options[k] for k in ("dtype", "batch_size", "tensor_parallel_size", "max_model_len") if k in options}
    if args.backend == "hf":
        settings["device"] = str(backend.device)
    try:
        result = evaluate(backend, problems, args.output, sampling, ks=ks, seed=args.seed, labels=labels,
                          problems_file=args.problems, limit=args.limit, settings=settings,
                          chunk_size=args.chunk_size, overwrite=args.overwrite, prompt=prompt)
    finally:
        backend.close()
    print(summary_line(result, args.output))
    return 0
