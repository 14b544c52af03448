"""Config schema: YAML + overrides, errors that name the key, failure before any model loads, run records."""

import argparse
import json

import pytest
import yaml

from pear_bench.config import (
    ConfigError,
    RLConfig,
    SFTConfig,
    add_config_arguments,
    build_config,
    config_from_args,
    load_config,
    run_record,
    write_run_record,
)
from pear_bench.sft_objectives import OBJECTIVES


@pytest.fixture
def paths(tmp_path):
    """A model directory, an SFT dataset file and a prompts file that exist (contents are not read here)."""
    model = tmp_path / "model"
    model.mkdir()
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("")
    return {"model": str(model), "dataset": str(dataset), "prompts": str(prompts),
            "output_dir": str(tmp_path / "out")}


def sft_values(paths, **extra):
    return {"model": paths["model"], "dataset": paths["dataset"], "output_dir": paths["output_dir"], **extra}


def rl_values(paths, **extra):
    return {"model": paths["model"], "prompts": paths["prompts"], "output_dir": paths["output_dir"], **extra}


def write_yaml(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_yaml_sections_and_overrides_resolve_in_order(tmp_path, paths):
    path = write_yaml(tmp_path, {"sft": sft_values(paths, method="pear-block", gamma=0.99, block_size=8),
                                 "rl": rl_values(paths, beta=0.0)})
    sft = load_config(path, "sft", {"block_size": 2})
    assert isinstance(sft, SFTConfig)
    assert (sft.method, sft.gamma, sft.block_size) == ("pear-block", 0.99, 2)  # override wins over the file
    assert sft.delta_clip == (-0.08, 0.3) and sft.log_weight_clip == (-10.0, 5.0)  # DESIGN.md defaults
    rl = load_config(path, "rl")
    assert isinstance(rl, RLConfig) and rl.beta == 0.0


def test_yaml_exponent_without_decimal_point_is_a_float(tmp_path, paths):
    # PyYAML reads `1e-5` (YAML 1.1) as a string; a float field must still take it.
    path = tmp_path / "config.yaml"
    path.write_text(f"sft:\n  model: {paths['model']}\n  dataset: {paths['dataset']}\n  output_dir: o\n"
                    "  learning_rate: 1e-5\n")
    assert load_config(path, "sft").learning_rate == 1e-5


def test_null_clip_bounds_turn_the_clip_off(paths):
    config = build_config("sft", sft_values(paths, delta_min=None, delta_max=None, logw_min=None, logw_max=None))
    assert config.delta_clip is None and config.log_weight_clip is None


@pytest.mark.parametrize("values, key, allowed", [
    ({"method": "pear-tokn"}, "sft.method", "pear-token"),
    ({"gamma": -0.5}, "sft.gamma", "(0, 1]"),
    ({"gamma": 1.5}, "sft.gamma", "(0, 1]"),
    ({"block_size": 0}, "sft.block_size", ">= 1"),
    ({"normaliser": "mean"}, "sft.normaliser", "'token', 'sequence', 'sum'"),
    ({"gamma": "high"}, "sft.gamma", "expected float"),
    ({"block_size": 2.5}, "sft.block_size", "expected int"),
    ({"learning_rate": 0}, "sft.learning_rate", "> 0"),
    ({"gama": 0.9}, "did you mean 'gamma'", "allowed keys"),
    ({"delta_min": None}, "sft.delta_min and sft.delta_max", "both be null"),
    ({"logw_min": 6.0}, "sft.logw_min", "<= sft.logw_max"),
    ({"warmup_steps": 10}, "sft.warmup_steps", "constant_with_warmup"),  # with lr_scheduler_type constant below
    ({"lr_scheduler_type": "cosyne"}, "sft.lr_scheduler_type", "'cosine'"),
])
def test_bad_sft_values_name_the_key_and_what_is_allowed(paths, values, key, allowed):
    if "warmup_steps" in values:
        values = {**values, "lr_scheduler_type": "constant"}
    with pytest.raises(ConfigError) as err:
        build_config("sft", sft_values(paths, **values))
    assert key in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("stage, values", [("sft", sft_values), ("rl", rl_values)])
def test_bf16_weights_are_refused_unless_asked_for_explicitly(paths, stage, values):
    with pytest.raises(ConfigError, match=rf"{stage}.dtype: bfloat16 weights have no float32 master copy.*"
                                          rf"{stage}.pure_bf16: true"):
        build_config(stage, values(paths, dtype="bfloat16", bf16=True))
    with pytest.raises(ConfigError, match=rf"{stage}.pure_bf16: true needs dtype: bfloat16"):
        build_config(stage, values(paths, pure_bf16=True))
    assert build_config(stage, values(paths, dtype="bfloat16", pure_bf16=True)).precision.startswith("pure bfloat16")
    assert build_config(stage, values(paths, dtype="bfloat16", use_lora=True)).precision.startswith(
        "bfloat16 frozen base")  # peft keeps the adapters, the only trained weights, in float32
    assert build_config(stage, values(paths, bf16=True)).precision == "float32 master weights, bf16 autocast"
    assert build_config(stage, values(paths)).save_total_limit == 1  # disk is bounded unless asked otherwise


def test_unknown_method_lists_every_registered_objective(paths):
    with pytest.raises(ConfigError) as err:
        build_config("sft", sft_values(paths, method="nope"))
    assert all(name in str(err.value) for name in OBJECTIVES)


@pytest.mark.parametrize("missing, message", [
    ({"dataset": None}, "sft.dataset is required"),
    ({"dataset": "no/such/file.jsonl"}, "sft.dataset: no such file"),
    ({"model": None}, "sft.model is required"),
    ({"model": "./no-such-model"}, "sft.model: no such directory"),
    ({"output_dir": None}, "sft.output_dir is required"),
])
def test_missing_required_settings_and_paths(paths, missing, message):
    with pytest.raises(ConfigError, match=message):
        build_config("sft", {**sft_values(paths), **missing})


def test_hub_id_is_not_checked_offline(paths):
    assert build_config("sft", sft_values(paths, model="Qwen/Qwen2.5-1.5B")).model == "Qwen/Qwen2.5-1.5B"


@pytest.mark.parametrize("values, message", [
    ({"num_generations": 3}, "rl.num_generations (3) must divide"),  # 8 completions per step
    ({"num_generations": 1}, "rl.num_generations must be >= 2"),
    ({"loss_type": "ppo"}, "rl.loss_type must be one of"),
    ({"scale_rewards": True}, "rl.scale_rewards: expected str"),
    ({"beta": -0.1}, "rl.beta must be >= 0"),
    ({"prompts": None}, "rl.prompts is required"),
    ({"generation_backend": "sglang"}, "rl.generation_backend must be one of ['auto', 'vllm', 'hf']"),
])
def test_bad_rl_values_name_the_key(paths, values, message):
    with pytest.raises(ConfigError) as err:
        build_config("rl", {**rl_values(paths), **values})
    assert message in str(err.value)


def test_rl_defaults_are_vanilla_grpo(paths):
    # DeepSeekMath (arXiv 2402.03300) Sec. 4.2: per-sequence token mean, KL coefficient 0.04 on the
    # unweighted k3 estimator, group-normalised advantages, clip 0.2, one update per batch, lr 1e-6.
    config = build_config("rl", rl_values(paths))
    assert (config.loss_type, config.beta, config.use_bias_correction_kl) == ("grpo", 0.04, False)
    assert (config.scale_rewards, config.epsilon, config.epsilon_high, config.num_iterations) == ("group", 0.2, None, 1)
    assert config.vllm_importance_sampling_correction is False
    assert config.learning_rate == 1e-6 and config.lr_scheduler_type == "constant_with_warmup"


def test_a_grid_config_carries_the_stage_sections_next_to_its_own_keys(tmp_path, paths):
    path = write_yaml(tmp_path, {"grid": "mini", "bench": {"step_args": "--steps 1"},
                                 "sft": sft_values(paths, method="dft"), "rl": rl_values(paths)})
    assert load_config(path, "sft").method == "dft" and load_config(path, "rl").beta == 0.04


def test_file_errors_name_the_file_and_section(tmp_path, paths):
    with pytest.raises(ConfigError, match="expected a mapping with an 'sft' section"):
        load_config(write_yaml(tmp_path, ["sft"]), "sft")
    with pytest.raises(ConfigError, match="has no 'rl' section"):
        load_config(write_yaml(tmp_path, {"sft": sft_values(paths)}), "rl")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", "sft")


def test_cli_flags_override_the_file_with_both_spellings(tmp_path, paths):
    path = write_yaml(tmp_path, {"sft": sft_values(paths, gamma=0.9)})
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "sft")
    args = parser.parse_args(["--config", str(path), "--block-size", "3", "--delta_min", "null", "--delta_max",
                              "null", "--method", "pear-token-dft", "--lora_target_modules", "[q_proj, v_proj]"])
    config = config_from_args(args, "sft")
    assert (config.gamma, config.block_size, config.method) == (0.9, 3, "pear-token-dft")
    assert config.delta_clip is None and config.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("stage, argv, key", [
    ("sft", ["--method", "nope"], "sft.method"),
    ("sft", ["--gamma", "-1"], "sft.gamma"),
    ("sft", ["--dataset", "missing.jsonl"], "sft.dataset"),
    ("rl", ["--prompts", "missing.jsonl"], "rl.prompts"),
    ("rl", ["--beta", "-0.1"], "rl.beta"),
])
def test_cli_fails_on_a_bad_config_before_loading_anything(monkeypatch, capsys, paths, stage, argv, key):
    import transformers

    from pear_bench.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    data = ["--dataset", paths["dataset"]] if stage == "sft" else ["--prompts", paths["prompts"]]
    base = [stage, "--model", paths["model"], "--output_dir", paths["output_dir"], *data]
    assert main(base + argv) == 2
    assert key in capsys.readouterr().err


def test_run_record_holds_config_seed_and_versions(tmp_path, paths):
    config = build_config("sft", sft_values(paths, seed=3, method="iw-sft"))
    path = write_run_record(run_record(config, records=5), tmp_path / "ckpt")
    record = json.loads(path.read_text())
    assert record["stage"] == "sft" and record["seed"] == 3 and record["records"] == 5
    assert record["config"]["method"] == "iw-sft" and record["config"]["gamma"] == 0.999
    for package in ("torch", "transformers", "trl", "pear-bench"):
        assert record["versions"][package]
