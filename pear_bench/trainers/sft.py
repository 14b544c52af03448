"""`pear-bench sft`: weighted SFT (plain, DFT, PEAR, iw-SFT, ...) on records with behaviour logprobs.

    pear-bench sft --config workflows/config/mini.yaml --dataset data/chain_sum.jsonl \\
        --model models/student --output_dir results/mini/sft/pear-token/seed0 --method pear-token --seed 0
    accelerate launch --config_file workflows/accelerate/fsdp.yaml -m pear_bench sft --config ...  # multi-GPU

``PEARSFTTrainer`` is a transformers ``Trainer`` whose one override is ``compute_loss`` (plus ``log``,
which adds the objective's diagnostics to each logging step). The loss of a batch is:

    logp, entropy = token_logprobs(model, input_ids, attention_mask, score_mask=response_mask,
                                   temperature=policy_temperature)
    loss, metrics = objective(logp, batch, response_mask, cfg, num_tokens)      # by name, see
                                                                                # pear_bench.sft_objectives
Features and their costs:
  - Data: pre-tokenised records (``pear_bench.data``), ``prompt_ids + response_ids`` per row, prompt
    tokens masked out of the loss. Token ids are never re-derived from text, so pi_theta and pi_beta
    score the same tokens. No packing: PEAR's suffix sums run within one response. Records longer
    than ``max_length`` are dropped (counted in the run record), never truncated.
  - ``token_logprobs`` never builds the [B, T, V] logits (TRL's chunked kernel): memory grows with
    tokens, not the vocabulary. The entropy of each next-token distribution comes from the same pass.
  - Gradient accumulation and multi-device runs: with the "token" normaliser the loss is divided
    by the number of response tokens of the whole optimizer step (``num_items_in_batch``), so
    accumulating k micro-batches gives the gradient of one k-times-larger batch.
  - Logged each logging step (means over its micro-batches, on the main process): loss, ``nll``
    (the plain SFT loss of the batch, comparable across methods), ``entropy`` (mean over response
    tokens), and the objective's own metrics (``pear/ess_fraction``, ``pear/delta_clipped_high``, ...).
  - HF checkpoints every ``save_steps``; ``resume: auto`` continues from the newest one; LoRA
    (peft), gradient checkpointing, bf16 autocast; FSDP through ``accelerate launch``.
  - Next to every checkpoint and the final model: ``run_config.json`` (config, seed, versions).

Why ``transformers.Trainer`` and not TRL's ``SFTTrainer``: what SFTTrainer adds is dataset preparation
(tokenising text, chat templates, packing, completion masks) and its own fused-head patch of the
model's forward; our data arrive tokenised with a behaviour-logprob column it would not carry, and
``pear_bench.logprobs`` already patches the forward with the same TRL kernel.

Raises (``train_sft``): ``ConfigError`` for bad settings (before any loading), ``RecordError`` for a
dataset that breaks the data contract (before the model loads), ``ValueError`` for a record with an
empty prompt.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments

from pear_bench.config import ConfigError, SFTConfig, add_config_arguments, config_from_args, run_record
from pear_bench.errors import InputError
from pear_bench.logprobs import token_logprobs
from pear_bench.sft_objectives import get_objective
from pear_bench.trainers.checkpoints import RunRecordCallback, load_model, resume_checkpoint, save_final_model


class SFTCollator:
    """Pads records into a batch; behaviour logprobs stay on the positions of the tokens they score.

    A row is ``prompt_ids + response_ids``. Response token j sits at position ``P + j`` (P prompt
    tokens; plus the left padding), and so do its ``behavior_logprobs[j]``, matching
    ``token_logprobs``' alignment (column t is log p(ids[t] | ids[<t])).

    Returns a dict of ``[B, T]`` tensors: ``input_ids`` (pad id in padding), ``attention_mask``
    (1 on real tokens), ``response_mask`` (bool), ``labels`` (ids on response tokens, -100 elsewhere:
    transformers counts them for ``num_items_in_batch``), and ``behavior_logprobs`` (float32, 0 off
    the response) when the records carry them.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left'; got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        with_behavior = "behavior_logprobs" in records[0]
        T = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in records)
        B = len(records)
        batch = {
            "input_ids": torch.full((B, T), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(B, T, dtype=torch.long),
            "response_mask": torch.zeros(B, T, dtype=torch.bool),
            "labels": torch.full((B, T), -100, dtype=torch.long),
        }
        if with_behavior:
            batch["behavior_logprobs"] = torch.zeros(B, T, dtype=torch.float32)
        for b, r in enumerate(records):
            P, R = len(r["prompt_ids"]), len(r["response_ids"])
            start = 0 if self.padding_side == "right" else T - P - R
            response = slice(start + P, start + P + R)
            batch["input_ids"][b, start:start + P + R] = torch.tensor(list(r["prompt_ids"]) + list(r["response_ids"]))
            batch["attention_mask"][b, start:start + P + R] = 1
            batch["response_mask"][b, response] = True
            batch["labels"][b, response] = batch["input_ids"][b, response]
            if with_behavior:
                batch["behavior_logprobs"][b, response] = torch.tensor(r["behavior_logprobs"], dtype=torch.float32)
        return batch


class PEARSFTTrainer(Trainer):
    """A ``Trainer`` whose loss is the registered SFT objective ``sft_config.method``.

    Args:
        sft_config: the run's ``SFTConfig`` (objective name and switches).
        **kwargs: ``transformers.Trainer`` arguments; ``data_collator`` defaults to ``SFTCollator``.
    """

    def __init__(self, *, sft_config: SFTConfig, **kwargs):
        if kwargs.get("data_collator") is None:
            tokenizer = kwargs["processing_class"]
            kwargs["data_collator"] = SFTCollator(tokenizer.pad_token_id, sft_config.padding_side)
        super().__init__(**kwargs)
        self.sft_config = sft_config
        self.objective = get_objective(sft_config.method)
        # compute_loss divides by num_items_in_batch itself; this tells Trainer to count it (from the
        # batch's labels) and not to divide the loss by the accumulation steps a second time.
        self.model_accepts_loss_kwargs = True
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's loss on one micro-batch, scaled for gradient accumulation and data parallelism.

        With ``num_items_in_batch`` (response tokens of the whole optimizer step, over all ranks when
        ``average_tokens_across_devices``): the "token" normaliser divides by it, and the loss is
        multiplied by the number of processes because DDP/FSDP average gradients over ranks (as
        ``Trainer.compute_loss`` does); the other normalisers divide by the accumulation steps.
        """
        cfg = self.sft_config
        response_mask = inputs["response_mask"]
        # pi_theta at the temperature RL will sample it at (sft.policy_temperature; 1 by default).
        out = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], score_mask=response_mask,
                             temperature=cfg.policy_temperature, with_entropy=True)
        use_count = num_items_in_batch is not None and cfg.normaliser == "token"
        loss, metrics = self.objective.fn(out.logprobs, inputs, response_mask, cfg,
                                          num_items_in_batch if use_count else None)
        if use_count and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        elif num_items_in_batch is not None and not use_count:
            loss = loss / self.current_gradient_accumulation_steps
        if model.training:
            self._record(out.logprobs, out.entropy, response_mask, metrics)
        return (loss, out) if return_outputs else loss

    @torch.no_grad()
    def _record(self, logp: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, metrics: dict) -> None:
        n = mask.sum().clamp(min=1)
        self._metrics["nll"].append(float(-(logp * mask).sum() / n))
        self._metrics["entropy"].append(float((entropy * mask).sum() / n))
        for key, value in metrics.items():
            self._metrics[key].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the metrics recorded since the last training log, then log as usual."""
        if "loss" in logs and self._metrics:
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items()}}
            self._metrics.clear()
        super().log(logs, start_time)


