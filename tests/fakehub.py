"""A small fake Hugging Face Hub: a real threaded HTTP server on 127.0.0.1, so the real huggingface_hub client
code (httpx, cache, offline fallback) runs in tests.

Routes, with the headers huggingface_hub 2.x checks (``shared/notes/ecosystem.md`` 3.2):

- ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{path}``: ``X-Repo-Commit`` (40 hex), ``ETag``,
  ``Content-Length``; a missing repo, revision or file is a 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound`` (the last with ``X-Repo-Commit``, so the client caches the absence).
- ``GET /api/models/{org}/{name}/revision/{revision}``: ``{"id", "sha", "siblings"}`` (``snapshot_download``
  resolves a branch with it); with ``?blobs=true`` (``model_info(files_metadata=True)``) each sibling has its
  ``size``.
- ``GET /api/models/{org}/{name}/tree/{commit}``: the file list ``[{"type", "path", "size", "oid"}]``.

Every request is recorded in ``requests`` as ``(method, path)``, so a test can assert that a load made none.
A file name in ``held`` (name -> ``threading.Event``) is served only once its event is set: a slow download.
Responses are HTTP/1.0 (one request per connection), so :meth:`FakeHub.stop` really makes the Hub unreachable.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self, port: int):
        self.port = port
        self.repos: dict[str, dict] = {}  # repo id -> {"refs": {branch: commit}, "commits": {commit: {path: bytes}}}
        self.requests: list[tuple[str, str]] = []
        self.held: dict[str, threading.Event] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Make ``files`` (path -> content) a new commit of ``repo_id`` and point ``branch`` at it; returns the
        commit hash."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        digest = hashlib.sha1(repo_id.encode() + str(len(repo["commits"])).encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        commit = digest.hexdigest()
        repo["commits"][commit] = dict(files)
        repo["refs"][branch] = commit
        return commit

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- lookups used by the handler ---------------------------------------------------------------------------
    def _commit(self, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        """(commit, error code) of a revision: a branch or a commit hash."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, "RepoNotFound"
        commit = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        return (commit, None) if commit else (None, "RevisionNotFound")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool):
            path, query = urlsplit(self.path).path, urlsplit(self.path).query
            hub.requests.append((self.command, path))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) >= 5 and parts[2] == "resolve":
                self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("revision", "tree"):
                self._api("/".join(parts[2:4]), parts[4], parts[5], body, sizes="blobs=" in query)
            else:
                self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body)

        def _resolve(self, repo_id: str, revision: str, filename: str, body: bool):
            commit, error = hub._commit(repo_id, revision)
            if error:
                return self._send(404, b"", {"X-Error-Code": error}, body)
            files = hub.repos[repo_id]["commits"][commit]
            if filename not in files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, body)
            data = files[filename]
            if body and filename in hub.held:
                hub.held[filename].wait()
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                   "Content-Type": "application/octet-stream"}, body)

        def _api(self, repo_id: str, route: str, revision: str, body: bool, sizes: bool = False):
            commit, error = hub._commit(repo_id, revision)
            if error:
                return self._send(404, b"", {"X-Error-Code": error}, body)
            files = hub.repos[repo_id]["commits"][commit]
            if route == "revision":
                answer = {"id": repo_id, "sha": commit,
                          "siblings": [{"rfilename": f, **({"size": len(files[f])} if sizes else {})}
                                       for f in sorted(files)]}
            else:
                answer = [{"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                          for f, data in sorted(files.items())]
            self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}, body)

        def _send(self, status: int, data: bytes, headers: dict, body: bool):
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
