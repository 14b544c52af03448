"""`pear-bench rl`: the reward is the project grader, GRPO's settings are vanilla and explicit, runs repeat."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import pear_bench.grading
from pear_bench.config import RUN_RECORD, build_config
from pear_bench.problems import make_record, write_problems
from pear_bench.trainers.grpo import CorrectnessReward, format_reward, grpo_config, train_grpo


def chat(text):
    return [{"role": "assistant", "content": text}]


def columns(records):
    """The reward kwargs TRL passes: one list per dataset column."""
    return {key: [r[key] for r in records] for key in records[0]}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """Chain-sum problems whose answers are 1, 2 or 3: the tiny teacher answers right about a third of the time."""
    question = "State the final answer to the following arithmetic problem: {} + 4 - {} ="
    records = [make_record(f"chain_sum-{i}", "chain_sum", question.format(a, a + 4 - k), str(k))
               for i, (a, k) in enumerate(zip(range(3, 30, 3), [1, 2, 3] * 3))]
    path = tmp_path_factory.mktemp("prompts") / "train.jsonl"
    write_problems(path, records)
    return path


def test_correctness_reward_is_the_project_grader(monkeypatch):
    calls = []
    grade_batch = pear_bench.grading.grade_batch

    def spy(responses, docs, task, **kwargs):
        calls.append(task)
        return grade_batch(responses, docs, task, **kwargs)

    monkeypatch.setattr(pear_bench.grading, "grade_batch", spy)
    game = make_record("chain_sum-0", "chain_sum", "State the final answer: 5 + 4 - 7 =", "2")
    math = make_record("math-0", "math", "What is 1/2 as a decimal?", "0.5")
    records = [game, game, game, math, math]
    completions = [chat("5 + 4 = 9, 9 - 7 = 2. <answer>2</answer>"), chat("<answer>3</answer>"), chat("2"),
                   chat("So the answer is \\boxed{\\frac{1}{2}}."), chat("\\boxed{2}")]
    ended = [[5, 9], [9], [9], [5, 5, 9], [9]]  # every completion ends on the stop id 9
    rewards = CorrectnessReward([9])(completions, ended, **columns(records), trainer_state=None)
    assert rewards == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert sorted(calls) == ["chain_sum", "math"]  # one grader call per task in the batch


def test_a_completion_cut_at_the_length_limit_earns_no_reward():
    """The same correct texts, once ending on a stop id and once cut off (last id not a stop id)."""
    game = make_record("chain_sum-0", "chain_sum", "State the final answer: 5 + 4 - 7 =", "2")
    math = make_record("math-0", "math", "What is 1/2 as a decimal?", "0.5")
    records = [game, game, math, math]
    completions = [chat("<answer>2</answer>"), chat("<answer>2</answer>"), chat("\\boxed{0.5}"), chat("\\boxed{0.5}")]
    ids = [[4, 2], [4, 3], [7, 2], [7, 7]]
    assert CorrectnessReward([2])(completions, ids, **columns(records)) == [1.0, 0.0, 1.0, 0.0]
    assert CorrectnessReward([2, 3])(completions, ids, **columns(records)) == [1.0, 1.0, 1.0, 0.0]


def test_format_reward_checks_that_an_answer_can_be_extracted():
    tasks = ["chain_sum", "chain_sum", "math", "math"]
    completions = [chat("<answer>7</answer>"), chat("7"), chat("\\boxed{7}"), chat("seven")]
    assert format_reward(completions, task=tasks) == [1.0, 0.0, 1.0, 0.0]


def test_grpo_config_passes_vanilla_grpo_where_trl_defaults_differ(prompts, tmp_path):
    import dataclasses

    from trl import GRPOConfig

    config = build_config("rl", {"model": "Qwen/Qwen2.5-0.5B", "prompts": str(prompts),
                                 "output_dir": str(tmp_path)})
    ours = grpo_config(config, "hf").to_dict()  # enums as their values
    trl_defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    # DeepSeekMath (arXiv 2402.03300) Sec. 4.1-4.2: per-sequence mean of token losses, KL to the
    # reference with coefficient 0.04 (the unweighted k3 estimator), no sampler correction, a
    # constant learning rate.
    vanilla = {"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": False,
               "vllm_importance_sampling_correction": False, "lr_scheduler_type": "constant_with_warmup"}
    for key, value in vanilla.items():
        assert ours[key] == value, key
        assert trl_defaults[key] != value, f"{key}: not a TRL default that needs overriding"
    assert trl_defaults["bf16"] is None and ours["bf16"] is False  # TRL resolves None to bf16=True, fatal on CPU
    assert (ours["scale_rewards"], ours["epsilon"], ours["epsilon_high"]) == ("group", 0.2, 0.2)
    assert ours["num_iterations"] == 1
    assert (ours["learning_rate"], ours["temperature"], ours["top_p"], ours["top_k"]) == (1e-6, 1.0, 1.0, 0)
    assert (ours["use_vllm"], ours["num_generations"], ours["max_completion_length"]) == (False, 8, 512)


class Rewards(TrainerCallback):
    """The reward figures of every logging step."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "reward" in logs:
            self.logs.append({k: v for k, v in logs.items() if k.startswith("reward")})


