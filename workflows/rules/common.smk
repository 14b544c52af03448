# Config validation and every input function of the workflow (path logic only; rules live in the other files).
#
# Where things go, for a grid G (wildcards in braces):
#   results/G/data/{dataset}/                          make-data output (train.jsonl, eval.jsonl, manifest.json)
#   results/G/hub_datasets/{name}/                     hub dataset snapshots at a pinned revision (snapshot.json)
#   results/G/models/tokenizer/, models/{model}/       bootstrapped tokenizer and models (CPU miniature), converted
#                                                      models, and hub model snapshots (snapshot.json)
#   results/G/sft_data/{task}/collected.parquet        the teacher's SFT records with behaviour logprobs
#                                                      (+ collected.summary.json, written last)
#   results/G/sft_data/{task}/rescored.parquet         the same re-scored (grids with collect.rescore)
#   results/G/sft_data/{task}/students/{model}.parquet each student's SFT records: its template, its ids
#   results/G/sft/{model}/{task}/{arm}/                SFT checkpoints and final model (run_config.json last)
#   results/G/rl/{model}/{task}/{arm}/seed{seed}/      GRPO checkpoints and final model
#   results/G/eval/{task}/{model}/{checkpoint}/        samples.jsonl, metrics.json; checkpoint is
#                                                      base | sft/{arm} | rl/{arm}/seed{seed}
#   results/G/metrics.csv, tables/, plots/             the grid's results
#   results/G/reproducibility.md (+ .json)             the results compared with the reference (if any)
#   results/reference/G/                               committed reference results: no rule writes there
#   logs/G/..., benchmarks/G/...                       one log and one timing file per job
import json
import os
import re
import shlex
import sys

import yaml
from snakemake.utils import validate

from pear_bench.config import ConfigError, RLConfig, check_settings
from pear_bench.errors import InputError, looks_like_path
from pear_bench.problems import dataset_sources
from pear_bench.prompts import read_fewshot
from pear_bench.plan import check_grid
from pear_bench.resources import job_resources, vllm_flags


validate(config, schema="../schemas/config.schema.yaml")

GRID = config["grid"]
RESULTS = f"results/{GRID}"
PROMPT = dict(config.get("prompt") or {})
if PROMPT.get("fewshot") is not None:  # a relative path is read from the repository, like reference:
    PROMPT["fewshot"] = os.path.join(workflow.basedir, PROMPT["fewshot"])
# SFT evaluates pi_theta at the temperature RL samples at (sft.policy_temperature := rl.temperature).
RL_TEMPERATURE = config["rl"].get("temperature", RLConfig.__dataclass_fields__["temperature"].default)
# The committed reference results (results/reference/<grid>) live in the repository: a relative path
# is read from the repository, whatever directory the workflow runs in.
REFERENCE = os.path.join(workflow.basedir, config["reference"]) if config.get("reference") else None


