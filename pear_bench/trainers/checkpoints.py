"""Checkpoints in and out, for both stages: the starting model, resuming, run records, the final model.

Every checkpoint directory (``output_dir/checkpoint-N``) and the final model directory
(``output_dir``) hold ``run_config.json`` (``pear_bench.config.run_record``): the resolved config,
seed and library versions that produced them. Resuming compares the checkpoint's recorded config with
the current one, so a rerun with changed settings cannot silently continue an old run.

The final model is always a plain transformers checkpoint: with LoRA the adapter is saved to
``output_dir/adapter`` and merged into the base weights in ``output_dir``, so the next stage (GRPO,
vLLM, evaluation) loads it like any other model. The merge reads the saved files on the main
process, so it works the same whether training ran on one device or under FSDP.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pear_bench.config import RUN_RECORD, ConfigError, TrainingSettings, write_run_record

# Settings that may differ between a checkpoint and the run resuming it.
RESUME_MAY_CHANGE = ("resume", "report_to", "logging_steps", "save_steps", "save_total_limit")


def load_model(config: TrainingSettings):
    """The starting model of ``config.model`` in ``config.dtype`` (KV cache off under gradient checkpointing)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=getattr(torch, config.dtype))
    if config.gradient_checkpointing:
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
    return model


def resume_checkpoint(config: TrainingSettings) -> str | None:
    """The checkpoint to resume from, per ``config.resume``; None to start from ``config.model``.

    With ``resume: auto`` (or ``auto-restart``) the newest *complete* checkpoint in ``output_dir`` is
    taken: one holding ``run_config.json``, which ``RunRecordCallback`` writes after the Trainer has
    saved everything else. A checkpoint without it was cut short by an interrupt during the save; it
    is moved to ``output_dir/incomplete-<UTC time>/`` (never deleted) and the one before it is used.

    With ``resume: auto-restart``, checkpoints written with other settings are moved to
    ``output_dir/stale-<UTC time>/`` and training starts over: this is what a workflow wants when
    it reruns a job because its settings changed.

    Raises:
        ConfigError: the checkpoint's recorded config differs from ``config`` in a key outside
            ``RESUME_MAY_CHANGE`` (the message lists the keys and both values), unless auto-restart.
    """
    if config.resume == "never":
        return None
    if config.resume in ("auto", "auto-restart"):
        checkpoint = _newest_complete_checkpoint(config)
    else:
        checkpoint = config.resume
    if checkpoint is None:
        return None
    record_path = Path(checkpoint) / RUN_RECORD
    if record_path.is_file():
        recorded = json.loads(record_path.read_text())["config"]
        current = _as_json(config)
        changed = [k for k in current if k not in RESUME_MAY_CHANGE and recorded.get(k) != current[k]]
        if changed:
            diffs = ", ".join(f"{k}: {recorded.get(k)!r} -> {current[k]!r}" for k in changed)
            if config.resume == "auto-restart":
                output_dir = Path(config.output_dir)
                stale = _move_aside(output_dir, sorted(output_dir.glob("checkpoint-*")), "stale")
                print(f"{config.stage}: checkpoints in {config.output_dir} were written with other settings "
                      f"({diffs}); moved them to {stale}, starting over")
                return None
            raise ConfigError(f"{config.stage}.resume: {checkpoint} was written with other settings ({diffs}); "
                              f"use another output_dir, resume: auto-restart to set them aside, "
                              f"or resume: never to start over")
    print(f"{config.stage}: resuming from {checkpoint}")
    return checkpoint


def _newest_complete_checkpoint(config: TrainingSettings) -> str | None:
    """The highest-step ``checkpoint-N`` of ``output_dir`` with its run record; incomplete ones newer
    than it are moved aside (the Trainer would otherwise save into, or resume from, a partial one)."""
    output_dir = Path(config.output_dir)
    steps = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    incomplete = []
    while steps and not (steps[-1][1] / RUN_RECORD).is_file():
        incomplete.append(steps.pop()[1])
    if incomplete:
        moved = _move_aside(output_dir, incomplete, "incomplete")
        print(f"{config.stage}: {', '.join(p.name for p in incomplete)} in {output_dir} was cut short while "
              f"being saved; moved to {moved}")
    return str(steps[-1][1]) if steps else None


def _move_aside(output_dir: Path, checkpoints: list[Path], why: str) -> Path:
    """Move ``checkpoints`` into ``output_dir/<why>-<UTC time>/``; returns that directory."""
    target = output_dir / time.strftime(f"{why}-%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(exist_ok=True)
    for checkpoint in checkpoints:
        checkpoint.rename(target / checkpoint.name)
    return target


def _as_json(config: TrainingSettings) -> dict[str, Any]:
    """The config as it reads back from run_config.json (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class RunRecordCallback(TrainerCallback):
    """Writes the run record into each checkpoint directory right after the Trainer saves it."""

    def __init__(self, record: dict[str, Any]):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_record({**self.record, "global_step": state.global_step},
                             Path(args.output_dir) / f"checkpoint-{state.global_step}")


def save_final_model(trainer, tokenizer, config: TrainingSettings, record: dict[str, Any]) -> Path:
    """Save the trained model (LoRA merged), tokenizer, run record and trainer state to ``config.output_dir``."""
    output_dir = Path(config.output_dir)
    final_record = {**record, "global_step": trainer.state.global_step}
    if not config.use_lora:
        trainer.save_model(str(output_dir))
    else:
        trainer.save_model(str(output_dir / "adapter"))
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            import torch
            from peft import AutoPeftModelForCausalLM

            merged = AutoPeftModelForCausalLM.from_pretrained(
                output_dir / "adapter", dtype=getattr(torch, config.dtype)).merge_and_unload()
            merged.save_pretrained(output_dir)
    trainer.save_state()  # trainer_state.json (log_history: loss, nll, entropy, diagnostics) for the plots
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        write_run_record(final_record, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir
