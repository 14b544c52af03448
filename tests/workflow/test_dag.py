"""The Snakemake workflow's DAG: every grid config validates and builds, the paper grid has every job
of its grid with its GPU request under the SLURM profile, and bad configs fail before any job runs."""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from micro import job_counts

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "workflows" / "config").glob("*.yaml"))
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def dry_run(*args, cwd=ROOT):
    return subprocess.run([*SNAKEMAKE, "--dry-run", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def expected_counts(grid: dict) -> dict[str, int]:
    """Jobs of a grid counted from its config alone."""
    students, tasks, arms, seeds = grid["students"], grid["tasks"], grid["methods"], grid["rl_seeds"]
    bases = sum(len(set(students) | ({spec["teacher"]} if grid["evaluation"].get("teachers") else set()))
                for spec in tasks.values())
    specs = [spec for spec in grid["models"].values() if isinstance(spec, dict)]
    bootstrapped = [spec for spec in specs if "bootstrap" in spec]
    converted = [spec for spec in specs if "convert" in spec]
    # Hub models ({hub: ...}, or an "org/name" id rather than a path) and hub datasets are fetched by a job each.
    hub = [s for s in grid["models"].values() if "hub" in s or isinstance(s, str) and not s.startswith("/")]
    counts = {
        "make_data": len(grid["data"]),
        "collect": len(tasks),
        "transfer": len(students) * len(tasks),
        "sft": len(students) * len(tasks) * len(arms),
        "rl": len(students) * len(tasks) * len(arms) * len(seeds),
        "evaluate": bases + len(students) * len(tasks) * len(arms) * (1 + len(seeds)),
        "tables": 1,
        "all": 1,
    }
    if bootstrapped:
        counts["bootstrap_model"] = len(bootstrapped)
    if any("init" not in spec for spec in bootstrapped):  # models from scratch share a trained tokenizer
        counts["bootstrap_tokenizer"] = 1
    if converted:
        counts["convert_model"] = len(converted)
    if hub:
        counts["snapshot_model"] = len(hub)
    if grid.get("hub_datasets"):
        counts["snapshot_dataset"] = len(grid["hub_datasets"])
    if grid.get("reference"):
        counts["reproduce"] = 1
    if grid["collect"].get("rescore") is not None:
        counts["rescore"] = len(tasks)
    counts["total"] = sum(counts.values())
    return counts


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_has_every_job_of_the_grid(config, tmp_path):
    out = dry_run("--cores", "1", "--configfile", str(config), "--directory", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_counts(out.stdout) == expected_counts(yaml.safe_load(config.read_text()))


def test_paper_grid_under_slurm_profile_requests_gpus(tmp_path):
    config = ROOT / "workflows/config/paper.yaml"
    grid = yaml.safe_load(config.read_text())
    out = dry_run("--profile", str(ROOT / "workflows/profiles/slurm"), "--configfile", str(config),
                  "--directory", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_counts(out.stdout) == expected_counts(grid)
    # Each job block names its rule, then its resources; GPU rules ask for the config's GPUs.
    for block in out.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if rule in ("all",):
            continue
        spec = grid["resources"].get(rule, grid["resources"]["default"])
        output = re.search(r"output: results/paper/(\S+)", block).group(1).split("/")
        # the model a job loads: eval/<task>/<model>/..., sft|rl/<model>/..., else the task's teacher
        model = None
        if output[0] == "eval":
            model = output[2]
        elif output[0] in ("sft", "rl"):
            model = output[1]
        elif output[0] == "sft_data":
            model = grid["tasks"][output[1]]["teacher"]
        gpus = (spec.get("models") or {}).get(model, {}).get("gpu", spec["gpu"])
        assert re.search(rf"\bgpu={gpus}\b", block), (rule, block[:800])
        if rule in ("collect", "rescore", "transfer", "evaluate") and gpus > 1:  # vLLM over all of them
            assert f"--tensor-parallel-size {gpus}" in block, (rule, block[:800])
    assert any("--tensor-parallel-size 4" in b and "qwen3-32b/base" in b for b in out.stdout.split("\nrule evaluate"))


def test_default_config_is_the_mini_grid_and_not_merged_into_others(tmp_path):
    default = dry_run("--cores", "1", "--directory", str(tmp_path))
    assert default.returncode == 0, default.stdout + default.stderr
    assert job_counts(default.stdout) == expected_counts(yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text()))
    paper = dry_run("--cores", "1", "--configfile", str(ROOT / "workflows/config/paper.yaml"), "--directory", str(tmp_path))
    assert "bootstrap" not in paper.stdout  # mini.yaml's bootstrapped models do not leak into the paper grid


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.update(modles=[]), "modles"),                                      # schema: unknown key
    (lambda g: g["sft"].update(gama=0.9), "did you mean 'gamma'"),                  # pear_bench.config
    (lambda g: g["methods"]["pear-token"].update(gamma=1.5), "sft.gamma must be in (0, 1]"),
    (lambda g: g["tasks"]["chain_sum"].update(teacher="techer"), "techer"),          # cross-reference
    (lambda g: g["evaluation"].update(ks=[1, 16]), "pass@16 needs at least 16 samples"),
    (lambda g: g["rl"].update(seed=3), "rl.seed is set by the workflow"),
    (lambda g: g.update(reference="results/reference/nowhere"), "'results/reference/nowhere' has no metrics.csv"),
    (lambda g: g.update(reference_tolerance=-0.1), "reference_tolerance"),
    (lambda g: g["sft"].update(policy_temperature=0.7), "sft.policy_temperature is 0.7 but rl.temperature is 1.0"),
    (lambda g: g["rl"].update(system_prompt="Be brief."), "rl.system_prompt: set it under prompt:"),
    (lambda g: g.update(prompt={"enable_thinking": "yes"}), "enable_thinking"),
    (lambda g: g["models"].update(student={"hub": "org/student", "revison": "abc"}), "revison"),
    (lambda g: g["data"].update(chain_sum="aime2025 --source org/aime"),
     "data.chain_sum: --source org/aime is read from the hub by the job itself"),
    (lambda g: g["data"].update(chain_sum="math --source data/math.jsonl"),  # --aime's default is the hub's
     "data.chain_sum: --aime opencompass/AIME2025 is read from the hub by the job itself"),
    (lambda g: g["data"].update(chain_sum="aime2025 --source hub:nowhere"), "'hub:nowhere' names no dataset under hub_datasets"),
])
def test_bad_config_is_rejected_before_any_job(edit, message, tmp_path):
    grid = yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text())
    edit(grid)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path))
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_committed_results_do_not_shadow_the_grid(tmp_path):
    """A fresh clone's `snakemake --cores all` must run every job: with the committed results/ tree
    laid out as a clone has it, the default grid's dry run still lists all of its jobs."""
    archive = subprocess.run(["git", "archive", "HEAD", "results"], capture_output=True, cwd=ROOT)
    if archive.returncode != 0:
        pytest.skip("not a git checkout: " + archive.stderr.decode()[:200])
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    assert (tmp_path / "results/reference/mini/metrics.csv").is_file()
    out = dry_run("--cores", "1", "--directory", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_counts(out.stdout) == expected_counts(yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text()))