def _check_grid():
    """Cross-references the schema cannot express, and the sft:/rl: settings (pear_bench.config)."""
    models, tasks = config["models"], config["tasks"]
    for name in config["students"]:
        if name not in models:
            raise ValueError(f"students: {name!r} is not under models: ({', '.join(models)})")
    for task, spec in tasks.items():
        if spec["teacher"] not in models:
            raise ValueError(f"tasks.{task}.teacher: {spec['teacher']!r} is not under models: ({', '.join(models)})")
        for split in ("train", "eval"):
            dataset = spec[split].split("/")[0]
            if dataset not in config["data"]:
                raise ValueError(f"tasks.{task}.{split}: dataset {dataset!r} is not under data: "
                                 f"({', '.join(config['data'])})")
    for dataset in config["data"]:
        try:
            sources = dataset_sources(hub_refs_resolved(dataset, hub_dataset_dir))
        except InputError as exc:
            raise ValueError(f"data.{dataset}: {exc}") from None
        for flag, value in sources.items():
            if _is_hub_id(value):
                raise ValueError(f"data.{dataset}: {flag} {value} is read from the hub by the job itself; name it "
                                 f"under hub_datasets: (e.g. {{hub: {value}, revision: <commit>}}) and write "
                                 f"{flag} hub:<name>, so that it is fetched once at a pinned revision")
    from_scratch = [m for m, spec in models.items() if "bootstrap" in _as_mapping(spec) and "init" not in spec]
    if from_scratch and "bootstrap" not in config:
        raise ValueError(f"models.{from_scratch[0]} is bootstrapped from scratch, so the grid needs a bootstrap: "
                         "section (its tokenizer)")
    for name, spec in models.items():
        init = _as_mapping(spec).get("init")
        if init is not None and (init not in models or init == name):
            raise ValueError(f"models.{name}.init: {init!r} is not another model under models: ({', '.join(models)})")
    try:
        check_settings("sft", config["sft"])
        check_settings("rl", config["rl"])
        for arm, overrides in config["methods"].items():
            check_settings("sft", {**config["sft"], **overrides})
    except ConfigError as exc:
        raise ValueError(f"grid {GRID!r}: {exc}") from None
    for stage, keys in (("sft", ("model", "dataset", "output_dir", "seed")), ("rl", ("model", "prompts", "output_dir", "seed"))):
        for key in keys:
            if key in config[stage]:
                raise ValueError(f"{stage}.{key} is set by the workflow for each job; remove it from the config")
    for key in ("system_prompt", "enable_thinking", "fewshot"):
        if key in config["rl"]:
            raise ValueError(f"rl.{key}: set it under prompt: instead, where collect, SFT data, GRPO and evaluation "
                             "all read it")
    for where, settings in [("sft", config["sft"])] + [(f"methods.{arm}", o) for arm, o in config["methods"].items()]:
        if "policy_temperature" in settings and settings["policy_temperature"] != RL_TEMPERATURE:
            raise ValueError(f"{where}.policy_temperature is {settings['policy_temperature']} but rl.temperature is "
                             f"{RL_TEMPERATURE}: SFT would shape pi_theta at another temperature than RL samples it "
                             "at; remove the key (the workflow sets it to rl.temperature)")
    if PROMPT.get("fewshot") is not None:
        try:
            read_fewshot(PROMPT["fewshot"])
        except InputError as exc:
            raise ValueError(f"prompt.fewshot: {exc}") from None
    if config.get("reference") and not os.path.isfile(os.path.join(REFERENCE, "metrics.csv")):
        raise ValueError(f"reference: {config['reference']!r} has no metrics.csv (looked in {REFERENCE}); "
                         "point it at a committed results directory, or remove the key")
    for k in config["evaluation"]["ks"]:
        if k > config["evaluation"]["samples"]:
            raise ValueError(f"evaluation.ks: pass@{k} needs at least {k} samples; samples is "
                             f"{config['evaluation']['samples']}")


def _as_mapping(value):
    return value if isinstance(value, dict) else {}


def _is_hub_id(value):
    """A hub repository id ("org/name"), not a local file or directory (nor a path that will be one)."""
    return not (looks_like_path(value) or os.path.exists(value) or value.endswith((".json", ".jsonl")))


HUB_REF = "hub:"  # a make-data word `hub:<name>` stands for the snapshot of hub_datasets.<name>


def hub_dataset_dir(name):
    return f"{RESULTS}/hub_datasets/{name}"


def hub_refs_resolved(dataset, path_of):
    """make-data's words for ``dataset`` with each ``hub:<name>`` replaced by ``path_of(name)``.

    Raises:
        ValueError: a name that is not under hub_datasets:.
    """
    words = []
    for word in _words(config["data"][dataset]):
        flag, eq, value = word.rpartition("=") if word.startswith("--") and "=" in word else ("", "", word)
        if value.startswith(HUB_REF):
            name = value.removeprefix(HUB_REF)
            if name not in config.get("hub_datasets", {}):
                raise ValueError(f"data.{dataset}: {word!r} names no dataset under hub_datasets: "
                                 f"({', '.join(config.get('hub_datasets', {})) or 'none'})")
            value = path_of(name)
        words.append(flag + eq + value)
    return words


def _words(value):
    return [str(word) for word in value] if isinstance(value, list) else shlex.split(value or "")


_check_grid()
try:  # the GPU jobs fit their GPUs (pear-bench plan), and the vLLM flags are the workflow's to set
    check_grid(config)
    for _rule in ("collect", "rescore", "transfer", "evaluate"):
        if _rule != "rescore" or config["collect"].get("rescore") is not None:
            vllm_flags(config, _rule)
except InputError as exc:
    raise ValueError(str(exc)) from None


