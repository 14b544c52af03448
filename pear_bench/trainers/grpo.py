"""`pear-bench rl`: GRPO from any checkpoint with TRL's ``GRPOTrainer``, rewarded by the project grader.

    pear-bench rl --config workflows/config/mini.yaml --prompts data/chain_sum/train.jsonl \\
        --model results/mini/sft/pear-token/seed0 --output_dir results/mini/rl/pear-token/seed0 --seed 0

The RL recipe is the ``rl:`` section of a config file (``pear_bench.config.RLConfig``); an SFT arm
changes only ``--model`` (its checkpoint) and ``--seed``, so every arm gets the same GRPO.

- Reward: ``CorrectnessReward`` calls ``pear_bench.grading.grade`` (through ``grade_batch``) on
  each completion with its problem record and finish reason, so GRPO, SFT data filtering and
  evaluation share one grader: 1.0 correct, 0.0 not (never for a completion cut at the length limit). With ``format_reward_weight > 0``, ``format_reward`` adds that
  weight for a completion whose final answer can be extracted (``<answer>`` tags, ``\\boxed{}``).
  Rewards are summed, then normalised within each group (TRL's "sum_then_normalize").
- Prompts: problem records (``pear_bench.problems``) as ``pear_bench.prompts`` messages (system
  prompt from ``rl.system_prompt``); TRL applies the model's chat template with the thinking switch
  (``rl.enable_thinking``) as ``pear_bench.prompts.prompt_ids`` does. Prompts longer than ``max_prompt_length`` tokens are dropped up front and
  counted in the run record (TRL 1.16 has no prompt truncation).
- Generation: vLLM colocated with training when ``generation_backend`` resolves to "vllm" (installed
  and a GPU present, for "auto"); transformers ``generate`` otherwise, the CPU path.
- Every GRPO setting whose TRL default is not vanilla GRPO is passed explicitly (see ``RLConfig``'s
  docstring for the table and reasons), and the complete resolved ``GRPOConfig`` is written to
  ``run_config.json`` next to every checkpoint and the final model.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pear_bench.config import ConfigError, RLConfig, add_config_arguments, config_from_args, run_record

# Problem-record fields a grader may read (pear_bench.problems.RECORD_FIELDS, minus the prompt).
DOC_FIELDS = ("id", "task", "question", "answer", "metadata")


def _text(completion) -> str:
    """A completion's text: TRL passes ``[{"role": "assistant", "content": ...}]`` for chat prompts."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


class CorrectnessReward:
    """``grade(completion, problem, task, finish_reason)`` for each completion: 1.0 if correct, else 0.0.

    A completion that did not end on one of the model's stop ids was cut at ``max_completion_length``
    and is never correct (``pear_bench.grading.grade``): TRL passes the completion's ids, whose last
    one tells (TRL's own ``completions/clipped_ratio`` uses the same test).

    Args:
        stop_ids: the ids generation stops at (the model's generation config and tokenizer eos).
    """

    __name__ = "correctness_reward"  # TRL logs each reward under its function's name

    def __init__(self, stop_ids: Sequence[int]):
        self.stop_ids = set(stop_ids)

    def __call__(self, completions: list, completion_ids: list[list[int]], **columns) -> list[float]:
        """Rewards for one batch; ``columns`` are the dataset's columns for the same rows (TRL's reward
        kwargs): the problem record fields ``DOC_FIELDS`` are read, the rest (``trainer_state``, ...) ignored."""
        from pear_bench.grading import grade_batch

        texts = [_text(c) for c in completions]
        finish = ["stop" if ids and ids[-1] in self.stop_ids else "length" for ids in completion_ids]
        docs = [{key: columns[key][i] for key in DOC_FIELDS} for i in range(len(texts))]
        rows_by_task: dict[str, list[int]] = defaultdict(list)
        for i, doc in enumerate(docs):
            rows_by_task[doc["task"]].append(i)
        rewards = [0.0] * len(texts)
        for task, rows in rows_by_task.items():
            scores = grade_batch([texts[i] for i in rows], [docs[i] for i in rows], task, progress=False,
                                 finish_reasons=[finish[i] for i in rows])
            for i, score in zip(rows, scores):
                rewards[i] = score
        return rewards


def format_reward(completions: list, task: list[str], **_) -> list[float]:
    """1.0 where ``pear_bench.grading.extract_answer`` finds a final answer in the completion, else 0.0."""
    from pear_bench.grading import extract_answer

    return [float(extract_answer(_text(c), t) is not None) for c, t in zip(completions, task)]


