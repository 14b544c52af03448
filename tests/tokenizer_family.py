"""Local model directories whose tokenizers differ as Qwen2.5, Qwen3 and R1-Distill do (see
tests/test_token_transfer.py for the table), and one of another family; for the transfer tests and
the workflow's pair check."""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from pear_bench.tiny_models import init_model

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
          "{% endif %}")
QWEN25 = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}"
          "{% endif %}" + CHATML)
R1 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
      "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
      "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}")

TEXTS = ["Think step by step, then give only your final answer between <answer> and </answer> tags.",
         "What is 2 + 3? add 2 and 3, that makes 5", "<answer>5</answer> the sum is 5"] * 20
PROBLEM = {"id": "p0", "prompt": "What is 2 + 3?\n\nThink step by step, then give only your final answer between "
                                  "<answer> and </answer> tags."}
THINKING = "<think>\nadd 2 and 3\n</think>\n<answer>5</answer>"
PLAIN = "add 2 and 3, that makes 5 <answer>5</answer>"


def base_bpe(texts, vocab_size) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def sentencepiece_bpe(texts, vocab_size) -> Tokenizer:
    """A Llama-style vocabulary ("▁word" pieces): another family, whose tokens the byte-level one lacks."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       special_tokens=["<unk>"]))
    return tok


def build(path, base: Tokenizer, added: list[tuple[str, bool]], template: str, eos: str, **special):
    """A model directory: ``base`` plus ``added`` tokens (content, special) in order, a template, a tiny model."""
    tok = Tokenizer.from_str(base.to_str())
    for content, is_special in added:
        tok.add_special_tokens([AddedToken(content, special=is_special, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, chat_template=template, **special)
    if fast.pad_token is None:
        fast.pad_token = eos
    fast.save_pretrained(path)
    init_model(fast, seed=0).save_pretrained(path)
    return path


def build_family(root: Path) -> dict:
    """``{"V": regular vocabulary size, "qwen3" | "qwen2.5" | "r1" | "other": model directory}``."""
    base = base_bpe(TEXTS, 300)
    specials = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)]
    think = [("<think>", False), ("</think>", False)]
    return {
        "V": base.get_vocab_size(),
        "qwen3": build(root / "qwen3", base, specials + think, CHATML, "<|im_end|>"),
        "qwen2.5": build(root / "qwen2.5", base, specials, QWEN25, "<|im_end|>"),
        "r1": build(root / "r1", base, [("<｜end▁of▁sentence｜>", True), ("<｜User｜>", True), ("<｜Assistant｜>", True),
                                        ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", True)] + think, R1,
                    "<｜end▁of▁sentence｜>", bos_token="<｜begin▁of▁sentence｜>", unk_token="<｜end▁of▁sentence｜>"),
        "other": build(root / "other", sentencepiece_bpe(TEXTS, 200), specials, CHATML, "<|im_end|>"),
    }
