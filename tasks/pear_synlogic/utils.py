"""lm-eval hooks for pear_synlogic: data from pear_bench.problems, scores from pear_bench.grading."""

from datasets import Dataset, DatasetDict

from pear_bench.errors import InputError
from pear_bench.grading import grade_batch
from pear_bench.metrics import problem_metrics
from pear_bench.problems import load_synlogic


def load_docs(synlogic_path=None, **_lm_eval_metadata):
    """Rows of the local JSONL named by ``--metadata '{"synlogic_path": ...}'``."""
    if synlogic_path is None:
        raise InputError('pear_synlogic needs a local JSONL: --metadata \'{"synlogic_path": "/abs/file.jsonl"}\'')
    return DatasetDict({"test": Dataset.from_list(load_synlogic(synlogic_path))})


def process_results(doc, results):
    (samples,) = results  # take_first_k leaves one list of k responses per doc
    return problem_metrics(grade_batch(samples, [doc] * len(samples), doc["task"], progress=False))
