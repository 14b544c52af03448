"""The CPU miniature's base models: a step-by-step teacher and a terse student, trained from scratch.

PEAR is about a distribution mismatch between the behaviour policy that wrote the SFT data (the
teacher) and the policy that RL later trains (the student). The miniature builds both on
reasoning-gym's ``chain_sum`` so that the mismatch is real and measurable:

    teacher style  several valid step-by-step solutions, one sampled at random per record
                   ("4-1=3\\n3+7=10\\n<answer>10</answer>", "4 + 7 = 11, 11 - 1 = 10, <answer>10</answer>", ...)
    student style  the answer with no working ("<answer>10</answer>" or "= 10\\n<answer>10</answer>")

Both solvers work from the expression in the problem's metadata with exact integer arithmetic.
The teacher samples its step order (left to right, or the added terms first), spacing and step
separator, so a teacher trained on it is not near-deterministic (a near-deterministic teacher
makes PEAR's ratio degenerate to the student's own logprob). The student's first token already
differs from every teacher variant's.

    pear-bench bootstrap tokenizer --problems pre/train.jsonl --out mini/tokenizer
    pear-bench bootstrap model --tokenizer mini/tokenizer --style teacher --problems pre/train.jsonl \\
        --exclude data/eval.jsonl --steps 1500 --seed 0 --out mini/teacher
    pear-bench bootstrap model --tokenizer mini/tokenizer --style student ... --out mini/student

The tokenizer (``pear_bench.tiny_models.train_tokenizer``: Qwen2's pipeline, digits split one
by one) is trained once and shared, so both models have identical token ids. Each model is a
random-init Qwen2 (``tiny_models.SHAPES``, with overrides) pretrained by the project's own SFT
trainer (``pear_bench.trainers.sft.train_sft``, objective "sft") on chat-formatted
(prompt, solution) records with the prompt masked out of the loss.

Outputs are ordinary transformers model directories (config, weights, tokenizer with its chat
template, generation config) plus ``bootstrap.json`` (settings, seed, versions, data counts,
final loss, seconds). Each is built in a temporary sibling directory and renamed into place at the
end, so a killed run never leaves a directory that looks finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings

STYLES = ("teacher", "student")
BOOTSTRAP_RECORD = "bootstrap.json"
# Tasks whose problems are +/- chains with the expression in their metadata (the solvers read it).
TASKS = ("chain_sum", "basic_arithmetic")

# Teacher variant probabilities: order of the steps, spacing around operators, step separator.
TEACHER_P_REORDER = 0.35  # add the "+" terms first, then subtract the "-" terms (when that changes the steps)
TEACHER_P_SPACED = 0.5  # "4 - 1 = 3" rather than "4-1=3"
TEACHER_P_COMMA = 0.35  # steps separated by ", " rather than newlines
# Student variant probability.
STUDENT_P_EQUALS = 0.4  # "= 10\n<answer>10</answer>" rather than "<answer>10</answer>"


# ---------------------------------------------------------------------------------------------
# Expressions and solvers


def parse_expression(expression: str) -> tuple[list[int], list[str]]:
    """``"4 - 1 + 7"`` -> ``([4, 1, 7], ["-", "+"])``: the operands and the operators between them.

    Operands are decimal integers, optionally with a leading minus sign glued to the digits
    (reasoning-gym's ``allow_negation``); operators are ``+`` or ``-`` as separate words.

    Raises:
        ValueError: anything else.
    """
    words = expression.split()
    if not words or len(words) % 2 == 0:
        raise InputError(f"not a chain of +/- terms: {expression!r}")
    terms, ops = [], []
    for i, word in enumerate(words):
        if i % 2:
            if word not in ("+", "-"):
                raise InputError(f"operator {word!r} in {expression!r} is not + or -")
            ops.append(word)
        else:
            digits = word[1:] if word.startswith("-") else word
            if not (digits.isascii() and digits.isdigit()):
                raise InputError(f"operand {word!r} in {expression!r} is not an integer")
            terms.append(int(word))
    return terms, ops


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def chain_value(terms: Sequence[int], ops: Sequence[str]) -> int:
    """The value of ``terms[0] ops[0] terms[1] ...`` evaluated left to right."""
    value = terms[0]
    for op, term in zip(ops, terms[1:]):
        value = _apply(value, op, term)
    return value


def problem_expression(problem: Mapping[str, Any]) -> str:
    """The arithmetic expression of a chain_sum problem record (metadata JSON text or dict)."""
    metadata = problem["metadata"]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return metadata["expression"]


def _fmt(a: int) -> str:
    return str(a)


def teacher_steps(terms: Sequence[int], ops: Sequence[str], reorder: bool) -> list[tuple[int, str, int, int]]:
    """The steps ``(left, op, right, result)`` of one teacher solution.

    Left to right by default; with ``reorder`` the terms added are taken first and the terms
    subtracted after them (the same value: only + and - occur).
    """
    pairs = list(zip(["+", *ops], terms))  # the first term counts as added
    if reorder:
        pairs = [p for p in pairs if p[0] == "+"] + [p for p in pairs if p[0] == "-"]
    first_op, value = pairs[0]
    if first_op == "-":  # only possible if no term is added; never for reasoning-gym's chains
        value = -value
    steps = []
    for op, term in pairs[1:]:
        result = _apply(value, op, term)
        steps.append((value, op, term, result))
        value = result
    return steps


def teacher_solution(expression: str, rng: random.Random, noise: float = 0.0) -> str:
    """A step-by-step solution of ``expression`` in a randomly drawn teacher variant.

    Each step line is ``left op right = result`` (spaced or not); steps are separated by newlines
    or ", "; the last line is ``<answer>value</answer>``. With probability ``noise`` one step's
    result is off by 1 or 2 and later steps carry the error on (a plausible slip; the answer is then
    wrong). A one-term chain gives just the answer.
    """
    terms, ops = parse_expression(expression)
    reorder = rng.random() < TEACHER_P_REORDER
    spaced = rng.random() < TEACHER_P_SPACED
    separator = ", " if rng.random() < TEACHER_P_COMMA else "\n"
    steps = teacher_steps(terms, ops, reorder)
    if steps and noise > 0 and rng.random() < noise:
        slip = rng.randrange(len(steps))
        error = rng.choice([-2, -1, 1, 2])
        value = None
        noisy = []
        for k, (left, op, right, result) in enumerate(steps):
            if value is not None:
                left = value
                result = _apply(left, op, right)
            if k == slip:
                result += error
            noisy.append((left, op, right, result))
            value = result
        steps = noisy
    value = steps[-1][3] if steps else chain_value(terms, ops)
    pad = " " if spaced else ""
    lines = [f"{_fmt(a)}{pad}{op}{pad}{_fmt(b)}{pad}={pad}{_fmt(c)}" for a, op, b, c in steps]
    lines.append(f"<answer>{value}</answer>")
    return separator.join(lines)


def student_solution(expression: str, rng: random.Random) -> str:
    """A terse answer of ``expression``: ``<answer>v</answer>`` or ``= v\\n<answer>v</answer>``."""
    value = chain_value(*parse_expression(expression))
    if rng.random() < STUDENT_P_EQUALS:
        return f"= {value}\n<answer>{value}</answer>"
    return f"<answer>{value}</answer>"


def solve(problem: Mapping[str, Any], style: str, rng: random.Random, noise: float = 0.0) -> str:
    """A solution of a chain_sum problem record in ``style`` ("teacher" or "student")."""
    expression = problem_expression(problem)
    if style == "teacher":
        return teacher_solution(expression, rng, noise)
    if style == "student":
        if noise:
            raise InputError("noise applies to the teacher style only")
        return student_solution(expression, rng)
    raise InputError(f"style must be one of {STYLES}; got {style!r}")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_corpus(problems: Sequence[Mapping[str, Any]], seed: int = 0, samples_per_style: int = 2) -> list[str]:
    """Texts to train the tokenizer on: each prompt, and sampled solutions in both styles.

    The chat roles ("user", "assistant") come with them, so that the template's words become one
    token each (the prompt is most of every sequence's length, hence of the training cost).
    """
    rng = random.Random(seed)
    texts = []
    for problem in problems:
        texts.append(f"user\n{problem['prompt']}")
        for style in STYLES:
            texts.extend(f"assistant\n{solve(problem, style, rng)}" for _ in range(samples_per_style))
    return texts


def build_tokenizer(problems: Sequence[Mapping[str, Any]], vocab_size: int = 384, seed: int = 0):
    """A ``PreTrainedTokenizerFast`` (Qwen2 pipeline, ChatML template) trained on ``tokenizer_corpus``."""
    from pear_bench.tiny_models import train_tokenizer

    if not problems:
        raise InputError("no problems to train the tokenizer on")
    return train_tokenizer(tokenizer_corpus(problems, seed), vocab_size=vocab_size)


# ---------------------------------------------------------------------------------------------
# Pretraining records


def pretraining_records(tokenizer, problems: Sequence[Mapping[str, Any]], style: str, *, samples: int,
                        seed: int, noise: float = 0.0, teacher_mix: float = 0.0,
                        prompt: PromptSettings = PromptSettings()) -> list[dict]:
    """``samples`` SFT records (``pear_bench.data`` schema, no behaviour logprobs) cycling over ``problems``.

    Record i solves problem ``i mod len(problems)`` with a fresh random variant, so a long run sees
    many variants of each problem; with ``teacher_mix`` (student only) that fraction of records is
    solved in the teacher's style instead. ``prompt_ids`` is the problem through ``pear_bench.prompts``
    with ``prompt`` (exactly what collection and RL feed the model); ``response_ids`` is the solution's
    tokens followed by the end-of-turn token, where generation stops.
    """
    from pear_bench.prompts import problem_messages, prompt_ids

    if not problems:
        raise InputError("no pretraining problems (all excluded?)")
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    prompt_cache: dict[str, list[int]] = {}
    records = []
    for i in range(samples):
        problem = problems[i % len(problems)]
        messages = problem_messages(problem, prompt)
        if problem["id"] not in prompt_cache:
            prompt_cache[problem["id"]] = prompt_ids(tokenizer, messages, prompt)
        if teacher_mix and rng.random() < teacher_mix:
            response = solve(problem, "teacher", rng)
        else:
            response = solve(problem, style, rng, noise)
        records.append({
            "id": f"{problem['id']}/{i}", "task": problem["task"], "prompt_id": problem["id"],
            "sample_index": i // len(problems), "messages": messages,
            "prompt_ids": prompt_cache[problem["id"]],
            "response_ids": tokenizer.encode(response, add_special_tokens=False) + [eos],
            "response": response, "behavior_model": f"procedural-{style}", "reward": 1.0 if noise == 0 else None,
        })
    return records


def filter_problems(problems: Sequence[Mapping[str, Any]], exclude: Iterable[Mapping[str, Any]],
                    dedupe: bool = True) -> list[dict]:
    """``problems`` without any whose question (or expression) occurs in ``exclude``; with ``dedupe``
    only the first copy of each question is kept."""
    banned = set()
    for p in exclude:
        banned.add(p["question"])
        if p.get("task") in TASKS:
            banned.add(problem_expression(p))
    kept, seen = [], set()
    for p in problems:
        key = p["question"]
        expr = problem_expression(p) if p.get("task") in TASKS else None
        if key in banned or expr in banned or (dedupe and key in seen):
            continue
        seen.add(key)
        kept.append(dict(p))
    return kept


# ---------------------------------------------------------------------------------------------
# Atomic output directories


def _temp_sibling(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` (replacing an old ``out`` only with ``overwrite``)."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Building


def make_tokenizer(problem_files: Sequence[str | Path], out: str | Path, *, vocab_size: int = 384, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Train the shared tokenizer on the problems of ``problem_files`` and save it to ``out`` atomically."""
    from pear_bench.config import package_versions
    from pear_bench.problems import read_problems

    out = Path(out)
    _check_out(out, overwrite)
    problems = [p for f in problem_files for p in read_problems(f)]
    start = time.perf_counter()
    tokenizer = build_tokenizer(problems, vocab_size=vocab_size, seed=seed)
    tmp = _temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer.save_pretrained(tmp)
        _write_json(tmp / BOOTSTRAP_RECORD, {
            "kind": "tokenizer", "vocab_size_requested": vocab_size, "vocab_size": len(tokenizer), "seed": seed,
            "problems": [{"path": str(Path(f).resolve()), "sha256": _sha256(f)} for f in problem_files],
            "num_problems": len(problems), "seconds": time.perf_counter() - start,
            "versions": package_versions(), "argv": list(sys.argv),
        })
        _publish(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_model(
    tokenizer_dir: str | Path | None,
    style: str,
    problem_files: Sequence[str | Path],
    out: str | Path,
    *,
    exclude_files: Sequence[str | Path] = (),
    steps: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    lr_scheduler_type: str = "cosine",
    warmup_steps: float = 0.05,
    weight_decay: float = 0.0,
    noise: float = 0.0,
    teacher_mix: float = 0.0,
    shape: str = "tiny",
    shape_overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
    logging_steps: int = 50,
    init: str | Path | None = None,
    prompt: PromptSettings = PromptSettings(),
    overwrite: bool = False,
) -> Path:
    """Pretrain a ``style`` model with the project's SFT trainer; save it to ``out`` atomically.

    From scratch (a random-init Qwen2 on ``tokenizer_dir``'s tokenizer), or from the pretrained model
    ``init`` with its own tokenizer and chat template (a real model taught the solver's style, e.g.
    the SmolLM2 grid's teacher).

    Args:
        tokenizer_dir: a ``make_tokenizer`` output, shared by every model of the miniature (None with
            ``init``).
        style: "teacher" or "student".
        problem_files: chain_sum or basic_arithmetic (+/- only) problem records to pretrain on.
        exclude_files: problems (normally the eval split) whose questions must not be trained on.
        steps, batch_size: optimizer steps and sequences per step; ``steps * batch_size`` records are
            built, each problem solved in a fresh random variant each time it comes round.
        learning_rate, lr_scheduler_type, warmup_steps, weight_decay: AdamW settings (warmup in
            (0, 1) is a fraction of the steps).
        noise: teacher only: fraction of solutions with a slipped step (a wrong answer).
        teacher_mix: student only: fraction of records written in the teacher's style, so the student
            has a rare step-by-step mode that SFT and RL can amplify.
        shape, shape_overrides: the Qwen2 shape (``tiny_models.SHAPES``) and field overrides.
        threads: ``torch.set_num_threads`` for this process (None: torch's default).
        init: a model directory to fine-tune instead of a random init (``shape`` is then unused).
        prompt: how problems become prompts (``pear_bench.prompts``; the grid's ``prompt:`` section),
            so a model is trained on the prompts the grid will give it.

    Returns:
        ``out``.
    """
    import torch
    from transformers import AutoTokenizer

    from pear_bench.config import build_config, package_versions
    from pear_bench.data import save_records
    from pear_bench.problems import read_problems
    from pear_bench.tiny_models import init_model

    if style not in STYLES:
        raise InputError(f"style must be one of {STYLES}; got {style!r}")
    if noise and style != "teacher":
        raise InputError("noise applies to the teacher style only")
    if teacher_mix and style != "student":
        raise InputError("teacher_mix applies to the student style only")
    if not 0 <= teacher_mix <= 1 or not 0 <= noise <= 1:
        raise InputError(f"noise and teacher_mix must lie in [0, 1]; got {noise}, {teacher_mix}")
    if (tokenizer_dir is None) == (init is None):
        raise InputError("give --tokenizer (a model from scratch) or --init (fine-tune a model), not both or neither")
    out = Path(out)
    _check_out(out, overwrite)
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(init or tokenizer_dir)
    problems = [p for f in problem_files for p in read_problems(f)]
    excluded = [p for f in exclude_files for p in read_problems(f)]
    kept = filter_problems(problems, excluded)
    num_excluded = len(problems) - len(filter_problems(problems, excluded, dedupe=False))
    tasks = {p["task"] for p in kept}
    if tasks - set(TASKS):
        raise InputError(f"bootstrap model solves {' and '.join(TASKS)} problems only; got tasks {sorted(tasks)}")
    records = pretraining_records(tokenizer, kept, style, samples=steps * batch_size, seed=seed, noise=noise,
                                  teacher_mix=teacher_mix, prompt=prompt)

    tmp = _temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    work = tmp.with_name(tmp.name + "-work")  # init model, records, trainer checkpoints
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        dataset = save_records(records, work / "pretrain.jsonl", require_logprobs=False)
        overrides = dict(shape_overrides or {})
        if init is None:
            model = init_model(tokenizer, shape, seed, **overrides)
            model.save_pretrained(work / "init")
            tokenizer.save_pretrained(work / "init")
            start_from = work / "init"
        else:
            start_from = Path(init)
            model = None
        n_params = (sum(p.numel() for p in model.parameters()) if model is not None
                    else _count_parameters(start_from))
        del model
        config = build_config("sft", dict(
            model=str(start_from), output_dir=str(tmp), dataset=str(dataset), method="sft", seed=seed,
            learning_rate=learning_rate, lr_scheduler_type=lr_scheduler_type, warmup_steps=warmup_steps,
            weight_decay=weight_decay, max_steps=steps, per_device_train_batch_size=batch_size,
            logging_steps=logging_steps, save_steps=steps + 1, resume="never",
        ))  # checks names, ranges and choices (ConfigError)
        train_start = time.perf_counter()
        log = _train(config)
        train_seconds = time.perf_counter() - train_start
        for checkpoint in tmp.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        losses = [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]
        _write_json(tmp / BOOTSTRAP_RECORD, {
            "kind": "model", "style": style, "seed": seed, "steps": steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "lr_scheduler_type": lr_scheduler_type, "warmup_steps": warmup_steps,
            "weight_decay": weight_decay, "noise": noise, "teacher_mix": teacher_mix,
            "init": None if init is None else str(Path(init).resolve()), "prompt": prompt.to_record(),
            "shape": None if init is not None else shape, "shape_overrides": overrides,
            "parameters": n_params, "threads": torch.get_num_threads(),
            "tokenizer": str(Path(init or tokenizer_dir).resolve()),
            "problems": [{"path": str(Path(f).resolve()), "sha256": _sha256(f)} for f in problem_files],
            "exclude": [{"path": str(Path(f).resolve()), "sha256": _sha256(f)} for f in exclude_files],
            "num_problems": len(problems), "num_excluded": num_excluded,
            "num_duplicates": len(problems) - num_excluded - len(kept), "num_unique_kept": len(kept),
            "num_records": len(records),
            "teacher_variant_probabilities": {"reorder": TEACHER_P_REORDER, "spaced": TEACHER_P_SPACED,
                                              "comma": TEACHER_P_COMMA},
            "student_variant_probabilities": {"equals": STUDENT_P_EQUALS},
            "loss_first": losses[0][1] if losses else None, "loss_last": losses[-1][1] if losses else None,
            "loss_curve": losses, "train_seconds": train_seconds, "seconds": time.perf_counter() - start,
            "versions": package_versions(), "argv": list(sys.argv),
        })
        _publish(tmp, out, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _count_parameters(model_dir: Path) -> int:
    """Parameters of a saved model, from its safetensors headers (no weights are read)."""
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def _train(config) -> list[dict]:
    """Run ``train_sft`` and return the trainer's log history."""
    from transformers import TrainerCallback

    from pear_bench.trainers.sft import train_sft

    history: list[dict] = []

    class _Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                history.append({"step": state.global_step, **logs})

    train_sft(config, callbacks=[_Keep()])
    return history


# ---------------------------------------------------------------------------------------------
# `pear-bench bootstrap`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.prompts import add_prompt_arguments

    parser.description = ("Build the CPU miniature's base models: a shared tokenizer, then a step-by-step "
                          "teacher and a terse student pretrained from scratch on chain_sum.")
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)

    tok = sub.add_parser("tokenizer", help="train the shared tokenizer on prompts and solutions of both styles")
    tok.add_argument("--problems", required=True, nargs="+", help="chain_sum problem files (make-data JSONL)")
    tok.add_argument("--vocab-size", type=int, default=384, help="BPE vocabulary size (default 384)")
    tok.add_argument("--seed", type=int, default=0, help="seed of the sampled solutions (default 0)")

    model = sub.add_parser("model", help="pretrain a teacher or student model from scratch, or fine-tune one")
    model.add_argument("--tokenizer", help="directory written by `bootstrap tokenizer` (a model from scratch)")
    model.add_argument("--init", help="a model directory to fine-tune in the style instead (its own tokenizer)")
    model.add_argument("--style", required=True, choices=STYLES)
    model.add_argument("--problems", required=True, nargs="+",
                       help="chain_sum or basic_arithmetic (+/-) problems to pretrain on")
    model.add_argument("--exclude", nargs="*", default=[], help="problem files (eval splits) kept out of pretraining")
    model.add_argument("--steps", type=int, required=True, help="optimizer steps")
    model.add_argument("--seed", type=int, default=0, help="seed of init, data variants and order (default 0)")
    model.add_argument("--batch-size", type=int, default=64, help="sequences per step (default 64)")
    model.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    model.add_argument("--lr-scheduler", default="cosine", help="transformers scheduler name (default cosine)")
    model.add_argument("--warmup", type=float, default=0.05,
                       help="warmup steps, or a fraction of the steps if < 1 (default 0.05)")
    model.add_argument("--weight-decay", type=float, default=0.0)
    model.add_argument("--noise", type=float, default=0.0,
                       help="teacher only: fraction of training solutions with one slipped step (default 0)")
    model.add_argument("--teacher-mix", type=float, default=0.0,
                       help="student only: fraction of records in the teacher's style (default 0)")
    model.add_argument("--shape", default="tiny", help="tiny_models.SHAPES name (default tiny)")
    model.add_argument("--set", dest="shape_set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a Qwen2 config field, e.g. --set num_hidden_layers=3")
    model.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    model.add_argument("--logging-steps", type=int, default=50)
    add_prompt_arguments(model)

    for p in (tok, model):
        p.add_argument("--out", required=True, type=Path, help="output directory (written atomically)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args: argparse.Namespace) -> int:
    from pear_bench.problems import parse_overrides
    from pear_bench.prompts import prompt_settings

    if args.what == "tokenizer":
        out = make_tokenizer(args.problems, args.out, vocab_size=args.vocab_size, seed=args.seed,
                             overwrite=args.overwrite)
        record = json.loads((out / BOOTSTRAP_RECORD).read_text())
        print(f"pear-bench bootstrap: tokenizer with {record['vocab_size']} tokens -> {out}")
        return 0
    out = make_model(args.tokenizer, args.style, args.problems, args.out, exclude_files=args.exclude,
                     steps=args.steps, seed=args.seed, batch_size=args.batch_size, learning_rate=args.lr,
                     lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup, weight_decay=args.weight_decay,
                     noise=args.noise, teacher_mix=args.teacher_mix, shape=args.shape,
                     shape_overrides=parse_overrides(args.shape_set),
                     threads=args.threads, logging_steps=args.logging_steps, init=args.init,
                     prompt=prompt_settings(args), overwrite=args.overwrite)
    record = json.loads((out / BOOTSTRAP_RECORD).read_text())
    print(f"pear-bench bootstrap: {args.style} ({record['parameters']:,} parameters), {record['steps']} steps, "
          f"loss {record['loss_first']:.3f} -> {record['loss_last']:.3f}, {record['train_seconds']:.0f} s "
          f"training -> {out}")
    return 0
