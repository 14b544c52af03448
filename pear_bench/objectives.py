"""PEAR importance weights and the per-token SFT losses they reweight.

Pure functions on tensors: no model, no Trainer. Shapes use B (batch) and T (positions); every
per-token tensor is aligned with the token ids, and ``mask`` marks the response tokens (prompt
and padding are False). Responses may start anywhere and be left- or right-padded: PEAR's
"position t of T" always counts response tokens only, in order along the row.

PEAR (Zhang et al. 2026, arXiv 2602.01058), as reconstructed in DESIGN.md. For response tokens
t = 1..T of one row::

    delta_t = clip(log pi_theta(y_t | x, y_<t) - log pi_beta(y_t | x, y_<t), delta_min, delta_max)
    sequence: log G_t = sum_{j=1..T} delta_j                          (same for every t, no gamma)
    token:    log G_t = (T - t) log gamma + sum_{j=t+1..T} delta_j    (suffix strictly after t)
    block:    log G_t = log G_{e_k}^token for t in block k, whose last token is e_k
              (blocks of B tokens from the first response token; B = 1 is the token level)
    G_hat_t = exp(clip(log G_t, logw_min, logw_max)), detached
    loss    = sum_t G_hat_t * l_t / normaliser

Deviations / open switches (each a keyword argument, recorded by every run):
  1. ``delta_clip`` and ``log_weight_clip`` default to the secondary sources' [-0.08, 0.3] and
     [-10, 5]; ``None`` turns either off.
  2. Zero-probability tokens. A ``-inf`` behaviour logprob (pi_beta could not have produced the
     token) is read as the largest possible ratio: delta = +inf, which the delta clip turns into
     delta_max. A ``-inf`` policy logprob gives delta = -inf. Before summing, infinite deltas are
     replaced by +-1e150, so +inf and -inf in one row cannot produce NaN while every finite input
     stays exact. With both clips off, log-weights saturate at log(float32 max) ~ 88.7, so
     weights are always finite.
  3. ``self_normalize``: divide weights by their mean over the batch's response tokens (off by
     default; the paper does not say it does this).
  4. ``normaliser`` of the loss: "token" (mean over all response tokens of the batch, TRL's and
     transformers' convention), "sequence" (mean over rows of each row's token mean), "sum".
  5. The sequence level uses no discount, as the paper's Figure 3 draws it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Level = Literal["token", "block", "sequence"]
Normaliser = Literal["token", "sequence", "sum"]

LEVELS: tuple[str, ...] = ("token", "block", "sequence")
NORMALISERS: tuple[str, ...] = ("token", "sequence", "sum")

# Finite stand-in for an infinite delta: exact for any realistic value, and T of them cannot
# overflow float64 (1e150 * T << 1.8e308).
_INF_DELTA = 1e150
# exp() of anything above this overflows float32.
_LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


def _check_inputs(logp_theta: torch.Tensor, logp_beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes and values; return ``mask`` as bool. Raises ValueError naming the tensor."""
    if logp_theta.dim() != 2:
        raise ValueError(f"policy_logprobs must have shape [B, T]; got {tuple(logp_theta.shape)}")
    for name, t in (("behavior_logprobs", logp_beta), ("mask", mask)):
        if t.shape != logp_theta.shape:
            raise ValueError(
                f"{name} must have the shape of policy_logprobs {tuple(logp_theta.shape)}; got {tuple(t.shape)}"
            )
    mask = mask.bool()
    for name, t in (("policy_logprobs", logp_theta), ("behavior_logprobs", logp_beta)):
        bad = mask & (torch.isnan(t) | (t == math.inf))
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{name} must be a finite log-probability or -inf on response tokens; "
                f"found {t[row, col].item()} at row {row}, position {col}"
            )
    return mask


