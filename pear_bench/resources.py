"""What one job of a grid asks for, and how a sampling job lays its model out on the GPUs it gets.

The grid config's ``resources:`` section gives per rule ``gpu``, ``threads``, ``mem_mb`` and
``runtime`` (minutes); ``default`` fills in the rules it does not list, and a rule may change them
for some models (the 32B teacher needs more GPUs than the 1.5B students)::

    resources:
      default: {gpu: 0, threads: 4, mem_mb: 16000, runtime: 60}
      evaluate: {gpu: 1, models: {qwen3-32b: {gpu: 4}}}

The workflow (``workflows/rules/common.smk``) and ``pear-bench plan`` both read it through
``job_resources``, so what a job is planned with is what it is given.

A vLLM job (collect, rescore, transfer, evaluate with ``--backend vllm`` or ``auto``) runs one
engine over all its GPUs: tensor parallelism of the job's ``gpu`` count, and a maximum model length
of the longest prompt the grid allows (``rl.max_prompt_length``, which GRPO enforces too) plus the
rule's response limit. Without it vLLM reserves KV cache for the model's own maximum (40,960 tokens
for Qwen3) and a 32B model on one 80 GB card refuses to start.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from pear_bench.errors import InputError

# What a job gets when neither the rule nor `default` says.
DEFAULTS = {"gpu": 0, "threads": 1, "mem_mb": 2000, "runtime": 60}
# The rules that sample or score with a backend their args choose: (section, key) of those args, and
# the section whose max_new_tokens bounds their responses.
SAMPLING_ARGS = {"collect": ("collect", "args"), "rescore": ("collect", "rescore"), "transfer": ("transfer", "args"),
                 "evaluate": ("evaluation", "args")}
RESPONSE_LIMIT = {"collect": "collect", "rescore": "collect", "transfer": "collect", "evaluate": "evaluation"}
# TRL's GRPOConfig default, which the rl: section may change.
DEFAULT_MAX_PROMPT_LENGTH = 512


def job_resources(config: Mapping[str, Any], rule: str, model: str | None = None) -> dict[str, int]:
    """``gpu``, ``threads``, ``mem_mb`` and ``runtime`` of one job of ``rule`` (on ``model``, if given)."""
    section = config.get("resources") or {}
    rule_section = dict(section.get(rule) or {})
    per_model = rule_section.pop("models", None) or {}
    unknown = sorted(set(per_model) - set(config.get("models") or {}))
    if unknown:
        raise InputError(f"resources.{rule}.models: {unknown[0]!r} is not under models: "
                         f"({', '.join(config.get('models') or {})})")
    return {**DEFAULTS, **(section.get("default") or {}), **rule_section, **(per_model.get(model) or {})}


def rule_args(config: Mapping[str, Any], rule: str) -> list[str]:
    """The grid's extra command-line arguments of a sampling rule, as words."""
    section, key = SAMPLING_ARGS[rule]
    value = (config.get(section) or {}).get(key) or ""
    return [str(word) for word in value] if isinstance(value, list) else shlex.split(value)


def _flag(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def uses_vllm(config: Mapping[str, Any], rule: str) -> bool:
    """Whether the rule's jobs may sample with vLLM (``--backend vllm`` or ``auto``; ``hf`` is the default)."""
    return _flag(rule_args(config, rule), "--backend") in ("vllm", "auto")


def max_model_len(config: Mapping[str, Any], rule: str) -> int:
    """The longest prompt + response a job of ``rule`` sees: ``rl.max_prompt_length`` plus the rule's
    ``max_new_tokens`` (collect's for rescore and transfer, which score collected responses)."""
    prompt = int((config.get("rl") or {}).get("max_prompt_length", DEFAULT_MAX_PROMPT_LENGTH))
    return prompt + int(config[RESPONSE_LIMIT[rule]]["max_new_tokens"])


def vllm_flags(config: Mapping[str, Any], rule: str, model: str | None = None) -> list[str]:
    """``--max-model-len`` and, on several GPUs, ``--tensor-parallel-size`` for a vLLM job; nothing
    for HF jobs. The grid's own args may not set either (one source for each).

    Raises:
        InputError: the rule's args set ``--max-model-len`` or ``--tensor-parallel-size`` themselves.
    """
    if not uses_vllm(config, rule):
        return []
    words = rule_args(config, rule)
    for name in ("--max-model-len", "--tensor-parallel-size"):
        if _flag(words, name) is not None:
            raise InputError(f"{'.'.join(SAMPLING_ARGS[rule])}: remove {name}; the workflow sets it from the grid (max_model_len: "
                             f"rl.max_prompt_length + max_new_tokens; tensor parallelism: resources.{rule}.gpu)")
    flags = ["--max-model-len", str(max_model_len(config, rule))]
    gpus = job_resources(config, rule, model)["gpu"]
    if gpus > 1:
        flags += ["--tensor-parallel-size", str(gpus)]
    return flags


def backend_setting(config: Mapping[str, Any], rule: str, name: str, default: str | None = None) -> str | None:
    """One ``--name value`` of a sampling rule's args (e.g. ``--dtype``), or ``default``."""
    value = _flag(rule_args(config, rule), name)
    return default if value is None else value
