"""Resuming: which checkpoint a run continues from, and what happens when its settings changed."""

import json
from pathlib import Path

import pytest

from pear_bench.config import RUN_RECORD, ConfigError, build_config, run_record
from pear_bench.trainers.checkpoints import resume_checkpoint


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "model").mkdir()
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("{}\n")
    return tmp_path


def settings(run_dir, **extra):
    return build_config("sft", {"model": str(run_dir / "model"), "dataset": str(run_dir / "data.jsonl"),
                                "output_dir": str(run_dir / "out"), **extra})


def write_checkpoint(config, step):
    path = Path(config.output_dir) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / RUN_RECORD).write_text(json.dumps(run_record(config)))
    return str(path)


def test_auto_continues_from_the_newest_checkpoint_with_the_same_settings(run_dir):
    config = settings(run_dir)
    write_checkpoint(config, 5)
    newest = write_checkpoint(config, 10)
    assert resume_checkpoint(config) == newest
    assert resume_checkpoint(settings(run_dir, resume="never")) is None
    assert resume_checkpoint(settings(run_dir, logging_steps=3)) == newest  # logging may change on resume


def test_changed_settings_are_refused_by_auto_and_set_aside_by_auto_restart(run_dir):
    old = settings(run_dir, gamma=0.999)
    for step in (5, 10):
        write_checkpoint(old, step)
    with pytest.raises(ConfigError, match=r"gamma: 0.999 -> 0.9"):
        resume_checkpoint(settings(run_dir, gamma=0.9))
    assert resume_checkpoint(settings(run_dir, gamma=0.9, resume="auto-restart")) is None
    out = run_dir / "out"
    assert not list(out.glob("checkpoint-*"))
    stale = list(out.glob("stale-*"))
    assert len(stale) == 1
    assert sorted(p.name for p in stale[0].iterdir()) == ["checkpoint-10", "checkpoint-5"]  # moved, not deleted


def test_auto_restart_continues_when_nothing_changed(run_dir):
    config = settings(run_dir, resume="auto-restart")
    newest = write_checkpoint(config, 3)
    assert resume_checkpoint(config) == newest


def test_a_checkpoint_cut_short_while_saving_is_set_aside_and_the_one_before_used(run_dir):
    config = settings(run_dir)
    complete = write_checkpoint(config, 10)
    partial = Path(config.output_dir) / "checkpoint-20"  # interrupted mid-save: no run record yet
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    assert resume_checkpoint(config) == complete
    out = Path(config.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10"]
    moved = list(out.glob("incomplete-*/checkpoint-20"))
    assert len(moved) == 1 and (moved[0] / "config.json").is_file()  # moved, not deleted


def test_only_partial_checkpoints_means_starting_over(run_dir):
    config = settings(run_dir)
    (Path(config.output_dir) / "checkpoint-5").mkdir(parents=True)
    assert resume_checkpoint(config) is None
    assert not list(Path(config.output_dir).glob("checkpoint-*"))
