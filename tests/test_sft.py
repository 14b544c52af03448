"""`pear-bench sft`: the collator, the objectives through the trainer, checkpoints, resume, LoRA.

The SFT data are what the grid produces: the tiny ``teacher`` (tests/conftest.py) is the behaviour
policy, its correct answers are the responses, and its own scoring pass gives ``behavior_logprobs``.
Training starts from the teacher itself (rejection-sampling fine-tuning, iw-SFT's setting): there
every objective's loss, DFT's and the importance-weighted ones included, falls as the data are
learnt. (From a random start, DFT's loss -p log p and iw-SFT's growing weights first rise.)
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM, TrainerCallback

from pear_bench.config import RUN_RECORD, ConfigError, SFTConfig, build_config
from pear_bench.data import save_records
from pear_bench.logprobs import token_logprobs
from pear_bench.objectives import pear_weights
from pear_bench.sft_objectives import OBJECTIVES, get_objective, register_objective
from pear_bench.tiny_models import tiny_config
from pear_bench.trainers.sft import SFTCollator, build_trainer, prepare_records, train_sft

# a + b - c = 2: the answer the data teach (the teacher says 1, 2 or 3 about equally often).
QUESTIONS = [f"State the final answer to the following arithmetic problem: {a} + {b} - {a + b - 2} ="
             for a in range(0, 30, 3) for b in (1, 4)]


@pytest.fixture(scope="module")
def sft_data(teacher, tmp_path_factory):
    """(path of 20 SFT records answering "<answer>2</answer>" with the teacher's logprobs, their dicts)."""
    from pear_bench.score import score_responses

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True)["input_ids"] for q in QUESTIONS]
    responses = [tokenizer("<answer>2</answer>")["input_ids"] + [tokenizer.eos_token_id] for _ in QUESTIONS]
    with torch.inference_mode():
        logprobs = score_responses(model, prompts, responses, progress=False)
    records = [{"id": f"q{i}", "prompt_ids": p, "response_ids": r, "behavior_logprobs": lp.tolist()}
               for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs))]
    path = save_records(records, tmp_path_factory.mktemp("sft-data") / "data.jsonl")
    return path, records


@pytest.fixture(scope="module")
def random_student(teacher, tmp_path_factory):
    """A random-init model with the teacher's tokenizer: far from the teacher, so PEAR ratios are small."""
    path = tmp_path_factory.mktemp("student")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    torch.manual_seed(1)
    Qwen2ForCausalLM(tiny_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sft_config(model, dataset, output_dir, **values):
    settings = dict(model=str(model), dataset=str(dataset), output_dir=str(output_dir), learning_rate=1e-3,
                    lr_scheduler_type="constant", per_device_train_batch_size=8, logging_steps=1, save_steps=1000,
                    max_steps=10)
    return build_config("sft", {**settings, **values})


def whole_dataset_batch(trainer):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


# ---------------------------------------------------------------------------------------------
# The collator: ids, masks and behaviour logprobs on the same positions


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collator_keeps_behavior_logprobs_on_their_tokens(teacher, sft_data, padding_side):
    by_length = {len(r["prompt_ids"]): r for r in sft_data[1]}
    assert len(by_length) > 1
    records = [by_length[min(by_length)], by_length[max(by_length)]]  # the shorter one gets padding
    batch = SFTCollator(pad_token_id=0, padding_side=padding_side)(records)
    for b, r in enumerate(records):
        mask = batch["response_mask"][b]
        assert batch["input_ids"][b][mask].tolist() == r["response_ids"]
        assert batch["labels"][b][mask].tolist() == r["response_ids"]
        assert (batch["labels"][b][~mask] == -100).all()
        assert batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist() == r["prompt_ids"] + r["response_ids"]
        assert batch["behavior_logprobs"][b][mask].tolist() == pytest.approx(r["behavior_logprobs"])
        assert (batch["behavior_logprobs"][b][~mask] == 0).all()
    # The same positions are where the policy's logprobs land: scoring the batch with the behaviour
    # model itself reproduces the recorded behaviour logprobs (recorded one record at a time).
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    with torch.no_grad():
        logp = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]).logprobs
    torch.testing.assert_close(logp[batch["response_mask"]], batch["behavior_logprobs"][batch["response_mask"]],
                               rtol=0, atol=1e-4)


