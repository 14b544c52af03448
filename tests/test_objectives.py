"""PEAR weights and losses against independent references: explicit float64 loops over DESIGN.md's
formulas, closed forms, and properties (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pear_bench.objectives import pear_weights, weight_diagnostics, weighted_sft_loss


# --- the reference: DESIGN.md's formulas as plain Python loops in float64 --------------------------


def _clip(x, bounds):
    return x if bounds is None else min(max(x, bounds[0]), bounds[1])


def reference_weights(theta, beta, mask, level, gamma, block_size, delta_clip, logw_clip):
    """Row by row, token by token: the formulas exactly as written, nothing vectorised."""
    B, T = len(theta), len(theta[0])
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b][t]]  # the response tokens, in order
        n = len(positions)
        delta = [_clip(theta[b][p] - beta[b][p], delta_clip) for p in positions]
        for i, p in enumerate(positions):  # i is 0-based, so DESIGN's t = i + 1
            if level == "sequence":
                log_g = sum(delta)
            elif level == "token":
                t = i + 1
                log_g = (n - t) * math.log(gamma) + sum(delta[j - 1] for j in range(t + 1, n + 1))
            else:
                k = i // block_size
                e_k = min((k + 1) * block_size, n)  # 1-based index of the block's last token
                later = sum(delta[j - 1] for j in range(e_k + 1, n + 1))
                log_g = (n - e_k) * math.log(gamma) + later
            out[b][p] = math.exp(_clip(log_g, logw_clip))
    return torch.tensor(out, dtype=torch.float64)


def random_batch(B, T, seed, padding="right", spread=0.3):
    g = torch.Generator().manual_seed(seed)
    theta = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    beta = theta + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 2 * spread
    beta = beta.clamp(max=0.0)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        prompt = int(torch.randint(0, T // 2, (1,), generator=g))
        length = int(torch.randint(0, T - prompt + 1, (1,), generator=g))
        if padding == "right":  # [prompt][response][pad]
            mask[b, prompt : prompt + length] = True
        else:  # [pad][prompt][response]
            mask[b, T - length :] = True
    return theta, beta, mask


CLIPS = [((-0.08, 0.3), (-10.0, 5.0)), (None, None), ((-0.05, 0.05), None), (None, (-0.5, 0.2))]


@pytest.mark.parametrize("level", ["token", "block", "sequence"])
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("clips", CLIPS)
@pytest.mark.parametrize("seed", range(3))
def test_weights_match_float64_loop_reference(level, padding, clips, seed):
    delta_clip, logw_clip = clips
    B, T = 5, 23
    gamma, block_size = (0.9, 3) if seed % 2 else (0.999, 4)
    theta, beta, mask = random_batch(B, T, seed, padding)
    got = pear_weights(theta.float(), beta.float(), mask, level, gamma, block_size, delta_clip, logw_clip)
    want = reference_weights(theta.float().double().tolist(), beta.float().double().tolist(),
                             mask.tolist(), level, gamma, block_size, delta_clip, logw_clip)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_non_contiguous_mask_counts_response_tokens_only():
    # Two response segments separated by an unmasked token (e.g. a tool call): t counts only masked tokens.
    theta, beta, _ = random_batch(2, 12, seed=7)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0]] * 2, dtype=torch.bool)
    for level in ("token", "block", "sequence"):
        got = pear_weights(theta, beta, mask, level, 0.95, 2, None, None)
        want = reference_weights(theta.tolist(), beta.tolist(), mask.tolist(), level, 0.95, 2, None, None)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_block_size_one_equals_token_level(padding):
    theta, beta, mask = random_batch(6, 31, seed=3, padding=padding)
    for clips in CLIPS:
        token = pear_weights(theta, beta, mask, "token", 0.99, 4, *clips)
        block = pear_weights(theta, beta, mask, "block", 0.99, 1, *clips)
        assert torch.equal(token, block)


def test_block_size_at_least_length_gives_one_weight_per_row():
    # One block spans the whole response: nothing comes after its last token, so log G = 0.
    theta, beta, mask = random_batch(4, 17, seed=5)
    w = pear_weights(theta, beta, mask, "block", 0.9, 100, None, None)
    assert torch.equal(w, mask.float())


def test_equal_policies_give_closed_form_weights():
    # pi_theta == pi_beta: every delta is 0, so sequence weights are 1 and token weights gamma^(T-t).
    theta, _, mask = random_batch(4, 19, seed=11, padding="left")
    gamma = 0.9
    seq = pear_weights(theta, theta, mask, "sequence", gamma)
    tok = pear_weights(theta, theta, mask, "token", gamma, log_weight_clip=None)
    assert torch.equal(seq, mask.float())
    for b in range(4):
        n = int(mask[b].sum())
        want = torch.tensor([gamma ** (n - t) for t in range(1, n + 1)], dtype=torch.float32)
        torch.testing.assert_close(tok[b][mask[b]], want, rtol=1e-6, atol=0)


def test_gamma_one_without_clips_is_exact_suffix_likelihood_ratio():
    # prod_{j > t} pi_theta(y_j) / pi_beta(y_j), computed from probabilities rather than log-sums.
    theta, beta, mask = random_batch(3, 15, seed=2)
    w = pear_weights(theta, beta, mask, "token", gamma=1.0, delta_clip=None, log_weight_clip=None)
    p_theta, p_beta = theta.exp(), beta.exp()
    for b in range(3):
        pos = mask[b].nonzero().flatten().tolist()
        for i, p in enumerate(pos):
            ratio = math.prod(float(p_theta[b, q] / p_beta[b, q]) for q in pos[i + 1 :])
            assert w[b, p].item() == pytest.approx(ratio, rel=1e-6)


def test_weights_are_detached_and_zero_off_mask():
    theta, beta, mask = random_batch(3, 10, seed=1)
    theta = theta.float().requires_grad_()
    for level in ("token", "block", "sequence"):
        w = pear_weights(theta, beta.float(), mask, level)
        assert not w.requires_grad
        assert torch.all(w[~mask] == 0)


def test_self_normalize_makes_mean_one():
    theta, beta, mask = random_batch(4, 20, seed=9, spread=1.0)
    w = pear_weights(theta, beta, mask, "token", self_normalize=True)
    assert w[mask].double().mean().item() == pytest.approx(1.0, rel=1e-6)


def test_minus_inf_behavior_logprob_follows_the_documented_rule():
    theta = torch.full((1, 4), -1.0)
    beta = torch.tensor([[-1.0, -1.0, -math.inf, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    # With the delta clip on, the impossible token counts as delta_max for the tokens before it.
    w = pear_weights(theta, beta, mask, "token", gamma=1.0, delta_clip=(-0.08, 0.3), log_weight_clip=None)
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.3), math.exp(0.3), 1.0, 1.0]]))
    # With both clips off, weights saturate but stay finite.
    w = pear_weights(theta, beta, mask, "sequence", delta_clip=None, log_weight_clip=None)
    assert torch.isfinite(w).all() and (w > 1e30).all()
    # Opposite infinities in one row never make NaN.
    theta2 = torch.tensor([[-math.inf, -1.0, -1.0, -1.0]])
    for level in ("token", "block", "sequence"):
        w = pear_weights(theta2, beta, mask, level, delta_clip=None, log_weight_clip=None)
        assert torch.isfinite(w).all()


def test_bad_inputs_raise_value_errors_naming_the_tensor():
    theta, beta, mask = random_batch(2, 8, seed=0)
    with pytest.raises(ValueError, match="behavior_logprobs.*shape"):
        pear_weights(theta, beta[:, :-1], mask)  # behaviour logprobs shorter than the response
    with pytest.raises(ValueError, match="mask.*shape"):
        pear_weights(theta, beta, mask[:1])
    with pytest.raises(ValueError, match=r"policy_logprobs.*\[B, T\]"):
        pear_weights(theta[0], beta[0], mask[0])
    nan_beta = beta.clone()
    row, col = mask.nonzero()[0].tolist()
    nan_beta[row, col] = float("nan")
    with pytest.raises(ValueError, match=f"behavior_logprobs.*nan.*row {row}, position {col}"):
        pear_weights(theta, nan_beta, mask)
    with pytest.raises(ValueError, match="level"):
        pear_weights(theta, beta, mask, level="tokens")
    with pytest.raises(ValueError, match="gamma"):
        pear_weights(theta, beta, mask, gamma=-0.5)
    with pytest.raises(ValueError, match="block_size"):
        pear_weights(theta, beta, mask, level="block", block_size=0)
    with pytest.raises(ValueError, match="delta_clip"):
        pear_weights(theta, beta, mask, delta_clip=(0.3, -0.08))


def test_nan_outside_the_mask_is_ignored():
    theta, beta, mask = random_batch(2, 8, seed=4)
    mask[:, -1] = False
    beta[:, -1] = float("nan")
    assert torch.isfinite(pear_weights(theta, beta, mask)).all()


# --- properties under extreme inputs -----------------------------------------------------------

extreme = st.one_of(
    st.floats(min_value=-1e4, max_value=0.0), st.just(-math.inf), st.just(0.0), st.just(-1e4)
)


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 12))
    theta = draw(st.lists(st.lists(st.floats(min_value=-1e4, max_value=0.0), min_size=T, max_size=T), min_size=B, max_size=B))
    beta = draw(st.lists(st.lists(extreme, min_size=T, max_size=T), min_size=B, max_size=B))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B))
    return torch.tensor(theta), torch.tensor(beta), torch.tensor(mask)


@settings(max_examples=200, deadline=None)
@given(
    batch=batches(),
    level=st.sampled_from(["token", "block", "sequence"]),
    gamma=st.floats(min_value=1e-3, max_value=1.0),
    block_size=st.integers(1, 6),
    clips=st.sampled_from(CLIPS),
    self_normalize=st.booleans(),
)
def test_weights_finite_nonnegative_and_zero_where_masked(batch, level, gamma, block_size, clips, self_normalize):
    theta, beta, mask = batch
    w = pear_weights(theta, beta, mask, level, gamma, block_size, *clips, self_normalize=self_normalize)
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    assert (w[~mask] == 0).all()
    if clips[1] is not None:  # with the log-weight clip off, 3e38 * NLL may overflow: that is "off"
        assert torch.isfinite(weighted_sft_loss(theta, mask, w))


def test_empty_and_all_masked_rows():
    theta = torch.zeros(3, 0)
    assert pear_weights(theta, theta, theta.bool()).shape == (3, 0)
    theta, beta, _ = random_batch(3, 6, seed=1)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for level in ("token", "block", "sequence"):
        assert torch.equal(pear_weights(theta, beta, mask, level), torch.zeros(3, 6))
    assert weighted_sft_loss(theta, mask).item() == 0.0


# --- losses --------------------------------------------------------------------------------------


def test_loss_normalisers_against_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-4.0, -5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    w = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    weighted = [1.0, 1.0, 6.0, 0.0, 15.0]  # w * nll on the 5 response tokens
    assert weighted_sft_loss(logp, mask, w, normaliser="sum").item() == pytest.approx(sum(weighted))
    assert weighted_sft_loss(logp, mask, w, normaliser="token").item() == pytest.approx(sum(weighted) / 5)
    assert weighted_sft_loss(logp, mask, w, normaliser="token", num_tokens=10).item() == pytest.approx(sum(weighted) / 10)
    assert weighted_sft_loss(logp, mask, w, normaliser="sequence").item() == pytest.approx((8.0 / 3 + 15.0 / 2) / 2)
    assert weighted_sft_loss(logp, mask).item() == pytest.approx(15.0 / 5)


def test_dft_loss_closed_form():
    # DFT: l = -sg(p) log p; with p = 0.5 on every token, the loss is 0.5 * ln 2 and its gradient
    # w.r.t. log p is -0.5 (the detached probability), not -1 as for NLL.
    logp = torch.full((2, 3), math.log(0.5), requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss = weighted_sft_loss(logp, mask, base_loss="dft")
    assert loss.item() == pytest.approx(0.5 * math.log(2))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((2, 3), -0.5 / 6))


def test_zero_weight_sequence_contributes_no_gradient_and_unit_weights_equal_plain_sft():
    torch.manual_seed(0)
    B, T, V, H = 3, 7, 11, 5
    hidden = torch.randn(B, T, H)
    targets = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :2] = False

    def grad_of(weights, rows=slice(None)):
        head = torch.nn.Linear(H, V, bias=False)
        torch.nn.init.normal_(head.weight, generator=torch.Generator().manual_seed(1))
        logp = head(hidden[rows]).log_softmax(-1).gather(-1, targets[rows, :, None])[..., 0]
        loss = weighted_sft_loss(logp, mask[rows], weights, normaliser="sum")
        loss.backward()
        return head.weight.grad

    w = torch.ones(B, T)
    w[1] = 0.0  # row 1 weighted to zero must be as if it were absent
    torch.testing.assert_close(grad_of(w), grad_of(None, rows=[0, 2]))
    torch.testing.assert_close(grad_of(torch.ones(B, T)), grad_of(None))


def test_loss_bad_inputs():
    logp, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="base_loss"):
        weighted_sft_loss(logp, mask, base_loss="mse")
    with pytest.raises(ValueError, match="normaliser"):
        weighted_sft_loss(logp, mask, normaliser="mean")
    with pytest.raises(ValueError, match="weights.*shape"):
        weighted_sft_loss(logp, mask, torch.ones(2, 2))


# --- diagnostics ---------------------------------------------------------------------------------


def test_diagnostics_against_direct_computation():
    theta = torch.tensor([[-1.0, -1.0, -1.0, -1.0, 0.0]])
    beta = torch.tensor([[-1.5, -0.5, -1.0, -1.02, 0.0]])  # raw deltas 0.5, -0.5, 0, 0.02
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    d = weight_diagnostics(theta, beta, mask, "sequence", delta_clip=(-0.08, 0.3), log_weight_clip=(-10.0, 0.2))
    # clipped deltas 0.3, -0.08, 0, 0.02 -> log G = 0.24 -> clipped to 0.2 on all 4 tokens
    assert d["delta_clipped_high"] == pytest.approx(0.25)
    assert d["delta_clipped_low"] == pytest.approx(0.25)
    assert d["logw_clipped_high"] == pytest.approx(1.0)
    assert d["logw_clipped_low"] == 0.0
    assert d["weight_mean"] == pytest.approx(math.exp(0.2), rel=1e-6)
    assert d["ess_fraction"] == pytest.approx(1.0)
    assert d["delta_mean"] == pytest.approx(0.005, abs=1e-7)
    # ESS: a ratio of 4 on the last token enters the weights of tokens 1..3: weights (4, 4, 4, 1),
    # Kish ESS = 13^2 / 49 out of 4 tokens.
    w_theta = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    w_beta = w_theta.clone()
    w_beta[0, 3] -= math.log(4)
    d = weight_diagnostics(w_theta, w_beta, torch.ones(1, 4, dtype=torch.bool), "token", gamma=1.0,
                           delta_clip=None, log_weight_clip=None)
    assert d["ess_fraction"] == pytest.approx((13**2 / 49) / 4)
