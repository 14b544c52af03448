"""The lm-eval tasks under tasks/: configuration, data, pass@k through lm-eval's own pipeline, a CPU run.

* Every task's metric list agrees with what its process_results returns for its `repeats`.
* Every task, as lm-eval loads it, samples as `pear-bench eval` does by default (read from its parser).
* A game task evaluates exactly the eval split `pear-bench make-data` wrote for a grid (mini.yaml's
  arguments), which shares no question with that grid's train split nor with the train splits of
  grids seeded nearby; without a split it refuses, naming what to pass.
* A scripted model whose samples are correct in a known pattern goes through lm-eval's real
  machinery (YAML loading via include_path, custom_dataset, repeats, take_first_k, process_results,
  aggregation); the reported pass@k equal exact enumeration over k-subsets of that pattern.
* (slow) The `lm_eval` command runs a tiny local Qwen2 model on CPU over a local AIME-format file
  and a game task, from an unrelated working directory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from pear_bench.cli import main as cli_main
from pear_bench.errors import InputError
from pear_bench.evaluate import configure_parser
from pear_bench.generation import SamplingConfig
from pear_bench.grading import GAMES
from pear_bench.metrics import pass_ks

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tasks"
TASK_YAMLS = sorted(p for p in TASKS_DIR.glob("*/*.yaml") if "group:" not in p.read_text())  # tasks, not groups
AIME_ROWS = [{"question": "What is 35 + 35?", "answer": "70"}, {"question": "What is 2 + 3?", "answer": 5},
             {"question": "What is 6 * 7?", "answer": "042"}]


def resolved_config(path: Path) -> dict:
    """The task YAML with its `include:` merged in (lm-eval's rule: the including file wins)."""
    config = yaml.safe_load(path.read_text().replace("!function", ""))
    if "include" in config:
        config = {**resolved_config(path.parent / config.pop("include")), **config}
    return config


def make_data(args: str, out: Path) -> Path:
    """``pear-bench make-data ARGS --out OUT`` in process, as the workflow's make_data rule runs it."""
    assert cli_main(["make-data", *shlex.split(args), "--out", str(out)]) == 0
    return out


def questions(path: Path) -> list[str]:
    """The question of each line of a JSONL file, read directly (not through pear_bench)."""
    return [json.loads(line)["question"] for line in path.read_text().splitlines()]


def task_manager(metadata: dict | None = None) -> TaskManager:
    """lm-eval's loader for tasks/ only (indexing lm-eval's own thousands of tasks takes ~15 s)."""
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


def load_tasks(names: list[str], metadata: dict | None = None) -> dict:
    """lm-eval's Task objects, loaded from tasks/ as `lm_eval --include_path tasks/ --metadata ...` does."""
    return task_manager(metadata).load(names)["tasks"]


@pytest.fixture(scope="module")
def aime_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("aime") / "aime.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in AIME_ROWS))
    return path


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory):
    """A data directory as a grid's make_data rules write it: <dir>/<game>/{eval,train}.jsonl per game."""
    root = tmp_path_factory.mktemp("data")
    for game in GAMES:
        make_data(f"game {game} --seed 0 --eval-size 3 --train-size 5", root / game)
    return root


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.stem)
def test_metric_list_matches_process_results_for_the_repeats(path):
    config = resolved_config(path)
    n = config["repeats"]
    (take_k,) = [f for f in config["filter_list"][0]["filter"] if f["function"] == "take_first_k"]
    assert take_k["k"] == n
    reported = [m["metric"] for m in config["metric_list"]]
    assert reported == [f"pass@{k}" for k in pass_ks(n)] + [f"avg@{n}"]
    assert config["custom_dataset"].startswith("utils.") and "dataset_path" not in config


def test_games_group_lists_every_supported_game():
    group = yaml.safe_load((TASKS_DIR / "pear_games" / "pear_games.yaml").read_text())
    assert group["task"] == [f"pear_{game}" for game in GAMES]
    assert sorted(p.stem for p in (TASKS_DIR / "pear_games").glob("pear_*.yaml")) == sorted(group["task"] + ["pear_games"])


