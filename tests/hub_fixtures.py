"""A Hugging Face hub on loopback: the endpoints ``huggingface_hub.snapshot_download`` calls (revision info, file
tree, HEAD and GET of each file under ``resolve/``), answered from a local checkpoint directory. Point
``HF_ENDPOINT`` at :attr:`LoopbackHub.endpoint`; every request is recorded with its Authorization header."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class LoopbackHub:
    repo_id: str
    files: dict[str, bytes]
    revisions: dict[str, str]  # branch or tag -> commit hash
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    endpoint: str = ""

    def answer(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        path = unquote(urlparse(handler.path).path)
        self.requests.append((handler.command, path, handler.headers.get("authorization")))
        api, resolve = f"/api/models/{self.repo_id}/", f"/{self.repo_id}/resolve/"
        as_json = {"Content-Type": "application/json"}
        if path.startswith(api + "revision/"):
            commit = self.revisions.get(path[len(api + "revision/"):])
            if commit is None:
                return 404, b'{"error": "Invalid rev id"}', {**as_json, "X-Error-Code": "RevisionNotFound"}
            siblings = [{"rfilename": name} for name in self.files]
            return 200, json.dumps({"id": self.repo_id, "sha": commit, "siblings": siblings}).encode(), as_json
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in self.files.items()]
            return 200, json.dumps(tree).encode(), as_json
        if path.startswith(resolve):
            commit, _, name = path[len(resolve):].partition("/")
            if commit in self.revisions.values() and name in self.files:
                data = self.files[name]
                return 200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 404, b'{"error": "Repository not found"}', {**as_json, "X-Error-Code": "RepoNotFound"}


def start_hub(repo_id: str, checkpoint: Path, revisions: dict[str, str]) -> tuple[LoopbackHub, ThreadingHTTPServer]:
    hub = LoopbackHub(repo_id, {p.relative_to(checkpoint).as_posix(): p.read_bytes()
                                for p in sorted(checkpoint.rglob("*")) if p.is_file()}, revisions)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, with_body: bool) -> None:
            code, body, headers = hub.answer(self)
            self.send_response(code)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(True)

        def do_HEAD(self) -> None:
            self._reply(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server