@pytest.mark.parametrize("arguments", [
    ["game", "chain_sum", "--seed", "0", "--train-size", "20", "--eval-size", "5", "--set", 'operators=["+","-"]'],
    """game chain_sum --seed 0 --train-size 20 --eval-size 5 --set 'operators=["+","-"]'""",
], ids=["list", "string"])
def test_grid_arguments_reach_the_command_as_written(arguments, tmp_path):
    """A JSON value inside a grid's make-data arguments survives the shell (no globbing, no lost quotes)."""
    grid = yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text())
    grid["data"]["chain_sum"] = arguments
    configfile = tmp_path / "quoted.yaml"
    configfile.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(configfile), "--directory", str(tmp_path), "--printshellcmds",
                  "results/mini/data/chain_sum")
    assert out.returncode == 0, out.stdout + out.stderr
    command = next(line for line in out.stdout.splitlines() if " make-data " in line)
    words = shlex.split(command.split("&&")[1])  # what the shell hands the program
    assert words[words.index("--set") + 1] == 'operators=["+","-"]', command


def test_dry_run_refuses_a_teacher_student_pair_whose_responses_cannot_be_carried(tmp_path):
    """Local models: a Qwen3-like teacher with a Qwen2.5-like student passes (its think block would be
    re-tokenised), a student of another tokenizer family is refused before any job, naming the pair."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tokenizer_family import build_family

    family = build_family(tmp_path / "models")
    grid = yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text())
    for key in ("bootstrap", "reference"):
        grid.pop(key)
    grid["data"].pop("chain_sum-pretrain")
    grid["models"] = {"teacher": str(family["qwen3"]), "student": str(family["qwen2.5"]), "llama": str(family["other"])}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(good), "--directory", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    grid["students"] = ["student", "llama"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path))
    assert out.returncode != 0
    assert re.search(r"tasks.chain_sum: teacher teacher -> student llama: teacher token \d+: .*id \d+ is '.+' in the "
                     r"teacher, '.+' in the student", out.stdout + out.stderr), out.stderr[-2000:]


def test_hub_models_and_datasets_are_fetched_once_before_the_jobs_that_read_them_offline(tmp_path):
    """A grid of hub models (a pinned {hub:, revision:} and a bare id) and a hub dataset: one snapshot job
    each, at the revision the config names; every job that reads them depends on its snapshot, gets
    its local directory, and runs offline."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    grid = yaml.safe_load((ROOT / "workflows/config/mini.yaml").read_text())
    for key in ("bootstrap", "reference"):
        grid.pop(key)
    grid["data"].pop("chain_sum-pretrain")
    grid["models"] = {"teacher": {"hub": "org/teacher", "revision": sha}, "student": "org/student"}
    grid["hub_datasets"] = {"aime": {"hub": "org/aime", "revision": "v1"}}
    grid["data"]["aime2025"] = "aime2025 --source hub:aime"
    grid["tasks"]["chain_sum"]["eval"] = "aime2025/eval.jsonl"
    configfile = tmp_path / "hub.yaml"
    configfile.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(configfile), "--directory", str(tmp_path), "--printshellcmds")
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_counts(out.stdout) == expected_counts(grid)
    commands = [line.split("Shell command: ")[-1] for line in out.stdout.splitlines() if "-m pear_bench" in line]
    snapshots = sorted(c.split(" -- ", 1)[1].split(" > ")[0].split(" pear_bench ", 1)[1] for c in commands
                       if " snapshot " in c)
    assert snapshots == [f"snapshot dataset --repo org/aime --revision v1 --out results/mini/hub_datasets/aime",
                         f"snapshot model --repo org/student --revision main --out results/mini/models/student",
                         f"snapshot model --repo org/teacher --revision {sha} --out results/mini/models/teacher"]
    for command in commands:
        words = shlex.split(command.split(" -- ", 1)[1].split(" > ")[0])
        environment = command.split(" -m pear_bench gpu-run ")[0]  # the variables set for the job
        assert ("HF_HUB_OFFLINE=1 " in environment) == ("snapshot" not in words), command
        if "snapshot" in words:
            continue
        for flag in ("--model", "--teacher", "--student", "--source"):
            if flag in words:
                assert words[words.index(flag) + 1].startswith("results/mini/"), command
    # The rule graph: each snapshot precedes every rule that reads what it fetched.
    graph = subprocess.run([*SNAKEMAKE, "--rulegraph", "--cores", "1", "--configfile", str(configfile),
                            "--directory", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert graph.returncode == 0, graph.stderr
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', graph.stdout, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", graph.stdout, flags=re.M)}
    assert {("snapshot_model", rule) for rule in ("collect", "transfer", "sft", "evaluate")} <= edges
    assert ("snapshot_dataset", "make_data") in edges


def test_every_job_that_builds_prompts_gets_the_grids_fewshot_file(tmp_path):
    """collect, the teacher's fine-tune, transfer, GRPO and every evaluation see the same prompt."""
    out = dry_run("--cores", "1", "--configfile", str(ROOT / "workflows/config/smollm2.yaml"),
                  "--directory", str(tmp_path), "--printshellcmds")
    assert out.returncode == 0, out.stdout + out.stderr
    fewshot = str(ROOT / "workflows/config/smollm2-fewshot.jsonl")
    commands = [line for line in out.stdout.splitlines() if "-m pear_bench" in line]
    kinds = {name: [c for c in commands if f" {name} " in c] for name in
             ("collect", "transfer", "rl", "eval", "bootstrap model")}
    assert [len(v) for v in kinds.values()] == [1, 1, 4, 8, 1]
    for name, lines in kinds.items():
        for command in lines:
            words = shlex.split(command.split(" -- ", 1)[1].split(" > ")[0])
            assert words[words.index("--fewshot") + 1] == fewshot, (name, command)


def test_dry_run_refuses_a_gpu_job_that_cannot_fit(tmp_path):
    """pear-bench plan's check inside the dry run: GRPO micro-batches of 16 completions of 8k tokens."""
    grid = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
    grid["rl"].update(per_device_train_batch_size=16, gradient_accumulation_steps=2)
    config = tmp_path / "paper.yaml"
    config.write_text(yaml.safe_dump(grid))
    out = dry_run("--cores", "1", "--configfile", str(config), "--directory", str(tmp_path))
    assert out.returncode != 0
    assert "rl on qwen3-8b: about" in out.stdout + out.stderr
    assert "lower rl.per_device_train_batch_size (now 16)" in out.stdout + out.stderr
