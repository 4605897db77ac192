"""image_builder without processes: argument lists, layer keys, specs, templates, manifest summaries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flops.app_image import (
    ENTRYPOINT_PATH, IMAGE_FLWR_HOME, IMAGE_STATE_DIR, ROLES, SELFCHECK_PATH, flower_app_spec, parse_platform_constraints, runtime_files,
)
from flops.errors import ConfigError
from image_builder import BuildSpec, SpecError, ToolError
from image_builder import commands as cmd
from image_builder import tools
from image_builder.base_image import platform_digests, repository_of
from image_builder.dependencies import _portable_scripts
from image_builder.keys import dependency_key, image_tag, runtime_key, tree_hash
from image_builder.manifests import summarize


def make_spec(tmp_path: Path, **fields: object) -> BuildSpec:
    values: dict = {"name": "flops/app", "context_dir": tmp_path, "registry": "127.0.0.1:5000",
                    "requirements": ["torch", "flwr==1.42.*"], "platforms": ["linux/amd64", "linux/arm64"]}
    return BuildSpec(**{**values, **fields})


def test_uv_installs_for_the_target_platform_with_wheels_only(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, pip_find_links=["/opt/wheels"], pip_extra_index_urls=["https://x/simple"])
    args = cmd.uv_install_for_platform(spec, "linux/arm64", tmp_path / "t", tmp_path / "r.txt", tmp_path / "c.txt")
    assert args[:3] == ["uv", "pip", "install"]
    assert args[args.index("--python-platform") + 1] == "aarch64-manylinux_2_36"
    assert args[args.index("--python-version") + 1] == "3.11"
    assert args[args.index("--only-binary") + 1] == ":all:"
    assert args[args.index("--target") + 1] == str(tmp_path / "t")
    assert args[args.index("-c") + 1] == str(tmp_path / "c.txt")
    assert args[args.index("--find-links") + 1] == "/opt/wheels"
    assert "--extra-index-url" not in args and cmd.uv_index_env(spec.pip_index_url, spec.pip_extra_index_urls) == {
        "UV_INDEX": "https://x/simple"}
    assert "--no-config" in args  # the host's pip/uv config must not leak into the target's resolution
    amd = cmd.uv_install_for_platform(spec, "linux/amd64", tmp_path, tmp_path / "r.txt", None)
    assert amd[amd.index("--python-platform") + 1] == "x86_64-manylinux_2_36" and "-c" not in amd


def test_every_argument_list_is_a_list_of_strings_never_a_shell_string(tmp_path: Path) -> None:
    built = [
        cmd.skopeo_inspect_raw("r/a:b", False),
        cmd.buildah_from("r/a@sha256:1", tls_verify=False),
        cmd.buildah_copy("ctr", tmp_path, "/app"),
        cmd.buildah_config("ctr", env={"A": "1"}, entrypoint=["/e.sh"], cmd=[], workdir="/app", labels={"k": "v"}),
        cmd.buildah_commit("ctr", "img"),
        cmd.buildah_manifest_push("list", "docker://r/a:b", True, tmp_path / "d"),
        cmd.buildah_run("ctr", ["python3", "-m", "pip"], [("/a", "/b")], {"PIP_CERT": "/c"}),
    ]
    for args in built:
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)


def test_tls_verification_is_left_to_registries_conf_unless_decided() -> None:
    for decided, flag in ((True, ["--tls-verify=true"]), (False, ["--tls-verify=false"]), (None, [])):
        for args in (cmd.skopeo_inspect_raw("r/a:b", decided), cmd.buildah_push("i", "docker://r/a:b", decided),
                     cmd.buildah_pull("r/a:b", decided), cmd.buildah_from("r/a:b", tls_verify=decided),
                     cmd.buildah_manifest_push("l", "docker://r/a:b", decided, Path("/d"))):
            assert [a for a in args if a.startswith("--tls-verify")] == flag, args


def test_buildah_config_writes_entrypoint_as_json_and_labels_as_pairs() -> None:
    args = cmd.buildah_config("ctr", entrypoint=["/opt/flops/entrypoint.sh"], cmd=["selfcheck"],
                              labels={"org.opencontainers.image.revision": "abc"})
    assert args[args.index("--entrypoint") + 1] == '["/opt/flops/entrypoint.sh"]'
    assert args[args.index("--cmd") + 1] == '["selfcheck"]'
    assert args[args.index("--label") + 1] == "org.opencontainers.image.revision=abc"
    assert args[-1] == "ctr"


def test_manifest_push_sends_every_platform_image() -> None:
    args = cmd.buildah_manifest_push("list", "docker://r/a:t", False, Path("/tmp/d"))
    assert "--all" in args and "--tls-verify=false" in args and args[-2:] == ["list", "docker://r/a:t"]


def test_cache_images_are_never_pulled_and_bases_are_pulled_when_missing() -> None:
    assert "--pull=never" in cmd.buildah_from("localhost/flops-cache/deps:k", pull="never")
    assert "--pull=false" in cmd.buildah_from("r/base@sha256:1")  # buildah 1.28: false = when missing


def test_tree_hash_follows_content_and_ignores_caches(tmp_path: Path) -> None:
    (tmp_path / "task.py").write_text("x = 1\n")
    first = tree_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    assert tree_hash(tmp_path) == first
    (tmp_path / "task.py").write_text("x = 2\n")
    assert tree_hash(tmp_path) != first


def test_tree_hash_sees_a_renamed_file_and_an_executable_bit(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x")
    before = tree_hash(tmp_path)
    (tmp_path / "a.py").rename(tmp_path / "b.py")
    renamed = tree_hash(tmp_path)
    (tmp_path / "b.py").chmod(0o755)
    assert len({before, renamed, tree_hash(tmp_path)}) == 3


def test_dependency_key_is_per_platform_and_base_and_ignores_requirement_order(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    key = dependency_key(spec, "linux/amd64", "sha256:base")
    assert key == dependency_key(make_spec(tmp_path, requirements=["flwr==1.42.*", "torch"]), "linux/amd64",
                                 "sha256:base")
    assert key != dependency_key(spec, "linux/arm64", "sha256:base")
    assert key != dependency_key(spec, "linux/amd64", "sha256:other-base")
    assert key != dependency_key(make_spec(tmp_path, requirements=["torch"]), "linux/amd64", "sha256:base")
    constrained = make_spec(tmp_path, platform_constraints={"linux/arm64": ["torch<=2.10"]})
    assert dependency_key(constrained, "linux/amd64", "b") == dependency_key(spec, "linux/amd64", "b")
    assert dependency_key(constrained, "linux/arm64", "b") != dependency_key(spec, "linux/arm64", "b")


def test_a_new_wheel_in_find_links_changes_the_dependency_key(tmp_path: Path) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    spec = make_spec(tmp_path, pip_find_links=[str(links)])
    before = dependency_key(spec, "linux/amd64", "b")
    (links / "torch-2.13.0-cp311-none-any.whl").write_bytes(b"w")
    assert dependency_key(spec, "linux/amd64", "b") != before


def test_code_changes_move_the_image_tag_but_not_the_dependency_key(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "task.py").write_text("a")
    spec = make_spec(tmp_path, context_dir=code)
    bases = {"linux/amd64": "sha256:a", "linux/arm64": "sha256:b"}
    tag = image_tag(spec, bases, tree_hash(code))
    assert tag == image_tag(spec, bases, tree_hash(code))
    deps = dependency_key(spec, "linux/amd64", bases["linux/amd64"])
    (code / "task.py").write_text("b")
    assert image_tag(spec, bases, tree_hash(code)) != tag
    assert dependency_key(spec, "linux/amd64", bases["linux/amd64"]) == deps
    # A new FLOps version reaches the tag through the label FLOps puts on its images.
    relabelled = spec.model_copy(update={"labels": {"io.flops.version": "0.2.0"}})
    assert image_tag(relabelled, bases, tree_hash(code)) != image_tag(spec, bases, tree_hash(code))


def test_runtime_key_follows_entrypoint_and_dependency_layer(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, entrypoint=["/e.sh"])
    assert runtime_key(spec, "d1") != runtime_key(spec, "d2")
    assert runtime_key(spec, "d1") != runtime_key(make_spec(tmp_path, entrypoint=["/f.sh"]), "d1")


def test_spec_rejects_unknown_platforms_missing_destination_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="platforms"):
        BuildSpec.checked(name="a", context_dir=tmp_path, registry="r", platforms=["linux/riscv64"])
    with pytest.raises(SpecError, match="registry"):
        BuildSpec.checked(name="a", context_dir=tmp_path)
    with pytest.raises(SpecError, match="name"):
        BuildSpec.checked(name="Has Spaces", context_dir=tmp_path, registry="r")
    with pytest.raises(SpecError, match="oci-archive"):
        BuildSpec.checked(name="a", context_dir=tmp_path, output="/tmp/x.tar")
    assert make_spec(tmp_path).resolved_base_image == "docker.io/library/python:3.11-slim"


def test_base_image_repository_and_platform_digests() -> None:
    assert repository_of("127.0.0.1:5000/flops/python-base:3.11") == "127.0.0.1:5000/flops/python-base"
    assert repository_of("docker.io/library/python@sha256:ab") == "docker.io/library/python"
    assert repository_of("host:5000/a") == "host:5000/a"
    index = {"manifests": [
        {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:3", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]}
    assert platform_digests(index, ["linux/amd64", "linux/arm64"]) == {"linux/amd64": "sha256:1",
                                                                       "linux/arm64": "sha256:3"}


def test_manifest_summary_names_the_layer_after_the_base_as_the_dependency_layer() -> None:
    manifest = {"config": {"size": 10}, "layers": [{"digest": "sha256:base", "size": 100},
                                                   {"digest": "sha256:deps", "size": 1000},
                                                   {"digest": "sha256:runtime", "size": 1},
                                                   {"digest": "sha256:code", "size": 2}]}
    layers, size, dependency = summarize(manifest, base_layers=1)
    assert layers[0] == "sha256:base" and dependency == "sha256:deps" and size == 1113


def test_installed_console_scripts_are_pointed_at_the_image_python(tmp_path: Path) -> None:
    script = tmp_path / "flower-superlink"
    script.write_text("#!/root/.pyenv/versions/3.11.7/bin/python\nimport sys\n")
    (tmp_path / "data.bin").write_bytes(b"\x7fELF")
    _portable_scripts(tmp_path)
    assert script.read_text() == "#!/usr/bin/env python3\nimport sys\n"
    assert (tmp_path / "data.bin").read_bytes() == b"\x7fELF"


def test_entrypoint_serves_every_role_and_selfcheck_is_valid_python() -> None:
    files = runtime_files("/app")
    entrypoint = files[ENTRYPOINT_PATH]
    for role in ROLES:
        assert f"  {role})" in entrypoint
    assert "flower-superlink --disable-runtime-dependency-installation" in entrypoint
    assert "warm_executor.py -- flower-supernode \"$@\"" in entrypoint
    # TLS and authentication flags come from the orchestrator; the image never forces plain text.
    assert "--insecure" not in entrypoint
    ast.parse(files[SELFCHECK_PATH])


def test_flower_app_spec_labels_source_and_revision(tmp_path: Path) -> None:
    spec = flower_app_spec(tmp_path, name="flops/x", requirements=["torch"], source_url="https://g/x",
                           commit="c" * 40, registry="r:5000", labels={"extra": "1"})
    assert spec.labels["org.opencontainers.image.source"] == "https://g/x"
    assert spec.labels["org.opencontainers.image.revision"] == "c" * 40 and spec.labels["extra"] == "1"
    assert spec.labels["io.flops.version"]
    assert spec.entrypoint == [ENTRYPOINT_PATH] and spec.cmd == ["selfcheck"]


def test_app_images_run_as_a_non_root_user_that_owns_flowers_home(tmp_path: Path) -> None:
    spec = flower_app_spec(tmp_path, name="flops/x", requirements=["torch"], registry="r:5000")
    uid = spec.user.split(":")[0] if spec.user else "0"
    assert int(uid) != 0
    assert spec.env["FLWR_HOME"] in spec.writable_dirs == [IMAGE_FLWR_HOME, IMAGE_STATE_DIR]
    config = cmd.buildah_config("ctr", user=spec.user)
    assert config[config.index("--user") + 1] == spec.user
    copy = cmd.buildah_copy("ctr", tmp_path, IMAGE_FLWR_HOME, chown=spec.user)
    assert copy[copy.index("--chown") + 1] == spec.user
    with pytest.raises(SpecError, match="user 'flops' must be numeric"):
        BuildSpec.checked(name="a", context_dir=tmp_path, registry="r", user="flops")


def test_platform_constraints_are_the_users_only() -> None:
    both = ["linux/amd64", "linux/arm64"]
    assert parse_platform_constraints((), both) == {}
    assert parse_platform_constraints(("linux/arm64=torch==2.9.0",), both) == {"linux/arm64": ["torch==2.9.0"]}
    assert parse_platform_constraints(("linux/arm64=",), both) == {}
    with pytest.raises(ConfigError, match="PLATFORM=REQUIREMENT"):
        parse_platform_constraints(("torch<=2",), both)


def test_a_missing_tool_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    tools.tool_path.cache_clear()
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    try:
        with pytest.raises(ToolError, match="apt-get install skopeo"):
            tools.tool_path("skopeo")
    finally:
        tools.tool_path.cache_clear()


def test_the_code_layer_holds_exactly_the_hashed_files(tmp_path: Path) -> None:
    from image_builder.build import _stage_code

    code = tmp_path / "code"
    (code / "pkg" / "__pycache__").mkdir(parents=True)
    (code / ".git").mkdir()
    (code / "pkg" / "task.py").write_text("x = 1\n")
    (code / "pkg" / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"junk")
    (code / ".git" / "HEAD").write_text("ref")
    stage = _stage_code(code, tmp_path / "stage")
    assert sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()) == ["pkg/task.py"]
    assert tree_hash(stage) == tree_hash(code)


def test_image_options_refuse_a_malformed_platform_constraint_before_any_work() -> None:
    from flops.app_image import ImageOptions

    assert ImageOptions.checked(platform_constraints=["linux/amd64=torch==2.13.0+cpu"]).platform_constraints
    with pytest.raises(ConfigError, match="--platform-constraint 'linux/s390x=torch'"):
        ImageOptions.checked(platform_constraints=["linux/s390x=torch"])


def test_the_emulated_pip_reads_index_urls_from_a_private_file_never_from_its_arguments(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    import os
    import subprocess
    import sys

    from image_builder import dependencies

    token_url = "https://user:s3cret@pypi.example/simple"
    spec = make_spec(tmp_path, pip_index_url=token_url, pip_extra_index_urls=["https://x/simple"])
    ran: list[list[str]] = []

    class Recorder:
        def run(self, args: list[str], **_options: object) -> None:
            ran.append(args)

    monkeypatch.setattr(dependencies, "qemu_ready", lambda platform: True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "requirements.txt").write_text("numpy\n")
    dependencies._emulated_install(spec, "linux/arm64", "ctr", work, work / "requirements.txt", None, Recorder())
    [argv] = ran
    assert "s3cret" not in " ".join(argv) and "--index-url" not in argv
    assert argv[argv.index("PIP_CONFIG_FILE=/flops-deps-input/pip.conf") - 1] == "--env"
    conf = work / "pip.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    # pip itself reads the file as meant: both URLs, from the one file PIP_CONFIG_FILE names.
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            env={**os.environ, "PIP_CONFIG_FILE": str(conf)}, check=True).stdout
    assert f"global.index-url='{token_url}'" in listed and "global.extra-index-url='https://x/simple'" in listed
