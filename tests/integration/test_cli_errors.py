"""Bad input through the real `flops` CLI: exit code 2, one line naming the problem, no traceback, nothing started."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import (
    EXAMPLE_DIR,
    assert_one_line_error,
    assert_only_error_line_on_stderr,
    mlflow_run_count,
    run_flops,
    run_ids,
    valid_task_source,
)

pytestmark = pytest.mark.slow  # each case starts the CLI (and git) as real processes

REQUIREMENTS = "torch\nnumpy\n"


def _line_of(source: str, needle: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), start=1) if needle in line)


def _missing_task() -> tuple[dict[str, str], str]:
    return {"README.md": "no task here\n", "requirements.txt": REQUIREMENTS}, r"task\.py"


def _missing_name() -> tuple[dict[str, str], str]:
    source = valid_task_source().replace("def test(net, testloader, device):", "def evaluate(net, testloader, device):")
    return {"task.py": source, "requirements.txt": REQUIREMENTS}, r"task\.py: missing function test; accepted: test\(net, testloader"


def _wrong_arity() -> tuple[dict[str, str], str]:
    # Parameters are bound by name (issue 9): one FLOps cannot fill is refused, naming the accepted shapes.
    source = valid_task_source().replace(
        "def train(net, trainloader, valloader, epochs, learning_rate, device):",
        "def train(net, data, epochs, learning_rate, device):",
    )
    line = _line_of(source, "def train(")
    return ({"task.py": source, "requirements.txt": REQUIREMENTS},
            rf"task\.py:{line}: train\(net, data, epochs, learning_rate, device\): parameter 'data' .*; accepted: train\(")


def _syntax_error() -> tuple[dict[str, str], str]:
    source = valid_task_source().replace("def get_weights(net):", "def get_weights(net:")
    line = _line_of(source, "def get_weights(")
    return {"task.py": source, "requirements.txt": REQUIREMENTS}, rf"task\.py:{line}: syntax error"


CONTRACT_CASES = {
    "task-py-missing": _missing_task,
    "missing-name": _missing_name,
    "wrong-arity": _wrong_arity,
    "syntax-error": _syntax_error,
}


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_validate_rejects_a_contract_violation_in_one_line_naming_the_file(case, git_repo, tmp_path: Path) -> None:
    files, expected = CONTRACT_CASES[case]()
    repo = git_repo(files)
    result = run_flops("validate", str(repo), "--workdir", str(tmp_path / "work"))
    line = assert_only_error_line_on_stderr(result)
    assert re.search(expected, line), line
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_submit_rejects_a_contract_violation_before_starting_anything(case, git_repo, tmp_path: Path) -> None:
    files, expected = CONTRACT_CASES[case]()
    repo = git_repo(files)
    workdir = tmp_path / "work"
    result = run_flops("submit", repo.as_uri(), "--rounds", "1", "--learners", "2", "--workdir", str(workdir))
    line = assert_one_line_error(result)
    assert re.search(expected, line), line
    assert run_ids(workdir) == []  # refused input leaves no run behind for `flops list`
    assert mlflow_run_count(workdir) == 0
    assert not (workdir / "cache" / "envs").exists()  # rejected before an environment was built


def _intake_sources(tmp_path: Path, git_repo) -> dict[str, tuple[list[str], str]]:
    repo = git_repo({"task.py": valid_task_source(), "requirements.txt": REQUIREMENTS})
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    (plain / "task.py").write_text(valid_task_source())
    return {
        "unknown-ref": ([str(repo), "--ref", "no-such-branch"], r"ref 'no-such-branch' not found in .*branches: main"),
        "not-a-git-repo": ([str(plain)], rf"not a git repository: {re.escape(str(plain))}"),
        "missing-path": ([str(tmp_path / "nowhere")], rf"path does not exist: {re.escape(str(tmp_path / 'nowhere'))}"),
        "unreachable-host": (["https://nonexistent.invalid/x.git"], r"nonexistent\.invalid"),
    }


INTAKE_CASES = ["unknown-ref", "not-a-git-repo", "missing-path", "unreachable-host"]


# Every case through validate; submit shares the intake code, so two cases there check its wiring.
@pytest.mark.parametrize(
    ("case", "command"),
    [(case, "validate") for case in INTAKE_CASES] + [("unknown-ref", "submit"), ("unreachable-host", "submit")],
)
def test_intake_error_is_one_line_with_exit_code_2(case, command, git_repo, tmp_path: Path) -> None:
    args, expected = _intake_sources(tmp_path, git_repo)[case]
    workdir = tmp_path / "work"
    result = run_flops(command, *args, "--workdir", str(workdir), timeout_s=120)
    line = assert_one_line_error(result)
    assert re.search(expected, line), line
    if command == "submit":
        assert mlflow_run_count(workdir) == 0
        assert run_ids(workdir) == []


CONFIG_CASES = {
    "unknown-field": ("rounds: 2\nroundz: 3\n", r"field 'roundz'"),
    "unknown-nested-field": ("training:\n  epochs: 3\n", r"field 'training\.epochs'"),
    "negative-rounds": ("rounds: -1\n", r"field 'rounds'"),
    "invalid-yaml": ("rounds: 2\ntraining: [unclosed\n", r"flops\.yaml:\d+: invalid YAML"),
    "infinite-learning-rate": ("training:\n  learning_rate: .inf\n", r"field 'training\.learning_rate': .*finite"),
    "boolean-rounds": ("rounds: true\n", r"field 'rounds': .*valid integer"),
    "binary-file": (b"\x89PNG\r\n\x1a\n\xff\xfe", r"flops\.yaml: not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_submit_rejects_a_bad_config_file_naming_the_field(case, tiny_task_repo: Path, tmp_path: Path) -> None:
    text, expected = CONFIG_CASES[case]
    config = tmp_path / "flops.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    workdir = tmp_path / "work"
    result = run_flops("submit", str(tiny_task_repo), "--config", str(config), "--workdir", str(workdir))
    line = assert_only_error_line_on_stderr(result)
    assert re.search(expected, line), line
    assert str(config) in line
    assert run_ids(workdir) == []  # rejected before a run was even planned


FLAG_CASES = {
    "no-learners": (["--learners", "0"], r"flags: field 'learners'"),
    "infinite-lr": (["--lr", "inf"], r"flags: field 'training\.learning_rate': .*finite"),
    "huge-rounds": (["--rounds", "99999999999999999999"], r"flags: field 'rounds': .*less than or equal"),
    "local-rounds-on-flat": (["--local-rounds", "3"], r"local_rounds = 3: applies to hierarchical runs only"),
    "assignment-on-flat": (["--assignment", "min-comm-cost"], r"assignment = min-comm-cost: applies to hierarchical"),
    "registry-on-local": (["--registry", "127.0.0.1:5000"], r"--registry: only for container orchestrators"),
    "namespace-on-local": (["--namespace", "edge"], r"--namespace/--kube-context: only for kubernetes and podman-kube"),
    "namespaces-on-docker": (["--network", "namespaces", "--orchestrator", "docker", "--image", "x:1"],
                             r"--network namespaces: only for --orchestrator local"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_submit_rejects_a_bad_flag_value_naming_the_field(case, tiny_task_repo: Path, tmp_path: Path) -> None:
    flags, expected = FLAG_CASES[case]
    workdir = tmp_path / "work"
    result = run_flops("submit", str(tiny_task_repo), *flags, "--workdir", str(workdir))
    line = assert_only_error_line_on_stderr(result)
    assert re.search(expected, line), line
    assert run_ids(workdir) == []


def test_plain_text_links_between_namespaces_need_the_operators_consent(tiny_task_repo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = run_flops("submit", str(tiny_task_repo), "--network", "namespaces", "--insecure", "--workdir", str(workdir))
    line = assert_one_line_error(result)  # after --insecure's own warning
    assert line.startswith("error: --insecure: Flower links would be plain text on 10.144.0.0/12 "), line
    assert "--allow-insecure-network" in line
    assert run_ids(workdir) == []


def test_a_binary_topology_file_is_one_line_naming_it(tiny_task_repo: Path, tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_bytes(bytes(range(128, 256)))
    result = run_flops("submit", str(tiny_task_repo), "--topology", str(topology), "--workdir", str(tmp_path / "w"))
    line = assert_only_error_line_on_stderr(result)
    assert f"{topology}: not a UTF-8 text file" in line, line


def test_augment_refuses_a_non_empty_output_dir_unless_forced(tiny_task_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "app"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    workdir = tmp_path / "work"
    refused = run_flops("augment", str(tiny_task_repo), "-o", str(out), "--workdir", str(workdir))
    line = assert_only_error_line_on_stderr(refused)
    assert f"{out}: exists and is not empty" in line and "--force" in line, line
    assert (out / "notes.txt").read_text() == "mine"
    forced = run_flops("augment", str(tiny_task_repo), "-o", str(out), "--force", "--workdir", str(workdir))
    assert forced.returncode == 0, forced.output
    assert (out / "pyproject.toml").is_file() and not (out / "notes.txt").exists()


def test_schema_command_prints_a_json_schema_the_example_config_satisfies() -> None:
    result = run_flops("schema")
    assert result.returncode == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    example = yaml.safe_load((EXAMPLE_DIR / "flops.yaml").read_text())
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "roundz": 3}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "rounds": 0}, schema)
