"""`pear-bench snapshot` against a local stand-in for the hub (tests/hub_standin.py; no network): the
files and the commit the stand-in serves end up in the snapshot, a second run asks the hub nothing, an
interrupted download restarts cleanly, bad requests are one-line errors, and the runs made offline on a
snapshot (make-data, eval, training records) carry the commit the stand-in served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatch

import pytest

from hub_standin import Hub, serve
from pear_bench import cli
from pear_bench.config import build_config, run_record, write_run_record
from pear_bench.problems import make_record, write_problems
from pear_bench.snapshot import MODEL_FILES

AIME_ROWS = {"AIME2025-I": [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 + 5?", "answer": "7"}],
             "AIME2025-II": [{"question": "What is 3 + 3?", "answer": "006"}]}
DATASET_CARD = """---
configs:
- config_name: AIME2025-I
  data_files:
  - split: test
    path: aime2025-I.jsonl
- config_name: AIME2025-II
  data_files:
  - split: test
    path: aime2025-II.jsonl
---
AIME-2025, two rows of a stand-in.
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in hub: model org/tiny (a tiny Qwen2, plus a README and a .bin copy a model snapshot
    must skip) at main and tag v1.0, and dataset org/aime (an AIME-shaped card with two configs)."""
    from pear_bench.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("tiny"), ["What is 1 + 1?", "\\boxed{2}"] * 4, vocab_size=290)
    (model / "README.md").write_text("a tiny model\n")
    (model / "pytorch_model.bin").write_bytes(b"not loaded: the safetensors are")
    data = tmp_path_factory.mktemp("aime")
    (data / "README.md").write_text(DATASET_CARD)
    for config, rows in AIME_ROWS.items():
        (data / f"aime2025-{config.split('-')[1]}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    hub = Hub()
    hub.add("model", "org/tiny", model, refs=("main", "v1.0"))
    hub.add("dataset", "org/aime", data)
    server = serve(hub)
    yield hub
    server.shutdown()


@pytest.fixture
def endpoint(hub, monkeypatch):
    """`pear-bench` in this process talks to the stand-in."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.requests.clear()
    return hub.url


def snapshot_cli(kind, repo, revision, out):
    return cli.main(["snapshot", kind, "--repo", repo, "--revision", revision, "--out", str(out)])


def error_line(err):
    """The one error line that ends stderr (above it, at most huggingface_hub's progress bars)."""
    assert "Traceback" not in err, err
    lines = err.strip().replace("\r", "\n").splitlines()
    assert lines and lines[-1].startswith("pear-bench snapshot: error: "), err
    assert not any("error" in line for line in lines[:-1]), err
    return lines[-1]


def served_model_files(hub):
    files = hub.repos[("model", "org/tiny")].files
    return {name: data for name, data in files.items() if any(fnmatch(name, p) for p in MODEL_FILES)}


@pytest.fixture(scope="module")
def model_snapshot(hub, tmp_path_factory):
    out = tmp_path_factory.mktemp("snap") / "tiny"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", hub.url)
        assert snapshot_cli("model", "org/tiny", "main", out) == 0
    return out


def test_a_model_snapshot_holds_the_served_files_and_commit(hub, model_snapshot):
    served = served_model_files(hub)
    assert "README.md" not in served and "pytorch_model.bin" not in served and "model.safetensors" in served
    on_disk = {p.relative_to(model_snapshot).as_posix(): p.read_bytes()
               for p in model_snapshot.rglob("*") if p.is_file()}
    record = json.loads(on_disk.pop("snapshot.json"))
    assert on_disk == served  # the weights, config and tokenizer files, byte for byte; nothing else
    assert record["commit"] == hub.repos[("model", "org/tiny")].sha
    assert (record["repo"], record["revision"], record["kind"]) == ("org/tiny", "main", "model")
    assert record["files"] == {name: len(data) for name, data in served.items()}
    assert not list(model_snapshot.parent.glob(".tiny.tmp*"))


