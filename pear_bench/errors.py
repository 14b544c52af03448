"""Expected errors: bad input a user can fix, as opposed to bugs.

``InputError`` is what every check of user input raises (a config key, a record, a flag's value, a
file's content); the CLI prints its message as one line and exits 2, while any other exception keeps
its traceback, because it is a bug. It subclasses ValueError, so library callers that catch
ValueError keep working. ``pear_bench.config.ConfigError`` and ``pear_bench.data.RecordError`` are
its kinds.
"""

from __future__ import annotations

from pathlib import Path


# A transformers model directory has its config; a PEFT adapter directory has the adapter's.
MODEL_MARKERS = ("config.json", "adapter_config.json")


class InputError(ValueError):
    """Input that cannot be used as given; the message names what is wrong and where."""


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id ("org/name" has at most one slash and no leading ./ / ~)."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def check_model_source(model: str, where: str) -> str:
    """``model`` unchanged if it is a hub id or an existing local directory.

    Raises:
        InputError: ``model`` looks like a local path (see ``looks_like_path``) or exists, but is not
            a model directory (``where`` names the flag or key, e.g. ``--model``).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in MODEL_MARKERS):
            raise InputError(f"{where}: {model!r} is not a model directory (it has no {' or '.join(MODEL_MARKERS)})")
        return model
    if path.exists():
        raise InputError(f"{where}: {model!r} is a file; give a model directory (config.json, weights, tokenizer) "
                         "or a hub id")
    if looks_like_path(model):
        raise InputError(f"{where}: no such directory {model!r}")
    return model