def _check_pairs():
    """Every teacher-student pair, where both tokenizers are at hand now (local directories, built models
    and hub snapshots already fetched; nothing is downloaded): refuse a pair whose responses could not be carried to the student
    (pear_bench.token_transfer.check_pair). Other pairs are checked by their transfer job."""
    from pear_bench.token_transfer import check_pair, load_side, pair_tokenizers

    sides = {}

    def side(name):
        if name not in sides:
            try:
                sides[name] = load_side(name, model_path(name), local_files_only=True)
            except (OSError, InputError):
                sides[name] = None  # not built or fetched yet
        return sides[name]

    for task, spec in config["tasks"].items():
        for student in config["students"]:
            if model_path(student) == model_path(spec["teacher"]):
                continue
            teacher_side, student_side = side(spec["teacher"]), side(student)
            if teacher_side is None or student_side is None:
                continue
            try:
                check_pair(pair_tokenizers(teacher_side, student_side))
            except InputError as exc:
                raise ValueError(f"tasks.{task}: {exc}") from None

ARMS = list(config["methods"])


wildcard_constraints:
    grid=r"[A-Za-z0-9_-]+",
    dataset=r"[A-Za-z0-9_.-]+",
    name=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",
    task=r"[A-Za-z0-9_.-]+",
    arm=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",
    checkpoint=r"base|sft/[A-Za-z0-9_.-]+|rl/[A-Za-z0-9_.-]+/seed\d+",


# ---------------------------------------------------------------------------------------------
# Resources: per rule from the config's resources: section, `default` for the rest.


def cli_args(value):
    """Command-line arguments from the grid config as shell text. A list is quoted item by item; a
    string is read as shell words (shlex.split) and quoted again, so that what the YAML says is what
    the program gets (`--set 'operators=["+","-"]'` keeps its quotes; nothing is globbed or expanded)."""
    return shlex.join(_words(value))


# The Python running Snakemake has pear_bench (this file imports it), whatever PATH says.
PEAR_BENCH = f"{shlex.quote(sys.executable)} -m pear_bench"
# Rules whose jobs may ask for more on some models (resources.<rule>.models); the model of a job of each.
MODEL_RULES = ("collect", "rescore", "transfer", "sft", "rl", "evaluate")


def job_model(rule_name, wc):
    """The model a job of a GPU rule loads: the task's teacher (collect, rescore, transfer), else its student."""
    if rule_name in ("collect", "rescore", "transfer"):
        return config["tasks"][wc.task]["teacher"]
    return wc.model


def job_resource(rule_name, key):
    """One resource of a rule's jobs (pear_bench.resources.job_resources), as Snakemake takes it: a value, or for
    the GPU rules a function of the job's wildcards."""
    if rule_name not in MODEL_RULES:
        return job_resources(config, rule_name)[key]
    return lambda wc: job_resources(config, rule_name, job_model(rule_name, wc))[key]


# The only rules that reach the hub: every other job runs with HF_HUB_OFFLINE=1 on local snapshots, so
# a model or dataset that was not fetched fails at once instead of downloading on a compute node.
ONLINE_RULES = ("snapshot_model", "snapshot_dataset")


def launcher(rule_name, res):
    """How a job starts `pear-bench`: with its thread count for torch/BLAS, on GPU ids pinned by
    `pear-bench gpu-run` (Snakemake counts GPUs but does not say which ones a local job gets), and for
    training on several GPUs under `accelerate launch` with FSDP."""
    offline = "" if rule_name in ONLINE_RULES else "HF_HUB_OFFLINE=1 "
    prefix = f"{offline}OMP_NUM_THREADS={res['threads']} {PEAR_BENCH} gpu-run --gpus {res['gpu']} --"
    if rule_name in ("sft", "rl") and res["gpu"] > 1:
        return (f"{prefix} {shlex.quote(sys.executable)} -m accelerate.commands.launch"
                f" --config_file {workflow.basedir}/workflows/accelerate/fsdp.yaml --num_processes {res['gpu']}"
                f" -m pear_bench")
    return f"{prefix} {PEAR_BENCH}"


LAUNCH = {name: launcher(name, job_resources(config, name)) for name in
          ("snapshot_model", "snapshot_dataset", "make_data", "bootstrap_tokenizer", "bootstrap_model", "convert_model", "tables", "reproduce")}


def job_launch(rule_name):
    """The launcher of one job of a GPU rule (its GPU count may depend on its model)."""
    return lambda wc: launcher(rule_name, job_resources(config, rule_name, job_model(rule_name, wc)))


def vllm_args(rule_name, wc):
    """--max-model-len, and --tensor-parallel-size over the job's GPUs, for a job that samples with vLLM."""
    return shlex.join(vllm_flags(config, rule_name, job_model(rule_name, wc)))