def test_records_over_max_length_are_dropped_whole_and_empty_prompts_refused(sft_data, random_student, tmp_path):
    from datasets import Dataset

    from pear_bench.data import load_records

    records = load_records(sft_data[0])
    lengths = sorted(len(r["prompt_ids"]) + len(r["response_ids"]) for r in sft_data[1])
    cut = lengths[0]  # the shortest records stay
    config = sft_config(random_student, sft_data[0], tmp_path, method="pear-token", max_length=cut)
    kept, dropped = prepare_records(records, config)
    assert len(kept) == sum(n <= cut for n in lengths) and dropped == sum(n > cut for n in lengths) > 0
    assert all(len(r["behavior_logprobs"]) == len(r["response_ids"]) for r in kept)  # nothing truncated

    empty = Dataset.from_list([{"id": "q-empty", "prompt_ids": [], "response_ids": [5], "behavior_logprobs": [-1.0]}])
    with pytest.raises(ValueError, match="q-empty"):
        prepare_records(empty, config)


# ---------------------------------------------------------------------------------------------
# compute_loss against independent references


def test_plain_sft_reproduces_transformers_loss(random_student, sft_data, tmp_path):
    trainer, _ = build_trainer(sft_config(random_student, sft_data[0], tmp_path, method="sft"))
    batch = whole_dataset_batch(trainer)
    model = trainer.model
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_accumulated_micro_batches_add_up_to_the_full_batch_loss(random_student, sft_data, tmp_path):
    # What Trainer does under gradient accumulation: each micro-batch gets the token count of all of them.
    trainer, _ = build_trainer(sft_config(random_student, sft_data[0], tmp_path, method="pear-token"))
    records = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    records[3] = {**records[3], "prompt_ids": records[3]["prompt_ids"][:4]}  # uneven lengths
    full = trainer.data_collator(records)
    halves = [trainer.data_collator(records[:7]), trainer.data_collator(records[7:])]
    n_tokens = full["response_mask"].sum()
    with torch.no_grad():
        whole = trainer.compute_loss(trainer.model, full)
        parts = sum(trainer.compute_loss(trainer.model, h, num_items_in_batch=n_tokens) for h in halves)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)


def test_zero_weight_example_leaves_the_gradient_unchanged(random_student, sft_data, tmp_path):
    """PEAR weights reach the gradient: an example whose sequence weight underflows to exactly 0
    contributes nothing, while the same example with weight ~1 changes the gradient."""
    trainer, _ = build_trainer(sft_config(random_student, sft_data[0], tmp_path, method="pear-sequence",
                                          normaliser="sum", delta_min=None, delta_max=None, logw_min=None,
                                          logw_max=None))
    model, collate = trainer.model, trainer.data_collator
    record = sft_data[1][0]
    a = {"prompt_ids": record["prompt_ids"], "response_ids": record["response_ids"]}
    b = {"prompt_ids": record["prompt_ids"][:6], "response_ids": list(range(40, 80))}

    def own_logprobs(r):  # the student's own logprobs: delta = 0, sequence weight 1
        batch = collate([{**r, "behavior_logprobs": [0.0] * len(r["response_ids"])}])
        with torch.no_grad():
            logp = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]).logprobs
        return logp[batch["response_mask"]].tolist()

    a["behavior_logprobs"] = own_logprobs(a)
    b_zero = {**b, "behavior_logprobs": [0.0] * 40}  # delta_t = log pi_theta ~ -5.8: exp(sum) = 0 in float32
    b_one = {**b, "behavior_logprobs": own_logprobs(b)}

    def gradient(records):
        model.zero_grad()
        trainer.compute_loss(model, collate(records)).backward()
        return [p.grad.clone() for p in model.parameters()]

    batch = collate([a, b_zero])
    weights = pear_weights(token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                          batch["response_mask"]).logprobs.detach(),
                           batch["behavior_logprobs"], batch["response_mask"], level="sequence",
                           delta_clip=None, log_weight_clip=None)
    assert (weights[1] == 0).all() and weights[0][batch["response_mask"][0]].sub(1).abs().max() < 1e-5

    alone, with_zero, with_one = gradient([a]), gradient([a, b_zero]), gradient([a, b_one])
    for g_alone, g_zero in zip(alone, with_zero):
        torch.testing.assert_close(g_zero, g_alone, rtol=1e-4, atol=1e-6)  # padding reorders float sums
    assert any((g_one - g_alone).abs().max() > 1e-3 for g_one, g_alone in zip(with_one, alone))


