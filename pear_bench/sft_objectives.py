"""SFT objectives by name: plain SFT, DFT, PEAR at three levels (over NLL or DFT), and iw-SFT.

An objective is one function, registered under the name that ``method`` (YAML key, CLI flag,
workflow wildcard) selects::

    @register_objective("my-objective", needs_behavior_logprobs=False)
    def my_objective(logp, batch, response_mask, cfg, num_tokens=None):
        return weighted_sft_loss(logp, response_mask, normaliser=cfg.normaliser, num_tokens=num_tokens), {}

Arguments every objective receives (shapes: B rows, T positions of the padded batch):

    logp            [B, T] float32 log pi_theta(ids[t] | ids[<t]), with gradient, 0 off the mask
    batch           the collated batch (``pear_bench.trainers.sft.SFTCollator``): input_ids,
                    attention_mask, response_mask, labels, and behavior_logprobs [B, T] (log pi_beta on
                    the same grid, 0 off the mask) when the objective needs them
    response_mask   [B, T] bool, True on response tokens
    cfg             the ``pear_bench.config.SFTConfig`` (its switches: gamma, normaliser, ...)
    num_tokens      the "token" normaliser's count over all micro-batches of the optimizer step
                    (transformers' ``num_items_in_batch``), or None to count this batch's tokens

and returns ``(loss, metrics)``: a scalar with gradient and a dict of floats that the trainer logs.
The trainer (``pear_bench.trainers.sft``) needs nothing else: an objective added to this module is
usable from the CLI, a config file and the workflow at once (one registered in another module works
from Python once that module is imported). The objective's docstring is its documentation: formula,
source, deviations.

Shipped objectives:

==================  ==========================================================  =====================
name                per-token loss and weight                                   source
==================  ==========================================================  =====================
sft                 -log pi_theta(y_t)                                          maximum likelihood
dft                 -sg(pi_theta(y_t)) log pi_theta(y_t)                        Wu et al. 2025
pear-{level}        G_hat_t * (-log pi_theta(y_t)), level token/block/sequence  Zhang et al. 2026
pear-{level}-dft    G_hat_t * DFT loss                                          PEAR over DFT
iw-sft              w_i * (-log pi_theta(y_t)), one weight per sequence         Qin & Springenberg 2025
==================  ==========================================================  =====================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pear_bench.objectives import LEVELS, pear_weights, weight_diagnostics, weighted_sft_loss

if TYPE_CHECKING:
    from pear_bench.config import SFTConfig

Objective = Callable[..., tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its function and whether it reads ``batch["behavior_logprobs"]``."""

    name: str
    fn: Objective
    needs_behavior_logprobs: bool


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(name: str, *, needs_behavior_logprobs: bool) -> Callable[[Objective], Objective]:
    """Decorator: register ``fn`` as the SFT objective ``name``.

    ``needs_behavior_logprobs`` decides whether the dataset must carry behaviour logprobs (records
    without them are rejected up front) and whether the collator passes them on.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def register(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"SFT objective {name!r} is already registered")
        OBJECTIVES[name] = ObjectiveSpec(name, fn, needs_behavior_logprobs)
        return fn

    return register


def get_objective(name: str) -> ObjectiveSpec:
    """The registered objective ``name``; ValueError listing the known names otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown SFT objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