def test_every_task_samples_with_pear_bench_eval_defaults(aime_file, games_dir, tmp_path):
    synlogic = tmp_path / "synlogic.jsonl"
    synlogic.write_text(json.dumps({"prompt": "Is 3 odd?", "answer": "yes", "data_source": "demo"}) + "\n")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    defaults = parser.parse_args(["--model", "m", "--problems", "p", "--output", "o"])
    full_vocabulary = SamplingConfig()  # eval leaves top_p/top_k at these (truncation is refused)
    tasks = load_tasks(["pear_aime2025", "pear_synlogic", "pear_games"],
                       {"aime2025_path": str(aime_file), "synlogic_path": str(synlogic), "games_dir": str(games_dir)})
    assert sorted(tasks) == sorted(p.stem for p in TASK_YAMLS)
    for name, task in tasks.items():
        config = task.config
        assert config.repeats == defaults.samples, name
        assert config.generation_kwargs == {
            "until": [], "do_sample": True, "temperature": defaults.temperature, "top_p": full_vocabulary.top_p,
            "top_k": full_vocabulary.top_k, "repetition_penalty": 1.0, "max_gen_toks": defaults.max_new_tokens,
        }, name


# ---------------------------------------------------------------------------------------------
# Game tasks read the grid's eval split


def test_game_task_loads_exactly_the_grids_eval_split_disjoint_from_training(tmp_path):
    mini = yaml.safe_load((ROOT / "workflows" / "config" / "mini.yaml").read_text())
    data = tmp_path / "results" / "mini" / "data"
    split = make_data(mini["data"]["chain_sum"], data / "chain_sum")
    eval_questions = questions(split / "eval.jsonl")
    for metadata in ({"games_dir": str(data)}, {"problems": str(split / "eval.jsonl")}):
        task = load_tasks(["pear_chain_sum"], metadata)["pear_chain_sum"]
        assert [doc["question"] for doc in task.eval_docs] == eval_questions, metadata
    assert len(eval_questions) == 200 == len(set(eval_questions))
    assert not set(eval_questions) & set(questions(split / "train.jsonl"))


def test_eval_split_shares_no_question_with_nearby_seeds_training_streams(tmp_path):
    # A problem space far larger than the splits, so a shared question can only come from the
    # streams overlapping (item i of seed s is Random(s + i)), not from two draws colliding.
    config = "--set min_terms=4 --set max_terms=4 --set min_digits=3 --set max_digits=3"
    split = make_data(f"game chain_sum --seed 0 --eval-size 50 --train-size 500 {config}", tmp_path / "0")
    task = load_tasks(["pear_chain_sum"], {"problems": str(split / "eval.jsonl")})["pear_chain_sum"]
    loaded = {doc["question"] for doc in task.eval_docs}
    assert loaded == set(questions(split / "eval.jsonl"))
    for seed in range(1, 9):  # the same grid rerun with another seed
        other = make_data(f"game chain_sum --seed {seed} --eval-size 50 --train-size 500 {config}", tmp_path / str(seed))
        assert not loaded & set(questions(other / "train.jsonl")), seed
    # The comparison does catch overlapping streams: a training stream that starts where this eval
    # split does (what the old fixed seed-2026 eval set was for grids seeded just below 2026).
    overlapping = make_data(f"game chain_sum --seed 0 --eval-size 0 --train-size 500 {config}", tmp_path / "train-only")
    assert loaded <= set(questions(overlapping / "train.jsonl"))


@pytest.mark.parametrize("metadata, message", [
    ({}, "needs the eval split a grid wrote"),
    ({"games_dir": "/a", "problems": "/b/eval.jsonl"}, "give one"),
])
def test_game_task_without_one_split_refuses_saying_what_to_pass(metadata, message):
    with pytest.raises(InputError, match=message) as caught:
        load_tasks(["pear_maze"], metadata)
    assert "\n" not in str(caught.value)
    assert "games_dir" in str(caught.value)


