"""The tool wrapper with real (tiny) processes: streaming, logging, and ToolError carrying the last lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_builder.errors import ToolError
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


def built_argument_lists(tmp_path: Path) -> list[list[str]]:
    from image_builder import BuildSpec
    from image_builder import commands as cmd

    spec = BuildSpec(name="a/b", context_dir=tmp_path, registry="r:5000", pip_find_links=[str(tmp_path)],
                     pip_extra_index_urls=["https://x.invalid/simple"], pip_index_url="https://y.invalid/simple")
    return [
        cmd.skopeo_inspect_raw("r/a:b", False), cmd.skopeo_inspect_config("r/a:b", True),
        cmd.buildah_from("r/a@sha256:1", tls_verify=False, pull="never"), cmd.buildah_copy("c", tmp_path, "/a", "1:1"),
        cmd.buildah_config("c", env={"A": "1"}, entrypoint=["/e"], cmd=[], workdir="/app", labels={"k": "v"},
                           user="1:1"),
        cmd.buildah_commit("c", "img"), cmd.buildah_image_exists("img"), cmd.buildah_image_label("img", "k"),
        cmd.buildah_push("img", "docker://r/a:b", False), cmd.buildah_pull("r/a:b", True),
        cmd.buildah_manifest_create("l"), cmd.buildah_manifest_add("l", "img"), cmd.buildah_manifest_rm("l"),
        cmd.buildah_manifest_push("l", "docker://r/a:b", False, tmp_path / "d"), cmd.buildah_rm_images("img"),
        cmd.buildah_run("c", ["true"], [("/a", "/b")], {"A": "1"}),
        cmd.uv_install_for_platform(spec, "linux/arm64", tmp_path / "t", tmp_path / "r.txt", tmp_path / "c.txt"),
    ]


def test_every_option_the_builder_passes_is_one_the_installed_tool_knows(tmp_path: Path) -> None:
    """Checked against each tool's own --help, not against a copy of the argument lists."""
    import shutil
    import subprocess
    import sys

    from image_builder.tools import tool_path

    for args in built_argument_lists(tmp_path):
        if args[0] != "uv" and not shutil.which(args[0]):
            pytest.skip(f"{args[0]} is not installed: run .ci/setup-containers.sh")
        subcommands = []
        for token in args[1:]:
            if token.startswith("-"):
                break
            subcommands.append(token)
            if len(subcommands) == (2 if args[0] in ("uv",) or args[1:2] == ["manifest"] else 1):
                break
        tool = tool_path("uv") if args[0] == "uv" else args[0]
        help_text = subprocess.run([tool, *subcommands, "--help"], capture_output=True, text=True,
                                   env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}).stdout
        options = {token.split("=", 1)[0] for token in args if token.startswith("--")}
        unknown = sorted(option for option in options if option not in help_text)
        assert not unknown, f"{args[0]} {' '.join(subcommands)} does not know {unknown}"
