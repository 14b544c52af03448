"""Problems for every task as one record shape: AIME-2025, math training prompts, reasoning-gym
games and SynLogic-style JSONL; and ``pear-bench make-data``, which writes them to files.

A problem record is a dict of six strings, so any list of records becomes a ``datasets.Dataset``
(``Dataset.from_list``) without schema surprises (reasoning-gym's metadata mixes types that Arrow
cannot put in one column, hence metadata as JSON text):

    id        unique within its source: "AIME2025-I-1", "countdown-0-17" (game-seed-stream index)
    task      the grading task (``pear_bench.grading.TASKS``)
    question  the problem as its source states it
    prompt    the user message: question, blank line, the task's answer-format instruction
    answer    the reference answer
    metadata  a JSON object as text: what a game verifier needs; "{}" for math

Math prompts ask for ``\\boxed{}``, games and SynLogic for ``<answer>`` tags, matching
``pear_bench.grading.extract_answer``. Chat templates are applied by the caller (lm-eval's
``--apply_chat_template``, or the generation backend) to ``[{"role": "user", "content": prompt}]``.

Sources: hub dataset ids are used only when no local file of that name exists, so every loader
works offline on local JSONL. A directory is read as a hub dataset repository fetched by
``pear-bench snapshot dataset`` (the workflow's offline path): ``datasets`` loads it as it would the
hub id, and the manifest records the snapshot's commit.

Games are seeded streams: reasoning-gym item i of seed s is generated from ``Random(s + i)``, so two
seeds' streams overlap shifted by their difference. A split therefore never uses a second seed: the
eval split is the first ``eval_size`` distinct questions of the seed's stream and the train split
the next ``train_size`` distinct ones not in eval (disjoint by construction; eval does not depend
on ``train_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pear_bench.errors import InputError
from pear_bench.grading import GAMES, MATH_TASKS, TASKS

AIME2025_DATASET = "opencompass/AIME2025"
AIME2025_CONFIGS = ("AIME2025-I", "AIME2025-II")  # 15 problems each, split "test"

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ANSWER_TAG_INSTRUCTION = "Think step by step, then give only your final answer between <answer> and </answer> tags."

RECORD_FIELDS = ("id", "task", "question", "prompt", "answer", "metadata")
DEDUP_NGRAM = 13  # word n-gram length for decontamination (the GPT-3 paper's choice, lm-eval's default)
_STREAM_FACTOR = 20  # a game stream may be scanned to 20x the requested size before giving up


def make_record(problem_id: str, task: str, question: str, answer: str,
                metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A problem record; the prompt gets the task's answer-format instruction.

    Raises:
        ValueError: unknown task, or an empty or non-str question/answer.
    """
    if task not in TASKS:
        raise InputError(f"record {problem_id!r}: unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    for name, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"record {problem_id!r}: {name} must be a non-empty str, got {value!r:.80}")
    instruction = BOXED_INSTRUCTION if task in MATH_TASKS else ANSWER_TAG_INSTRUCTION
    return {
        "id": problem_id,
        "task": task,
        "question": question,
        "prompt": f"{question}\n\n{instruction}",
        "answer": answer,
        "metadata": json.dumps(dict(metadata or {}), sort_keys=True, ensure_ascii=False),
    }


# ---------------------------------------------------------------------------------------------
# JSONL files


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object (the message names file and line).
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_problems(path: str | Path, records: Iterable[Mapping[str, str]]) -> None:
    """Write records as JSONL: fixed field order, UTF-8, '\\n' line ends (same records, same bytes)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps({key: record[key] for key in RECORD_FIELDS}, ensure_ascii=False) + "\n")


def read_problems(path: str | Path) -> list[dict[str, str]]:
    """Records written by ``write_problems``.

    Raises:
        ValueError: a row lacking a field or with a non-str field (names file and line).
    """
    records = read_jsonl(path)
    for line_no, record in enumerate(records, 1):
        bad = [key for key in RECORD_FIELDS if not isinstance(record.get(key), str)]
        if bad:
            raise InputError(f"{path}: record {line_no} lacks str field(s) {bad}; fields are {RECORD_FIELDS}")
    return records


def check_unique_ids(problems: Sequence[Mapping[str, str]]) -> None:
    """Raise ValueError naming a repeated problem id (samples and grades are keyed by id)."""
    counts = Counter(p["id"] for p in problems)
    repeated = [(i, n) for i, n in counts.items() if n > 1]
    if repeated:
        raise InputError(f"problem ids must be unique; {repeated[0][0]!r} occurs {repeated[0][1]} times "
                         f"({len(repeated)} ids repeat)")


# ---------------------------------------------------------------------------------------------
# AIME-2025 and math training prompts


def _is_local(source: str | Path) -> bool:
    """True for an existing file; False for a hub id or a dataset directory (a snapshot of a hub
    repository, loaded as the hub's); FileNotFoundError for a missing file path."""
    path = Path(source).expanduser()
    if path.is_dir():
        return False
    if path.exists():
        return True
    if path.suffix in (".json", ".jsonl") or str(source).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{source}: no such file (and not a hub dataset id)")
    return False


def _hub_rows(dataset: str, name: str | None, split: str) -> list[dict[str, Any]]:
    import datasets  # heavy; only hub loads need it

    return list(datasets.load_dataset(dataset, name, split=split))


def load_aime2025(source: str | Path = AIME2025_DATASET) -> list[dict[str, str]]:
    """The 30 AIME-2025 problems, from the hub (``opencompass/AIME2025``, configs AIME2025-I and
    AIME2025-II, split test) or from a local JSONL with the same fields, ``question`` and
    ``answer`` (and optionally ``id``; default ``AIME2025-<row>``).

    Raises:
        ValueError: a row without question/answer, or an answer that is not an integer 0-999.
    """
    if _is_local(source):
        rows = [(str(row.get("id", f"AIME2025-{i}")), row) for i, row in enumerate(read_jsonl(source), 1)]
    else:
        rows = [(f"{config}-{i}", row) for config in AIME2025_CONFIGS
                for i, row in enumerate(_hub_rows(str(source), config, "test"), 1)]
    records = []
    for problem_id, row in rows:
        if "question" not in row or "answer" not in row:
            raise InputError(f"{source}: AIME row {problem_id!r} needs 'question' and 'answer', has {sorted(row)}")
        answer = str(row["answer"]).strip()
        if not (answer.isascii() and answer.isdigit() and 0 <= int(answer) <= 999):
            raise InputError(f"{source}: AIME row {problem_id!r}: answer {answer!r} is not an integer 0-999")
        records.append(make_record(problem_id, "aime2025", row["question"], str(int(answer))))
    return records


def word_ngrams(text: str, n: int = DEDUP_NGRAM) -> set[tuple[str, ...]]:
    """Lower-cased alphanumeric word n-grams of ``text``; a text shorter than n words is one n-gram."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def load_math_prompts(
    source: str | Path,
    *,
    split: str = "train",
    name: str | None = None,
    problem_field: str = "problem",
    answer_field: str = "answer",
    exclude: Sequence[str] = (),
    ngram: int = DEDUP_NGRAM,
) -> tuple[list[dict[str, str]], int]:
    """Math problems with reference answers, minus any that overlap the ``exclude`` questions.

    Args:
        source: a local JSONL file, or a hub dataset id (e.g. ``agentica-org/DeepScaleR-Preview-Dataset``,
            fields problem/answer), loaded with config ``name`` and ``split``.
        problem_field, answer_field: the source's field names.
        exclude: questions to keep out, normally ``[r["question"] for r in load_aime2025(...)]``.
        ngram: a problem is dropped if it shares any word ``ngram``-gram with an excluded question.

    Returns:
        (records with task "math", number of problems dropped as overlapping).

    Raises:
        ValueError: a row without the named fields (names the row and the fields it has).
    """
    rows = read_jsonl(source) if _is_local(source) else _hub_rows(str(source), name, split)
    excluded = set().union(*(word_ngrams(q, ngram) for q in exclude))
    records, dropped = [], 0
    for i, row in enumerate(rows):
        if problem_field not in row or answer_field not in row:
            raise InputError(f"{source}: row {i} needs fields {problem_field!r} and {answer_field!r}, "
                             f"has {sorted(row)}")
        question = str(row[problem_field])
        if word_ngrams(question, ngram) & excluded:
            dropped += 1
            continue
        records.append(make_record(f"math-{i}", "math", question, str(row[answer_field]).strip()))
    return records, dropped


# ---------------------------------------------------------------------------------------------
# Reasoning-gym games and SynLogic


def game_splits(
    game: str, *, seed: int, eval_size: int, train_size: int = 0, config: Mapping[str, Any] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Disjoint ``{"eval": [...], "train": [...]}`` records from one seeded reasoning-gym stream.

    Args:
        game: one of ``pear_bench.grading.GAMES``.
        seed: the stream's seed (reasoning-gym draws a random one when none is given; never here).
        eval_size, train_size: distinct questions per split.
        config: overrides of the game's reasoning-gym config fields (e.g. ``{"max_terms": 3}``).

    Raises:
        ValueError: unknown game or config field, or too few distinct questions in the stream
            (the config's problem space is too small for the sizes asked).
    """
    import reasoning_gym  # ~2 s to import; only game generation needs it

    if game not in GAMES:
        raise InputError(f"unknown game {game!r}; supported games: {', '.join(GAMES)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"seed must be an int, got {seed!r}")
    wanted = {"eval": eval_size, "train": train_size}
    for split, size in wanted.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{split}_size must be an int >= 0, got {size!r}")
    stream_length = _STREAM_FACTOR * (eval_size + train_size) + 100
    try:
        dataset = reasoning_gym.create_dataset(game, seed=seed, size=stream_length, **dict(config or {}))
    except TypeError as exc:  # an unknown config field
        raise InputError(f"{game}: bad config {dict(config or {})}: {exc}") from None
    splits: dict[str, list[dict[str, str]]] = {"eval": [], "train": []}
    seen: set[str] = set()
    for index in range(stream_length):
        split = "eval" if len(splits["eval"]) < eval_size else "train"
        if len(splits[split]) == wanted[split]:
            break  # both splits full
        entry = dataset[index]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        splits[split].append(make_record(f"{game}-{seed}-{index}", game, entry["question"], entry["answer"],
                                         entry["metadata"]))
    if len(seen) < eval_size + train_size:
        raise InputError(f"{game} (seed {seed}, config {dict(config or {})}): only {len(seen)} distinct questions "
                         f"in {stream_length} draws, {eval_size + train_size} wanted; widen the config")
    return splits


def game_config(game: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The game's full reasoning-gym config with ``overrides`` applied (seed and size left out)."""
    import reasoning_gym

    _, config_cls = reasoning_gym.factory.DATASETS[game]
    config = dataclasses.asdict(config_cls(**dict(overrides or {})))
    return {key: value for key, value in config.items() if key not in ("seed", "size")}


def load_synlogic(path: str | Path, *, prompt_field: str = "prompt",
                  answer_field: str = "answer") -> list[dict[str, str]]:
    """SynLogic-style JSONL rows as records (task "synlogic", graded by text match).

    Each row has a prompt (a string, or chat messages whose last user turn is the question), an
    answer (top-level ``answer_field``, else ``metadata["answer"]``), optionally ``metadata`` (kept)
    and ``data_source`` (the SynLogic task, used in the id).

    Raises:
        ValueError: a row without a usable prompt or answer (names file and row).
    """
    records = []
    for i, row in enumerate(read_jsonl(path)):
        prompt = row.get(prompt_field)
        if isinstance(prompt, list):  # chat messages
            user_turns = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            prompt = user_turns[-1] if user_turns else None
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        answer = row.get(answer_field, metadata.get("answer"))
        if not isinstance(prompt, str) or answer is None:
            raise InputError(f"{path}: row {i} needs a '{prompt_field}' (str or chat messages) and an "
                             f"'{answer_field}' (or metadata.answer); has {sorted(row)}")
        source = str(row.get("data_source", "synlogic"))
        records.append(make_record(f"{source}-{i}", "synlogic", prompt, str(answer), metadata))
    return records


# ---------------------------------------------------------------------------------------------
# `pear-bench make-data`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write problem files (JSONL records plus manifest.json with seeds, sources and versions). "
        "Same arguments, same bytes."
    )
    sub = parser.add_subparsers(dest="source_kind", metavar="KIND", required=True)

    game = sub.add_parser("game", help="train/eval splits of a seeded reasoning-gym game")
    game.add_argument("game", choices=GAMES)
    game.add_argument("--seed", type=int, required=True, help="seed of the game's stream")
    game.add_argument("--eval-size", type=int, required=True)
    game.add_argument("--train-size", type=int, required=True)
    game.add_argument("--set", dest="config", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a reasoning-gym config field; VALUE is read as JSON, else as text")

    aime = sub.add_parser("aime2025", help="the AIME-2025 eval set, from the hub or a local JSONL")
    aime.add_argument("--source", default=AIME2025_DATASET, help=f"hub id or local JSONL (default {AIME2025_DATASET})")

    math = sub.add_parser("math", help="math training prompts, decontaminated against AIME-2025")
    math.add_argument("--source", required=True, help="hub dataset id or local JSONL")
    math.add_argument("--name", default=None, help="hub config name")
    math.add_argument("--split", default="train", help="hub split")
    math.add_argument("--problem-field", default="problem")
    math.add_argument("--answer-field", default="answer")
    math.add_argument("--aime", default=AIME2025_DATASET, help="AIME-2025 source to decontaminate against")

    for p in (game, aime, math):
        p.add_argument("--out", required=True, type=Path, help="output directory")


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise InputError(message)


def dataset_sources(argv: Sequence[str]) -> dict[str, str]:
    """The datasets that make-data arguments ``argv`` (without ``--out``) read, defaults included:
    ``{"--source": ..., "--aime": ...}`` as given (hub ids, files or snapshot directories).

    Raises:
        InputError: ``argv`` are not make-data arguments.
    """
    parser = _RaisingParser(prog="make-data")
    configure_parser(parser)
    args = parser.parse_args([*argv, "--out", "-"])
    return {f"--{name}": str(getattr(args, name)) for name in ("source", "aime") if hasattr(args, name)}


# A bare word (letters, digits, _ . -, not starting with a digit or sign) is taken as text, so
# `--set style=terse` works; anything else must be JSON, so a value the shell mangled fails loudly.
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items as a dict; VALUE is read as JSON (``3``, ``true``, ``["+","-"]``,
    ``"text"``), or as text when it is a bare word (``terse``).

    Raises:
        InputError: an item without ``=``, or a VALUE that is neither JSON nor a bare word (the
            message shows how to quote it for the shell).
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            if not _BARE_WORD.fullmatch(value):
                raise InputError(f"--set {item}: the value is neither JSON nor a plain word (a shell removes "
                                 f"unescaped quotes); quote the whole item: --set '{key}=[\"+\",\"-\"]' for a list, "
                                 f"--set '{key}=\"some text\"' for text") from None
            overrides[key] = value
    return overrides


def _source_info(source: str | Path) -> dict[str, str]:
    from pear_bench.snapshot import read_snapshot

    path = Path(source).expanduser()
    if _is_local(source):
        return {"path": str(path.resolve()), "sha256": _sha256(path)}
    if path.is_dir():
        snapshot = read_snapshot(path)
        if snapshot is None:
            return {"path": str(path.resolve())}
        return {"hub_dataset": snapshot["repo"], "revision": snapshot["revision"], "commit": snapshot["commit"],
                "snapshot": str(path.resolve())}
    return {"hub_dataset": str(source)}  # loaded from the hub directly: no commit pins it


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    splits: dict[str, list[dict[str, str]]]
    if args.source_kind == "game":
        overrides = parse_overrides(args.config)
        splits = game_splits(args.game, seed=args.seed, eval_size=args.eval_size, train_size=args.train_size,
                             config=overrides)
        manifest: dict[str, Any] = {
            "task": args.game, "seed": args.seed,
            "generator": {"package": "reasoning-gym", "version": version("reasoning-gym"), "dataset": args.game,
                          "config": game_config(args.game, overrides)},
        }
    elif args.source_kind == "aime2025":
        splits = {"eval": load_aime2025(args.source)}
        manifest = {"task": "aime2025", "source": _source_info(args.source)}
    else:
        aime_questions = [r["question"] for r in load_aime2025(args.aime)]
        records, dropped = load_math_prompts(args.source, split=args.split, name=args.name,
                                             problem_field=args.problem_field, answer_field=args.answer_field,
                                             exclude=aime_questions)
        splits = {"train": records}
        manifest = {"task": "math", "source": _source_info(args.source),
                    "decontamination": {"against": _source_info(args.aime), "word_ngram": DEDUP_NGRAM,
                                        "dropped": dropped}}
    manifest["pear_bench_version"] = version("pear-bench")
    manifest["splits"] = {}
    for split, records in splits.items():
        path = out / f"{split}.jsonl"
        write_problems(path, records)
        manifest["splits"][split] = {"file": path.name, "records": len(records), "sha256": _sha256(path)}
        print(f"wrote {len(records)} {split} records to {path}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0
