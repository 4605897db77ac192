"""Start the inference server: in this process, as a local `python -m inference` process, or an image under
podman or docker."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from inference.bundle import BundleMetadata
from inference.errors import ServeAddressError, ServeError

CONTAINER_PORT = 8080
# Engines to run an image with, in order of preference (podman is the project's container tool).
ENGINES = ("podman", "docker")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for the server to listen on; ServeAddressError (one line) when it cannot be.

    Binding here, before anything is loaded, turns uvicorn's multi-line startup log for a busy port into one line.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeAddressError(f"--host {host!r}: not a host name or address ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers only, never a live server
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"--port {port}: already in use on {host}; pass another --port",
            errno.EADDRNOTAVAIL: f"--host {host!r}: not an address of this machine",
            errno.EACCES: f"--port {port}: not allowed for this user (ports below 1024 need privileges)",
        }
        raise ServeAddressError(reasons.get(exc.errno, f"{host}:{port}: cannot listen: {exc.strerror}")) from None
    return sock


def serve_model_here(
    model_uri: str,
    tracking_uri: str | None,
    sock: socket.socket,
    max_request_bytes: int | None = None,
    on_ready: Callable[[BundleMetadata], None] | None = None,
) -> None:
    """Export the model, load it, and serve it on `sock` in this process until Ctrl-C or SIGTERM.

    The exported bundle is deleted once the model is in memory, and no server child is started: a kill -9
    leaves neither a process under init nor a temporary directory.
    """
    import torch
    import uvicorn

    from inference.errors import BundleError
    from inference.export import export_bundle
    from inference.server import create_app
    from inference.settings import ServerSettings

    with tempfile.TemporaryDirectory(prefix="flops-serve-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        metadata = export_bundle(model_uri, bundle_dir, tracking_uri=tracking_uri)
        host, port = sock.getsockname()[:2]
        settings = ServerSettings.from_environment().model_copy(update={
            "bundle_dir": bundle_dir, "host": host, "port": port,
            **({"max_request_bytes": max_request_bytes} if max_request_bytes else {}),
        })
        torch.set_num_threads(settings.torch_threads)
        app = create_app(settings, load_in_background=False)
    if app.state.slot.error:
        raise BundleError(app.state.slot.error)
    if on_ready is not None:
        on_ready(metadata)
    class StoppableServer(uvicorn.Server):
        """uvicorn re-raises the SIGINT/SIGTERM it shut down on once it is done; a server stopped on purpose has
        done its job, so here it ends with 0 instead (and Ctrl-C prints no click "Aborted!")."""

        def handle_exit(self, sig: int, frame: object) -> None:
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            self._captured_signals.clear()

    StoppableServer(uvicorn.Config(app, log_level=settings.log_level, access_log=False)).run(sockets=[sock])


def server_process_args() -> list[str]:
    """The command that runs the server from a bundle, exactly as the image's entrypoint does."""
    return [sys.executable, "-m", "inference"]


def start_local_server(
    bundle_dir: Path, port: int, host: str = "127.0.0.1", extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `python -m inference` on `bundle_dir` in the background; the caller stops it."""
    env = {
        **os.environ,
        "FLOPS_BUNDLE": str(bundle_dir),
        "PORT": str(port),
        "HOST": host,
        **(extra_env or {}),
    }
    try:
        return subprocess.Popen(server_process_args(), env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ServeError(f"cannot start the inference server: {exc}") from exc


def wait_until_ready(base_url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 120.0) -> None:
    """Poll GET /ready until 200; ServeError if the process exits, the model fails to load, or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServeError(f"the inference server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
            if "cannot load" in last:
                raise ServeError(f"{base_url}: the model failed to load: {last}") from None
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ServeError(f"{base_url}/ready did not answer 200 within {timeout_s:.0f}s (last: {last})")


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_in_foreground(process: subprocess.Popen[bytes]) -> int:
    """Wait for the server; Ctrl-C or SIGTERM stop it cleanly. Returns its exit code."""

    def forward(signum: int, _frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                forward(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGTERM, previous)


def container_engine() -> str:
    """The first of podman or docker on PATH, or ServeError saying how to get one."""
    for engine in ENGINES:
        if shutil.which(engine):
            return engine
    raise ServeError("neither podman nor docker is on PATH; apt-get install podman (or serve without --image)")


def container_run_args(
    engine: str,
    image: str,
    port: int,
    host: str,
    *,
    name: str | None = None,
    platform: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """`ENGINE run` publishing the server's port on `host:port` only; the image's own entrypoint runs."""
    args = [engine, "run", "--rm", "-p", f"{host}:{port}:{CONTAINER_PORT}", "-e", f"PORT={CONTAINER_PORT}"]
    if name:
        args += ["--name", name]
    if platform:
        args += ["--platform", platform]
    return [*args, *extra_args, image]


def start_container(
    image: str,
    port: int,
    host: str = "127.0.0.1",
    *,
    name: str | None = None,
    platform: str | None = None,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    args = container_run_args(
        container_engine(), image, port, host, name=name, platform=platform, extra_args=extra_args
    )
    try:
        # SIGTERM to the engine's client when we die, even by SIGKILL: the attached client forwards it to the
        # container (sig-proxy), which stops and is removed (--rm) instead of serving on under nobody.
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_terminate_with_parent)
    except OSError as exc:
        raise ServeError(f"cannot start {args[0]}: {exc}") from exc


def _terminate_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
