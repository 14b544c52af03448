"""`pear-bench score`: fill ``behavior_logprobs`` of an SFT dataset with one forward pass of the behaviour model.

For traces whose behaviour model is available to run but was not (or could not be) asked for its
logprobs at sampling time: data from another tool, from an API, or collected without them. Each
record's exact ``prompt_ids + response_ids`` go through the model once; the response tokens' logprobs
come from the chunked primitive (``pear_bench.logprobs.token_logprobs``), so memory grows with the
tokens of a batch, never with ``tokens x vocabulary``.

Batching: records are sorted by length, longest first, and packed greedily into right-padded
batches of at most ``--max-batch-tokens`` padded tokens; a record longer than that forms a batch of
its own (nothing is truncated). Sorting keeps padding low; the output keeps the input's order.

    pear-bench score traces.jsonl --model Qwen/Qwen2.5-7B-Instruct --output traces.scored.parquet
    pear-bench score traces.jsonl --model ./teacher --temperature 0.7 --output scored.jsonl --backend vllm

Text traces (JSONL or parquet without ``prompt_ids``) are tokenised first, through the prompt
module and the model's tokenizer. Each row has the prompt as ``messages`` (chat messages) or
``prompt`` (the user message's text; ``--system-prompt`` adds a system message), and the response as
``response`` text or as a final assistant message in ``messages``; ``id`` and ``finish_reason``
("stop", the default, ends the response with the model's end-of-turn token; "length" does not) are
optional::

    {"id": "a1", "prompt": "What is 2 + 3?", "response": "2 + 3 = 5. \\boxed{5}"}
    {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]}

With ``--rescore``, records that had logprobs are compared with the new ones: the summary (and the
printed line) give the largest and mean absolute difference and the share of tokens that moved by
more than PEAR's lower delta clip (0.08), e.g. bf16 sampling against a float32 re-score.

``--temperature`` must be the temperature the responses were sampled at (logprobs are those of
``softmax(logits / T)``); a record whose ``sampling.temperature`` says otherwise is an error. Records
that carry no sampling information get ``sampling.temperature`` set to it, so the number that defines
their ``behavior_logprobs`` is always in the data. A summary (tokens, seconds, tokens/s, model,
versions) is written next to the output as ``<output stem>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings

DELTA_CLIP = 0.08  # PEAR's lower delta clip (DESIGN.md): a logprob error beyond it changes the clip's work


def score_responses(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    temperature: float = 1.0,
    max_batch_tokens: int = 16384,
    pad_token_id: int = 0,
    progress: bool = True,
) -> list[np.ndarray]:
    """``log softmax(logits / temperature)`` of every response token, one forward pass per batch.

    ``logp_i[t] = log pi(response_i[t] | prompt_i, response_i[:t])``, computed by
    ``token_logprobs`` on ``prompt_i + response_i`` with only the response positions scored.

    Args:
        model: a transformers causal LM (eval mode; any device).
        prompt_ids: per record, the prompt's token ids (at least one: the first response token
            needs a prefix).
        response_ids: per record, the response's token ids.
        temperature: the sampling temperature the logprobs refer to.
        max_batch_tokens: padded tokens (rows x longest row) per forward pass.
        pad_token_id: id written into padding (masked out; any valid id works).
        progress: show a tqdm bar over response tokens.

    Returns:
        per record, in input order, a float32 array with ``len(response_ids[i])`` logprobs.

    Raises:
        ValueError: mismatched argument lengths or an empty prompt.
    """
    import torch
    from tqdm.auto import tqdm

    from pear_bench.logprobs import token_logprobs

    if len(prompt_ids) != len(response_ids):
        raise InputError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise InputError(f"record {i}: empty prompt_ids; the first response token needs a prefix to be scored")
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    out: list[np.ndarray | None] = [None] * len(lengths)
    bar = tqdm(total=sum(len(r) for r in response_ids), unit="tok", desc="score", disable=not progress)
    for batch in length_sorted_batches(lengths, max_batch_tokens):
        input_ids, attention_mask, score_mask = right_padded_batch(
            [prompt_ids[i] for i in batch], [response_ids[i] for i in batch], pad_token_id)
        with torch.inference_mode():
            logp = token_logprobs(model, input_ids.to(device), attention_mask.to(device), score_mask.to(device),
                                  temperature=temperature).logprobs.cpu().numpy()  # [B, width]
        for row, i in enumerate(batch):
            out[i] = logp[row, len(prompt_ids[i]):lengths[i]].copy()
        bar.update(sum(len(response_ids[i]) for i in batch))
    bar.close()
    return out


def length_sorted_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_batch_tokens`` padded tokens, longest first.

    Greedy over the lengths sorted in decreasing order: a batch's first sequence sets its width, and
    sequences join while ``rows x width`` fits. A sequence longer than the budget gets a batch alone.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def right_padded_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       pad_token_id: int):
    """``input_ids``, ``attention_mask`` and ``score_mask`` (response positions), each ``[B, width]``."""
    import torch

    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    shape = (len(lengths), max(lengths))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    score_mask = torch.zeros(shape, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[row, :lengths[row]] = torch.tensor([*p, *r], dtype=torch.long)
        attention_mask[row, :lengths[row]] = 1
        score_mask[row, len(p):lengths[row]] = True
    return input_ids, attention_mask, score_mask


def trace_record(row: dict, index: int, tokenizer, end_of_turn: int, settings: PromptSettings) -> dict:
    """A text trace (module docstring) as an unscored SFT record, tokenised for ``tokenizer``.

    Raises:
        InputError: a row without a prompt or a response, or with an unknown finish_reason.
    """
    from pear_bench.prompts import problem_messages, prompt_ids

    where = f"trace {index}" + (f" (id {row['id']!r})" if row.get("id") is not None else "")
    messages = [dict(m) for m in row.get("messages") or []]
    response = row.get("response")
    if response is None and messages and messages[-1].get("role") == "assistant":
        response = messages.pop()["content"]
    if not messages and isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages = problem_messages(row, settings)
    if not messages:
        raise InputError(f"{where}: no prompt (give 'messages' or 'prompt' text, or 'prompt_ids' for tokenised records)")
    if not isinstance(response, str) or not response:
        raise InputError(f"{where}: no response text (give 'response', or end 'messages' with an assistant message)")
    finish = row.get("finish_reason") or "stop"
    if finish not in ("stop", "length"):
        raise InputError(f"{where}: finish_reason must be 'stop' or 'length'; got {finish!r}")
    ids = tokenizer.encode(response, add_special_tokens=False) + ([end_of_turn] if finish == "stop" else [])
    return {"id": str(row.get("id", f"trace-{index}")), "messages": messages,
            "prompt_ids": prompt_ids(tokenizer, messages, settings), "response_ids": ids, "response": response,
            "finish_reason": finish, "sampling": row.get("sampling")}


def read_traces(path: str | Path, tokenizer, stop_ids: list[int], settings: PromptSettings, vocab_size: int):
    """Records of ``path``: tokenised records as they are, text traces tokenised (``trace_record``)."""
    import pyarrow.parquet as pq

    from pear_bench.data import file_format, load_records, records_dataset
    from pear_bench.problems import read_jsonl
    from pear_bench.token_transfer import end_of_turn_id

    if file_format(path) == "json":
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        tokenised = "prompt_ids" in json.loads(first) if first.lstrip().startswith("{") else True
    else:
        tokenised = "prompt_ids" in pq.read_schema(path).names
    if tokenised:  # read once, by the data contract's loader (which reports a malformed file)
        return load_records(path, vocab_size=vocab_size, require_logprobs=False), False
    rows = read_jsonl(path) if file_format(path) == "json" else pq.read_table(path).to_pylist()
    end_of_turn = end_of_turn_id(tokenizer, stop_ids, "--model")
    records = [trace_record(row, i, tokenizer, end_of_turn, settings) for i, row in enumerate(rows)]
    return records_dataset(records, vocab_size=vocab_size, require_logprobs=False), True


def logprob_differences(recorded: Sequence[Sequence[float] | None], rescored: Sequence[np.ndarray]) -> dict | None:
    """|rescored - recorded| over the tokens of records that had logprobs: max, mean, p99, share > 0.08."""
    pairs = [(np.asarray(r, dtype=np.float64), np.asarray(n, dtype=np.float64))
             for r, n in zip(recorded, rescored) if r is not None]
    if not pairs:
        return None
    diff = np.abs(np.concatenate([n - r for r, n in pairs]))
    return {"records": len(pairs), "tokens": int(diff.size), "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()), "p99_abs": float(np.quantile(diff, 0.99)),
            f"share_above_{DELTA_CLIP}": float((diff > DELTA_CLIP).mean())}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.generation import add_backend_arguments
    from pear_bench.prompts import add_prompt_arguments

    parser.add_argument("input", help="SFT dataset (.jsonl or .parquet) with prompt_ids and response_ids, or text "
                                      "traces (messages or prompt, plus response) to tokenise first")
    parser.add_argument("--model", required=True, help="behaviour model: hub id or local path")
    parser.add_argument("--output", required=True, help="scored dataset to write (.jsonl or .parquet)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="temperature the responses were sampled at (default 1.0)")
    parser.add_argument("--max-batch-tokens", type=int, default=16384,
                        help="hf backend: padded tokens per forward pass (default 16384)")
    parser.add_argument("--rescore", action="store_true",
                        help="replace behavior_logprobs that records already have (default: refuse)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    add_prompt_arguments(parser)  # for text traces
    add_backend_arguments(parser)  # hf: the chunked primitive (default); vllm: prompt_logprobs (temperature 1)


def main(args: argparse.Namespace) -> int:
    from pear_bench.config import package_versions
    from pear_bench.data import RecordError, load_records, save_records, summary_path
    from pear_bench.generation import backend_options, load_backend
    from pear_bench.prompts import prompt_settings
    from pear_bench.snapshot import model_revision

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    prompt = prompt_settings(args)  # a bad few-shot file fails before the model loads
    options = backend_options(args)
    if args.backend == "hf":
        options["max_batch_tokens"] = args.max_batch_tokens
    backend = load_backend(args.backend, args.model, **options)
    try:
        ds, from_text = read_traces(args.input, backend.tokenizer, backend.eos_token_ids, prompt,
                                    len(backend.tokenizer))
        scored = [i for i, lp in enumerate(ds["behavior_logprobs"]) if lp is not None]
        if scored and not args.rescore:
            raise RecordError(f"{len(scored)} records already have behavior_logprobs (first: record {scored[0]}, "
                              f"id {ds[scored[0]]['id']!r}); pass --rescore to replace them")
        for i, sampling in enumerate(ds["sampling"]):
            if sampling is not None and sampling["temperature"] not in (None, args.temperature):
                raise RecordError(f"record {i} (id {ds[i]['id']!r}) was sampled at temperature "
                                  f"{sampling['temperature']} but --temperature is {args.temperature}")

        n_tokens = sum(len(r) for r in ds["response_ids"])
        start = time.perf_counter()
        logprobs = backend.score(list(ds["prompt_ids"]), list(ds["response_ids"]), args.temperature)
        seconds = time.perf_counter() - start
    finally:
        backend.close()

    differences = logprob_differences(ds["behavior_logprobs"], logprobs)

    def fill(record: dict, index: int) -> dict:
        sampling = record["sampling"] or dict.fromkeys(("backend", "n", "top_p", "top_k", "max_new_tokens"))
        return {"behavior_logprobs": logprobs[index], "behavior_model": args.model,
                "sampling": {**sampling, "temperature": args.temperature}}

    ds = ds.map(fill, with_indices=True, desc="fill behavior_logprobs")
    save_records(ds, output, overwrite=args.overwrite)
    total_tokens = sum(len(p) for p in ds["prompt_ids"]) + n_tokens
    summary = {
        "input": str(args.input), "output": str(output), "model": args.model,
        "model_revision": model_revision(args.model), "backend": args.backend,
        "dtype": args.dtype, "temperature": args.temperature, "records": len(ds), "from_text": from_text,
        "rescored_vs_recorded": differences, "response_tokens": n_tokens,
        "total_tokens": total_tokens, "seconds": seconds, "response_tokens_per_s": n_tokens / seconds,
        "total_tokens_per_s": total_tokens / seconds, "versions": package_versions(),
    }
    summary_path(output).write_text(json.dumps(summary, indent=2) + "\n")
    moved = "" if differences is None else (
        f"; against the recorded logprobs: max |diff| {differences['max_abs']:.3g}, mean {differences['mean_abs']:.3g}, "
        f"{differences[f'share_above_{DELTA_CLIP}']:.2%} of tokens beyond {DELTA_CLIP}")
    print(f"scored {len(ds)} records{' (tokenised from text)' if from_text else ''}, {n_tokens} response tokens "
          f"({total_tokens} in all) in {seconds:.2f} s: {total_tokens / seconds:,.0f} tokens/s{moved} -> {output}")
    return 0
