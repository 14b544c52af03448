"""The transformers backend: batched ``generate`` sampling on CPU or GPU, scoring with the chunked primitive.

How the logprobs are taken. ``generate`` samples ``multinomial(softmax(scores))``, where ``scores``
are the logits after its logits processors. We give it a generation config with no processor of its
own (temperature 1, top-k 0, top-p 1, and the checkpoint's sampling defaults replaced, see the
package docstring) and one processor of ours, ``_TemperatureAndRecord``: it divides the logits by
the temperature, keeps that step's ``log_softmax``, and at the next step picks out the logprob of
the token that was sampled from it. So the recorded value is the log-probability under exactly the
distribution ``generate`` sampled from, and memory stays at one ``[B, V]`` row block (not
``output_scores``' ``[steps, B, V]``).

Prompts of a batch are left-padded; ``generate`` derives position ids from the attention mask, so
padding does not change the numbers (the tests compare with unpadded scoring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from pear_bench.generation import GenerationBackend, Sample, SamplingConfig, derive_seed, stop_token_ids


class _TemperatureAndRecord(LogitsProcessor):
    """The last logits processor: ``scores / temperature``, and the logprob of each token sampled from it."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.taken: list[torch.Tensor] = []  # per step: [B] logprob of the token sampled at that step
        self._last: torch.Tensor | None = None  # [B, V] log-distribution of the latest step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:  # input_ids[:, -1] was sampled from the previous step's distribution
            self.taken.append(self._last.gather(-1, input_ids[:, -1:])[:, 0])
        scores = scores / self.temperature
        self._last = scores.log_softmax(-1)
        return scores

    def sampled_logprobs(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` logprobs of ``new_tokens`` (the ``L`` tokens ``generate`` returned).

        The last returned token has not been seen by a further call; generate may also have run (and
        then undone) steps past the end, so only the first ``L`` steps are used.
        """
        steps = self.taken[: new_tokens.shape[1]]
        if len(steps) < new_tokens.shape[1]:
            steps.append(self._last.gather(-1, new_tokens[:, len(steps), None])[:, 0])
        return torch.stack(steps, dim=1)


class HFBackend(GenerationBackend):
    """``transformers`` model + ``generate``: the CPU path and the GPU fallback to vLLM.

    Args:
        model: hub id or local path.
        device: "cpu", "cuda", ... (default: cuda if available).
        dtype: parameter dtype name; float32 makes logprobs match scoring to ~1e-5.
        batch_size: sequences (prompts x n) per ``generate`` call.
        max_batch_tokens: padded tokens per forward pass in ``score``.
    """

    name = "hf"

    def __init__(self, model: str, device: str | None = None, dtype: str = "float32", batch_size: int = 64,
                 max_batch_tokens: int = 16384):
        self.model_id = str(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.eos_token_ids = stop_token_ids(self.model.generation_config.eos_token_id, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_ids[0] if pad is None else pad
        # generate() fills every unset field from model.generation_config, i.e. from the checkpoint's
        # sampling defaults; a blank one leaves only what _generation_config sets.
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id)

    def _generation_config(self, config: SamplingConfig) -> GenerationConfig:
        # temperature 1 and top_k 0 (the global default is 50) keep generate's own warpers off;
        # _TemperatureAndRecord applies the temperature.
        return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                max_new_tokens=config.max_new_tokens, eos_token_id=self.eos_token_ids,
                                pad_token_id=self.pad_token_id)

    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention_mask[row, width - len(p):] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _sample_batch(self, prompts: Sequence[Sequence[int]], config: SamplingConfig, seed: int) -> list[Sample]:
        input_ids, attention_mask = self._left_pad(prompts)
        recorder = _TemperatureAndRecord(config.temperature)
        # generate samples with the global RNG; fork it so seeding here leaves the caller's state alone.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      generation_config=self._generation_config(config),
                                      logits_processor=LogitsProcessorList([recorder]))
        new_tokens = out[:, input_ids.shape[1]:]  # [B, L]
        logprobs = recorder.sampled_logprobs(new_tokens).float().cpu().numpy()
        new_tokens = new_tokens.cpu().numpy()
        is_eos = np.isin(new_tokens, self.eos_token_ids)
        samples = []
        for row in range(len(prompts)):
            stops = np.flatnonzero(is_eos[row])
            # Rows that stopped early are padded after their eos; rows that did not stop are cut at the
            # length limit (or are as long as the longest row, which hit it).
            end = int(stops[0]) + 1 if len(stops) else new_tokens.shape[1]
            samples.append(Sample(response_ids=new_tokens[row, :end].tolist(),
                                  logprobs=logprobs[row, :end].tolist(),
                                  finish_reason="stop" if len(stops) else "length"))
        return samples

    def sample(self, prompt_ids: Sequence[Sequence[int]], config: SamplingConfig, seed: int,
               progress: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """``config.n`` samples per prompt, in ``generate`` calls of ``batch_size`` sequences.

        The n copies of a prompt sit next to each other; batch ``b`` is seeded with
        ``derive_seed(seed, b)``, so results depend on ``seed``, the prompts and ``batch_size``.
        """
        flat = [list(p) for p in prompt_ids for _ in range(config.n)]
        samples: list[Sample] = []
        for b, start in enumerate(range(0, len(flat), self.batch_size)):
            batch = self._sample_batch(flat[start:start + self.batch_size], config, derive_seed(seed, b))
            samples += batch
            if progress is not None:
                progress(len(batch))
        return [samples[i:i + config.n] for i in range(0, len(samples), config.n)]

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              temperature: float = 1.0) -> list[np.ndarray]:
        """One forward pass over the exact ids with the chunked primitive (``pear_bench.score``)."""
        from pear_bench.score import score_responses

        return score_responses(self.model, prompt_ids, response_ids, temperature, self.max_batch_tokens,
                               pad_token_id=self.pad_token_id)

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