def test_a_model_snapshot_loads_offline(model_snapshot):
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1]); AutoModelForCausalLM.from_pretrained(sys.argv[1])")
    out = subprocess.run([sys.executable, "-c", code, str(model_snapshot)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_second_run_asks_the_hub_nothing(hub, endpoint, model_snapshot, capsys):
    before = (model_snapshot / "snapshot.json").stat().st_mtime_ns
    assert snapshot_cli("model", "org/tiny", "main", model_snapshot) == 0
    assert hub.requests == []
    assert (model_snapshot / "snapshot.json").stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().out


def test_a_tag_resolves_to_its_commit_and_another_request_is_refused(hub, endpoint, model_snapshot, tmp_path, capsys):
    out = tmp_path / "tagged"
    assert snapshot_cli("model", "org/tiny", "v1.0", out) == 0
    record = json.loads((out / "snapshot.json").read_text())
    assert (record["revision"], record["commit"]) == ("v1.0", hub.repos[("model", "org/tiny")].sha)
    capsys.readouterr()
    assert snapshot_cli("model", "org/tiny", "v1.0", model_snapshot) == 2  # holds main, not v1.0
    assert "--overwrite" in error_line(capsys.readouterr().err)


def test_an_interrupted_download_restarts_cleanly(hub, endpoint, tmp_path, capsys):
    out = tmp_path / "tiny"
    stale = tmp_path / ".tiny.tmp"  # left by an earlier request for another revision
    stale.mkdir()
    (stale / "leftover.safetensors").write_bytes(b"stale")
    hub.fail = {"model.safetensors"}  # its download breaks off once
    assert snapshot_cli("model", "org/tiny", "main", out) == 2
    assert "HTTP 403" in error_line(capsys.readouterr().err)
    assert not out.exists()  # half a snapshot never counts as one
    assert snapshot_cli("model", "org/tiny", "main", out) == 0
    on_disk = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    on_disk.pop("snapshot.json")
    assert on_disk == served_model_files(hub)
    assert not stale.exists()


@pytest.mark.parametrize("repo, revision, message", [
    ("org/tiny", "nope", "--revision 'nope': no such branch, tag or commit in model org/tiny"),
    ("org/missing", "main", "--repo 'org/missing': no such model repository"),
    ("org/aime", "main", "--repo 'org/aime': no such model repository"),  # a dataset, asked for as a model
])
def test_a_wrong_revision_or_repo_is_a_one_line_error(endpoint, repo, revision, message, tmp_path, capsys):
    assert snapshot_cli("model", repo, revision, tmp_path / "out") == 2
    err = error_line(capsys.readouterr().err)
    assert message in err and endpoint in err
    assert list(tmp_path.iterdir()) == []


def test_make_data_reads_a_dataset_snapshot_offline_and_records_its_commit(hub, endpoint, tmp_path):
    snap = tmp_path / "aime-snapshot"
    assert snapshot_cli("dataset", "org/aime", "main", snap) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "pear_bench", "make-data", "aime2025", "--source", str(snap),
                          "--out", str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "data/eval.jsonl").read_text().splitlines()]
    served = [(f"{config}-{i}", r["question"], str(int(r["answer"])))
              for config, config_rows in AIME_ROWS.items() for i, r in enumerate(config_rows, 1)]
    assert [(r["id"], r["question"], r["answer"]) for r in rows] == served
    source = json.loads((tmp_path / "data/manifest.json").read_text())["source"]
    assert (source["hub_dataset"], source["commit"]) == ("org/aime", hub.repos[("dataset", "org/aime")].sha)


def test_an_eval_run_on_a_snapshot_records_the_served_commit(hub, model_snapshot, tmp_path):
    problems = tmp_path / "eval.jsonl"
    write_problems(problems, [make_record("sum-0", "math", "What is 1 + 1?", "2")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "pear_bench", "eval", "--model", str(model_snapshot), "--problems",
                          str(problems), "--samples", "1", "--ks", "1", "--max-new-tokens", "2", "--seed", "0",
                          "--device", "cpu", "--output", str(tmp_path / "eval")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["model_revision"] == {"repo": "org/tiny", "revision": "main",
                                         "commit": hub.repos[("model", "org/tiny")].sha}


def test_training_records_carry_the_base_commit_through_sft_to_rl(hub, model_snapshot, tmp_path):
    served = {"repo": "org/tiny", "revision": "main", "commit": hub.repos[("model", "org/tiny")].sha}
    data = tmp_path / "data.jsonl"
    data.write_text("")
    sft = build_config("sft", {"model": str(model_snapshot), "dataset": str(data), "output_dir": str(tmp_path / "sft")})
    write_run_record(run_record(sft), tmp_path / "sft")  # what `pear-bench sft` leaves next to its model
    rl = build_config("rl", {"model": str(tmp_path / "sft"), "prompts": str(data), "output_dir": str(tmp_path / "rl")})
    assert json.loads((tmp_path / "sft/run_config.json").read_text())["model_revision"] == served
    assert run_record(rl)["model_revision"] == served
    scratch = tmp_path / "scratch"  # a model built here has no hub commit
    scratch.mkdir()
    assert run_record(build_config("sft", {"model": str(scratch), "dataset": str(data),
                                           "output_dir": str(tmp_path / "o")}))["model_revision"] is None
