"""`pear-bench snapshot`: a hub model or dataset repository, fetched once at a pinned revision into a
local directory that every later job reads offline.

    pear-bench snapshot model --repo Qwen/Qwen3-8B --revision b968826d... --out results/paper/models/qwen3-8b
    pear-bench snapshot dataset --repo opencompass/AIME2025 --revision main --out results/paper/hub_datasets/aime2025

Why: compute nodes are often offline, concurrent downloads fight over one hub cache, and a hub id
alone does not say which weights ran. A snapshot is a plain directory (a model loads from it like any
local model; `pear-bench make-data --source <dir>` reads a dataset snapshot with ``datasets``), and
its ``snapshot.json`` names the repository and the commit, which every run record then carries
(``model_revision``).

Steps:
1. Resolve ``--revision`` (a branch, tag or commit sha) to its commit sha: one API call. The files
   are then downloaded at that commit, so a branch that moves meanwhile cannot mix two commits.
2. Download into a hidden sibling ``.<out>.tmp``: a model's config, tokenizer, generation config,
   chat template and safetensors weights (``MODEL_FILES``); every file of a dataset. huggingface_hub
   resumes an interrupted download there file by file; a sibling left by another request is cleared.
3. Write ``snapshot.json`` (repository, kind, requested revision, commit, files and sizes), then rename
   the sibling to ``--out``: ``--out`` is complete or absent.

A second run of the same request finds ``--out`` done and does nothing (no network). ``--out`` holding
another request is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pear_bench.errors import InputError

SNAPSHOT_FILE = "snapshot.json"
KINDS = ("model", "dataset")
# What loading, training and serving a model read (no .bin/.pth/.gguf duplicates of the weights, no
# original/ consolidated checkpoints): config and generation config, tokenizer files, chat template.
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer.model", "*.tiktoken")
_REQUEST_KEYS = ("repo", "kind", "revision", "allow")


def read_snapshot(directory: str | Path) -> dict[str, Any] | None:
    """The ``snapshot.json`` record of ``directory``, or None when it is not a snapshot."""
    path = Path(directory).expanduser() / SNAPSHOT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def model_revision(model: str | Path) -> dict[str, str] | None:
    """Which hub commit a model comes from: ``{"repo", "revision", "commit"}``, or None (a model built
    here, or a hub id loaded directly: nothing pins it).

    The one place that answers it, for every record: a snapshot directory names it in ``snapshot.json``;
    a checkpoint trained from one carries it in its ``run_config.json`` (an SFT run on a snapshot, GRPO
    on that SFT run: the chain of ``config.model`` paths leads back to the snapshot).
    """
    from pear_bench.config import RUN_RECORD

    snapshot = read_snapshot(model)
    if snapshot is not None:
        return {key: snapshot[key] for key in ("repo", "revision", "commit")}
    record = Path(model).expanduser() / RUN_RECORD
    return json.loads(record.read_text()).get("model_revision") if record.is_file() else None


def _hub_error(exc: Exception, repo: str, kind: str, revision: str, endpoint: str) -> InputError | None:
    """An expected hub failure as one line naming what and where; None for anything else (a bug)."""
    import httpx
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{kind} {repo} at {endpoint}"
    if isinstance(exc, RevisionNotFoundError):
        return InputError(f"--revision {revision!r}: no such branch, tag or commit in {where}")
    if isinstance(exc, GatedRepoError):
        return InputError(f"{where} is gated: accept its terms on the hub and log in (hf auth login)")
    if isinstance(exc, RepositoryNotFoundError):
        return InputError(f"--repo {repo!r}: no such {kind} repository at {endpoint} (or it is private: log in)")
    if isinstance(exc, EntryNotFoundError):
        return InputError(f"{where}: a file vanished during the download ({exc}); run again")
    if isinstance(exc, OfflineModeIsEnabled):
        return InputError(f"{where}: HF_HUB_OFFLINE is set; fetch snapshots where the hub can be reached")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        text = " ".join(str(exc).split())[:300]
        return InputError(f"{where}: the hub answered HTTP {status} ({text}); a rerun resumes the download")
    if isinstance(exc, (httpx.TransportError, OSError)):
        text = " ".join(str(exc).split()) or type(exc).__name__
        return InputError(f"{where}: the hub cannot be reached ({text}); fetch snapshots on a node with network "
                          "(or set HF_ENDPOINT to a mirror), then run the rest offline")
    return None


@contextlib.contextmanager
def _hub_errors(repo: str, kind: str, revision: str, endpoint: str):
    """Expected hub failures raised as InputError (``_hub_error``); anything else unchanged."""
    try:
        yield
    except Exception as exc:
        error = _hub_error(exc, repo, kind, revision, endpoint)
        if error is None:
            raise
        raise error from None


def _request(repo: str, kind: str, revision: str, allow: list[str] | None) -> dict[str, Any]:
    return {"repo": repo, "kind": kind, "revision": revision, "allow": allow}


def _same_request(record: dict | None, request: dict) -> bool:
    return record is not None and all(record.get(key) == request[key] for key in _REQUEST_KEYS)


def snapshot(repo: str, revision: str, out: str | Path, *, kind: str = "model", allow: list[str] | None = None,
             endpoint: str | None = None, overwrite: bool = False) -> tuple[dict[str, Any], bool]:
    """Fetch ``repo`` at ``revision`` into ``out`` (module docstring); returns (the record, whether
    anything was fetched).

    Args:
        kind: "model" (``MODEL_FILES`` unless ``allow``) or "dataset" (every file unless ``allow``).
        allow: glob patterns of the repository files to fetch.
        endpoint: the hub's address (default: huggingface_hub's, i.e. ``HF_ENDPOINT`` or huggingface.co).

    Raises:
        InputError: unknown repository or revision, the hub unreachable, a model without safetensors
            weights or config, or ``out`` holding another request and not ``overwrite``.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import constants

    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}; got {kind!r}")
    out = Path(out)
    allow = list(allow) if allow else None
    request = _request(repo, kind, revision, allow)
    existing = read_snapshot(out)
    if _same_request(existing, request):
        return existing, False
    if out.exists() and not overwrite:
        held = f"{existing['repo']} at {existing['revision']}" if existing else "no snapshot.json"
        raise FileExistsError(f"{out} exists ({held}); pass --overwrite to replace it with {repo} at {revision}")
    # HF_ENDPOINT as it is now (huggingface_hub reads it once, at import), passed on explicitly below.
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    start = time.perf_counter()
    with _hub_errors(repo, kind, revision, endpoint):
        commit = HfApi(endpoint=endpoint).repo_info(repo, repo_type=kind, revision=revision).sha
    tmp = out.with_name(f".{out.name}.tmp")
    request_file = tmp / ".snapshot-request.json"
    if tmp.exists() and (not request_file.is_file() or json.loads(request_file.read_text()) != request):
        shutil.rmtree(tmp)  # left by another request: its files must not leak into this one
    tmp.mkdir(parents=True, exist_ok=True)
    request_file.write_text(json.dumps(request) + "\n")
    with _hub_errors(repo, kind, revision, endpoint):
        snapshot_download(repo, repo_type=kind, revision=commit, local_dir=tmp, endpoint=endpoint,
                          allow_patterns=allow or (list(MODEL_FILES) if kind == "model" else None))
    # huggingface_hub's download bookkeeping (per-file commit and etag) served only the resumption.
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    request_file.unlink()
    files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    if kind == "model" and not ("config.json" in files and any(f.endswith(".safetensors") for f in files)):
        shutil.rmtree(tmp)
        raise InputError(f"model {repo} at {revision} (commit {commit}) has no config.json and .safetensors "
                         f"weights among {sorted(files) or 'the files fetched'}; pear-bench loads safetensors only")
    record = {**request, "commit": commit, "endpoint": endpoint, "files": files, "bytes": sum(files.values()),
              "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "seconds": round(time.perf_counter() - start, 3)}
    from pear_bench.atomic import write_atomic

    write_atomic(tmp / SNAPSHOT_FILE, json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return record, True


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Fetch a hub model or dataset repository at a pinned revision into a local directory "
                          "(snapshot.json names the commit), so that later jobs run offline.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--repo", required=True, help="the hub repository id, e.g. Qwen/Qwen3-8B")
    parser.add_argument("--revision", default="main",
                        help="branch, tag or commit sha (default main: resolved to its commit and recorded; "
                             "pin a sha for a reproducible grid)")
    parser.add_argument("--allow", action="append", default=None, metavar="GLOB",
                        help="fetch only repository files matching GLOB (repeatable; default for models: "
                             f"{' '.join(MODEL_FILES)}; for datasets: every file)")
    parser.add_argument("--out", required=True, help="the directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds another snapshot")


def main(args: argparse.Namespace) -> int:
    record, fetched = snapshot(args.repo, args.revision, args.out, kind=args.kind, allow=args.allow,
                               overwrite=args.overwrite)
    if not fetched:
        print(f"{args.out} already holds {record['repo']} at {record['revision']} (commit {record['commit']}); nothing to do")
        return 0
    print(f"fetched {record['kind']} {record['repo']} at {record['revision']} (commit {record['commit']}): "
          f"{len(record['files'])} files, {record['bytes'] / 1e6:.1f} MB in {record['seconds']:.0f} s -> {args.out}")
    return 0
