"""The one prompt path: problem -> chat messages -> the model's chat template -> token ids.

Collect (the teacher's prompts), the SFT data of each student (``pear_bench.token_transfer``), GRPO
and evaluation all build prompts here, so a model sees at RL and evaluation time exactly the prompt
it was trained on in SFT, in its own template::

    messages = problem_messages(problem, settings)       # [system?] + user(problem["prompt"])
    ids = prompt_ids(tokenizer, messages, settings)      # the template, assistant turn opened

Three settings, from the grid config's ``prompt:`` section or the ``--system-prompt``,
``--enable-thinking`` and ``--fewshot`` flags:

- ``system_prompt``: None (default) sends no system message, and the template does what it does
  without one: Qwen2.5's adds "You are Qwen, created by Alibaba Cloud. You are a helpful
  assistant.", Qwen3's and DeepSeek-R1-Distill's add nothing. A text is sent as the system message.
- ``enable_thinking``: None (default) leaves the template's own default (Qwen3: thinking on); True or
  False is passed to the template as ``enable_thinking`` (Qwen3 with False opens the answer with an
  empty ``<think></think>``). Templates without the switch ignore it.
- ``fewshot``: worked examples sent as earlier turns of the conversation, each a user message (a
  problem prompt) and the assistant's reply, between the system message and the problem. A small
  model that ignores an instruction ("give the answer between <answer> tags") follows two examples
  of it: base SmolLM2-135M-Instruct writes the tags in 0 of 64 replies without them and in 63 of 64
  with two. Read from a JSONL file of ``{"prompt": ..., "response": ...}`` lines (``read_fewshot``).

Ids are those of ``apply_chat_template(..., tokenize=True)``: the rendered text tokenised without
added special tokens (a template writes its own BOS), which is also what ``prompt_text`` handed to
a tokenizer with ``add_special_tokens=False`` gives.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pear_bench.errors import InputError


@dataclass(frozen=True)
class PromptSettings:
    """How a problem becomes a prompt: the system message and the thinking switch (module docstring)."""

    system_prompt: str | None = None
    enable_thinking: bool | None = None
    fewshot: tuple[tuple[str, str], ...] = ()  # (user prompt, assistant response) turns before the problem

    def to_record(self) -> dict[str, Any]:
        """The settings as JSON values (lists, not tuples), so a record read back compares equal."""
        return {**asdict(self), "fewshot": [list(pair) for pair in self.fewshot]}

    def template_kwargs(self) -> dict[str, Any]:
        """The chat template's extra arguments: ``enable_thinking`` when it is set."""
        return {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}


def problem_messages(problem: Mapping[str, str], settings: PromptSettings = PromptSettings()) -> list[dict[str, str]]:
    """``[{"role": "system", ...}]`` (when ``settings.system_prompt`` is set) + a user and an
    assistant turn per few-shot example + the problem's user message.

    Raises:
        InputError: the problem has no non-empty str ``prompt``.
    """
    prompt = problem.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"problem {problem.get('id')!r}: no prompt text (a problem record needs a non-empty 'prompt')")
    system = [] if settings.system_prompt is None else [{"role": "system", "content": settings.system_prompt}]
    examples = [{"role": role, "content": text} for pair in settings.fewshot
                for role, text in zip(("user", "assistant"), pair)]
    return [*system, *examples, {"role": "user", "content": prompt}]


def prompt_ids(tokenizer, messages: Sequence[Mapping[str, str]], settings: PromptSettings = PromptSettings()) -> list[int]:
    """The prompt as the model sees it: its chat template over ``messages``, assistant turn opened, as ids.

    Raises:
        InputError: the tokenizer has no chat template.
    """
    _check_template(tokenizer)
    out = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=True,
                                        return_dict=True, **settings.template_kwargs())
    return list(out["input_ids"])


def prompt_text(tokenizer, messages: Sequence[Mapping[str, str]], settings: PromptSettings = PromptSettings()) -> str:
    """The same prompt as text (for trainers that tokenise it themselves, without added special tokens)."""
    _check_template(tokenizer)
    return tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False,
                                         **settings.template_kwargs())


def problem_prompt_ids(tokenizer, problem: Mapping[str, str], settings: PromptSettings = PromptSettings()) -> list[int]:
    """``prompt_ids(tokenizer, problem_messages(problem, settings), settings)``."""
    return prompt_ids(tokenizer, problem_messages(problem, settings), settings)


def read_fewshot(path: str | Path) -> tuple[tuple[str, str], ...]:
    """Few-shot examples from a JSONL file: one ``{"prompt": str, "response": str}`` object per line.

    Raises:
        InputError: the file is missing or empty, or a line is not such an object (names file and line).
    """
    from pear_bench.problems import read_jsonl

    if not Path(path).is_file():
        raise InputError(f"few-shot file {str(path)!r} does not exist")
    examples = []
    for number, row in enumerate(read_jsonl(path), 1):
        if not all(isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "response")):
            raise InputError(f"{path}:{number}: a few-shot example needs non-empty str 'prompt' and 'response'")
        examples.append((row["prompt"], row["response"]))
    if not examples:
        raise InputError(f"few-shot file {str(path)!r} has no examples")
    return tuple(examples)


def _check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise InputError(f"tokenizer {name!r} has no chat template: pear-bench prompts chat models "
                         "(set tokenizer.chat_template in its tokenizer_config.json)")


# ---------------------------------------------------------------------------------------------
# Command line


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "on", "yes"):
        return True
    if text.lower() in ("false", "0", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--system-prompt``, ``--enable-thinking`` and ``--fewshot`` (commands that build prompts share them)."""
    group = parser.add_argument_group("prompt (pear_bench.prompts)")
    group.add_argument("--system-prompt", default=None,
                       help="system message for every prompt (default: none, so the chat template's own default)")
    group.add_argument("--enable-thinking", type=_bool, default=None, metavar="{true,false}",
                       help="the chat template's thinking switch (Qwen3); default: the template's default")
    group.add_argument("--fewshot", default=None, metavar="JSONL",
                       help="worked examples sent before each problem as earlier user/assistant turns: a JSONL "
                            "file of {\"prompt\": ..., \"response\": ...} lines (default: none)")


def prompt_settings(args: argparse.Namespace) -> PromptSettings:
    """``PromptSettings`` from ``add_prompt_arguments``' options."""
    return PromptSettings(system_prompt=args.system_prompt, enable_thinking=args.enable_thinking,
                          fewshot=read_fewshot(args.fewshot) if args.fewshot else ())
