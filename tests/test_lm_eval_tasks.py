"""The lm-eval tasks under tasks/: configuration, pass@k through lm-eval's own pipeline, a CPU run.

* Every task's metric list agrees with what its process_results returns for its `repeats`.
* A scripted model whose samples are correct in a known pattern goes through lm-eval's real
  machinery (YAML loading via include_path, custom_dataset, repeats, take_first_k, process_results,
  aggregation); the reported pass@k equal exact enumeration over k-subsets of that pattern.
* (slow) The `lm_eval` command runs a tiny local Qwen2 model on CPU over a local AIME-format file
  and a game task, from an unrelated working directory.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from pear_bench.grading import GAMES
from pear_bench.metrics import pass_ks

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
TASK_YAMLS = sorted(p for p in TASKS_DIR.glob("*/*.yaml") if "group:" not in p.read_text())  # tasks, not groups
AIME_ROWS = [{"question": "What is 35 + 35?", "answer": "70"}, {"question": "What is 2 + 3?", "answer": 5},
             {"question": "What is 6 * 7?", "answer": "042"}]


def resolved_config(path: Path) -> dict:
    """The task YAML with its `include:` merged in (lm-eval's rule: the including file wins)."""
    config = yaml.safe_load(path.read_text().replace("!function", ""))
    if "include" in config:
        config = {**resolved_config(path.parent / config.pop("include")), **config}
    return config


@pytest.fixture
def aime_file(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in AIME_ROWS))
    return path


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


def test_pass_at_k_through_lm_eval_equals_enumeration(aime_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory
    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"aime2025_path": str(aime_file)})
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
def test_lm_eval_command_runs_a_tiny_model_on_cpu(aime_file, tmp_path):
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
        "--metadata", json.dumps({"aime2025_path": str(aime_file)}), "--output_path", str(tmp_path / "out"),
    ]
    subprocess.run(command, cwd=workdir, check=True, capture_output=True, text=True, timeout=300)
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    for task in ("pear_aime2025", "pear_chain_sum"):
        assert results["n-samples"][task]["effective"] == 1
        for metric in ("pass@1", "pass@2", "pass@4", "pass@8", "avg@8"):
            assert 0.0 <= results["results"][task][f"{metric},samples"] <= 1.0
