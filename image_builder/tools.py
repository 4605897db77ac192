"""The one way image_builder runs buildah, skopeo, podman and uv: argument lists, streamed output, ToolError."""

from __future__ import annotations

import collections
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from image_builder.errors import ToolError

INSTALL_HINTS = {
    "buildah": "apt-get install buildah (or run .ci/setup-containers.sh)",
    "skopeo": "apt-get install skopeo (or run .ci/setup-containers.sh)",
    "podman": "apt-get install podman runc (or run .ci/setup-containers.sh)",
    "uv": "pip install uv (it ships with `pip install flops[build]`)",
    "x86_64-linux-gnu-strip": "apt-get install binutils-x86-64-linux-gnu (or run .ci/setup-containers.sh)",
    "aarch64-linux-gnu-strip": "apt-get install binutils-aarch64-linux-gnu (or run .ci/setup-containers.sh)",
}

LAST_LINES = 25


@functools.cache
def tool_path(name: str) -> str:
    """Absolute path of a tool, looked up once; ToolError saying how to install it when missing."""
    found = shutil.which(name)
    if found is None and name == "uv":
        # uv is a Python package: it may sit beside the interpreter without being on PATH.
        beside = Path(sys.executable).parent / "uv"
        found = str(beside) if beside.exists() else None
    if found is None:
        hint = INSTALL_HINTS.get(name, f"install {name}")
        raise ToolError(name, f"not found on PATH; {hint}")
    return found


LineSink = Callable[[str], None]


class ToolRunner:
    """Runs external tools; every line of output goes to the log file and (unless quiet) to `on_line`."""

    def __init__(self, log_file: Path | None = None, on_line: LineSink | None = None) -> None:
        self.log_file = log_file
        self.on_line = on_line
        self._log: IO[str] | None = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _emit(self, line: str, quiet: bool) -> None:
        with self._lock:
            if self._log is not None:
                self._log.write(line + "\n")
                self._log.flush()
            if not quiet and self.on_line is not None:
                self.on_line(line)

    def run(
        self,
        args: Sequence[str],
        *,
        quiet: bool = False,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> tuple[int, str]:
        """Run `args` (args[0] is a tool name); return (exit code, stdout exactly as written).

        Both streams are logged and, unless quiet, sent line by line to on_line.

        With check=True a non-zero exit raises ToolError carrying the last lines of output.
        """
        tool = args[0]
        argv = [tool_path(tool), *args[1:]]
        started = time.monotonic()
        self._emit(f"$ [{time.strftime('%H:%M:%S')}] " + " ".join(args), quiet=True)
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=full_env, text=True, errors="replace", bufsize=1,
            )
        except OSError as exc:
            raise ToolError(tool, f"cannot start: {exc}") from exc
        tail: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        stderr_tail: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        stdout_chunks: list[str] = []

        def pump_stderr() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.rstrip("\n")
                tail.append(line)
                if line.strip():
                    stderr_tail.append(line)
                self._emit(line, quiet)

        reader = threading.Thread(target=pump_stderr, daemon=True)
        reader.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            stdout_chunks.append(raw)
            tail.append(line)
            self._emit(line, quiet)
        code = proc.wait()
        reader.join()
        self._emit(f"# exit {code} after {time.monotonic() - started:.1f} s", quiet=True)
        if code != 0 and check:
            # Tools report errors on stderr, and the two streams interleave in no fixed order: stdout read
            # after the error can push it out of the combined tail, so its stderr lines are kept in any case.
            kept_errors = [ln for ln in stderr_tail if ln not in tail]
            output = "\n".join([*list(tail)[len(kept_errors):], *kept_errors])
            last = stderr_tail[-1] if stderr_tail else next((ln for ln in reversed(tail) if ln.strip()), "")
            raise ToolError(tool, f"`{' '.join(args[:3])} ...` exited with {code}: {last}", output)
        return code, "".join(stdout_chunks)