# ---------------------------------------------------------------------------------------------
# Models and data


def model_kind(model):
    """Where a model comes from: "bootstrap" or "convert" (built by those rules), "hub" (a hub id, or
    {hub:, revision:}: fetched by rule snapshot_model), or "path" (a local directory, used as it is)."""
    spec = config["models"][model]
    if isinstance(spec, dict):
        return next(kind for kind in ("bootstrap", "convert", "hub") if kind in spec)
    return "hub" if _is_hub_id(spec) else "path"


def hub_source(spec):
    """(repo id, revision) of a hub model or hub_datasets entry: a string is the repo at main."""
    return (spec["hub"], str(spec.get("revision", "main"))) if isinstance(spec, dict) else (spec, "main")


def is_bootstrapped(model):
    return model_kind(model) == "bootstrap"


def is_built(model):
    """A model a rule makes (bootstrapped, converted from GGUF, or a hub snapshot) rather than a local path."""
    return model_kind(model) != "path"


def built_models(kind):
    """Names of the models made by rule bootstrap_model ("bootstrap"), convert_model ("convert") or
    snapshot_model ("hub"), as a wildcard pattern that matches nothing when there are none."""
    names = [m for m in config["models"] if model_kind(m) == kind]
    return "|".join(re.escape(n) for n in names) or "(?!)"


def model_path(model):
    """What a command is given for a model: the directory a rule builds or fetches, or the local path."""
    return f"{RESULTS}/models/{model}" if is_built(model) else config["models"][model]


def model_input(model):
    """The files a job using ``model`` waits for: a built model's directory, else nothing."""
    return [f"{RESULTS}/models/{model}"] if is_built(model) else []


def bootstrap_model_inputs(model):
    """A bootstrapped model's tokenizer (from scratch) or the model it starts from (``init``)."""
    init = config["models"][model].get("init")
    return {"init": model_input(init)} if init else {"tokenizer": f"{RESULTS}/models/tokenizer"}


def bootstrap_start(model):
    init = config["models"][model].get("init")
    return f"--init {shlex.quote(model_path(init))}" if init else f"--tokenizer {RESULTS}/models/tokenizer"


def make_data_args(dataset):
    """make-data's arguments for ``dataset`` as shell text, ``hub:<name>`` as that snapshot's directory."""
    return shlex.join(hub_refs_resolved(dataset, hub_dataset_dir))


def make_data_inputs(dataset):
    """The hub dataset snapshots a make-data job reads (its ``hub:<name>`` words)."""
    used = []
    hub_refs_resolved(dataset, lambda name: used.append(hub_dataset_dir(name)) or used[-1])
    return used


def data_file(split_path):
    """``<dataset>/<split>.jsonl`` from the config -> its path under results/<grid>/data/."""
    return f"{RESULTS}/data/{split_path}"


def data_input(split_path):
    """The make-data directory that holds ``<dataset>/<split>.jsonl``."""
    return f"{RESULTS}/data/{split_path.split('/')[0]}"


def prompt_args():
    """``--system-prompt`` / ``--enable-thinking`` / ``--fewshot`` for the commands that build prompts (the prompt: section)."""
    words = []
    if PROMPT.get("system_prompt") is not None:
        words += ["--system-prompt", PROMPT["system_prompt"]]
    if PROMPT.get("enable_thinking") is not None:
        words += ["--enable-thinking", str(PROMPT["enable_thinking"]).lower()]
    if PROMPT.get("fewshot") is not None:
        words += ["--fewshot", PROMPT["fewshot"]]
    return shlex.join(words)


def prompt_inputs():
    """The few-shot file, as an input of every job that builds prompts (edit it and they rerun)."""
    return [PROMPT["fewshot"]] if PROMPT.get("fewshot") is not None else []


def collected_data(task):
    return f"{RESULTS}/sft_data/{task}/collected.parquet"


def teacher_data(task):
    """The teacher's records the students get: re-scored when the grid says collect.rescore."""
    if config["collect"].get("rescore") is not None:
        return f"{RESULTS}/sft_data/{task}/rescored.parquet"
    return collected_data(task)


def student_data(task, model):
    return f"{RESULTS}/sft_data/{task}/students/{model}.parquet"


def summary_of(dataset):
    """``x.parquet`` -> ``x.summary.json``: written last by the job that writes the dataset."""
    return dataset.removesuffix(".parquet") + ".summary.json"


