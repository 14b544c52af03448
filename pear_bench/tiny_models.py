"""Tiny Qwen2 models with locally trained tokenizers: offline stand-ins for hub models.

Tests, benchmarks and the CPU miniature need real `transformers` checkpoints (save/load, chat
template, generate, TRL trainers, vLLM) without a hub. ``build_tiny_model`` trains a byte-level BPE
tokenizer on the caller's texts and saves it next to a random-init Qwen2 model of any shape.

The tokenizer copies Qwen2's own pipeline (NFC normaliser, Qwen2's pre-tokenize regex as an
isolated Split, ByteLevel without its own regex, ByteLevel decoder). transformers 5.x reloads a
``model_type: qwen2`` directory's tokenizer as ``Qwen2Tokenizer``, which rebuilds exactly this
pipeline; with any other pre-tokeniser the ids would change after a save/load round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5's ChatML template, reduced to what our prompts use (no tools).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Named shapes: "tiny" for unit tests; "qwen2.5-1.5b" matches the real model for benchmarks.
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=64),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, head_dim=64, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2's pipeline and a ChatML chat template, trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(vocab_size: int, shape: str = "tiny", **overrides) -> Qwen2Config:
    """A Qwen2 config of a named shape; the tokenizer's ``vocab_size`` wins unless the shape fixes one."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}; got {shape!r}")
    kwargs = dict(vocab_size=vocab_size, max_position_embeddings=4096, tie_word_embeddings=False,
                  rope_theta=10000.0)
    kwargs.update(SHAPES[shape])
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 512,
    shape: str = "tiny",
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Train a tokenizer on ``texts``, build a random-init Qwen2 model, save both to ``out_dir``.

    The saved directory loads with ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` and
    with vLLM (head_dim 64). Special ids: eos ``<|im_end|>``, pad ``<|endoftext|>``.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    model = init_model(tokenizer, shape, seed, **config_overrides)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def init_model(tokenizer, shape: str = "tiny", seed: int = 0, **overrides):
    """A random-init Qwen2 of ``shape`` (``SHAPES``) sized to ``tokenizer``'s vocabulary, with its
    eos/pad ids (no bos, as Qwen2) in both the config and the generation config."""
    config = tiny_config(len(tokenizer), shape, **overrides)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model