def resolve_generation_backend(config: RLConfig) -> str:
    """"vllm" or "hf": "auto" picks vLLM when it is installed and a CUDA device is present."""
    if config.generation_backend != "auto":
        return config.generation_backend
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def grpo_config(config: RLConfig, backend: str):
    """The ``trl.GRPOConfig`` of ``config``: every GRPO choice passed explicitly (RLConfig's table)."""
    from trl import GRPOConfig

    return GRPOConfig(
        **config.trainer_kwargs(),
        # the objective
        loss_type=config.loss_type,
        beta=config.beta,
        use_bias_correction_kl=config.use_bias_correction_kl,
        scale_rewards=config.scale_rewards,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon if config.epsilon_high is None else config.epsilon_high,
        num_iterations=config.num_iterations,
        importance_sampling_level=config.importance_sampling_level,
        mask_truncated_completions=config.mask_truncated_completions,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=[1.0, config.format_reward_weight] if config.format_reward_weight > 0 else [1.0],
        # sampling
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        min_p=None,
        repetition_penalty=1.0,
        # generation backend
        use_vllm=backend == "vllm",
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=config.vllm_importance_sampling_correction,
        log_completions=config.log_completions,
        # the prompt: pear_bench.prompts' settings (TRL applies the same chat-template call)
        chat_template_kwargs=prompt_settings(config).template_kwargs(),
    )


def prompt_settings(config: RLConfig):
    from pear_bench.prompts import PromptSettings, read_fewshot

    return PromptSettings(system_prompt=config.system_prompt, enable_thinking=config.enable_thinking,
                          fewshot=read_fewshot(config.fewshot) if config.fewshot else ())


def prompt_dataset(config: RLConfig, tokenizer):
    """Problem records as TRL prompts (``pear_bench.prompts`` messages) plus their grading fields;
    returns (dataset, n_dropped).

    TRL renders each prompt with ``apply_chat_template(messages, add_generation_prompt=True,
    tokenize=True, **chat_template_kwargs)``, the call of ``pear_bench.prompts.prompt_ids``, so RL
    prompts are token for token those of SFT data and evaluation. Prompts longer than
    ``max_prompt_length`` tokens are dropped.
    """
    from datasets import Dataset

    from pear_bench.problems import read_problems
    from pear_bench.prompts import problem_messages, prompt_ids

    settings = prompt_settings(config)
    records = read_problems(config.prompts)[: config.num_prompts]
    rows = []
    for record in records:
        messages = problem_messages(record, settings)
        if len(prompt_ids(tokenizer, messages, settings)) <= config.max_prompt_length:
            rows.append({"prompt": messages, **{key: record[key] for key in DOC_FIELDS}})
    if not rows:
        raise ConfigError(f"rl.max_prompt_length: all {len(records)} prompts of {config.prompts} are longer "
                          f"than {config.max_prompt_length} tokens")
    return Dataset.from_list(rows), len(records) - len(rows)


def build_trainer(config: RLConfig, callbacks: Sequence = ()):
    """Tokenizer, prompts, model and ``GRPOTrainer`` for ``config``; returns (trainer, record)."""
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from pear_bench.generation import stop_token_ids
    from pear_bench.trainers.checkpoints import RunRecordCallback, load_model

    tokenizer = AutoTokenizer.from_pretrained(config.model, padding_side="left")
    train_dataset, n_dropped = prompt_dataset(config, tokenizer)
    backend = resolve_generation_backend(config)
    args = grpo_config(config, backend)
    model = load_model(config)
    stop_ids = stop_token_ids(model.generation_config.eos_token_id, tokenizer)
    reward_funcs = [CorrectnessReward(stop_ids)] + ([format_reward] if config.format_reward_weight > 0 else [])
    record = run_record(config, generation_backend=backend, prompts=len(train_dataset),
                        prompts_dropped_over_max_prompt_length=n_dropped, stop_ids=stop_ids,
                        grpo_config=args.to_dict())
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=config.lora_config(),
                          callbacks=[RunRecordCallback(record), *callbacks])
    return trainer, record


def train_grpo(config: RLConfig, callbacks: Sequence = ()) -> Path:
    """Run GRPO per ``config`` (resuming if asked), save the final model; returns its directory."""
    from pear_bench.trainers.checkpoints import resume_checkpoint, save_final_model

    checkpoint = resume_checkpoint(config)
    trainer, record = build_trainer(config, callbacks)
    trainer.train(resume_from_checkpoint=checkpoint)
    return save_final_model(trainer, trainer.processing_class, config, record)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    add_config_arguments(parser, "rl")


def main(args: argparse.Namespace) -> int:
    output = train_grpo(config_from_args(args, "rl"))
    print(f"pear-bench rl: saved {output}")
    return 0
