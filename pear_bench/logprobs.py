"""The one token-logprob primitive: ``log pi(y_t | y_<t)`` of every scored token of a batch.

Training (the policy's logprobs in the SFT loss), behaviour scoring (``pear-bench score``) and
diagnostics all call ``token_logprobs``. It never materialises the ``[B, T, V]`` logits; memory
grows with the tokens of a block, not with ``tokens x vocabulary``. Two implementations, one
contract (same values, same alignment, same gradients):

- **CUDA**: TRL's chunked kernel (``trl.kernels.chunked_logprob.ChunkedLogProbFunction``: the
  vocabulary projection in tiles with an online logsumexp in Triton, tiles recomputed in backward)
  through ``trl.trainer.utils.add_fused_lm_head``, which also handles PEFT, FSDP-sharded heads, logit
  soft-capping and logit scales. On DESIGN.md's H100 anchors it is faster than plain logits.
- **CPU** (everything but CUDA): TRL's torch fallback of that kernel (no Triton) made a tiny-model
  training step 1.3-2.3x slower than ``model(labels=...)``. Instead the backbone runs once (through
  the model's own ``forward``, so PEFT and DDP wrappers still apply) and returns the final hidden
  states; only the scored positions then go through the head, in blocks of rows whose full-vocabulary
  logits hold at most ``CPU_BLOCK_LOGITS`` floats (``_BlockwiseLogProbs``: TRL's math without its
  vocabulary tiles). Backward recomputes one block's logits at a time and forms their gradient in
  place: 4 head matmuls instead of plain autograd's 3, the price of never holding ``[N, V]``, and
  still faster than plain logits (fewer, larger passes over memory; prompt rows skipped). Measured
  alternatives (tiny shape, 32k vocabulary, one thread): ``torch.utils.checkpoint`` per block with
  autograd inside was 1.0-1.2x the plain step, this function 0.8-0.95x. Logit scale and soft-cap
  are read from the config as TRL reads them (``_logit_transform``) and applied in float32. Like
  TRL's kernel it reads ``lm_head.weight`` and ``.bias`` directly, so a LoRA adapter on ``lm_head``
  itself is not applied (adapters anywhere else are); ``modules_to_save`` heads work.

Simpler equivalent (what the tests check both paths against, to 1e-5 in float32, value and gradient)::

    logits = model(input_ids, attention_mask=attention_mask).logits / temperature
    logp[:, t] = logits[:, t - 1].log_softmax(-1).gather(-1, input_ids[:, t, None])   # t >= 1
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import NamedTuple

import torch
import torch.nn.functional as F

# add_fused_lm_head binds (temperature, outputs) when it patches `forward`; we remember which.
_PATCH_KEY = "_pear_bench_fused_head"
_ORIGINAL_FORWARD = "_pear_bench_original_forward"
# The keyword our own layer of the patch adds to `forward`: return the backbone's output (final
# hidden states) instead of logits. Used by the CPU path.
_HIDDEN_STATES_KWARG = "pear_bench_hidden_states"
# Vocabulary entries per tile of TRL's kernel where it falls back to torch ops (only when
# `_fused_token_logprobs` is called on a CPU tensor directly: `token_logprobs` takes the blockwise path there).
# Its torch fallback builds about six float32 temporaries of tile size, so TRL's 32768-wide default
# cost more memory than plain logits (tiny shape, 32k vocabulary, 2 x 512 tokens: 1.18 GiB vs 0.54 GiB).
CPU_CHUNK_SIZE = 4096
# CPU path: logits per block of rows (rows = CPU_BLOCK_LOGITS // V): 256 rows of a 32k vocabulary,
# 32 MiB in float32. Tiny shape, 32k vocabulary, one thread, train step vs plain `model(labels=...)`:
# 64 rows 0.97x, 256 rows 0.77x, 1024 rows 1.02x. At a 512 vocabulary one block holds every row.
CPU_BLOCK_LOGITS = 256 * 32768


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


def _add_hidden_states_output(lm: torch.nn.Module) -> None:
    """Wrap ``lm.forward`` once more: with ``pear_bench_hidden_states=True`` it returns the backbone's output.

    Going through the model's own ``forward`` (rather than calling ``lm.base_model`` directly) keeps
    every wrapper on the way (DDP's gradient hooks, PEFT's forward) in the call, as TRL's patch does.
    """
    inner = lm.forward

    @functools.wraps(type(lm).forward)  # keep the signature: `generate` validates its kwargs against it
    def forward(self, *args, **kwargs):
        if not kwargs.pop(_HIDDEN_STATES_KWARG, False):
            return inner(*args, **kwargs)
        for unused in ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep"):
            kwargs.pop(unused, None)
        kwargs["use_cache"] = False
        return self.base_model(*args, **kwargs)

    lm.forward = types.MethodType(forward, lm)


def _ensure_fused_head(model: torch.nn.Module, temperature: float, outputs: tuple[str, ...]) -> None:
    """Patch ``model.forward`` with TRL's fused head for this temperature and our hidden-states
    switch on top, once (re-patch on change)."""
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
    _add_hidden_states_output(lm)
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


def _logit_transform(config) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` of a model, read exactly as TRL's fused head reads them.

    Follows ``trl.trainer.utils.add_fused_lm_head`` (TRL 1.16): ``logit_scale`` (Cohere), else
    ``output_multiplier``, else ``lm_head_multiplier`` (Falcon-H1), else ``1 / logits_scaling``
    (Granite, MiniCPM3; HyperCLOVA X multiplies by it); None reads as 1. The logits the model samples
    from are ``softcap * tanh(scale * (h W^T + b) / softcap)`` (no tanh without a softcap).
    """
    text_config = config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else float(scale)), (None if softcap is None else float(softcap))