def prepare_records(dataset, config: SFTConfig):
    """The columns the collator needs, records over ``max_length`` dropped; returns (dataset, n_dropped).

    Raises:
        ValueError: a record has no prompt token (its first response token would have no prefix).
    """
    import numpy as np
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    prompt_len, response_len = (pc.list_value_length(table[c]).to_numpy(zero_copy_only=False)
                                for c in ("prompt_ids", "response_ids"))
    empty = np.flatnonzero(prompt_len == 0)
    if len(empty):
        raise InputError(f"{len(empty)} records have empty prompt_ids (first: id {table['id'][int(empty[0])]}); "
                         "the first response token needs at least one token before it")
    columns = ["prompt_ids", "response_ids"]
    if get_objective(config.method).needs_behavior_logprobs:
        columns.append("behavior_logprobs")
    dataset = dataset.select_columns(columns)
    if config.max_length is None:
        return dataset, 0
    keep = np.flatnonzero(prompt_len + response_len <= config.max_length)
    return dataset.select(keep), len(dataset) - len(keep)


def build_trainer(config: SFTConfig, callbacks: Sequence = ()) -> tuple[PEARSFTTrainer, dict]:
    """Tokenizer, dataset, model (LoRA-wrapped if asked) and trainer for ``config``; returns (trainer, record).

    The dataset is loaded and checked before the model, so bad data fail fast.
    """
    from pear_bench.data import load_records

    spec = get_objective(config.method)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    records = load_records(config.dataset, vocab_size=len(tokenizer),
                           require_logprobs=spec.needs_behavior_logprobs)
    train_dataset, n_dropped = prepare_records(records, config)
    if len(train_dataset) == 0:
        raise ConfigError(f"sft.max_length: all {n_dropped} records are longer than {config.max_length} tokens")

    model = load_model(config)
    if config.use_lora:
        from peft import get_peft_model

        model = get_peft_model(model, config.lora_config())
    args = TrainingArguments(**config.trainer_kwargs())
    record = run_record(config, records=len(records), records_dropped_over_max_length=n_dropped)
    trainer = PEARSFTTrainer(sft_config=config, model=model, args=args, train_dataset=train_dataset,
                             processing_class=tokenizer, callbacks=[RunRecordCallback(record), *callbacks])
    return trainer, record


def train_sft(config: SFTConfig, callbacks: Sequence = ()) -> Path:
    """Train per ``config`` (resuming if asked), save the final model; returns its directory."""
    checkpoint = resume_checkpoint(config)
    trainer, record = build_trainer(config, callbacks)
    trainer.train(resume_from_checkpoint=checkpoint)
    return save_final_model(trainer, trainer.processing_class, config, record)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    add_config_arguments(parser, "sft")


def main(args: argparse.Namespace) -> int:
    output = train_sft(config_from_args(args, "sft"))
    print(f"pear-bench sft: saved {output}")
    return 0
