"""lm-eval hooks for the pear_<game> tasks: data from pear_bench.problems, scores from pear_bench.grading."""

from pathlib import Path

from datasets import Dataset, DatasetDict

from pear_bench.grading import grade_batch
from pear_bench.metrics import problem_metrics
from pear_bench.problems import game_splits, read_problems


def load_docs(game, seed, eval_size, games_dir=None, **_lm_eval_metadata):
    """The eval split generated from (game, seed, eval_size), or ``<games_dir>/<game>/eval.jsonl``."""
    if games_dir:
        records = read_problems(Path(games_dir).expanduser() / game / "eval.jsonl")
    else:
        records = game_splits(game, seed=seed, eval_size=eval_size)["eval"]
    return DatasetDict({"test": Dataset.from_list(records)})


def process_results(doc, results):
    (samples,) = results  # take_first_k leaves one list of k responses per doc
    return problem_metrics(grade_batch(samples, [doc] * len(samples), doc["task"], progress=False))