class _BlockwiseLogProbs(torch.autograd.Function):
    """``log softmax(z)[target]`` (and entropy) of ``z = transform(hidden @ weight.T + bias)``, by blocks of rows.

    TRL's ``ChunkedLogProbFunction`` without its vocabulary tiles, for devices without Triton: each
    block of ``rows`` tokens gets its full ``[rows, V]`` logits in one matmul, then plain torch
    reductions (``logsumexp``, ``gather``). Only ``hidden``, ``log_z`` and the entropy are saved;
    backward recomputes each block's logits and forms the logits' gradient in place::

        d log p_t / dz_j = 1[j = t] - p_j            d H / dz_j = -p_j (log p_j + H)
        dz / dy = scale * (1 - tanh^2) / T with a softcap, scale / T without (y = hidden @ weight.T + bias)

    Matmuls run in the autocast dtype if autocast is on, else in ``hidden``'s dtype (as TRL's);
    the elementwise math and the gradient accumulation run in float32.

    Shapes: hidden ``[N, H]``, weight ``[V, H]``, bias ``[V]`` or None, targets ``[N]``; returns
    ``logprobs [N]`` and ``entropy [N]`` (None unless ``with_entropy``), float32.
    """

    @staticmethod
    def _logits(h, weight, bias, scale, softcap, inv_t):
        """``(z, tanh)`` of one block: transformed float32 logits ``[n, V]`` and the tanh (softcap only)."""
        z = F.linear(h, weight, bias).float()  # [n, V]
        if softcap is None:
            return z.mul_(scale * inv_t), None
        t = z.mul_(scale / softcap).tanh_()
        return t * (softcap * inv_t), t

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, softcap, scale, rows, with_entropy):
        ctx.set_materialize_grads(False)  # an unused entropy then costs nothing in backward
        compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
            hidden.device.type) else hidden.dtype
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        inv_t = 1.0 / temperature
        N = hidden.shape[0]
        logprobs = torch.empty(N, device=hidden.device, dtype=torch.float32)
        log_z = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if with_entropy else None
        for start in range(0, N, rows):
            end = min(start + rows, N)
            z, _ = _BlockwiseLogProbs._logits(hidden[start:end].to(compute_dtype), w, b, scale, softcap, inv_t)
            lz = torch.logsumexp(z, dim=-1)  # [n]
            log_z[start:end] = lz
            logprobs[start:end] = z.gather(-1, targets[start:end, None])[:, 0] - lz
            if with_entropy:
                log_p = z.sub_(lz[:, None])  # [n, V], in place
                entropy[start:end] = -torch.einsum("nv,nv->n", log_p.exp(), log_p)
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, entropy)
        ctx.settings = (compute_dtype, scale, softcap, inv_t, rows)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        compute_dtype, scale, softcap, inv_t, rows = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_logprobs is None and grad_entropy is None:
            return (None,) * 9
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        w32 = weight.float()
        grad_hidden = torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_bias else None
        N = hidden.shape[0]
        for start in range(0, N, rows):
            end = min(start + rows, N)
            h = hidden[start:end]
            z, t = _BlockwiseLogProbs._logits(h.to(compute_dtype), w, b, scale, softcap, inv_t)
            log_p = z.sub_(log_z[start:end, None])  # [n, V]
            if grad_entropy is None:
                grad = log_p.exp_().mul_(-grad_logprobs[start:end, None])  # -g p
            else:
                p = log_p.exp()
                # -g_H p (log p + H), then - g p
                grad = log_p.add_(entropy[start:end, None]).mul_(p).mul_(-grad_entropy[start:end, None])
                if grad_logprobs is not None:
                    grad.sub_(p.mul_(grad_logprobs[start:end, None]))
                del p
            if grad_logprobs is not None:
                grad.scatter_add_(-1, targets[start:end, None], grad_logprobs[start:end, None].float())  # + g 1[j=t]
            grad.mul_(scale * inv_t)  # back through the transform to y = h W^T + b
            if t is not None:
                grad.mul_(t.mul_(t).neg_().add_(1.0))
            if grad_hidden is not None:
                torch.mm(grad, w32, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), h.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None, None, None, None,
        )