def clipped_log_ratios(
    policy_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    delta_clip: tuple[float, float] | None = (-0.08, 0.3),
) -> torch.Tensor:
    """Per-token log importance ratios ``delta_t = clip(logp_theta - logp_beta, *delta_clip)``.

    Args:
        policy_logprobs: ``[B, T]`` log pi_theta of each token (any float dtype).
        behavior_logprobs: ``[B, T]`` log pi_beta of the same tokens.
        mask: ``[B, T]`` True on response tokens.
        delta_clip: ``(delta_min, delta_max)``, or None for no clip.

    Returns:
        ``[B, T]`` float64, detached, 0 outside the mask. Zero-probability tokens follow rule 2 of
        the module docstring.
    """
    mask = _check_inputs(policy_logprobs, behavior_logprobs, mask)
    logp_theta = policy_logprobs.detach().double()
    logp_beta = behavior_logprobs.detach().double()
    delta = torch.where(logp_beta == -math.inf, math.inf, logp_theta - logp_beta)
    delta = delta.clamp(-_INF_DELTA, _INF_DELTA)
    if delta_clip is not None:
        delta = delta.clamp(*delta_clip)
    return delta.masked_fill(~mask, 0.0)


def _suffix_after(x: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = sum_{s > t} x[:, s]``, summed directly (no total-minus-prefix cancellation)."""
    inclusive = x.flip(-1).cumsum(-1).flip(-1)  # [B, T]: sum_{s >= t}
    return F.pad(inclusive[:, 1:], (0, 1))  # shift left by one: sum_{s > t}


def token_log_weights(delta: torch.Tensor, mask: torch.Tensor, gamma: float = 0.999) -> torch.Tensor:
    """Token-level log-weights ``log G_t = (T - t) log gamma + sum_{j > t} delta_j``.

    ``T - t`` is the number of response tokens after t and the sum runs over those tokens only,
    so prompt tokens and padding (delta = 0, mask False) never count.

    Args:
        delta: ``[B, T]`` clipped log-ratios, 0 outside the mask (see ``clipped_log_ratios``).
        mask: ``[B, T]`` True on response tokens.
        gamma: discount in (0, 1].

    Returns:
        ``[B, T]`` unclipped log-weights (meaningless outside the mask).
    """
    tokens_after = _suffix_after(mask.to(delta.dtype))
    return tokens_after * math.log(gamma) + _suffix_after(delta)


def block_log_weights(
    delta: torch.Tensor, mask: torch.Tensor, gamma: float = 0.999, block_size: int = 4
) -> torch.Tensor:
    """Block-level log-weights: every token takes the token-level log-weight of its block's last token.

    Blocks are ``block_size`` consecutive response tokens counted from the row's first response
    token (the last block may be shorter). For t in block k ending at e_k::

        log G_t = (T - e_k) log gamma + sum_{j > e_k} delta_j

    which is ``token_log_weights`` read at e_k; ``block_size = 1`` is exactly the token level.
    """
    mask = mask.bool()
    _, T = mask.shape
    token_lw = token_log_weights(delta, mask, gamma)
    response_index = mask.long().cumsum(-1) - 1  # 0-based index among response tokens
    n_response = mask.sum(-1, keepdim=True)
    is_block_end = mask & (((response_index + 1) % block_size == 0) | (response_index == n_response - 1))
    # For every position, the first block end at or after it: a reverse running minimum.
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    end_or_sentinel = torch.where(is_block_end, positions, T - 1)
    next_end = end_or_sentinel.flip(-1).cummin(-1).values.flip(-1)  # [B, T]
    return token_lw.gather(-1, next_end)


def sequence_log_weights(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence-level log-weights ``log G_t = sum_{j=1..T} delta_j`` for every t (no discount)."""
    return delta.sum(-1, keepdim=True).expand_as(delta)


def pear_log_weights(
    policy_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    level: Level = "token",
    gamma: float = 0.999,
    block_size: int = 4,
    delta_clip: tuple[float, float] | None = (-0.08, 0.3),
) -> torch.Tensor:
    """PEAR log-weights ``log G_t`` at ``level``, before the log-weight clip: ``[B, T]`` float64, detached.

    Raises:
        ValueError: unknown level, gamma outside (0, 1], block_size < 1, an inverted clip, shapes
            that differ, or NaN / +inf logprobs on a response token.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma}")
    if level == "block" and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1; got {block_size!r}")
    if delta_clip is not None and not delta_clip[0] <= delta_clip[1]:
        raise ValueError(f"delta_clip must be (min, max) with min <= max, or None; got {delta_clip}")
    delta = clipped_log_ratios(policy_logprobs, behavior_logprobs, mask, delta_clip)
    mask = mask.bool()
    if level == "token":
        return token_log_weights(delta, mask, gamma)
    if level == "block":
        return block_log_weights(delta, mask, gamma, block_size)
    return sequence_log_weights(delta, mask)


def _clipped_exp(log_w: torch.Tensor, mask: torch.Tensor, log_weight_clip: tuple[float, float] | None) -> torch.Tensor:
    """``exp(clip(log_w, *log_weight_clip))``, saturating below float32 overflow, 0 off the mask (float64)."""
    if log_weight_clip is not None:
        if not log_weight_clip[0] <= log_weight_clip[1]:
            raise ValueError(f"log_weight_clip must be (min, max) with min <= max, or None; got {log_weight_clip}")
        log_w = log_w.clamp(*log_weight_clip)
    return log_w.clamp(max=_LOG_FLOAT32_MAX).exp().masked_fill(~mask, 0.0)


def pear_weights(
    policy_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    level: Level = "token",
    gamma: float = 0.999,
    block_size: int = 4,
    delta_clip: tuple[float, float] | None = (-0.08, 0.3),
    log_weight_clip: tuple[float, float] | None = (-10.0, 5.0),
    self_normalize: bool = False,
) -> torch.Tensor:
    """PEAR importance weights ``G_hat_t = exp(clip(log G_t, logw_min, logw_max))`` (module docstring).

    Args:
        policy_logprobs: ``[B, T]`` log pi_theta(y_t | x, y_<t); gradient is ignored.
        behavior_logprobs: ``[B, T]`` log pi_beta(y_t | x, y_<t) of the distribution that sampled y.
        mask: ``[B, T]`` True (or 1) on response tokens.
        level: "token", "block" or "sequence".
        gamma: discount in (0, 1] for the token and block levels.
        block_size: tokens per block for the block level (>= 1).
        delta_clip: ``(delta_min, delta_max)`` on each log-ratio, or None.
        log_weight_clip: ``(logw_min, logw_max)`` on each log-weight, or None.
        self_normalize: divide by the mean weight over the batch's response tokens.

    Returns:
        ``[B, T]`` float32 weights, detached, finite, >= 0, exactly 0 outside the mask.

    Raises:
        ValueError: unknown level, gamma outside (0, 1], block_size < 1, an inverted clip, shapes
            that differ, or NaN / +inf logprobs on a response token.
    """
    mask = mask.bool()
    log_w = pear_log_weights(policy_logprobs, behavior_logprobs, mask, level, gamma, block_size, delta_clip)
    weights = _clipped_exp(log_w, mask, log_weight_clip)
    if self_normalize:
        mean = weights.sum() / mask.sum().clamp(min=1)
        weights = weights / mean.clamp(min=torch.finfo(torch.float64).tiny)
    return weights.float()


def weight_diagnostics(
    policy_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    level: Level = "token",
    gamma: float = 0.999,
    block_size: int = 4,
    delta_clip: tuple[float, float] | None = (-0.08, 0.3),
    log_weight_clip: tuple[float, float] | None = (-10.0, 5.0),
) -> dict[str, float]:
    """Numbers worth logging about one batch's PEAR weights (same arguments as ``pear_weights``).

    Returns a dict of floats over the batch's response tokens:
        ``weight_mean``, ``weight_max``, ``weight_min``;
        ``ess_fraction``: Kish effective sample size ``(sum w)^2 / sum w^2`` divided by the token
        count (1 for equal weights, 1/n for one dominant weight);
        ``delta_clipped_low`` / ``delta_clipped_high``: fraction of raw log-ratios outside the clip;
        ``logw_clipped_low`` / ``logw_clipped_high``: fraction of log-weights at each clip bound;
        ``delta_mean``: mean raw log-ratio (a direct read of how far pi_theta is from pi_beta).
    """
    mask = mask.bool()
    n = mask.sum().clamp(min=1).double()
    raw = clipped_log_ratios(policy_logprobs, behavior_logprobs, mask, delta_clip=None)
    log_w = pear_log_weights(policy_logprobs, behavior_logprobs, mask, level, gamma, block_size, delta_clip)
    weights = _clipped_exp(log_w, mask, log_weight_clip)  # as pear_weights, without recomputing log_w

    def fraction(x: torch.Tensor) -> float:
        return float((x & mask).sum() / n)

    lo_d, hi_d = delta_clip if delta_clip is not None else (-math.inf, math.inf)
    lo_w, hi_w = log_weight_clip if log_weight_clip is not None else (-math.inf, math.inf)
    w = weights[mask]
    return {
        "weight_mean": float(w.mean()) if w.numel() else 0.0,
        "weight_max": float(w.max()) if w.numel() else 0.0,
        "weight_min": float(w.min()) if w.numel() else 0.0,
        "ess_fraction": float(w.sum() ** 2 / (w.pow(2).sum() * n)) if w.numel() and w.any() else 0.0,
        "delta_mean": float(raw[mask].mean()) if w.numel() else 0.0,
        "delta_clipped_low": fraction(raw < lo_d),
        "delta_clipped_high": fraction(raw > hi_d),
        "logw_clipped_low": fraction(log_w <= lo_w),
        "logw_clipped_high": fraction(log_w >= hi_w),
    }


def nll_token_loss(logp: torch.Tensor) -> torch.Tensor:
    """Plain SFT: ``l_t = -log pi_theta(y_t)``. Shape ``[B, T]`` in, ``[B, T]`` out."""
    return -logp


def dft_token_loss(logp: torch.Tensor) -> torch.Tensor:
    """DFT (Wu et al. 2025): ``l_t = -sg(pi_theta(y_t)) * log pi_theta(y_t)``, the NLL scaled by the
    detached token probability."""
    return -logp.detach().exp() * logp


BASE_LOSSES = {"nll": nll_token_loss, "dft": dft_token_loss}


def weighted_sft_loss(
    policy_logprobs: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    base_loss: str = "nll",
    normaliser: Normaliser = "token",
    num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """SFT loss ``sum_t w_t * l_t / normaliser`` over response tokens; ``weights=None`` is w_t = 1.

    Args:
        policy_logprobs: ``[B, T]`` log pi_theta of the target tokens, with gradient.
        mask: ``[B, T]`` True on response tokens.
        weights: ``[B, T]`` detached weights (e.g. ``pear_weights``), or None for plain SFT.
        base_loss: per-token loss l_t: "nll" or "dft" (see ``BASE_LOSSES``).
        normaliser: "token": divide by the number of response tokens in the batch (or by
            ``num_tokens``, the count over all gradient-accumulation micro-batches, which keeps
            accumulated gradients equal to one big batch's); "sequence": mean over non-empty rows of
            each row's token mean, so short and long responses count alike; "sum": no division.
        num_tokens: override of the "token" normaliser's count.

    Returns:
        A scalar tensor.
    """
    if base_loss not in BASE_LOSSES:
        raise ValueError(f"base_loss must be one of {tuple(BASE_LOSSES)}; got {base_loss!r}")
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}; got {normaliser!r}")
    if mask.shape != policy_logprobs.shape:
        raise ValueError(f"mask must have the shape of policy_logprobs {tuple(policy_logprobs.shape)}; got {tuple(mask.shape)}")
    if weights is not None and weights.shape != policy_logprobs.shape:
        raise ValueError(
            f"weights must have the shape of policy_logprobs {tuple(policy_logprobs.shape)}; got {tuple(weights.shape)}"
        )
    mask = mask.bool()
    per_token = BASE_LOSSES[base_loss](policy_logprobs.float())
    if weights is not None:
        per_token = per_token * weights.detach().float()
    # masked_fill, not multiply: a -inf logprob on a padding position must not become NaN.
    per_token = per_token.masked_fill(~mask, 0.0)
    if normaliser == "sum":
        return per_token.sum()
    if normaliser == "token":
        count = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=per_token.device)
        return per_token.sum() / count.clamp(min=1)
    row_tokens = mask.sum(-1)
    row_means = per_token.sum(-1) / row_tokens.clamp(min=1)
    non_empty = row_tokens > 0
    return (row_means * non_empty).sum() / non_empty.sum().clamp(min=1)
