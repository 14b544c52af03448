"""SFT records: exact round trips through JSONL and parquet, and validation errors that name the record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pear_bench.data import FEATURES, RecordError, empty_dataset, load_records, save_records

# float32 values that a lossy writer would change: tiny, large, and with many significant digits.
AWKWARD = np.array([-1e-12, -2.3456789e-5, -3.1234567e-8, -0.0, -31.987654, -1.2345678e-30], dtype=np.float32)


def record(i, **overrides):
    r = {
        "id": f"t/{i}/0", "task": "chain_sum", "prompt_id": f"t/{i}", "sample_index": 0,
        "messages": [{"role": "user", "content": f"what is {i}?"}],
        "prompt_ids": [1, 2, 3 + i], "response_ids": [4, 5, 6, 2], "response": "<answer>1</answer>",
        "behavior_logprobs": [-0.5, -1e-7, -2.0, -0.25], "behavior_model": "teacher",
        "sampling": {"backend": "hf", "n": 4, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16},
        "seed": 2**62 + i, "finish_reason": "stop", "reward": 1.0,
    }
    r.update(overrides)
    return r


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_is_exact(tmp_path, suffix):
    records = [record(0, behavior_logprobs=AWKWARD.tolist(), response_ids=list(range(10, 16))),
               record(1, reward=None, sampling=None, seed=None, messages=None)]
    path = save_records(records, tmp_path / f"d{suffix}")
    loaded = load_records(path, vocab_size=100).to_list()
    assert np.array_equal(np.array(loaded[0]["behavior_logprobs"], dtype=np.float32), AWKWARD)
    for got, want in zip(loaded, records):
        want = {**want, "behavior_logprobs": np.float32(want["behavior_logprobs"]).tolist()}
        assert got == want
    assert list(loaded[0]) == list(FEATURES)  # canonical column order


def test_json_floats_keep_fifteen_decimals(tmp_path):
    # datasets' default (10 decimals) would write -1e-12 as -0.0: the value must survive as text.
    path = save_records([record(0, behavior_logprobs=[-1e-12, -0.5, -0.25, -2.0])], tmp_path / "d.jsonl")
    assert json.loads(path.read_text())["behavior_logprobs"][0] == pytest.approx(-1e-12, rel=1e-3)


def test_foreign_traces_with_only_the_required_columns_load(tmp_path):
    path = tmp_path / "foreign.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt_ids": [1, 2], "response_ids": [3], "source": "other-tool"}) + "\n")
    ds = load_records(path, require_logprobs=False)
    assert ds[0]["behavior_logprobs"] is None and ds[0]["source"] == "other-tool"  # extras kept, gaps null
    with pytest.raises(RecordError, match=r"record 0 \(id 'x'\): behavior_logprobs is null"):
        load_records(path)


def test_missing_required_column_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt_ids": [1, 2]}) + "\n")
    with pytest.raises(RecordError, match=r"lacks required column\(s\) \['response_ids'\]"):
        load_records(path)


@pytest.mark.parametrize("overrides,message", [
    ({"behavior_logprobs": [-0.5, -0.5, -0.5]},
     "behavior_logprobs has 3 values but response_ids has 4 tokens"),
    ({"response_ids": [4, 5, 6, 2, 7]}, "behavior_logprobs has 4 values but response_ids has 5 tokens"),
    ({"behavior_logprobs": [-0.5, float("nan"), -2.0, -0.25]},
     "behavior_logprobs has a non-finite value (first: nan at position 1)"),
    ({"behavior_logprobs": [-0.5, -1.0, float("-inf"), -0.25]},
     "behavior_logprobs has a non-finite value (first: -inf at position 2)"),
    ({"behavior_logprobs": [-0.5, -1.0, -2.0, 0.125]},
     "behavior_logprobs has a value > 0 (first: 0.125 at position 3)"),
    ({"prompt_ids": [1, -7, 3]}, "prompt_ids has a negative token id (first: -7 at position 1)"),
    ({"response_ids": [], "behavior_logprobs": []}, "response_ids is empty"),
    ({"id": "t/0/0"}, "duplicate id, first used by record 0"),
])
def test_invalid_records_are_refused_with_the_record_named(tmp_path, overrides, message):
    records = [record(0), record(1), {**record(2), **overrides}]
    path = tmp_path / "d.jsonl"
    with pytest.raises(RecordError) as info:
        save_records(records, path)
    assert not path.exists()  # an invalid dataset is never written
    assert str(info.value).splitlines() == ["1 of 3 records violate the SFT data contract:",
                                            f"record 2 (id {records[2]['id']!r}): {message}"]


def test_token_ids_outside_the_tokenizer_vocabulary_fail_on_load(tmp_path):
    path = save_records([record(0), record(1, response_ids=[4, 5, 100, 2])], tmp_path / "d.parquet")
    assert len(load_records(path, vocab_size=101)) == 2
    with pytest.raises(RecordError, match=r"record 1 \(id 't/1/0'\): response_ids has a token id outside the "
                                          r"vocabulary \[0, 100\) \(first: 100 at position 2\)"):
        load_records(path, vocab_size=100)


def test_every_problem_of_a_record_is_listed_and_long_lists_are_counted(tmp_path):
    bad = [record(i, behavior_logprobs=[0.5, float("nan")]) for i in range(13)]
    with pytest.raises(RecordError) as info:
        save_records(bad, tmp_path / "d.jsonl")
    lines = str(info.value).splitlines()
    assert lines[0] == "13 of 13 records violate the SFT data contract:"
    assert lines[1] == ("record 0 (id 't/0/0'): behavior_logprobs has 2 values but response_ids has 4 tokens; "
                        "behavior_logprobs has a non-finite value (first: nan at position 1); "
                        "behavior_logprobs has a value > 0 (first: 0.5 at position 0)")
    assert len(lines) == 12 and lines[-1] == "... and 3 more records"


def test_unscored_records_are_allowed_only_when_asked(tmp_path):
    records = [record(0, behavior_logprobs=None), record(1)]
    with pytest.raises(RecordError, match=r"record 0 \(id 't/0/0'\): behavior_logprobs is null"):
        save_records(records, tmp_path / "d.jsonl")
    path = save_records(records, tmp_path / "d.jsonl", require_logprobs=False)
    assert load_records(path, require_logprobs=False)[0]["behavior_logprobs"] is None


def test_existing_files_are_not_overwritten(tmp_path):
    path = save_records([record(0)], tmp_path / "d.parquet")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_records([record(1)], path)
    save_records([record(1)], path, overwrite=True)
    assert load_records(path)[0]["id"] == "t/1/0"
    with pytest.raises(ValueError, match="suffix must be one of"):
        save_records([record(0)], tmp_path / "d.csv")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_empty_dataset_round_trips(tmp_path, suffix):
    path = save_records(empty_dataset(), tmp_path / f"empty{suffix}")
    assert len(load_records(path)) == 0 and load_records(path).features == FEATURES


def test_several_files_load_as_one_dataset_in_order(tmp_path):
    first = save_records([record(0), record(1)], tmp_path / "a.parquet")
    second = save_records([record(2)], tmp_path / "b.parquet")
    assert load_records([second, first])["id"][:] == ["t/2/0", "t/0/0", "t/1/0"]
    with pytest.raises(RecordError, match="duplicate id"):
        load_records([first, first])
