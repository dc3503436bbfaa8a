"""A local stand-in for the Hugging Face Hub's HTTP API: the endpoints huggingface_hub 2.4's real client calls
to download a repository (``HfApi.model_info(..., files_metadata=True)`` and ``hf_hub_download``), served from
directories on disk on 127.0.0.1. Point the client at it with ``HF_ENDPOINT``.

- ``GET /api/models/{repo}/revision/{rev}``: the model info — ``sha`` (the commit), and per file ``rfilename``,
  ``size``, ``blobId`` (git blob sha1) and, for LFS files, ``lfs: {sha256, size, pointerSize}``.
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: headers ``X-Repo-Commit``, ``ETag`` (the sha256 for LFS files, the
  blob sha1 otherwise), ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, ``Content-Length``; GET honours
  ``Range`` (the client resumes partial files with it).

Faults to test with: ``corrupt[name] = bytes`` serves other bytes than the listing describes; ``cut.add(name)``
sends half of the file and drops the connection, then refuses the file (403) while it is in ``cut`` (a client that
retries is told at once that the Hub is gone).
``requests`` records (method, path, Range header) of every request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".th")


class HubStandIn:
    def __init__(self, repos: dict[str, Path]):
        """``repos``: {repo id: directory holding the repository's files at its one commit (branch main)}."""
        self.repos = {}
        for repo, directory in repos.items():
            files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
            commit = hashlib.sha1(repr(sorted((n, hashlib.sha1(b).hexdigest()) for n, b in files.items()))
                                  .encode()).hexdigest()
            self.repos[repo] = (commit, files)
        self.corrupt: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.dropped: set[str] = set()  # the files cut once: refused from then on while in ``cut``
        self.requests: list[tuple[str, str, str | None]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def commit(self, repo: str) -> str:
        return self.repos[repo][0]

    def downloads(self, name: str) -> list[str | None]:
        """The Range header of every GET of the file ``name`` (None: the whole file)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith(f"/{name}")]


def _etag(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _repo(self, parts: list[str]):
        repo = "/".join(parts[:2])
        return (repo, *self.hub.repos[repo]) if repo in self.hub.repos else (repo, None, None)

    def _revision_ok(self, commit: str, revision: str) -> bool:
        return revision in ("main", commit)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo, commit, files = self._repo(parts[2:])
            revision = parts[5] if len(parts) > 5 and parts[4] == "revision" else "main"
            if files is None or not self._revision_ok(commit, revision):
                return self._send(404, b'{"error": "Repository or revision not found"}', {"X-Error-Code": "RepoNotFound"})
            siblings = []
            for name, data in files.items():
                sibling = {"rfilename": name, "size": len(data), "blobId": _etag("", data)}
                if name.endswith(LFS_SUFFIXES):
                    sibling["lfs"] = {"sha256": _etag(name, data), "size": len(data), "pointerSize": 134}
                siblings.append(sibling)
            info = {"_id": repo, "id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, commit, files = self._repo(parts)
            name = "/".join(parts[4:])
            if files is None or not self._revision_ok(commit, parts[3]) or name not in files:
                return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
            data = self.hub.corrupt.get(name, files[name])
            headers = {"X-Repo-Commit": commit, "ETag": f'"{_etag(name, files[name])}"', "Accept-Ranges": "bytes"}
            if name.endswith(LFS_SUFFIXES):
                headers.update({"X-Linked-Etag": headers["ETag"], "X-Linked-Size": str(len(files[name]))})
            if head:
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                return self.end_headers()
            if name in self.hub.cut:
                if self.headers.get("Range") or name in self.hub.dropped:  # a retry: the Hub is gone by now
                    return self._send(403, b"Forbidden")
                self.hub.dropped.add(name)
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            status, start = 200, 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(status, data[start:], headers)
        return self._send(404, b"not found")