def bootstrap_inputs():
    """The datasets the bootstrap rules read: bootstrap.data, or every dataset of the grid (make-data
    jobs take seconds, and a model fine-tuned with init: reads its problems from them too)."""
    datasets = (config.get("bootstrap") or {}).get("data", list(config["data"]))
    return [f"{RESULTS}/data/{dataset}" for dataset in datasets]


# ---------------------------------------------------------------------------------------------
# Runs: SFT arms, GRPO seeds, evaluated checkpoints


def sft_dir(model, task, arm):
    return f"{RESULTS}/sft/{model}/{task}/{arm}"


def rl_dir(model, task, arm, seed):
    return f"{RESULTS}/rl/{model}/{task}/{arm}/seed{seed}"


def cli_flags(settings):
    """``--key value`` for each setting, as pear_bench.config reads flags: YAML scalars. Strings go
    bare unless YAML would read them as something else ("null", "1e-5"); the rest as JSON."""

    def text(value):
        if isinstance(value, str) and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)

    return " ".join(f"--{key} {shlex.quote(text(value))}" for key, value in settings.items())


def sft_settings(wc):
    """The complete settings of one SFT run: the shared sft: section, the arm's changes, the job's paths,
    and pi_theta's temperature (RL's)."""
    return {**config["sft"], **config["methods"][wc.arm], "policy_temperature": RL_TEMPERATURE,
            "model": model_path(wc.model), "dataset": student_data(wc.task, wc.model),
            "output_dir": sft_dir(wc.model, wc.task, wc.arm), "seed": config["sft_seed"], "resume": "auto-restart"}


def rl_settings(wc):
    """The complete settings of one GRPO run: the rl: section (the same for every arm), the prompt
    settings, start and seed."""
    return {**config["rl"], **PROMPT, "model": sft_dir(wc.model, wc.task, wc.arm),
            "prompts": data_file(config["tasks"][wc.task]["train"]),
            "output_dir": rl_dir(wc.model, wc.task, wc.arm, wc.seed), "seed": int(wc.seed), "resume": "auto-restart"}


def checkpoint_of(wc):
    """(model directory or hub id, the file that marks it finished or None, labels) of an evaluated checkpoint."""
    if wc.checkpoint == "base":
        return model_path(wc.model), (model_input(wc.model) or [None])[0], {"method": "base", "stage": "base"}
    stage, arm, *seed = wc.checkpoint.split("/")
    if stage == "sft":
        directory = sft_dir(wc.model, wc.task, arm)
        return directory, f"{directory}/run_config.json", {"method": arm, "stage": "sft"}
    directory = rl_dir(wc.model, wc.task, arm, seed[0].removeprefix("seed"))
    return directory, f"{directory}/run_config.json", {"method": arm, "stage": "rl", "seed": seed[0].removeprefix("seed")}


def eval_labels(wc):
    labels = {"model": wc.model, "task": wc.task, **checkpoint_of(wc)[2]}
    return " ".join(f"--label {shlex.quote(f'{k}={v}')}" for k, v in labels.items())


def evaluated_checkpoints():
    """Every (task, model, checkpoint) the grid evaluates: bases, every SFT arm, every GRPO seed."""
    runs = []
    for task, spec in config["tasks"].items():
        models = list(config["students"])
        if config["evaluation"].get("teachers", False) and spec["teacher"] not in models:
            models.append(spec["teacher"])
        runs += [(task, m, "base") for m in models]
        for model in config["students"]:
            runs += [(task, model, f"sft/{arm}") for arm in ARMS]
            runs += [(task, model, f"rl/{arm}/seed{s}") for arm in ARMS for s in config["rl_seeds"]]
    return runs


def all_metrics():
    return [f"{RESULTS}/eval/{task}/{model}/{ckpt}/metrics.json" for task, model, ckpt in evaluated_checkpoints()]


def all_sft_runs():
    """``label=directory`` for every SFT run, for the weight-diagnostics plots."""
    return [f"{model}/{task}/{arm}={sft_dir(model, task, arm)}"
            for task in config["tasks"] for model in config["students"] for arm in ARMS]


def final_outputs():
    """Everything `rule all` asks for in this grid: the results, and their comparison with the
    grid's reference when it has one."""
    outputs = [f"{RESULTS}/metrics.csv", f"{RESULTS}/tables/main.md"]
    if config.get("reference"):
        outputs.append(f"{RESULTS}/reproducibility.md")
    return outputs


_check_pairs()  # last: it needs model_path
