"""A git repository served over plain HTTP on loopback (git's dumb protocol) behind HTTP Basic authentication."""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _AuthHandler(SimpleHTTPRequestHandler):
    expected = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_repo(repo: Path, root: Path, user: str, token: str) -> Iterator[str]:
    """Serve a bare copy of REPO; yields its URL with USER:TOKEN in it (the server refuses any other)."""
    bare = root / f"{repo.name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    handler = type("Handler", (_AuthHandler,), {
        "expected": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{user}:{token}@127.0.0.1:{server.server_address[1]}/{bare.name}"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(bare, ignore_errors=True)
