"""pear_bench.metrics against exact enumeration, exact rational arithmetic and closed forms."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from pear_bench.metrics import (
    aggregate,
    avg_at_k,
    bootstrap_ci,
    bootstrap_means,
    pass_at_k,
    pass_ks,
    problem_metrics,
)


def pass_at_k_by_enumeration(scores: list[int], k: int) -> Fraction:
    """Fraction of all k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(scores, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):
        scores = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(pass_at_k_by_enumeration(scores, k)), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(2000, 1000, 1000), (1100, 3, 550), (5000, 1, 2500), (4096, 4000, 8)])
def test_pass_at_k_is_accurate_where_the_binomials_exceed_float_range(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))  # exact big-integer arithmetic
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_pass_at_k_special_values():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 1, 8) == 1.0


@pytest.mark.parametrize(("args", "message"), [
    ((8, 9, 1), "c .* must be <= n"),
    ((8, 2, 9), "k must be <= n"),
    ((8, 2, 0), "k must be an integer >= 1"),
    ((0, 0, 1), "n must be an integer >= 1"),
    ((8, -1, 1), "c must be an integer >= 0"),
    ((8.0, 2, 1), "n must be an integer"),
    ((8, True, 1), "c must be an integer"),
])
def test_pass_at_k_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(*args)


def test_pass_ks():
    assert pass_ks(1) == [1]
    assert pass_ks(8) == [1, 2, 4, 8]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(32) == [1, 2, 4, 8, 16, 32]


def test_problem_metrics_against_enumeration_and_means():
    scores = [0, 1, 0, 0, 1, 1, 0, 0]
    metrics = problem_metrics(scores)
    assert list(metrics) == ["pass@1", "pass@2", "pass@4", "pass@8", "avg@8"]
    for k in (1, 2, 4, 8):
        assert metrics[f"pass@{k}"] == pytest.approx(float(pass_at_k_by_enumeration(scores, k)))
    assert metrics["avg@8"] == 3 / 8
    assert avg_at_k(scores, 2) == 0.5  # the first two samples
    assert problem_metrics([True, False, False], ks=[3]) == {"pass@3": 1.0, "avg@3": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="scores must be 0 or 1"):
        problem_metrics([0.5, 1])
    with pytest.raises(ValueError, match="no scores"):
        problem_metrics([])
    with pytest.raises(ValueError, match="avg@4 needs at least 4 samples"):
        avg_at_k([1, 0], 4)


def test_aggregate_is_the_mean_over_problems():
    per_problem = [problem_metrics([1, 0]), problem_metrics([0, 0]), problem_metrics([1, 1])]
    assert aggregate(per_problem) == pytest.approx({"pass@1": 0.5, "pass@2": 2 / 3, "avg@2": 0.5})
    with pytest.raises(ValueError, match="problem 1 reports"):
        aggregate([{"pass@1": 1.0}, {"pass@2": 1.0}])


# ---------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_is_reproducible_and_degenerate_on_constant_scores():
    scores = np.random.default_rng(1).random(40)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    ci = bootstrap_ci([0.25] * 30)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((0.25, 0.25, 0.25))


def test_bootstrap_over_problems_matches_the_closed_form_variance():
    """Resampling P values with replacement: Var(mean*) = pop_var / P exactly, E(mean*) = mean."""
    x = np.array([1.0] * 600 + [0.0] * 1400)  # P = 2000, mean 0.3
    means = bootstrap_means(x, n_resamples=20_000, seed=0)
    assert means.mean() == pytest.approx(0.3, abs=1e-3)
    assert means.var() == pytest.approx(x.var() / x.size, rel=0.05)
    ci = bootstrap_ci(x, confidence=0.95, n_resamples=20_000)
    half_width = 1.959964 * math.sqrt(x.var() / x.size)  # normal approximation, fine at P = 2000
    assert (ci.high - ci.low) / 2 == pytest.approx(half_width, rel=0.08)
    assert ci.low < 0.3 < ci.high


def test_bootstrap_over_seeds_equals_exact_enumeration_for_three_seeds():
    """Three seeds: the bootstrap over seeds has 27 equally likely resamples; compare masses."""
    x = np.array([[0.2, 0.4], [0.5, 0.5], [0.9, 0.7]])  # [S=3, P=2], seed means 0.3, 0.5, 0.8
    seed_means = x.mean(axis=1)
    exact: dict[float, Fraction] = {}
    for idx in itertools.product(range(3), repeat=3):
        value = round(float(np.mean(seed_means[list(idx)])), 9)
        exact[value] = exact.get(value, Fraction(0)) + Fraction(1, 27)
    means = np.round(bootstrap_means(x, resample="seeds", n_resamples=60_000, seed=0), 9)
    for value, mass in exact.items():
        assert np.mean(means == value) == pytest.approx(float(mass), abs=0.01)
    assert set(np.unique(means)) <= set(exact)


def test_bootstrap_two_stage_separates_seed_and_problem_variance():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 1, size=(6, 1))  # [S, 1]
    problem_effect = rng.normal(0, 2, size=(1, 50))  # [1, P]
    x = seed_effect + problem_effect  # [S, P], additive: the two resamplings are independent
    # Only seeds vary -> resampling problems alone cannot move the mean, and vice versa.
    only_seeds = np.repeat(seed_effect, 50, axis=1)
    only_problems = np.repeat(problem_effect, 6, axis=0)
    assert np.ptp(bootstrap_means(only_seeds, resample="problems", n_resamples=500)) == pytest.approx(0, abs=1e-12)
    assert np.ptp(bootstrap_means(only_problems, resample="seeds", n_resamples=500)) == pytest.approx(0, abs=1e-12)
    # Both: Var = Var_pop(seed effects)/S + Var_pop(problem effects)/P.
    expected = seed_effect.var() / 6 + problem_effect.var() / 50
    assert bootstrap_means(x, resample="both", n_resamples=40_000).var() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(scores=[0.1, 0.2], resample="seeds"), "no seed axis"),
    (dict(scores=[[0.1, np.nan]]), "NaN"),
    (dict(scores=[]), "shape"),
    (dict(scores=[[0.1]], resample="runs"), "resample must be"),
    (dict(scores=[0.1], confidence=1.5), "confidence must be in"),
    (dict(scores=[0.1], n_resamples=0), "n_resamples must be"),
])
def test_bootstrap_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)
