"""The token-logprob primitive against the naive full log_softmax + gather, value and gradient.

Both implementations run here on CPU: the blockwise path (what ``token_logprobs`` runs off CUDA),
with its default blocks and with blocks of 3 rows (many blocks even at these tiny sizes), and TRL's
kernel (what it runs on CUDA; its torch fallback here), selected through ``_use_trl_kernel``.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

import pear_bench.logprobs as logprobs_module
from pear_bench.logprobs import token_logprobs
from pear_bench.tiny_models import build_tiny_model, tiny_config

PATHS = ["blockwise", "blockwise-3-rows", "trl-kernel"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Run ``token_logprobs`` on one implementation for the duration of a test."""
    monkeypatch.setattr(logprobs_module, "_use_trl_kernel", lambda device: request.param == "trl-kernel")
    if request.param == "blockwise-3-rows":
        monkeypatch.setattr(logprobs_module, "CPU_BLOCK_LOGITS", 3 * 97)  # 3 rows of the 97-entry vocabulary
    return request.param


def naive_logprobs(model, input_ids, attention_mask, temperature=1.0):
    """The reference: full [B, T, V] float32 logits, log_softmax, gather; aligned with input_ids."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(logp, (1, 0))


def naive_logprobs_and_entropy(model, input_ids, attention_mask, temperature=1.0):
    """The reference with entropy: full [B, T, V] float32 log-probabilities; both aligned with input_ids."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    logp_all = logits[:, :-1].log_softmax(-1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pad = torch.nn.functional.pad
    return pad(logp, (1, 0)), pad(entropy, (1, 0))


def assert_matches_naive(model, ids, attn, score, temperature=1.0, with_entropy=False, atol=1e-5, grad_rtol=1e-4):
    """token_logprobs vs the naive path: values, and every parameter's gradient of a random linear loss."""
    g = torch.Generator().manual_seed(1)
    up_logp, up_entropy = torch.randn(ids.shape, generator=g), torch.randn(ids.shape, generator=g)
    scored = score.bool().clone()
    scored[:, 0] = False

    model.zero_grad()
    out = token_logprobs(model, ids, attn, score, temperature=temperature, with_entropy=with_entropy)
    loss = (out.logprobs * up_logp).sum() + ((out.entropy * up_entropy).sum() if with_entropy else 0)
    loss.backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    want_logp, want_entropy = naive_logprobs_and_entropy(model, ids, attn, temperature)
    want_logp, want_entropy = want_logp.masked_fill(~scored, 0.0), want_entropy.masked_fill(~scored, 0.0)
    loss = (want_logp * up_logp).sum() + ((want_entropy * up_entropy).sum() if with_entropy else 0)
    loss.backward()

    torch.testing.assert_close(out.logprobs, want_logp.detach(), rtol=0, atol=atol)
    assert torch.all(out.logprobs[~scored] == 0)
    if with_entropy:
        torch.testing.assert_close(out.entropy, want_entropy.detach(), rtol=0, atol=atol)
        assert torch.all(out.entropy[~scored] == 0)
    want_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=grad_rtol, atol=10 * atol, msg=name)


def make_model(vocab_size=97, seed=0, **overrides):
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_config(vocab_size, **overrides)).float()


