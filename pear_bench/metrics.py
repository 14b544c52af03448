"""Sampling metrics: unbiased pass@k, avg@k, and bootstrap confidence intervals.

One estimator serves the lm-eval tasks (``tasks/*/utils.py``) and the results tables.

Notation: a problem gets n sampled responses, c of them correct.

- pass@k: the probability that at least one of k responses drawn without replacement from the n
  is correct, ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language Models
  Trained on Code", eq. 1; unbiased for the model's pass@k when the n are i.i.d. samples). It is
  computed as the product ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the binomials
  (C(n, k) overflows float64 near n = 1030), as in that paper's Figure 3.
- avg@k: the mean correctness of the first k responses (the per-sample accuracy). With k = n it
  equals pass@1 = c/n.
- Aggregates are unweighted means over problems.

Confidence intervals are percentile bootstraps of the mean: over problems (which problems were
asked), over RL seeds (which training runs happened), or both at once (a two-stage bootstrap that
resamples seeds and problems independently).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    ``pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)``; exactly 1 when
    ``n - c < k`` (every k-subset then holds a correct sample).

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n`` (all integers).
    """
    _check_int("n", n, 1)
    _check_int("c", c, 0)
    _check_int("k", k, 1)
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n (samples), got c={c}, n={n}")
    if k > n:
        raise ValueError(f"k must be <= n: pass@{k} needs at least {k} samples, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself (n=8: [1, 2, 4, 8])."""
    _check_int("n", n, 1)
    return [2**j for j in range(n.bit_length()) if 2**j < n] + [n]


def avg_at_k(scores: Sequence[float], k: int) -> float:
    """Mean of the first ``k`` of one problem's sample grades.

    Raises:
        ValueError: ``k`` outside 1..len(scores).
    """
    _check_int("k", k, 1)
    if k > len(scores):
        raise ValueError(f"avg@{k} needs at least {k} samples, got {len(scores)}")
    return float(sum(scores[:k])) / k


def problem_metrics(scores: Sequence[float], ks: Sequence[int] | None = None) -> dict[str, float]:
    """pass@k for each k in ``ks`` (default ``pass_ks(n)``) and avg@n for one problem's samples.

    Args:
        scores: the n samples' grades, each 0.0 or 1.0 (bools accepted), in sampling order.
        ks: which pass@k to report.

    Returns:
        ``{"pass@1": ..., "pass@k": ..., "avg@n": ...}``.

    Raises:
        ValueError: no scores, a score other than 0/1, or a k outside 1..n.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("problem_metrics: no scores (a problem needs at least one sample)")
    bad = [s for s in scores if s not in (0, 1)]
    if bad:
        raise ValueError(f"problem_metrics: scores must be 0 or 1, got {bad[:5]}")
    c = int(sum(scores))
    metrics = {f"pass@{k}": pass_at_k(n, c, k) for k in (pass_ks(n) if ks is None else ks)}
    metrics[f"avg@{n}"] = avg_at_k(scores, n)
    return metrics


def aggregate(per_problem: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over problems (every problem must report the same metrics)."""
    if not per_problem:
        raise ValueError("aggregate: no problems")
    names = per_problem[0].keys()
    for i, metrics in enumerate(per_problem):
        if metrics.keys() != names:
            raise ValueError(f"aggregate: problem {i} reports {sorted(metrics)}, problem 0 {sorted(names)}")
    return {name: float(np.mean([m[name] for m in per_problem])) for name in names}


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate (the mean of the observed scores) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float


def bootstrap_means(
    scores: np.ndarray | Sequence,
    resample: Literal["problems", "seeds", "both"] = "problems",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap distribution of the grand mean of ``scores``.

    Args:
        scores: shape ``[P]`` (one value per problem), or ``[S, P]`` (RL seed x problem, the same
            problems under every seed).
        resample: "problems" draws P problem indices with replacement (shared by all seeds);
            "seeds" draws S seed indices (``[S, P]`` only); "both" draws each independently.
        n_resamples: bootstrap replicates B.
        seed: seed of the resampling generator (the result is a pure function of the inputs).

    Returns:
        ``[B]`` means, one per replicate: ``mean(scores[seed_idx][:, problem_idx])``.

    Raises:
        ValueError: wrong shape, empty or non-finite scores, resampling seeds of 1-D scores.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]  # [1, P]
        if resample != "problems":
            raise ValueError(f"1-D scores have no seed axis; resample must be 'problems', got {resample!r}")
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores must have shape [P] or [S, P] with P, S >= 1, got {np.shape(scores)}")
    if not np.isfinite(x).all():
        raise ValueError("scores contain NaN or infinity")
    if resample not in ("problems", "seeds", "both"):
        raise ValueError(f"resample must be 'problems', 'seeds' or 'both', got {resample!r}")
    _check_int("n_resamples", n_resamples, 1)
    S, P = x.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2**22 // (S + P))  # bounds the [chunk, S] and [chunk, P] count arrays to ~32 MB
    for start in range(0, n_resamples, chunk):
        B = min(chunk, n_resamples - start)
        # Multiplicity of each seed / problem in each replicate: [B, S] and [B, P].
        seed_counts = _counts(rng, B, S) if resample in ("seeds", "both") else np.ones((B, S))
        problem_counts = _counts(rng, B, P) if resample in ("problems", "both") else np.ones((B, P))
        # mean over the resampled S x P grid = sum_s sum_p w_s x_sp v_p / (S P)
        means[start:start + B] = np.einsum("bs,sp,bp->b", seed_counts, x, problem_counts) / (S * P)
    return means


def _counts(rng: np.random.Generator, B: int, n: int) -> np.ndarray:
    """``[B, n]`` multiplicities of n items in B samples of size n drawn with replacement."""
    draws = rng.integers(0, n, size=(B, n))  # [B, n]
    flat = (draws + n * np.arange(B)[:, None]).ravel()  # row b's draws land in bins [b n, (b+1) n)
    return np.bincount(flat, minlength=B * n).reshape(B, n).astype(np.float64)


def bootstrap_ci(
    scores: np.ndarray | Sequence,
    resample: Literal["problems", "seeds", "both"] = "problems",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of the mean of ``scores``; see ``bootstrap_means``.

    Use per-problem values (e.g. each problem's pass@8) as ``scores``: ``[P]`` for one model,
    ``[S, P]`` for one arm trained with S RL seeds.

    Raises:
        ValueError: ``confidence`` outside (0, 1), plus what ``bootstrap_means`` raises.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    means = bootstrap_means(scores, resample, n_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(np.mean(np.asarray(scores, dtype=np.float64))), float(low), float(high),
                              confidence)