@register_objective("sft", needs_behavior_logprobs=False)
def sft_loss(logp: torch.Tensor, batch: Mapping[str, torch.Tensor], response_mask: torch.Tensor,
             cfg: SFTConfig, num_tokens: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain SFT: ``sum_t -log pi_theta(y_t) / normaliser``; with the "token" normaliser this is
    transformers' ``model(labels=...).loss``."""
    return weighted_sft_loss(logp, response_mask, None, "nll", cfg.normaliser, num_tokens), {}


@register_objective("dft", needs_behavior_logprobs=False)
def dft_loss(logp: torch.Tensor, batch: Mapping[str, torch.Tensor], response_mask: torch.Tensor,
             cfg: SFTConfig, num_tokens: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DFT (Wu et al. 2025, arXiv 2508.05629): ``sum_t -sg(pi_theta(y_t)) log pi_theta(y_t) / normaliser``."""
    return weighted_sft_loss(logp, response_mask, None, "dft", cfg.normaliser, num_tokens), {}


def pear_loss(logp: torch.Tensor, batch: Mapping[str, torch.Tensor], response_mask: torch.Tensor,
              cfg: SFTConfig, num_tokens: int | torch.Tensor | None = None, *, level: str,
              base_loss: str) -> tuple[torch.Tensor, dict[str, float]]:
    """PEAR (DESIGN.md; ``pear_bench.objectives``): ``sum_t G_hat_t * l_t / normaliser``.

    ``G_hat_t`` are the detached weights of ``pear_weights`` at ``level`` with the config's gamma,
    block_size, delta and log-weight clips and self-normalisation; ``l_t`` is the NLL
    (``base_loss="nll"``) or DFT's loss (``"dft"``). Metrics are ``weight_diagnostics`` under
    ``pear/`` (computed without self-normalisation).
    """
    switches = dict(level=level, gamma=cfg.gamma, block_size=cfg.block_size, delta_clip=cfg.delta_clip,
                    log_weight_clip=cfg.log_weight_clip)
    behavior = batch["behavior_logprobs"]
    weights = pear_weights(logp, behavior, response_mask, self_normalize=cfg.self_normalize, **switches)
    loss = weighted_sft_loss(logp, response_mask, weights, base_loss, cfg.normaliser, num_tokens)
    diagnostics = weight_diagnostics(logp, behavior, response_mask, **switches)
    return loss, {f"pear/{k}": v for k, v in diagnostics.items()}


for _level in LEVELS:
    for _base, _suffix in (("nll", ""), ("dft", "-dft")):
        register_objective(f"pear-{_level}{_suffix}", needs_behavior_logprobs=True)(
            functools.wraps(pear_loss)(functools.partial(pear_loss, level=_level, base_loss=_base)))


@register_objective("iw-sft", needs_behavior_logprobs=True)
def iw_sft_loss(logp: torch.Tensor, batch: Mapping[str, torch.Tensor], response_mask: torch.Tensor,
                cfg: SFTConfig, num_tokens: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance-weighted SFT (Qin & Springenberg 2025, arXiv 2507.12856), one weight per sequence::

        log w_i = iw_temperature * (1 / T_i) * sum_t (log pi_theta(y_t) - log pi_ref(y_t))
        w_i     = min(exp(log w_i), iw_weight_max), detached
        loss    = sum_i w_i * sum_t -log pi_theta(y_t) / normaliser

    SFT on curated data maximises a lower bound on the sparse-reward RL objective
    E_{pi_ref}[pi_theta / pi_ref * R]; weighting each curated sequence by the (stop-gradient) ratio
    tightens it as pi_theta moves away from pi_ref (paper, Sec. 3). The ratio here is the authors'
    LLM implementation (github.com/emmyqin/iw_sft, ``bounding_trainers.py``, ``IwSFTLoss`` with
    ``sum_over_time=True``): the exponent is the *per-token mean* log-ratio (a geometric mean of
    token ratios, not the full product), scaled by a temperature (1.0 in their ``compute_loss``) and
    clipped to [0, 16].

    Deviation: pi_ref here is the behaviour policy whose logprobs the dataset records (the policy
    that produced the curated data, as in the paper's derivation). The authors' LLM script, when
    the data carries no reference logprobs, instead scores with a frozen copy of the starting model.
    Metrics: weight mean/min/max, the Kish ESS fraction over sequences, and the fraction at the clip.
    """
    mask = response_mask.bool()
    behavior = batch["behavior_logprobs"]
    log_ratio = (logp.detach().double() - behavior.double()).masked_fill(~mask, 0.0)  # [B, T]
    tokens = mask.sum(-1)  # [B]
    log_w = cfg.iw_temperature * log_ratio.sum(-1) / tokens.clamp(min=1)  # [B]
    log_cap = math.log(cfg.iw_weight_max)
    seq_w = log_w.clamp(max=log_cap).exp()  # [B]
    weights = seq_w[:, None].expand_as(mask).masked_fill(~mask, 0.0).float()  # [B, T]
    loss = weighted_sft_loss(logp, mask, weights, "nll", cfg.normaliser, num_tokens)

    w = seq_w[tokens > 0]
    if not w.numel():
        return loss, {}
    return loss, {
        "iw/weight_mean": float(w.mean()),
        "iw/weight_min": float(w.min()),
        "iw/weight_max": float(w.max()),
        "iw/ess_fraction": float(w.sum() ** 2 / (w.pow(2).sum() * w.numel())) if w.any() else 0.0,
        "iw/clipped_fraction": float((log_w[tokens > 0] >= log_cap).double().mean()),
    }
