"""lm-eval hooks for pear_aime2025: data from pear_bench.problems, scores from pear_bench.grading."""

from datasets import Dataset, DatasetDict

from pear_bench.grading import grade_batch
from pear_bench.metrics import problem_metrics
from pear_bench.problems import AIME2025_DATASET, load_aime2025


def load_docs(aime2025_path=None, **_lm_eval_metadata):
    """The 30 problems from the hub, or from ``--metadata '{"aime2025_path": ...}'`` (a local JSONL)."""
    return DatasetDict({"test": Dataset.from_list(load_aime2025(aime2025_path or AIME2025_DATASET))})


def process_results(doc, results):
    (samples,) = results  # take_first_k leaves one list of k responses per doc
    return problem_metrics(grade_batch(samples, [doc] * len(samples), doc["task"], progress=False))
