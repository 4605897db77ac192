"""Augmentation: a standard Flower app rendered from templates/ beside an unmodified copy of the user's code."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jinja2
import pytest

from conftest import valid_task_source, write_files
from flops.augment import FLOWER_APP_TEMPLATE, AppSpec, app_name, augment_app
from flops_templates import TEMPLATES_DIR, environment, render_tree
from flops.config import RunConfig

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def user_code(tmp_path: Path) -> Path:
    code = tmp_path / "checkout"
    write_files(code, {
        "task.py": valid_task_source(),
        "helpers/__init__.py": "",
        "helpers/data.py": "ROWS = 64  # kept byte for byte\n",
        "requirements.txt": "torch\nnumpy\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        "__pycache__/task.cpython-311.pyc": "not code",
    })
    return code


def _spec(code: Path, **changes: object) -> AppSpec:
    fields = dict(source_url="https://example.invalid/org/My_Task.git", source_name="My_Task", commit=COMMIT,
                  code_dir=code, task_module="task", dependencies=["torch", "numpy>=1.26"])
    return AppSpec(**{**fields, **changes})


def test_pyproject_declares_the_components_and_the_run_config(user_code: Path, tmp_path: Path) -> None:
    config = RunConfig(rounds=4, learners=3, training={"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05})
    app = augment_app(_spec(user_code), config, tmp_path / "app")
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = pyproject["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "flops_app.server_app:app", "clientapp": "flops_app.client_app:app"}
    run_config = flwr["config"]
    assert run_config["task-module"] == "task"
    assert run_config["num-server-rounds"] == 4
    assert (run_config["local-epochs"], run_config["batch-size"], run_config["learning-rate"]) == (2, 16, 0.05)
    # The quorum (half of 3, rounded up): a lost learner must not stall a round.
    assert run_config["min-train-nodes"] == run_config["min-evaluate-nodes"] == run_config["min-available-nodes"] == 2
    assert (run_config["strategy-name"], run_config["strategy-params"], run_config["max-failed-rounds"]) == ("fedavg", "{}", 2)
    assert run_config["flops-output-dir"] == ""
    assert pyproject["project"]["name"] == app_name("My_Task") == "flops-my-task"
    assert "numpy>=1.26" in pyproject["project"]["dependencies"]
    assert any(dep.startswith("flwr>=") for dep in pyproject["project"]["dependencies"])
    assert COMMIT in (app / "pyproject.toml").read_text().splitlines()[0]


def test_generated_python_files_are_the_templates_verbatim(user_code: Path, tmp_path: Path) -> None:
    app = augment_app(_spec(user_code), RunConfig(), tmp_path / "app")
    templates = sorted((TEMPLATES_DIR / FLOWER_APP_TEMPLATE / "flops_app").glob("*.py"))
    assert templates
    for template in templates:
        assert (app / "flops_app" / template.name).read_bytes() == template.read_bytes()
        compile(template.read_text(), str(template), "exec")


def test_user_code_is_copied_unmodified_without_vcs_data_or_caches(user_code: Path, tmp_path: Path) -> None:
    app = augment_app(_spec(user_code), RunConfig(), tmp_path / "app")
    user = app / "user"
    copied = sorted(p.relative_to(user).as_posix() for p in user.rglob("*") if p.is_file())
    assert copied == ["helpers/__init__.py", "helpers/data.py", "requirements.txt", "task.py"]
    for name in copied:
        assert (user / name).read_bytes() == (user_code / name).read_bytes()


def test_augmenting_again_replaces_the_previous_app(user_code: Path, tmp_path: Path) -> None:
    out = tmp_path / "app"
    augment_app(_spec(user_code), RunConfig(), out)
    (out / "stale.txt").write_text("from an older app")
    augment_app(_spec(user_code), RunConfig(rounds=7), out)
    assert not (out / "stale.txt").exists()
    assert tomllib.loads((out / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]["num-server-rounds"] == 7


def test_a_missing_template_variable_fails_loudly() -> None:
    template = environment().from_string("name = {{ app_nmae }}\n")
    with pytest.raises(jinja2.UndefinedError, match="app_nmae"):
        template.render(app_name="x")


def test_the_real_templates_need_every_variable(tmp_path: Path) -> None:
    context = {"flops_version": "0", "app_name": "a", "source_url": "u", "source_name": "n", "task_module": "task",
               "dependencies": [], "flwr_version": "1.42.0", "flwr_next_minor": "1.43", "config": RunConfig()}
    render_tree(FLOWER_APP_TEMPLATE, tmp_path / "complete", {**context, "commit": COMMIT})
    with pytest.raises(jinja2.UndefinedError, match="commit"):
        render_tree(FLOWER_APP_TEMPLATE, tmp_path / "incomplete", context)


def test_long_source_names_give_an_app_name_flower_accepts() -> None:
    # Flower refuses [project].name longer than 32 characters: `flops validate` passed, submit failed (issue 9).
    name = app_name("names_float_train_dict_test-and-more")
    assert len(name) <= 32 and name.startswith("flops-names-float") and not name.endswith("-")