def _blockwise_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    score_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> TokenLogprobs:
    """The CPU path of ``token_logprobs`` (see the module docstring); ``score_mask[:, 0]`` must be False."""
    lm = _causal_lm(model)
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, **{_HIDDEN_STATES_KWARG: True})
    hidden = hidden.last_hidden_state  # [B, T, H]
    head = lm.get_output_embeddings()
    hidden = hidden.to(head.weight.device)
    mask = score_mask[:, 1:].to(head.weight.device)  # [B, T-1]: hidden t predicts token t + 1
    rows_hidden = hidden[:, :-1][mask]  # [N, H], scored positions only
    targets = input_ids[:, 1:].to(head.weight.device)[mask]  # [N]
    scale, softcap = _logit_transform(lm.config)
    rows = max(1, CPU_BLOCK_LOGITS // head.weight.shape[0])
    logp, entropy = _BlockwiseLogProbs.apply(rows_hidden, head.weight, getattr(head, "bias", None), targets,
                                             float(temperature), softcap, scale, rows, with_entropy)

    def on_grid(x: torch.Tensor) -> torch.Tensor:
        # masked_scatter keeps the result connected to the model even when nothing is scored (N = 0).
        return F.pad(x.new_zeros(mask.shape).masked_scatter(mask, x), (1, 0))  # [B, T]

    return TokenLogprobs(on_grid(logp), on_grid(entropy) if with_entropy else None)


def _fused_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    score_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk_size: int | None,
) -> TokenLogprobs:
    """The CUDA path of ``token_logprobs``: TRL's fused head; ``score_mask[:, 0]`` must be False."""
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


def _use_trl_kernel(device: torch.device) -> bool:
    """TRL's kernel where it runs Triton (CUDA); the blockwise path elsewhere, where TRL's torch fallback is slow."""
    return device.type == "cuda"


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
    ``torch.inference_mode()`` for scoring. On CUDA it runs TRL's fused kernel, elsewhere the
    blockwise path (module docstring); both give the same values and gradients.

    Args:
        model: a transformers causal LM (possibly PEFT- or DDP-wrapped). Its ``forward`` is patched
            once (TRL's fused head and a hidden-states switch); calls without those keywords behave
            as before.
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` 1 on real tokens (left or right padding), or None.
        score_mask: ``[B, T]`` True where a logprob is wanted (e.g. response tokens). Defaults to
            ``attention_mask`` (every real token). Position 0 has no prefix and is never scored.
        temperature: logits are divided by it: the logprobs of the distribution sampled at this
            temperature.
        with_entropy: also return the entropy of each next-token distribution (same alignment),
            differentiable like the logprobs.
        chunk_size: vocabulary entries per tile of TRL's kernel (CUDA); None keeps TRL's default.
            The CPU path projects the whole vocabulary per block of rows and does not use it.

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

    if _use_trl_kernel(input_ids.device):
        return _fused_token_logprobs(model, input_ids, attention_mask, score_mask, temperature, with_entropy,
                                     chunk_size)
    outputs = ("log_probs", "entropy") if with_entropy else ("log_probs",)
    _ensure_fused_head(model, temperature, outputs)  # installs the hidden-states switch too
    return _blockwise_token_logprobs(model, input_ids, attention_mask, score_mask, temperature, with_entropy)
