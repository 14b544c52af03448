"""The one token-logprob primitive: ``log pi(y_t | y_<t)`` of every scored token of a batch.

Training (the policy's logprobs in the SFT loss), behaviour scoring (``pear-bench score``) and
diagnostics all call ``token_logprobs``. It never materialises the ``[B, T, V]`` logits: it runs
TRL's chunked kernel (``trl.kernels.chunked_logprob.ChunkedLogProbFunction``: the vocabulary
projection in tiles with an online logsumexp, Triton on GPU and torch tiles on CPU, tiles recomputed
in backward) through ``trl.trainer.utils.add_fused_lm_head``, which also handles PEFT, FSDP-sharded
heads, logit soft-capping and logit scales. Memory grows with tokens, not with the vocabulary.

The vocabulary tile width matters on CPU: TRL's torch fallback (no Triton) builds about six
float32 temporaries of tile size, so its default 32768-wide tile costs more than plain logits
(tiny shape, 32k vocabulary, 2 x 512 tokens: 1.18 GiB vs 0.54 GiB for ``model(labels=...)``), while
a 4096-wide tile needs 0.31 GiB. On CUDA the Triton kernel works in place and TRL's width is kept.

Simpler equivalent (what the tests check it against, to 1e-5 in float32, value and gradient)::

    logits = model(input_ids, attention_mask=attention_mask).logits / temperature
    logp[:, t] = logits[:, t - 1].log_softmax(-1).gather(-1, input_ids[:, t, None])   # t >= 1
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

# add_fused_lm_head binds (temperature, outputs) when it patches `forward`; we remember which.
_PATCH_KEY = "_pear_bench_fused_head"
_ORIGINAL_FORWARD = "_pear_bench_original_forward"
# Vocabulary entries per tile where TRL falls back to torch ops (see the module docstring).
CPU_CHUNK_SIZE = 4096


class TokenLogprobs(NamedTuple):
    """Per-token results aligned with ``input_ids``: ``[B, T]``, column 0 and unscored positions are 0."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP/accelerate (``.module``) and PEFT (``get_base_model``) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _ensure_fused_head(model: torch.nn.Module, temperature: float, outputs: tuple[str, ...]) -> None:
    """Patch ``model.forward`` with TRL's fused head for this temperature, once (re-patch on change)."""
    from trl.trainer.utils import add_fused_lm_head

    lm = _causal_lm(model)
    key = (float(temperature), outputs)
    if getattr(lm, _PATCH_KEY, None) == key:
        return
    if hasattr(lm, _ORIGINAL_FORWARD):
        lm.forward = getattr(lm, _ORIGINAL_FORWARD)  # undo the previous patch instead of nesting
    else:
        setattr(lm, _ORIGINAL_FORWARD, lm.forward)
    add_fused_lm_head(lm, temperature=float(temperature), outputs=outputs)
    setattr(lm, _PATCH_KEY, key)


@contextlib.contextmanager
def _vocab_chunk_size(chunk_size: int | None):
    """Set the tile width TRL's fused head reads at call time (a module constant), then restore it.

    Only the forward reads it: the backward reuses the width saved in the autograd context.
    """
    import trl.trainer.utils as trl_utils

    if chunk_size is None:
        yield
        return
    saved = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = chunk_size
    try:
        yield
    finally:
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = saved


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    score_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
) -> TokenLogprobs:
    """``logp[b, t] = log softmax(logits[b, t-1] / temperature)[input_ids[b, t]]`` for scored positions.

    Gradient flows to the model when called with grad enabled (training); wrap in
    ``torch.inference_mode()`` for scoring.

    Args:
        model: a transformers causal LM (possibly PEFT- or DDP-wrapped). Its ``forward`` is patched
            once with TRL's fused head; calls with ``fused_lm_head=False`` behave as before.
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` 1 on real tokens (left or right padding), or None.
        score_mask: ``[B, T]`` True where a logprob is wanted (e.g. response tokens). Defaults to
            ``attention_mask`` (every real token). Position 0 has no prefix and is never scored.
        temperature: logits are divided by it: the logprobs of the distribution sampled at this
            temperature.
        with_entropy: also return the entropy of each next-token distribution (same alignment).
        chunk_size: vocabulary entries per tile; None picks ``CPU_CHUNK_SIZE`` on CPU and TRL's
            default elsewhere.

    Returns:
        ``TokenLogprobs(logprobs, entropy)``, float32 ``[B, T]``, 0 where not scored.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, T]; got {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("score_mask", score_mask)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}; got {tuple(t.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if score_mask is None:
        score_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    score_mask = score_mask.bool().clone()
    score_mask[:, 0] = False

    outputs = ("log_probs", "entropy") if with_entropy else ("log_probs",)
    _ensure_fused_head(model, temperature, outputs)
    if chunk_size is None and input_ids.device.type == "cpu":
        chunk_size = CPU_CHUNK_SIZE
    labels = input_ids.masked_fill(~score_mask, -100)
    with _vocab_chunk_size(chunk_size):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    # The fused head returns [B, T-1] aligned with labels[:, 1:]; put it back on input_ids' grid.
    logprobs = F.pad(out.log_probs.float(), (1, 0))
    entropy = F.pad(out.entropy.float(), (1, 0)) if with_entropy else None
    return TokenLogprobs(logprobs, entropy)