def make_batch(B, T, vocab_size, padding, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    for b in range(B):
        n_pad = b * 3 % (T // 2)
        if padding == "right" and n_pad:
            attn[b, -n_pad:] = 0
        elif padding == "left" and n_pad:
            attn[b, :n_pad] = 0
    return ids, attn


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_naive_path(path, padding, temperature):
    model = make_model()
    ids, attn = make_batch(4, 24, 97, padding)
    score = attn.bool().clone()
    score[:, :5] = False  # pretend the first tokens are a prompt
    assert_matches_naive(model, ids, attn, score, temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_values_and_gradients_match_full_distribution(path, temperature):
    # The SFT trainer asks for the entropy with every step; a loss may use it (entropy bonus).
    model = make_model()
    ids, attn = make_batch(3, 16, 97, "left")
    assert_matches_naive(model, ids, attn, attn, temperature, with_entropy=True)


@pytest.mark.parametrize("family", ["gemma2-softcap", "cohere-logit-scale", "granite-logits-scaling"])
def test_logit_softcap_and_scales_match_the_models_own_logits(path, family):
    # The naive reference is the model's own forward, which applies its softcap / scale itself.
    from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                              GraniteForCausalLM)

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                  num_key_value_heads=1, head_dim=64, eos_token_id=1, bos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = {
        "gemma2-softcap": lambda: Gemma2ForCausalLM(Gemma2Config(**common, final_logit_softcapping=1.5)),
        "cohere-logit-scale": lambda: CohereForCausalLM(CohereConfig(**common, logit_scale=3.0)),
        "granite-logits-scaling": lambda: GraniteForCausalLM(GraniteConfig(**common, logits_scaling=0.25)),
    }[family]().float()
    if family == "gemma2-softcap":
        with torch.no_grad():  # larger logits, so that the softcap's tanh is far from linear
            model.get_output_embeddings().weight.mul_(20.0)
    ids, attn = make_batch(3, 12, 97, "right")
    assert_matches_naive(model, ids, attn, attn, temperature=0.7, with_entropy=True)


def test_lm_head_bias_gets_its_gradient(path):
    model = make_model()
    head = torch.nn.Linear(model.config.hidden_size, 97, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(std=0.5)
    model.lm_head = head
    ids, attn = make_batch(2, 12, 97, "right")
    assert_matches_naive(model, ids, attn, attn, with_entropy=True)
    assert model.lm_head.bias.grad is not None


def test_nothing_scored_gives_zeros_and_zero_gradients(path):
    model = make_model()
    ids, attn = make_batch(2, 8, 97, "right")
    out = token_logprobs(model, ids, attn, torch.zeros_like(attn), with_entropy=True)
    assert torch.all(out.logprobs == 0) and torch.all(out.entropy == 0)
    (out.logprobs.sum() + out.entropy.sum()).backward()  # still connected: an all-prompt micro-batch trains
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_bfloat16_model_matches_its_own_logits(path):
    model = make_model().to(torch.bfloat16)
    ids, attn = make_batch(2, 12, 97, "left")
    with torch.no_grad():
        got = token_logprobs(model, ids, attn).logprobs
        want = naive_logprobs(model, ids, attn).masked_fill(~attn.bool(), 0.0)
    want[:, 0] = 0
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)


# Not blockwise-3-rows: at this vocabulary it means one row per block (slow), and the default
# blocks already cross block boundaries here.
@pytest.mark.parametrize("path", ["blockwise", "trl-kernel"], indirect=True)
@pytest.mark.parametrize("chunk_size", [None, 32_768])
def test_multiple_vocab_and_token_tiles_match_naive_path(path, chunk_size):
    # TRL tiles 4096 tokens x chunk_size vocabulary entries (4096 on CPU by default): cross both.
    # The blockwise path ignores chunk_size: 254-row blocks.
    import trl.trainer.utils as trl_utils

    trl_default = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    vocab = 33_000
    model = make_model(vocab, hidden_size=64, intermediate_size=64, num_attention_heads=1, head_dim=64)
    ids, attn = make_batch(2, 2060, vocab, "right")
    with torch.no_grad():
        got = token_logprobs(model, ids, attn, chunk_size=chunk_size).logprobs
        want = naive_logprobs(model, ids, attn).masked_fill(~attn.bool(), 0.0)
    want[:, 0] = 0.0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == trl_default  # restored after the call


def test_narrow_tiles_give_same_gradients(monkeypatch):
    monkeypatch.setattr(logprobs_module, "_use_trl_kernel", lambda device: True)  # chunk_size is TRL's
    model = make_model(97)
    ids, attn = make_batch(3, 16, 97, "left")
    grads = []
    for chunk_size in (10, 4096):  # 10 tiles vs 1 tile over the vocabulary
        model.zero_grad()
        token_logprobs(model, ids, attn, chunk_size=chunk_size).logprobs.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        # Tiling changes the summation order: on AVX512 kernels a few entries differ by ~2e-6.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_temperature_change_repatches_and_plain_forward_still_works(path):
    model = make_model()
    ids, attn = make_batch(2, 12, 97, "right")
    with torch.no_grad():
        logits_before = model(input_ids=ids).logits
        for t in (1.0, 0.5, 1.0):
            got = token_logprobs(model, ids, attn, temperature=t).logprobs
            want = naive_logprobs(model, ids, attn, t).masked_fill(~attn.bool(), 0.0)
            want[:, 0] = 0
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(input_ids=ids).logits, logits_before)


def test_peft_wrapped_model_gets_adapter_gradients(path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids, attn = make_batch(2, 12, 97, "left")
    got = token_logprobs(model, ids, attn).logprobs
    want = naive_logprobs(model, ids, attn).masked_fill(~attn.bool(), 0.0)
    want[:, 0] = 0
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-5)
    got.sum().backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_shape_errors_name_the_tensor():
    model = make_model()
    ids, attn = make_batch(2, 8, 97, "right")
    with pytest.raises(ValueError, match="attention_mask"):
        token_logprobs(model, ids, attn[:, :-1])
    with pytest.raises(ValueError, match="score_mask"):
        token_logprobs(model, ids, attn, attn[:1])
    with pytest.raises(ValueError, match="input_ids"):
        token_logprobs(model, ids[0], None)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(model, ids, attn, temperature=0.0)


def test_tiny_model_directory_round_trips_token_ids(tmp_path):
    texts = ["Solve 12+7. The answer is \\boxed{19}.", "héllo wörld 3.14 ∑ <answer>A</answer>"] * 20
    path = build_tiny_model(tmp_path / "m", texts, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    for text in texts[:2]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert model.config.head_dim == 64 and model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