def run(teacher, prompts, output_dir, seed):
    config = build_config("rl", {
        "model": str(teacher), "prompts": str(prompts), "output_dir": str(output_dir), "seed": seed,
        "num_generations": 4, "per_device_train_batch_size": 8, "max_steps": 2, "max_completion_length": 12,
        "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 1, "generation_backend": "hf"})
    rewards = Rewards()
    output = train_grpo(config, callbacks=[rewards])
    return output, rewards.logs


@pytest.mark.slow
def test_two_runs_with_the_same_seed_get_the_same_rewards(teacher, prompts, tmp_path):
    first, first_rewards = run(teacher, prompts, tmp_path / "a", seed=7)
    second, second_rewards = run(teacher, prompts, tmp_path / "b", seed=7)
    other, other_rewards = run(teacher, prompts, tmp_path / "c", seed=8)

    assert len(first_rewards) == 2 and first_rewards == second_rewards
    means = [log["rewards/correctness_reward/mean"] for log in first_rewards + other_rewards]
    assert any(0 < m < 1 for m in means)  # a mix of right and wrong answers: the rewards carry information
    a, b, c = (load_file(path / "model.safetensors") for path in (first, second, other))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert other_rewards != first_rewards or any(not torch.equal(a[name], c[name]) for name in a)

    record = json.loads((first / RUN_RECORD).read_text())
    assert record["generation_backend"] == "hf" and record["prompts"] == 9 and record["seed"] == 7
    assert record["grpo_config"]["loss_type"] == "grpo" and record["grpo_config"]["beta"] == 0.04
    # save_steps 1 of 2 steps, default save_total_limit 1: only the newest checkpoint stays, for resume
    assert sorted(c.name for c in first.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (first / "checkpoint-2" / RUN_RECORD).is_file()


def test_trl_tokenises_the_prompts_of_pear_bench_prompts(teacher, prompts, tmp_path):
    """TRL renders the dataset's prompts itself; they must be token for token the prompts of SFT and eval."""
    from pear_bench.problems import read_problems
    from pear_bench.prompts import PromptSettings, problem_prompt_ids
    from pear_bench.trainers.grpo import build_trainer

    fewshot = tmp_path / "shots.jsonl"
    fewshot.write_text(json.dumps({"prompt": "What is 1 + 1?", "response": "<answer>2</answer>"}) + "\n")
    config = build_config("rl", {"model": str(teacher), "prompts": str(prompts), "output_dir": str(tmp_path / "run"),
                                 "num_generations": 4, "per_device_train_batch_size": 8, "generation_backend": "hf",
                                 "system_prompt": "Answer briefly.", "enable_thinking": False,
                                 "fewshot": str(fewshot)})
    trainer, _ = build_trainer(config)
    rows = trainer.train_dataset.to_list()
    trl_ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    settings = PromptSettings(system_prompt="Answer briefly.", enable_thinking=False,
                              fewshot=(("What is 1 + 1?", "<answer>2</answer>"),))
    ours = [problem_prompt_ids(trainer.processing_class, record, settings) for record in read_problems(prompts)]
    assert [list(ids) for ids in trl_ids] == ours
    assert trainer.processing_class.decode(ours[0]).startswith(
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>2</answer><|im_end|>\n<|im_start|>user\n")
    assert trainer.args.chat_template_kwargs == {"enable_thinking": False}
