"""SFT records with behaviour logprobs: the schema, and validated saving and loading with `datasets`.

One record per (prompt, response), as DESIGN.md's data contract says. Token ids are stored, never
re-derived from text, so the SFT policy and the behaviour policy see identical tokens::

    id                 str, unique in a dataset ("{prompt_id}/{sample_index}" for collected data)
    task, prompt_id    str: where the prompt came from (``pear_bench.problems``)
    sample_index       int: which of the n samples of this prompt
    messages           [{role, content}]: the prompt as chat messages
    prompt_ids         [int]: the prompt as the model saw it (chat template applied)
    response_ids       [int]: the sampled response, end-of-turn token included when sampling stopped on it
    response           str: response_ids decoded (for reading and grading; training uses the ids)
    behavior_logprobs  [float32] | null: log pi_beta(y_t | x, y_<t) per response token, under the
                       distribution actually sampled (temperature applied); null until scored
    behavior_model     str | null: the model (hub id or path) that produced behavior_logprobs
    sampling           {backend, n, temperature, top_p, top_k, max_new_tokens} | null; traces scored
                       by `pear-bench score` without it get only ``temperature`` (the one scored at)
    seed               int | null: the seed of the ``sample`` call (collect chunk) that produced it
    finish_reason      "stop" | "length" | null: "length" means the response hit max_new_tokens
    reward             float | null: the grader's reward (1.0 correct, 0.0 not)
    response_transfer  str (a student's records only, from `pear-bench transfer`): "identical", "mapped"
                       or "retokenized", how the teacher's response ids became the student's

Only ``id``, ``prompt_ids`` and ``response_ids`` are required on load (traces from other tools);
missing optional columns are added as nulls and unknown columns are kept as they are.

Formats: ``.jsonl`` (JSON lines) or ``.parquet``, chosen by the file suffix. JSON floats are written
with 15 decimals (``datasets``' default of 10 would turn a logprob of -1e-12 into -0.0): float32
values round-trip exactly down to about 1e-6 in magnitude and within 5e-16 below that.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, Features, List, Value, load_dataset

from pear_bench.errors import InputError

FORMATS = {".jsonl": "json", ".parquet": "parquet"}

SAMPLING_FEATURES = {
    "backend": Value("string"),
    "n": Value("int32"),
    "temperature": Value("float64"),
    "top_p": Value("float64"),
    "top_k": Value("int32"),
    "max_new_tokens": Value("int32"),
}

FEATURES = Features({
    "id": Value("string"),
    "task": Value("string"),
    "prompt_id": Value("string"),
    "sample_index": Value("int32"),
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "prompt_ids": List(Value("int32")),
    "response_ids": List(Value("int32")),
    "response": Value("string"),
    "behavior_logprobs": List(Value("float32")),
    "behavior_model": Value("string"),
    "sampling": SAMPLING_FEATURES,
    "seed": Value("int64"),
    "finish_reason": Value("string"),
    "reward": Value("float64"),
})

REQUIRED_COLUMNS = ("id", "prompt_ids", "response_ids")

# At most this many violations are spelled out in one error; the rest are counted.
_MAX_LISTED = 10


class RecordError(InputError):
    """Records that violate the SFT data contract; the message names each record and what is wrong."""


def file_format(path: str | Path) -> str:
    """``datasets``' loader name for a dataset file: "json" for .jsonl, "parquet" for .parquet."""
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise InputError(f"unsupported dataset file {str(path)!r}: the suffix must be one of {sorted(FORMATS)}")
    return FORMATS[suffix]


def _conform(ds: Dataset) -> Dataset:
    """Check the required columns, add missing optional ones as nulls, cast known ones to FEATURES."""
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise RecordError(f"dataset lacks required column(s) {missing}; it has {ds.column_names}")
    for name, feature in FEATURES.items():
        if name not in ds.column_names:
            ds = ds.add_column(name, [None] * len(ds), feature=feature)
    extras = [c for c in ds.column_names if c not in FEATURES]
    ds = ds.select_columns([*FEATURES, *extras])
    features = Features({name: FEATURES.get(name, feature) for name, feature in ds.features.items()})
    return ds.cast(features) if features != ds.features else ds


def _lengths(column: pa.Array) -> np.ndarray:
    """Length of each row of a list column; 0 for null rows."""
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)


