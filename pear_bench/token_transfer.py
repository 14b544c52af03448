"""A teacher's responses as SFT data for one student: same text, the student's ids, the student's template.

PEAR compares the student's pi_theta with the teacher's pi_beta token by token, so a student must be
trained on token ids that mean, in its own tokenizer, the text the teacher wrote. Within one model
family most ids agree, but not all (the cases this module exists for):

- ids beyond the student's vocabulary: Qwen3's ``<think>``/``</think>`` are 151667/151668, while
  ``len(tokenizer)`` of Qwen2.5 is 151665 (it has no such token);
- one id, two meanings: 151645 is ``<|im_end|>`` in Qwen3 and ``<｜Assistant｜>`` in R1-Distill;
- the end of an answer: ``<|im_end|>`` for Qwen, ``<｜end▁of▁sentence｜>`` for R1-Distill;
- the template: Qwen2.5's adds a default system prompt that Qwen3's does not.

A token's meaning is its string in the vocabulary (``convert_ids_to_tokens``: the byte-level piece,
or an added token's content). For each record:

1. The prompt is rebuilt from the record's ``messages`` in the student's chat template
   (``pear_bench.prompts``), the template its GRPO and evaluation use.
2. A response that ended on one of the teacher's stop ids gets the student's end-of-turn id instead
   (the token the student's template writes after an assistant message); its logprob, the teacher's
   probability of ending there, is kept: the event is the same.
3. Every other id is carried to the student id of the same meaning. When all are, the response is
   the same token sequence and the teacher's logprobs stay exact ("identical" when no id changed,
   "mapped" otherwise).
4. Otherwise (a teacher token the student lacks) the response text is re-tokenised by the student,
   and the teacher re-scores that token sequence (each student token is looked up by meaning in the
   teacher's vocabulary): "retokenized". Its logprobs are the teacher's probabilities of that exact
   path. That is a faithful pi_beta, but a path the teacher never samples (``<think>`` spelt as
   ``<``, ``think``, ``>``) is improbable under it, so PEAR's ratios there sit at the clip.
5. A record that cannot be carried (the student's re-tokenisation does not reproduce the text, or
   uses a token the teacher lacks) refuses the whole pair: no record is dropped silently.

``check_pair`` runs the same checks on whole vocabularies, before any data exist: the grid's dry run
calls it for every teacher-student pair whose tokenizers are at hand and refuses a pair that step 5
would refuse, naming the pair, the id and both meanings.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pear_bench.errors import InputError
from pear_bench.prompts import PromptSettings, prompt_ids

KINDS = ("identical", "mapped", "retokenized")
_PROBE = "PEAR-END-OF-TURN-PROBE"


def meanings(tokenizer) -> list[str | None]:
    """``meanings(tok)[i]``: the vocabulary string of id ``i``, for ``i < len(tok)`` (None for holes)."""
    out: list[str | None] = [None] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if 0 <= i < len(out):
            out[i] = token
    return out


def model_stop_ids(model: str, tokenizer, local_files_only: bool = False) -> list[int]:
    """The ids generation stops at for ``model`` (a local dir or hub id): its generation config's eos ids
    (else its config's) plus the tokenizer's eos, as ``pear_bench.generation.stop_token_ids`` takes them."""
    from transformers import AutoConfig, GenerationConfig

    from pear_bench.generation import stop_token_ids

    try:
        eos = GenerationConfig.from_pretrained(model, local_files_only=local_files_only).eos_token_id
    except OSError:  # no generation_config.json
        eos = getattr(AutoConfig.from_pretrained(model, local_files_only=local_files_only), "eos_token_id", None)
    return stop_token_ids(eos, tokenizer)


def end_of_turn_id(tokenizer, stop_ids: Sequence[int], name: str = "model") -> int:
    """The id the chat template writes right after an assistant message's content; it must be a stop id.

    Raises:
        InputError: the template writes no token there that generation stops at (the model would
            be trained to end answers with a token it does not stop on).
    """
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rindex(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False)
    for i in ids:
        if i in stop_ids:
            return i
    words = meanings(tokenizer)
    raise InputError(f"{name}: its chat template ends an assistant turn with {after[:40]!r}, which holds none of "
                     f"the ids generation stops at ({', '.join(f'{i} {words[i]!r}' for i in stop_ids if i < len(words))})")


@dataclass
class TokenizerSide:
    """One model of a pair: its name, tokenizer, vocabulary meanings, stop ids and end-of-turn id."""

    name: str
    tokenizer: Any
    stop_ids: list[int]
    end_of_turn: int
    words: list[str | None] = field(repr=False)
    index: dict[str, int] = field(repr=False)

    @classmethod
    def load(cls, name: str, tokenizer, stop_ids: Sequence[int]) -> "TokenizerSide":
        words = meanings(tokenizer)
        return cls(name, tokenizer, list(stop_ids), end_of_turn_id(tokenizer, stop_ids, name), words,
                   {w: i for i, w in enumerate(words) if w is not None})

    def meaning(self, i: int) -> str:
        if 0 <= i < len(self.words) and self.words[i] is not None:
            return repr(self.words[i])
        return f"nothing (beyond its {len(self.words)} tokens)" if i >= len(self.words) else "nothing"


@dataclass
class Pair:
    """What carrying ``teacher`` responses to ``student`` takes (see the module docstring).

    Attributes:
        to_student: teacher id -> student id of the same meaning, -1 where the student has none.
        two_meanings: teacher ids whose id the student uses for another token.
        missing: teacher ids the student has no token for (responses using them are re-tokenised).
    """

    teacher: TokenizerSide
    student: TokenizerSide
    to_student: np.ndarray
    two_meanings: list[int]
    missing: list[int]

    @property
    def label(self) -> str:
        return f"teacher {self.teacher.name} -> student {self.student.name}"

    def describe(self, i: int) -> str:
        return f"id {i} is {self.teacher.meaning(i)} in the teacher, {self.student.meaning(i)} in the student"

    def summary(self) -> dict[str, Any]:
        moved = int(np.sum((self.to_student >= 0) & (self.to_student != np.arange(len(self.to_student)))))
        return {"teacher": self.teacher.name, "student": self.student.name,
                "teacher_tokens": len(self.teacher.words), "student_tokens": len(self.student.words),
                "ids_moved": moved, "ids_missing_in_student": len(self.missing),
                "ids_with_two_meanings": len(self.two_meanings),
                "two_meanings": {int(i): [self.teacher.words[i], self.student.words[i]] for i in self.two_meanings[:20]},
                "missing_examples": {int(i): self.teacher.words[i] for i in self.missing[:20]},
                "teacher_end_of_turn": self.teacher.end_of_turn, "student_end_of_turn": self.student.end_of_turn}


def pair_tokenizers(teacher: TokenizerSide, student: TokenizerSide) -> Pair:
    """The id map between two vocabularies, by meaning."""
    to_student = np.array([-1 if w is None else student.index.get(w, -1) for w in teacher.words], dtype=np.int64)
    n = min(len(teacher.words), len(student.words))
    two = [i for i in range(n) if teacher.words[i] is not None and student.words[i] is not None
           and teacher.words[i] != student.words[i]]
    missing = [i for i, w in enumerate(teacher.words) if w is not None and to_student[i] < 0]
    return Pair(teacher, student, to_student, two, missing)


def retokenize(pair: Pair, teacher_body: Sequence[int], where: str) -> tuple[list[int], list[int]]:
    """The student's tokens for the text of ``teacher_body``, and the same tokens as teacher ids.

    Raises:
        InputError: the student's tokens do not spell the text back, or one has no teacher token of
            the same meaning (the teacher could not score it); ``where`` names the record.
    """
    text = pair.teacher.tokenizer.decode(list(teacher_body), skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
    student_ids = pair.student.tokenizer.encode(text, add_special_tokens=False)
    back = pair.student.tokenizer.decode(student_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    first_missing = next((i for i in teacher_body if pair.to_student[i] < 0), None)
    if back != text:
        raise InputError(f"{pair.label}: {where}: the student's tokenizer does not spell the response back "
                         f"({pair.describe(first_missing)}; re-tokenised it reads {back[:60]!r}, not {text[:60]!r})")
    teacher_ids = [pair.teacher.index.get(pair.student.words[j], -1) for j in student_ids]
    if -1 in teacher_ids:
        j = student_ids[teacher_ids.index(-1)]
        raise InputError(f"{pair.label}: {where}: {pair.describe(first_missing)}, and the student's re-tokenisation "
                         f"uses its id {j} {pair.student.meaning(j)}, which the teacher has no token for, so the "
                         "teacher cannot score it; pair models whose vocabularies agree")
    return student_ids, teacher_ids


def check_pair(pair: Pair) -> dict[str, Any]:
    """Refuse a pair whose responses could not be carried (``retokenize`` on every missing token); its summary.

    Raises:
        InputError: naming the pair, the first teacher id that cannot be carried and both meanings.
    """
    for i in pair.missing:
        if i in pair.teacher.stop_ids:
            continue  # an end of turn is replaced by the student's own
        retokenize(pair, [i], f"teacher token {i}")
    return pair.summary()


@dataclass
class Transferred:
    """One response in the student's ids; ``teacher_ids`` is set when the teacher must re-score it."""

    response_ids: list[int]
    behavior_logprobs: list[float] | None
    kind: str
    teacher_ids: list[int] | None = None


def transfer_response(pair: Pair, response_ids: Sequence[int], logprobs: Sequence[float] | None,
                      finish_reason: str | None, where: str) -> Transferred:
    """Steps 2-5 of the module docstring for one response."""
    ids = list(response_ids)
    ends = finish_reason != "length" and bool(ids) and ids[-1] in pair.teacher.stop_ids
    body = ids[:-1] if ends else ids
    tail = [pair.student.end_of_turn] if ends else []
    bad = [i for i in body if not 0 <= i < len(pair.to_student)]
    if bad:
        raise InputError(f"{pair.label}: {where}: response id {bad[0]} is outside the teacher's vocabulary "
                         f"of {len(pair.to_student)} tokens")
    mapped = pair.to_student[body] if body else np.zeros(0, dtype=np.int64)
    if (mapped >= 0).all():
        student = [int(i) for i in mapped] + tail
        return Transferred(student, None if logprobs is None else list(logprobs),
                           "identical" if student == ids else "mapped")
    student_body, teacher_body = retokenize(pair, body, where)
    return Transferred(student_body + tail, None, "retokenized", teacher_body + ids[len(body):])


def transfer_records(records: Sequence[Mapping[str, Any]], pair: Pair, settings: PromptSettings,
                     rescore: Callable[[list[list[int]], list[list[int]], float], list[np.ndarray]] | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records in the student's template and ids; returns (records, counts).

    Args:
        records: ``pear_bench.data`` records collected from the teacher (with ``messages``).
        pair: ``pair_tokenizers(teacher, student)``.
        settings: the grid's prompt settings (the thinking switch applies to the student's template).
        rescore: ``backend.score`` of the teacher, called once for all re-tokenised records (at each
            record's sampling temperature); needed only if some are.

    Raises:
        InputError: a record without messages, one that cannot be carried (refusing the pair), or
            re-tokenised records and no ``rescore``.
    """
    out, kinds, pending = [], Counter(), []
    for n, record in enumerate(records):
        where = f"record {n} (id {record.get('id')!r})"
        if not record.get("messages"):
            raise InputError(f"{pair.label}: {where} has no messages, so its prompt cannot be rebuilt in the "
                             "student's template")
        t = transfer_response(pair, record["response_ids"], record.get("behavior_logprobs"),
                              record.get("finish_reason"), where)
        kinds[t.kind] += 1
        new = {**record, "prompt_ids": prompt_ids(pair.student.tokenizer, record["messages"], settings),
               "response_ids": t.response_ids, "behavior_logprobs": t.behavior_logprobs,
               "response_transfer": t.kind}
        if t.teacher_ids is not None:
            pending.append((len(out), list(record["prompt_ids"]), t.teacher_ids))
        out.append(new)
    if pending:
        if rescore is None:
            raise InputError(f"{pair.label}: {len(pending)} responses were re-tokenised and need the teacher "
                             "to re-score them, but no teacher model was given")
        temperatures = {(out[i].get("sampling") or {}).get("temperature") or 1.0 for i, _, _ in pending}
        for temperature in sorted(temperatures):
            group = [p for p in pending if ((out[p[0]].get("sampling") or {}).get("temperature") or 1.0) == temperature]
            scores = rescore([p for _, p, _ in group], [t for _, _, t in group], temperature)
            for (i, _, _), lp in zip(group, scores):
                out[i]["behavior_logprobs"] = [float(x) for x in lp]
    return out, {kind: kinds.get(kind, 0) for kind in KINDS}


# ---------------------------------------------------------------------------------------------
# Command line: pear-bench transfer


def load_side(name: str, model: str, local_files_only: bool = False) -> TokenizerSide:
    """A model's tokenizer side (tokenizer and stop ids only; no weights are read).

    Raises:
        OSError: with ``local_files_only``, a hub model that is not in the local cache.
    """
    from transformers import AutoTokenizer

    from pear_bench.errors import check_model_source

    check_model_source(model, name)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
    return TokenizerSide.load(name, tokenizer, model_stop_ids(model, tokenizer, local_files_only))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from pear_bench.generation import add_backend_arguments
    from pear_bench.prompts import add_prompt_arguments

    parser.description = ("Carry a teacher's SFT records to a student: prompts in the student's chat template, "
                          "response ids in its vocabulary, re-scored by the teacher where re-tokenised. "
                          "With --check only, compare the two tokenizers and stop.")
    parser.add_argument("--teacher", required=True, help="the model that sampled the records: hub id or local path")
    parser.add_argument("--student", required=True, help="the model to be trained on them: hub id or local path")
    parser.add_argument("--dataset", help="the teacher's records (pear-bench collect output)")
    parser.add_argument("--output", help="the student's records to write (.jsonl or .parquet)")
    parser.add_argument("--check", action="store_true", help="only check the pair (no --dataset/--output)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    add_prompt_arguments(parser)
    add_backend_arguments(parser)  # the teacher's backend for re-scoring (default hf, float32)


def main(args: argparse.Namespace) -> int:
    from pear_bench.atomic import write_atomic
    from pear_bench.config import package_versions
    from pear_bench.data import load_records, save_records, summary_path
    from pear_bench.generation import backend_options, load_backend
    from pear_bench.prompts import prompt_settings
    from pear_bench.snapshot import model_revision

    pair = pair_tokenizers(load_side("--teacher", args.teacher), load_side("--student", args.student))
    report = check_pair(pair)
    if args.check:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if not args.dataset or not args.output:
        raise InputError("--dataset and --output are needed (or --check to only compare the tokenizers)")
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    records = load_records(args.dataset, vocab_size=len(pair.teacher.words)).to_list()
    backend = None

    def rescore(prompts, responses, temperature):
        nonlocal backend
        if backend is None:  # loaded once, and only if a response had to be re-tokenised
            backend = load_backend(args.backend, args.teacher, **backend_options(args))
        return backend.score(prompts, responses, temperature)

    try:
        settings = prompt_settings(args)
        students, kinds = transfer_records(records, pair, settings, rescore)
    finally:
        if backend is not None:
            backend.close()
    save_records(students, output, overwrite=args.overwrite)
    summary = {"dataset": str(args.dataset), "output": str(output), "records": len(students), **kinds,
               "prompt": settings.to_record(), "pair": report,
               "model_revisions": {"teacher": model_revision(args.teacher), "student": model_revision(args.student)},
               "rescore": None if backend is None else {"backend": args.backend, "dtype": args.dtype},
               "seconds": time.perf_counter() - start, "versions": package_versions()}
    write_atomic(summary_path(output), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"{pair.label}: {len(students)} records ({', '.join(f'{kinds[k]} {k}' for k in KINDS)}) -> {output}")
    return 0