def test_iw_sft_weights_match_a_loop_over_sequences():
    # Qin & Springenberg's weight, written out per sequence in float64.
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 6, generator=g) * 3
    behavior = -torch.rand(3, 6, generator=g) * 3
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    cfg = SFTConfig(iw_temperature=2.0, iw_weight_max=1.5)
    loss, metrics = get_objective("iw-sft").fn(logp, {"behavior_logprobs": behavior}, mask, cfg)
    total, weights = 0.0, []
    for row in range(3):
        cols = [t for t in range(6) if mask[row, t]]
        mean_ratio = sum(float(logp[row, t]) - float(behavior[row, t]) for t in cols) / len(cols)
        w = min(math.exp(2.0 * mean_ratio), 1.5)
        weights.append(w)
        total += sum(-w * float(logp[row, t]) for t in cols)
    assert loss.item() == pytest.approx(total / int(mask.sum()), rel=1e-6)
    assert metrics["iw/weight_max"] == pytest.approx(max(weights))
    assert metrics["iw/weight_min"] == pytest.approx(min(weights))


def test_pear_over_dft_is_pear_weight_times_dft_loss():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(2, 7, generator=g) * 2
    behavior = -torch.rand(2, 7, generator=g) * 2
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :2] = False
    cfg = SFTConfig()
    loss, _ = get_objective("pear-block-dft").fn(logp, {"behavior_logprobs": behavior}, mask, cfg)
    w = pear_weights(logp, behavior, mask, level="block", gamma=cfg.gamma, block_size=cfg.block_size)
    expected = (w * -(logp.exp() * logp) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
@pytest.mark.parametrize("method", list(OBJECTIVES))
def test_every_method_trains_and_its_loss_falls(teacher, sft_data, tmp_path, method):
    trainer, _ = build_trainer(sft_config(teacher, sft_data[0], tmp_path, method=method))
    batch = whole_dataset_batch(trainer)
    with torch.no_grad():
        before = trainer.compute_loss(trainer.model, batch).item()
    trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(trainer.model, batch).item()
    assert after < 0.5 * before, (before, after)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 10 and all({"nll", "entropy"} <= entry.keys() for entry in logged)
    assert logged[-1]["nll"] < logged[0]["nll"]
    family = "pear/" if method.startswith("pear") else "iw/" if method == "iw-sft" else None
    if family:
        assert all(any(key.startswith(family) for key in entry) for entry in logged)


def test_a_registered_objective_runs_without_touching_the_trainer(random_student, sft_data, tmp_path):
    @register_objective("test-half-sft", needs_behavior_logprobs=False)
    def half_sft(logp, batch, response_mask, cfg, num_tokens=None):
        loss, _ = get_objective("sft").fn(logp, batch, response_mask, cfg, num_tokens)
        return 0.5 * loss, {"half/marker": 1.0}

    try:
        trainer, _ = build_trainer(sft_config(random_student, sft_data[0], tmp_path / "half", method="test-half-sft"))
        reference, _ = build_trainer(sft_config(random_student, sft_data[0], tmp_path / "sft", method="sft"))
        batch = whole_dataset_batch(trainer)
        assert "behavior_logprobs" not in batch  # the dataset passes only what the objective needs
        with torch.no_grad():
            torch.testing.assert_close(trainer.compute_loss(trainer.model, batch),
                                       0.5 * reference.compute_loss(reference.model, batch))
    finally:
        del OBJECTIVES["test-half-sft"]


class KillAfterStep(TrainerCallback):
    """Simulates a killed job: raises once the given optimizer step is done."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class FirstStep(TrainerCallback):
    """Remembers the global step at which this process started training."""

    step = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.step is None:
            self.step = state.global_step


@pytest.mark.slow
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_run(random_student, sft_data, tmp_path):
    settings = dict(method="pear-block", max_steps=6, save_steps=3, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, seed=5, lr_scheduler_type="cosine", warmup_steps=2)
    straight = train_sft(sft_config(random_student, sft_data[0], tmp_path / "straight", **settings))

    killed = sft_config(random_student, sft_data[0], tmp_path / "killed", **settings)
    with pytest.raises(KeyboardInterrupt):
        train_sft(killed, callbacks=[KillAfterStep(4)])
    checkpoint = tmp_path / "killed" / "checkpoint-3"
    assert json.loads((checkpoint / RUN_RECORD).read_text())["global_step"] == 3
    assert not (tmp_path / "killed" / "model.safetensors").exists()

    with pytest.raises(ConfigError, match="gamma: 0.999 -> 0.9"):  # a changed recipe does not resume silently
        train_sft(sft_config(random_student, sft_data[0], tmp_path / "killed", **settings, gamma=0.9))
    first_step = FirstStep()
    resumed = train_sft(sft_config(random_student, sft_data[0], tmp_path / "killed", **settings),
                        callbacks=[first_step])
    assert first_step.step == 3  # it continued from checkpoint-3 rather than starting over

    want, got = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    start = load_file(random_student / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert any(not torch.equal(want[name], start[name]) for name in want)  # training did move the weights
    record = json.loads((resumed / RUN_RECORD).read_text())
    assert record["global_step"] == 6 and record["config"]["method"] == "pear-block" and record["seed"] == 5


@pytest.mark.slow
def test_lora_with_gradient_checkpointing_saves_a_merged_plain_model(random_student, sft_data, tmp_path):
    config = sft_config(random_student, sft_data[0], tmp_path / "out", method="pear-token", use_lora=True,
                        lora_r=4, gradient_checkpointing=True, max_steps=2, save_steps=1)
    output = train_sft(config)
    assert (output / "adapter" / "adapter_config.json").is_file() and (output / RUN_RECORD).is_file()
    assert (output / "checkpoint-2" / RUN_RECORD).is_file() and not (output / "checkpoint-1").exists()
    merged = AutoModelForCausalLM.from_pretrained(output)  # a plain transformers model, no peft wrapper
    start = AutoModelForCausalLM.from_pretrained(random_student)
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    q_start = start.model.layers[0].self_attn.q_proj.weight
    assert q_merged.shape == q_start.shape and not torch.equal(q_merged, q_start)
    torch.testing.assert_close(merged.model.embed_tokens.weight, start.model.embed_tokens.weight)  # not adapted


@pytest.mark.slow
def test_sft_command_line_trains_and_records_its_config(random_student, sft_data, tmp_path):
    from pear_bench.cli import main

    config_file = tmp_path / "grid.yaml"
    config_file.write_text("sft:\n  method: pear-token\n  learning_rate: 1e-3\n  max_steps: 2\n  save_steps: 1\n")
    assert main(["sft", "--config", str(config_file), "--model", str(random_student), "--dataset",
                 str(sft_data[0]), "--output-dir", str(tmp_path / "out"), "--seed", "4", "--gamma", "0.99"]) == 0
    record = json.loads((tmp_path / "out" / RUN_RECORD).read_text())
    assert record["config"]["gamma"] == 0.99 and record["config"]["learning_rate"] == 1e-3 and record["seed"] == 4
    assert record["records"] == len(sft_data[1]) and record["global_step"] == 2


def test_sft_methods_benchmark_prints_a_ratio_per_method(capsys, tmp_path):
    import argparse

    from pear_bench.bench import sft_methods

    parser = argparse.ArgumentParser()
    sft_methods.configure_parser(parser)
    args = parser.parse_args(["--vocab-size", "300", "--seq-len", "24", "--steps", "2", "--warmup", "1",
                              "--methods", "pear-token", "iw-sft", "--json", str(tmp_path / "b.json")])
    assert sft_methods.main(args) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()}
    assert {"hf", "sft", "pear-token", "iw-sft"} <= rows.keys()
    assert rows["sft"][4] == "1.000" and rows["sft"][5] == "1.000"  # the baseline of both ratio columns
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data["median_s"]) == {"hf", "sft", "pear-token", "iw-sft"} and len(data["times_s"]["sft"]) == 2


def test_pi_theta_is_evaluated_at_the_policy_temperature(random_student, sft_data, tmp_path):
    """Plain SFT at policy_temperature 0.5: the mean NLL of log softmax(logits / 0.5), computed here in float64."""
    trainer, record = build_trainer(sft_config(random_student, sft_data[0], tmp_path, method="sft",
                                               policy_temperature=0.5))
    batch = whole_dataset_batch(trainer)
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch, num_items_in_batch=batch["response_mask"].sum())
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = (logits[:, :-1] / 0.5).log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["response_mask"][:, 1:]
    reference = -(logp * mask).sum() / mask.sum()
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)
    at_one = -(logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0] * mask).sum() / mask.sum()
    assert abs(float(at_one - reference)) > 1e-3  # the temperature matters on this model
    assert record["config"]["policy_temperature"] == 0.5


# ---------------------------------------------------------------------------------------------
# Precision: float32 master weights unless pure bf16 is asked for


def changed_fraction(after: dict, before: dict, names) -> float:
    changed = sum(int((after[n].float() != before[n].float()).sum()) for n in names)
    return changed / sum(before[n].numel() for n in names)


def test_float32_master_weights_keep_the_updates_pure_bf16_loses(random_student, sft_data, tmp_path):
    """At lr 1e-6 Adam moves each weight by ~1e-6 a step, far below bf16's spacing (2^-8 of the weight):
    with float32 master weights (bf16 autocast) nearly every weight moves, with pure bf16 only those
    whose bf16 half-spacing is below the two steps' ~2e-6 can, a fraction computed from the weights."""
    settings = dict(learning_rate=1e-6, max_steps=2, lr_scheduler_type="constant", weight_decay=0.0)
    mixed = train_sft(sft_config(random_student, sft_data[0], tmp_path / "mixed", bf16=True, **settings))
    pure = train_sft(sft_config(random_student, sft_data[0], tmp_path / "pure", dtype="bfloat16", pure_bf16=True,
                                **settings))
    start = load_file(random_student / "model.safetensors")
    matrices = [n for n, w in start.items() if w.dim() == 2]
    got_mixed, got_pure = load_file(mixed / "model.safetensors"), load_file(pure / "model.safetensors")
    assert all(got_mixed[n].dtype == torch.float32 for n in matrices)
    assert changed_fraction(got_mixed, start, matrices) > 0.9

    start_bf16 = {n: start[n].to(torch.bfloat16) for n in matrices}
    # bf16 keeps 8 significant bits: the gap to the next value at w is 2^(floor(log2|w|) - 7).
    movable = sum(int((2.0 ** (torch.floor(torch.log2(w.float().abs())) - 7) / 2 <= 2.5e-6).sum())
                  for w in start_bf16.values()) / sum(w.numel() for w in start_bf16.values())
    assert movable < 0.05  # the test means something: most bf16 weights cannot take a 2e-6 step
    assert changed_fraction(got_pure, start_bf16, matrices) <= movable + 1e-3

    assert json.loads((mixed / RUN_RECORD).read_text())["precision"] == "float32 master weights, bf16 autocast"
    assert json.loads((pure / RUN_RECORD).read_text())["precision"].startswith("pure bfloat16")


def test_plan_disk_figure_matches_what_a_run_writes(random_student, sft_data, tmp_path):
    """pear-bench plan's disk per SFT run (final model + save_total_limit checkpoints) against the bytes
    a micro run leaves: 4 steps, a save every step, only the newest checkpoint kept."""
    from pear_bench.plan import Shape, checkpoint_disk, tokenizer_bytes

    output = train_sft(sft_config(random_student, sft_data[0], tmp_path / "run", max_steps=4, save_steps=1))
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-4"]
    written = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    shape = Shape.from_hf_config(json.loads((random_student / "config.json").read_text()))
    planned = checkpoint_disk(shape, dtype="float32", use_lora=False, lora_r=8, saves=1,
                              tokenizer_bytes=tokenizer_bytes(str(random_student)))
    assert abs(written / sum(planned.values()) - 1) < 0.05, (written, planned)
