"""The micro grid (tests/workflow/micro.py) on a real one-node SLURM cluster (tests/workflow/slurm_cluster.py),
through workflows/profiles/slurm and snakemake-executor-plugin-slurm: every job goes through sbatch and
finishes, an interrupted run resumes, and a rerun submits nothing.

The jobs run without PEAR_BENCH_GPUS and CUDA_VISIBLE_DEVICES (a CPU cluster sets neither), which
checks that `pear-bench gpu-run --gpus 0` needs no GPU list from SLURM.

Needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (.ci/install-slurm); skipped,
saying which is missing, where they are not there. `pytest -m "not slurm"` leaves it out.
"""

from __future__ import annotations

import collections
import re
import subprocess

import pytest
import yaml
from micro import (ROOT, SFT_RUN, assert_sft_resumed, interrupt_after_sft_checkpoint, job_counts, micro_grid,
                   snakemake)
from slurm_cluster import ClusterUnavailable, SlurmCluster, missing_requirements

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            cluster.start()
        except ClusterUnavailable as e:
            pytest.skip(str(e))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, teacher):
    work = tmp_path_factory.mktemp("micro-slurm")
    (work / "micro.yaml").write_text(yaml.safe_dump(micro_grid(str(teacher))))
    return work


@pytest.fixture(scope="module")
def command(cluster, workdir):
    """The Snakemake command line: the repository's SLURM profile with this cluster's account and partition."""
    profile = yaml.safe_load((ROOT / "workflows/profiles/slurm/config.yaml").read_text())
    for rule in [profile["default-resources"], *profile["set-resources"].values()]:
        rule["slurm_partition"] = repr(cluster.partition)
    profile["default-resources"]["slurm_account"] = repr(cluster.account)
    # The micro grid's jobs take seconds: check their states every second, not every 10 (the plugin
    # still backs off by 10 s per check in which no job ended), and wait seconds, not minutes, for outputs.
    profile.update({"max-status-checks-per-second": 1, "slurm-init-seconds-before-status-checks": 1,
                    "latency-wait": 5})
    (workdir / "profile").mkdir()
    (workdir / "profile/config.yaml").write_text(yaml.safe_dump(profile))
    return [*snakemake(workdir, workdir / "micro.yaml"), "--workflow-profile", str(workdir / "profile")]


@pytest.fixture(scope="module")
def env(cluster):
    env = dict(cluster.env, HF_HUB_OFFLINE="1")
    for name in ("PEAR_BENCH_GPUS", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    return env


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def jobs_by_run(cluster: SlurmCluster) -> list[list[dict[str, str]]]:
    """sacct's batch jobs grouped by Snakemake run (the plugin names each job after its run's id), oldest first."""
    runs = collections.defaultdict(list)
    for job in sorted(cluster.jobs(), key=lambda job: int(job["JobID"])):
        job["rule"] = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", job["Comment"]).group(1)
        runs[job["JobName"]].append(job)
    return list(runs.values())


def test_every_job_goes_through_sbatch_and_an_interrupted_run_resumes(cluster, workdir, command, env):
    grid = job_counts(run([*command, "--dry-run"], env).stdout)
    # `all` only collects the outputs: Snakemake runs it itself, without a job.
    expected = {rule: n for rule, n in grid.items() if rule not in ("all", "total")}

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    checkpoints = interrupt_after_sft_checkpoint(proc, workdir)
    assert not cluster.drain_queue(), "jobs still queued or running 30 s after Ctrl-C"
    out = run(command, env)  # with no cleanup in between

    first, second = jobs_by_run(cluster)
    # The interrupted run: the plain-SFT job was cancelled (by the plugin's scancel), nothing failed.
    assert {job["State"].split()[0] for job in first} <= {"COMPLETED", "CANCELLED"}, first
    assert any(job["rule"] == "sft" and job["State"].startswith("CANCELLED") for job in first), first
    # The rerun: every job it said it would run was one sbatch job, and each completed.
    assert all(job["State"] == "COMPLETED" for job in second), second
    assert collections.Counter(job["rule"] for job in second) == {
        rule: n for rule, n in job_counts(out.stdout + out.stderr).items() if rule not in ("all", "total")}
    # Together, exactly one completed job for each job of the grid: nothing ran twice to completion.
    completed = collections.Counter(job["rule"] for job in first + second if job["State"] == "COMPLETED")
    assert completed == expected, (completed, expected)

    assert_sft_resumed(workdir, checkpoints)
    for path in (f"{SFT_RUN}/run_config.json", "results/micro/metrics.csv", "results/micro/tables/main.md"):
        assert (workdir / path).is_file(), path


def test_rerun_with_nothing_changed_submits_nothing(cluster, command, env):
    before = len(cluster.jobs())
    out = run(command, env)
    assert "Nothing to be done" in out.stdout + out.stderr, out.stderr[-3000:]
    assert len(cluster.jobs()) == before
