"""A local stand-in for the Hugging Face hub: the few endpoints ``huggingface_hub.snapshot_download``
calls, served from memory by ``http.server`` in a thread (point ``HF_ENDPOINT`` or ``endpoint=`` at
``Hub.url``). Nothing leaves the machine.

    GET  /api/{models,datasets}/<repo>/revision/<rev>      -> {"id", "sha", "siblings"}   (repo_info)
    GET  /api/{models,datasets}/<repo>/tree/<rev>?...      -> [{"type": "file", "path", "size", "oid"}]
    HEAD/GET /<repo>/resolve/<rev>/<file>                  -> the bytes, with ETag, X-Repo-Commit,
    HEAD/GET /datasets/<repo>/resolve/<rev>/<file>            Content-Length (what hf_hub_download reads)

Unknown repos, revisions and files answer 404 with the ``X-Error-Code`` the hub sends (RepoNotFound,
RevisionNotFound, EntryNotFound), which huggingface_hub turns into its typed errors. Every request is
logged in ``Hub.requests``; ``Hub.fail`` names files whose next GET answers 403 (an interrupted download).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str  # the commit every revision name (``refs``) points to
    refs: tuple[str, ...] = ("main",)


@dataclass
class Hub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (kind, repo id) -> repo
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    url: str = ""

    def add(self, kind: str, repo_id: str, directory: str | Path, refs=("main",)) -> Repo:
        """Serve every file under ``directory`` as ``repo_id`` (kind "model" or "dataset"); the commit sha
        is the hash of the files, like a git commit of them."""
        directory = Path(directory)
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        digest = hashlib.sha1()
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha1(data).digest())
        repo = Repo(files, digest.hexdigest(), tuple(refs))
        self.repos[(kind, repo_id)] = repo
        return repo


def _split_repo(parts: list[str]) -> tuple[str, list[str]]:
    return "/".join(parts[:2]), parts[2:]


class _Handler(BaseHTTPRequestHandler):
    hub: Hub

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _error(self, code: str, status: int = 404):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (stand-in hub)")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, value):
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _repo(self, kind: str, repo_id: str, rev: str) -> Repo | None:
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None:
            self._error("RepoNotFound", 401)  # the hub answers 401 for an unknown (or private) repo
            return None
        if rev not in (repo.sha, *repo.refs):
            self._error("RevisionNotFound")
            return None
        return repo

    def _serve(self, body: bool):
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path))
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 6 and parts[1] in ("models", "datasets"):
            kind = parts[1][:-1]
            repo_id, rest = _split_repo(parts[2:])
            repo = self._repo(kind, repo_id, rest[1])
            if repo is None:
                return
            if rest[0] == "revision":
                return self._json({"id": repo_id, "sha": repo.sha, "siblings": [{"rfilename": f} for f in repo.files]})
            if rest[0] == "tree":
                return self._json([{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                   for f, d in repo.files.items()])
            return self._error("EntryNotFound")
        kind = "dataset" if parts[:1] == ["datasets"] else "model"
        repo_id, rest = _split_repo(parts[1:] if kind == "dataset" else parts)
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error("RepoNotFound", 401)
        repo = self._repo(kind, repo_id, rest[1])
        if repo is None:
            return
        name = "/".join(rest[2:])
        if name not in repo.files:
            return self._error("EntryNotFound")
        if body and name in self.hub.fail:
            self.hub.fail.discard(name)
            return self._error("Forbidden", 403)
        data = repo.files[name]
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def serve(hub: Hub):
    """Start serving ``hub`` on a free localhost port; returns the server (``server.shutdown()`` stops it)."""
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
