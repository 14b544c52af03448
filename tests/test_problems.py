"""pear_bench.problems: loaders on local files, seeded game splits, SynLogic rows, `make-data`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version

import datasets
import pytest

from pear_bench import problems
from pear_bench.grading import GAMES, grade
from pear_bench.problems import (
    ANSWER_TAG_INSTRUCTION,
    BOXED_INSTRUCTION,
    RECORD_FIELDS,
    game_splits,
    load_aime2025,
    load_math_prompts,
    load_synlogic,
    read_problems,
    word_ngrams,
    write_problems,
)

AIME_ROWS = [
    {"question": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.", "answer": "70"},
    {"question": "Let N be the number of ordered triples of positive integers such that a, b, c are at most "
                 "3^6 and a^3 + b^3 + c^3 is a multiple of 3^7. Find the remainder when N is divided by 1000.",
     "answer": 735},
    {"question": "Compute 6 times 7.", "answer": "042"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def aime_file(tmp_path):
    return write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS)


def test_load_aime2025_from_a_local_jsonl(aime_file):
    records = load_aime2025(aime_file)
    assert [r["answer"] for r in records] == ["70", "735", "42"]
    assert [r["id"] for r in records] == ["AIME2025-1", "AIME2025-2", "AIME2025-3"]
    assert all(r["task"] == "aime2025" and r["metadata"] == "{}" for r in records)
    assert records[0]["prompt"] == AIME_ROWS[0]["question"] + "\n\n" + BOXED_INSTRUCTION
    assert r"\boxed{}" in BOXED_INSTRUCTION


def test_load_aime2025_from_the_hub_reads_both_configs(monkeypatch):
    calls = []

    def fake_hub_rows(dataset, name, split):
        calls.append((dataset, name, split))
        return AIME_ROWS[:2]

    monkeypatch.setattr(problems, "_hub_rows", fake_hub_rows)
    records = load_aime2025()
    assert calls == [("opencompass/AIME2025", "AIME2025-I", "test"), ("opencompass/AIME2025", "AIME2025-II", "test")]
    assert [r["id"] for r in records] == ["AIME2025-I-1", "AIME2025-I-2", "AIME2025-II-1", "AIME2025-II-2"]


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "answer": "1000"}, "not an integer 0-999"),
    ({"question": "q", "answer": "seventy"}, "not an integer 0-999"),
    ({"problem": "q", "answer": "7"}, "needs 'question' and 'answer'"),
])
def test_load_aime2025_rejects_malformed_rows(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_aime2025(write_jsonl(tmp_path / "bad.jsonl", [row]))


def test_a_missing_local_file_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_aime2025(tmp_path / "missing.jsonl")


def test_math_prompts_use_configured_fields_and_drop_aime_overlap(tmp_path):
    aime = [r["question"] for r in load_aime2025(write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS))]
    rows = [
        {"query": "What is 2 + 3?", "gt": 5},
        # AIME I problem 1 reworded at the start: still shares 13-word runs with it.
        {"query": "Please find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.",
         "gt": "70"},
        {"query": "Compute 6 times 7.", "gt": "42"},  # shorter than 13 words: dropped only if identical
        {"query": "Find the sum of all integer bases b > 10 for which 12_b divides 34_b.", "gt": "0"},
    ]
    records, dropped = load_math_prompts(write_jsonl(tmp_path / "train.jsonl", rows),
                                         problem_field="query", answer_field="gt", exclude=aime)
    assert dropped == 2
    assert [r["question"] for r in records] == [rows[0]["query"], rows[3]["query"]]
    assert [r["answer"] for r in records] == ["5", "0"]
    assert all(r["task"] == "math" and r["prompt"].endswith(BOXED_INSTRUCTION) for r in records)
    with pytest.raises(ValueError, match="row 0 needs fields 'problem' and 'answer'"):
        load_math_prompts(tmp_path / "train.jsonl")


def test_word_ngrams():
    assert word_ngrams("A b, C!", 2) == {("a", "b"), ("b", "c")}
    assert word_ngrams("too short", 13) == {("too", "short")}
    assert word_ngrams("$$", 13) == set()


# ---------------------------------------------------------------------------------------------
# Games


def test_game_splits_are_disjoint_seeded_and_eval_does_not_depend_on_train_size():
    splits = game_splits("chain_sum", seed=5, eval_size=20, train_size=40)
    assert (len(splits["eval"]), len(splits["train"])) == (20, 40)
    eval_questions = {r["question"] for r in splits["eval"]}
    assert eval_questions.isdisjoint(r["question"] for r in splits["train"])
    assert game_splits("chain_sum", seed=5, eval_size=20)["eval"] == splits["eval"]
    assert game_splits("chain_sum", seed=6, eval_size=20)["eval"] != splits["eval"]
    assert splits["eval"][0]["id"] == "chain_sum-5-0"


def test_game_splits_refuse_a_config_space_too_small_for_the_sizes():
    # 1-digit operands, exactly 2 terms, no negation: at most 10 * 10 * 2 distinct questions.
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    assert len(game_splits("chain_sum", seed=0, eval_size=50, config=config)["eval"]) == 50
    with pytest.raises(ValueError, match="distinct questions"):
        game_splits("chain_sum", seed=0, eval_size=150, train_size=100, config=config)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(game="chess", seed=0, eval_size=1), "unknown game 'chess'; supported games"),
    (dict(game="maze", seed=None, eval_size=1), "seed must be an int"),
    (dict(game="maze", seed=0, eval_size=-1), "eval_size must be an int >= 0"),
    (dict(game="maze", seed=0, eval_size=1, config={"colour": 3}), "bad config"),
])
def test_game_splits_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        game_splits(**kwargs)


@pytest.mark.parametrize("game", GAMES)
def test_game_records_survive_a_dataset_round_trip_and_grade_their_own_answer(game):
    records = game_splits(game, seed=1, eval_size=3)["eval"]
    rows = list(datasets.Dataset.from_list(records))  # knights_knaves' metadata would break a struct column
    assert rows == records
    for row in rows:
        assert row["prompt"] == row["question"] + "\n\n" + ANSWER_TAG_INSTRUCTION
        assert grade(f"<answer>{row['answer']}</answer>", row, game) == 1.0


def test_load_synlogic_reads_string_and_chat_prompts(tmp_path):
    rows = [
        {"prompt": "Is the sky green? Answer Yes or No.", "answer": "No", "data_source": "yes_no",
         "metadata": {"k": 1}},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "metadata": {"answer": "4"}},
    ]
    records = load_synlogic(write_jsonl(tmp_path / "synlogic.jsonl", rows))
    assert [(r["id"], r["question"], r["answer"]) for r in records] == [
        ("yes_no-0", rows[0]["prompt"], "No"), ("synlogic-1", "2+2?", "4")]
    assert json.loads(records[0]["metadata"]) == {"k": 1}
    assert grade("<answer>no</answer>", records[0], "synlogic") == 1.0
    with pytest.raises(ValueError, match="row 0 needs a 'prompt'"):
        load_synlogic(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q"}]))


def test_problem_files_round_trip_and_malformed_rows_are_named(tmp_path):
    records = load_aime2025(write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS))
    write_problems(tmp_path / "out" / "eval.jsonl", records)
    assert read_problems(tmp_path / "out" / "eval.jsonl") == records
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_problems(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "short.jsonl", [{"id": "x", "task": "math"}])
    with pytest.raises(ValueError, match="record 1 lacks str field"):
        read_problems(tmp_path / "short.jsonl")


# ---------------------------------------------------------------------------------------------
# `pear-bench make-data`


def make_data(*args, hash_seed="0"):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "pear_bench", "make-data", *args], env=env, check=True,
                          capture_output=True, text=True)


def test_make_data_game_is_byte_identical_for_the_same_seed(tmp_path):
    args = ["game", "knights_knaves", "--seed", "11", "--eval-size", "5", "--train-size", "10", "--set", "n_people=3"]
    make_data(*args, "--out", str(tmp_path / "a"), hash_seed="1")
    make_data(*args, "--out", str(tmp_path / "b"), hash_seed="2")  # different str hashing, same bytes
    for name in ("train.jsonl", "eval.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["seed"] == 11
    assert manifest["generator"]["package"] == "reasoning-gym"
    assert manifest["generator"]["version"] == version("reasoning-gym")
    assert manifest["generator"]["config"]["n_people"] == 3
    for split, size in (("eval", 5), ("train", 10)):
        data = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert manifest["splits"][split] == {"file": f"{split}.jsonl", "records": size,
                                             "sha256": hashlib.sha256(data).hexdigest()}
    records = read_problems(tmp_path / "a" / "eval.jsonl")
    assert records == game_splits("knights_knaves", seed=11, eval_size=5, config={"n_people": 3})["eval"]
    assert all(list(r) == list(RECORD_FIELDS) for r in records)

    make_data("game", "knights_knaves", "--seed", "12", "--eval-size", "5", "--train-size", "10",
              "--set", "n_people=3", "--out", str(tmp_path / "c"))
    assert (tmp_path / "c" / "eval.jsonl").read_bytes() != (tmp_path / "a" / "eval.jsonl").read_bytes()


def test_make_data_aime_and_math_from_local_files(tmp_path, aime_file):
    make_data("aime2025", "--source", str(aime_file), "--out", str(tmp_path / "aime"))
    assert read_problems(tmp_path / "aime" / "eval.jsonl") == load_aime2025(aime_file)

    train = write_jsonl(tmp_path / "train.jsonl", [{"problem": AIME_ROWS[1]["question"], "answer": "735"},
                                                    {"problem": "What is 2 + 3?", "answer": "5"}])
    make_data("math", "--source", str(train), "--aime", str(aime_file), "--out", str(tmp_path / "math"))
    manifest = json.loads((tmp_path / "math" / "manifest.json").read_text())
    assert manifest["decontamination"]["dropped"] == 1
    assert manifest["source"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert [r["question"] for r in read_problems(tmp_path / "math" / "train.jsonl")] == ["What is 2 + 3?"]


def test_check_unique_ids_names_the_repeated_id():
    from pear_bench.problems import check_unique_ids

    check_unique_ids([{"id": "a"}, {"id": "b"}])
    with pytest.raises(ValueError, match=r"'b' occurs 3 times \(1 ids repeat\)"):
        check_unique_ids([{"id": "a"}, {"id": "b"}, {"id": "b"}, {"id": "b"}])


def test_set_values_are_json_or_a_bare_word():
    from pear_bench.errors import InputError
    from pear_bench.problems import parse_overrides

    assert parse_overrides(["a=3", "b=terse", 'c=["+","-"]', "d=1.5e-3", "e=true", 'f="two words"']) == {
        "a": 3, "b": "terse", "c": ["+", "-"], "d": 0.0015, "e": True, "f": "two words"}
    for mangled in ("operators=[+,-]", "x=two words", "y=-x", "z="):
        with pytest.raises(InputError, match="neither JSON nor a plain word"):
            parse_overrides([mangled])