def test_game_task_refuses_another_games_split(games_dir):
    with pytest.raises(InputError, match="holds chain_sum problems, not maze"):
        load_tasks(["pear_maze"], {"problems": str(games_dir / "chain_sum" / "eval.jsonl")})


# ---------------------------------------------------------------------------------------------
# pass@k through lm-eval, with samples whose correctness is known


CORRECT_SAMPLES = {0: set(), 1: {3}, 2: {0, 1, 2, 4, 5, 7}}  # doc id -> indices of its correct samples


def scripted_correct(task: str, doc_id: int, sample: int) -> bool:
    return sample in CORRECT_SAMPLES[doc_id]


class ScriptedLM(LM):
    """Answers sample s of doc d correctly iff scripted_correct(task, d, s)."""

    def __init__(self):
        super().__init__()
        self.samples_seen: dict[tuple[str, int], int] = {}

    def generate_until(self, requests):
        responses = []
        for request in requests:  # lm-eval passes each request `repeats` times in a row
            key = (request.task_name, request.doc_id)
            sample = self.samples_seen.get(key, 0)
            self.samples_seen[key] = sample + 1
            answer = request.doc["answer"] if scripted_correct(*key, sample) else "wrong"
            if request.task_name == "pear_aime2025":
                responses.append(f"Some reasoning. So the answer is $\\boxed{{{answer}}}$.")
            else:
                responses.append(f"Thinking...\n<answer>{answer}</answer>")
        return responses

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def expected_pass_at_k(task: str, n_docs: int, n: int, k: int) -> float:
    """Mean over docs of the fraction of k-subsets of the n scripted samples holding a correct one."""
    per_doc = []
    for doc_id in range(n_docs):
        correct = [scripted_correct(task, doc_id, s) for s in range(n)]
        subsets = list(itertools.combinations(correct, k))
        per_doc.append(Fraction(sum(any(s) for s in subsets), len(subsets)))
    return float(sum(per_doc) / n_docs)


def test_pass_at_k_through_lm_eval_equals_enumeration(aime_file, games_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory
    manager = task_manager({"aime2025_path": str(aime_file), "games_dir": str(games_dir)})
    out = simple_evaluate(model=ScriptedLM(), tasks=["pear_aime2025", "pear_maze"], task_manager=manager,
                          limit=3, log_samples=False, bootstrap_iters=0)
    for task in ("pear_aime2025", "pear_maze"):
        results = out["results"][task]
        for k in (1, 2, 4, 8):
            assert results[f"pass@{k},samples"] == pytest.approx(expected_pass_at_k(task, 3, 8, k)), (task, k)
        avg = sum(scripted_correct(task, d, s) for d in range(3) for s in range(8)) / 24
        assert results["avg@8,samples"] == pytest.approx(avg)
    assert out["n-samples"]["pear_aime2025"] == {"original": 3, "effective": 3}


# ---------------------------------------------------------------------------------------------
# The real command on CPU


@pytest.mark.slow
def test_lm_eval_command_runs_a_tiny_model_on_cpu(aime_file, games_dir, tmp_path):
    from pear_bench.tiny_models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "model", texts=[r"The answer is \boxed{70}. <answer>3</answer>"] * 20,
                                 vocab_size=300)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    lm_eval = Path(sys.executable).with_name("lm_eval")
    command = [
        str(lm_eval), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu",
        "--include_path", str(TASKS_DIR), "--tasks", "pear_aime2025,pear_chain_sum", "--apply_chat_template",
        "--limit", "1", "--batch_size", "8", "--gen_kwargs", "max_gen_toks=8",
        "--metadata", json.dumps({"aime2025_path": str(aime_file), "games_dir": str(games_dir)}),
        "--output_path", str(tmp_path / "out"),
    ]
    subprocess.run(command, cwd=workdir, check=True, capture_output=True, text=True, timeout=300)
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    for task in ("pear_aime2025", "pear_chain_sum"):
        assert results["n-samples"][task]["effective"] == 1
        for metric in ("pass@1", "pass@2", "pass@4", "pass@8", "avg@8"):
            assert 0.0 <= results["results"][task][f"{metric},samples"] <= 1.0
