"""The tool wrapper with real (tiny) processes: streaming, logging, and ToolError carrying the last lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from flops.errors import ToolError
from image_builder.tools import LAST_LINES, ToolRunner


def test_output_streams_line_by_line_to_the_callback_and_the_log(tmp_path: Path) -> None:
    seen: list[str] = []
    runner = ToolRunner(tmp_path / "build.log", on_line=seen.append)
    code, stdout = runner.run(["sh", "-c", "echo one; echo two >&2; printf 'three\\n'"])
    runner.close()
    assert code == 0 and stdout == "one\nthree\n"
    assert sorted(seen) == ["one", "three", "two"]
    log = (tmp_path / "build.log").read_text()
    assert log.startswith("$ [") and "] sh -c " in log and "two" in log and "three" in log


def test_quiet_runs_only_log(tmp_path: Path) -> None:
    seen: list[str] = []
    runner = ToolRunner(tmp_path / "build.log", on_line=seen.append)
    runner.run(["sh", "-c", "echo hidden"], quiet=True)
    runner.close()
    assert seen == [] and "hidden" in (tmp_path / "build.log").read_text()


def test_a_failing_tool_raises_tool_error_with_its_last_lines(tmp_path: Path) -> None:
    runner = ToolRunner(tmp_path / "build.log")
    script = "for i in $(seq 1 100); do echo line$i; done; echo 'fatal: no space left' >&2; exit 3"
    with pytest.raises(ToolError, match="exited with 3: fatal: no space left") as caught:
        runner.run(["sh", "-c", script])
    runner.close()
    lines = caught.value.output.splitlines()
    assert len(lines) == LAST_LINES and "fatal: no space left" in lines and "line1" not in lines
    assert caught.value.tool == "sh"


def test_check_false_returns_the_exit_code(tmp_path: Path) -> None:
    runner = ToolRunner(None)
    assert runner.run(["sh", "-c", "exit 7"], check=False)[0] == 7


def test_arguments_are_never_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    runner = ToolRunner(None)
    _, out = runner.run(["echo", f"; touch {marker}", "$(id)"])
    assert out == f"; touch {marker} $(id)\n" and not marker.exists()