def _flat(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The values of a list column, flattened, and the row each value belongs to (ascending)."""
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    return values, rows


def _first_bad_values(values: np.ndarray, rows: np.ndarray, bad: np.ndarray, what: str) -> dict[int, str]:
    """Row -> message naming the row's first flagged value and its position within the row."""
    out: dict[int, str] = {}
    for pos in np.flatnonzero(bad):
        row = int(rows[pos])
        if row not in out:
            offset = int(pos - np.searchsorted(rows, row))
            out[row] = f"{what} (first: {values[pos].item()!r} at position {offset})"
    return out


def validate_records(ds: Dataset, vocab_size: int | None = None, require_logprobs: bool = True) -> None:
    """Check the data contract for every record; raise ``RecordError`` naming each violating record.

    Checks: required fields are present and ``response_ids`` is not empty; ids are unique; every
    token id lies in ``[0, vocab_size)`` (only ``>= 0`` when ``vocab_size`` is None);
    ``behavior_logprobs`` is present (when ``require_logprobs``), has one value per response token,
    and every value is finite and ``<= 0``.

    Args:
        ds: records with the columns of ``FEATURES`` (as returned by ``load_records``).
        vocab_size: the tokenizer's vocabulary size (``len(tokenizer)``), or None.
        require_logprobs: False for unscored data (before ``pear-bench score``).

    Raises:
        RecordError: listing up to 10 violations as ``record <index> (id <id>): <what is wrong>``.
    """
    problems: dict[int, list[str]] = {}

    def flag(row: int, message: str) -> None:
        problems.setdefault(int(row), []).append(message)

    table = ds.with_format("arrow")[:]
    ids = table.column("id").to_pylist()
    first_seen: dict[str, int] = {}
    for row, rid in enumerate(ids):
        if rid is None:
            flag(row, "id is null")
        elif rid in first_seen:
            flag(row, f"duplicate id, first used by record {first_seen[rid]}")
        else:
            first_seen[rid] = row

    where = "a negative token id" if vocab_size is None else f"a token id outside the vocabulary [0, {vocab_size})"
    for column_name in ("prompt_ids", "response_ids"):
        column = table.column(column_name).combine_chunks()
        for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            flag(row, f"{column_name} is null")
        values, rows = _flat(column)
        bad = values < 0 if vocab_size is None else (values < 0) | (values >= vocab_size)
        for row, message in _first_bad_values(values, rows, bad, f"{column_name} has {where}").items():
            flag(row, message)

    response_len = _lengths(table.column("response_ids").combine_chunks())
    for row in np.flatnonzero(response_len == 0):
        flag(row, "response_ids is empty")

    logprobs = table.column("behavior_logprobs").combine_chunks()
    null = logprobs.is_null().to_numpy(zero_copy_only=False)
    if require_logprobs:
        for row in np.flatnonzero(null):
            flag(row, "behavior_logprobs is null (run `pear-bench score` first)")
    logprob_len = _lengths(logprobs)
    for row in np.flatnonzero(~null & (logprob_len != response_len)):
        flag(row, f"behavior_logprobs has {logprob_len[row]} values but response_ids has {response_len[row]} tokens")
    values, rows = _flat(logprobs)
    values = values.astype(np.float64)
    for bad, what in ((~np.isfinite(values), "behavior_logprobs has a non-finite value"),
                      (values > 0, "behavior_logprobs has a value > 0")):
        for row, message in _first_bad_values(values, rows, bad, what).items():
            flag(row, message)

    if problems:
        rows = sorted(problems)
        lines = [f"record {r} (id {ids[r]!r}): {'; '.join(problems[r])}" for r in rows[:_MAX_LISTED]]
        more = f"\n... and {len(rows) - _MAX_LISTED} more records" if len(rows) > _MAX_LISTED else ""
        raise RecordError(f"{len(rows)} of {len(ids)} records violate the SFT data contract:\n" +
                          "\n".join(lines) + more)


def load_records(path: str | Path | Sequence[str | Path], vocab_size: int | None = None,
                 require_logprobs: bool = True) -> Dataset:
    """Load a ``.jsonl`` or ``.parquet`` SFT dataset, conform it to ``FEATURES`` and validate it.

    Args:
        path: the dataset file, or several files of one format (concatenated in order).
        vocab_size: the behaviour tokenizer's ``len(tokenizer)``: token ids must be below it.
        require_logprobs: also require ``behavior_logprobs`` on every record.

    Raises:
        RecordError: a required column is missing or a record violates the contract (see
            ``validate_records``).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    formats = {file_format(p) for p in paths}
    if len(formats) != 1:
        raise InputError(f"load_records: one format at a time; got files {[str(p) for p in paths]}")
    fmt = formats.pop()
    # `datasets` cannot load a file without records (no schema to infer, or "no data"): skip those.
    paths = [p for p in paths if (Path(p).stat().st_size > 0 if fmt == "json" else pq.read_metadata(p).num_rows > 0)]
    ds = _conform(load_dataset(fmt, data_files=[str(p) for p in paths], split="train")) if paths else empty_dataset()
    validate_records(ds, vocab_size=vocab_size, require_logprobs=require_logprobs)
    return ds


def records_dataset(records: Sequence[dict], vocab_size: int | None = None, require_logprobs: bool = True) -> Dataset:
    """In-memory records as a dataset conformed to ``FEATURES`` and validated (as ``load_records`` does a file)."""
    ds = _conform(Dataset.from_list(list(records)))
    validate_records(ds, vocab_size=vocab_size, require_logprobs=require_logprobs)
    return ds


def empty_dataset() -> Dataset:
    """A dataset with the ``FEATURES`` columns and no records (e.g. rejection sampling kept nothing)."""
    return Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)


def summary_path(path: str | Path) -> Path:
    """``dir/name.parquet`` -> ``dir/name.summary.json``: where the run that wrote a dataset describes itself."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(path.suffix) + ".summary.json")


def save_records(
    records: Dataset | Sequence[dict],
    path: str | Path,
    overwrite: bool = False,
    require_logprobs: bool = True,
) -> Path:
    """Validate ``records`` and write them to ``path`` (``.jsonl`` or ``.parquet``), atomically.

    The file is written next to ``path`` and renamed into place, so an interrupted save never leaves
    a partial dataset under the final name.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        RecordError: see ``validate_records`` (nothing is written).
    """
    path = Path(path)
    fmt = file_format(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    ds = records if isinstance(records, Dataset) else Dataset.from_list(list(records))
    ds = _conform(ds)
    validate_records(ds, require_logprobs=require_logprobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if fmt == "json":
        ds.to_json(tmp, lines=True, double_precision=15, force_ascii=False)
    else:
        ds.to_parquet(tmp)
    os.replace(tmp, path)
    return path
