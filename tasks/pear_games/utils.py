"""lm-eval hooks for the pear_<game> tasks: a grid's eval split from pear_bench.problems, scores from
pear_bench.grading.

There is no built-in problem set: reasoning-gym item i of seed s is Random(s + i), so any fixed seed's
items lie inside the training stream of some grid seeded nearby. The tasks evaluate the eval.jsonl
that `pear-bench make-data game ...` wrote for a grid, which is disjoint from that grid's train split.
"""

from pathlib import Path

from datasets import Dataset, DatasetDict

from pear_bench.errors import InputError
from pear_bench.evaluate import single_task
from pear_bench.grading import grade_batch
from pear_bench.metrics import problem_metrics
from pear_bench.problems import read_problems


def eval_split_path(game: str, problems: str | None = None, games_dir: str | None = None) -> Path:
    """The eval file to read: ``problems`` itself, or ``<games_dir>/<game>/eval.jsonl``.

    Raises:
        InputError: neither or both given (the message says what to pass).
    """
    if problems and games_dir:
        raise InputError(f"pear_{game}: --metadata has both 'problems' and 'games_dir'; give one")
    if not (problems or games_dir):
        raise InputError(f"pear_{game} needs the eval split a grid wrote: --metadata '{{\"games_dir\": "
                         f"\"results/<grid>/data\"}}' (reads <dir>/{game}/eval.jsonl) or '{{\"problems\": "
                         f"\"/abs/.../eval.jsonl\"}}' (from `pear-bench make-data game {game} ...`)")
    return Path(problems).expanduser() if problems else Path(games_dir).expanduser() / game / "eval.jsonl"


def load_docs(game, problems=None, games_dir=None, **_lm_eval_metadata):
    """The records of the eval split named by ``--metadata`` (see ``eval_split_path``), all of ``game``.

    Raises:
        InputError: no split named, a file of another task or of several, or an empty file.
        FileNotFoundError: the file does not exist.
    """
    path = eval_split_path(game, problems, games_dir)
    records = read_problems(path)
    try:
        task = single_task(records)
    except InputError as exc:  # empty, or several tasks: say which file
        raise InputError(f"{path}: {exc}") from None
    if task != game:
        raise InputError(f"{path} holds {task} problems, not {game}: pass it to pear_{task} only "
                         f"(or give games_dir, which each task reads for its own game)")
    return DatasetDict({"test": Dataset.from_list(records)})


def process_results(doc, results):
    (samples,) = results  # take_first_k leaves one list of k responses per doc
    return problem_metrics(grade_batch(samples, [doc] * len(samples), doc["task"], progress=False))
