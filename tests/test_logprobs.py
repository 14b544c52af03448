"""The chunked token-logprob primitive against the naive full log_softmax + gather, value and gradient."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from pear_bench.logprobs import token_logprobs
from pear_bench.tiny_models import build_tiny_model, tiny_config


def naive_logprobs(model, input_ids, attention_mask, temperature=1.0):
    """The reference: full [B, T, V] float32 logits, log_softmax, gather; aligned with input_ids."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(logp, (1, 0))


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
def test_values_and_gradients_match_naive_path(padding, temperature):
    model = make_model()
    ids, attn = make_batch(4, 24, 97, padding)
    score = attn.bool().clone()
    score[:, :5] = False  # pretend the first tokens are a prompt
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(ids.shape, generator=g)  # a generic downstream loss

    got = token_logprobs(model, ids, attn, score, temperature=temperature).logprobs
    (got * upstream).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    want = naive_logprobs(model, ids, attn, temperature)
    score[:, 0] = False
    want = want.masked_fill(~score, 0.0)
    (want * upstream).sum().backward()

    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.all(got[~score] == 0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("chunk_size", [None, 32_768])
def test_multiple_vocab_and_token_tiles_match_naive_path(chunk_size):
    # TRL tiles 4096 tokens x chunk_size vocabulary entries (4096 on CPU by default): cross both.
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


def test_narrow_tiles_give_same_gradients():
    model = make_model(97)
    ids, attn = make_batch(3, 16, 97, "left")
    grads = []
    for chunk_size in (10, 4096):  # 10 tiles vs 1 tile over the vocabulary
        model.zero_grad()
        token_logprobs(model, ids, attn, chunk_size=chunk_size).logprobs.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_entropy_matches_full_distribution():
    model = make_model()
    ids, attn = make_batch(2, 10, 97, "right")
    with torch.no_grad():
        got = token_logprobs(model, ids, attn, with_entropy=True, temperature=0.8)
        logp_all = (model(input_ids=ids, attention_mask=attn).logits / 0.8).log_softmax(-1)[:, :-1]
    want = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~attn[:, 1:].bool(), 0.0)
    torch.testing.assert_close(got.entropy[:, 1:], want, rtol=0, atol=1e-5)


def test_temperature_change_repatches_and_plain_forward_still_works():
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


def test_peft_wrapped_model_gets_adapter_gradients():
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
