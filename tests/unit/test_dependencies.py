"""Reading the user's dependencies: requirements.txt (with -r includes) or pyproject.toml, and every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_files
from flops.dependencies import read_dependencies
from flops.errors import ContractError


def test_no_dependency_file_means_no_dependencies(tmp_path: Path) -> None:
    assert read_dependencies(tmp_path) == []


def test_requirements_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "requirements.txt": """\
            # the model
            torch>=2.0  # CPU build is fine

            scikit-learn==1.5.*
            numpy; python_version >= "3.10"
            """
        },
    )
    assert read_dependencies(tmp_path) == ["torch>=2.0", "scikit-learn==1.5.*", 'numpy; python_version >= "3.10"']


def test_backslash_continuation_joins_lines(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "pandas \\\n  >=2.0\n"})
    assert read_dependencies(tmp_path) == ["pandas>=2.0"]


def test_r_includes_are_relative_to_the_including_file(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "requirements.txt": "-r reqs/base.txt\nmatplotlib\n",
            "reqs/base.txt": "--requirement=common.txt\ntorch\n",
            "reqs/common.txt": "numpy\ntorch\n",
        },
    )
    assert read_dependencies(tmp_path) == ["numpy", "torch", "matplotlib"]


def test_pyproject_dependencies_are_read_when_there_is_no_requirements_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["torch", "tqdm>=4"]\n'})
    assert read_dependencies(tmp_path) == ["torch", "tqdm>=4"]


def test_requirements_txt_wins_over_pyproject(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "numpy\n", "pyproject.toml": '[project]\ndependencies = ["torch"]\n'})
    assert read_dependencies(tmp_path) == ["numpy"]


def test_pyproject_without_project_table_has_no_dependencies(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": "[tool.black]\nline-length = 100\n"})
    assert read_dependencies(tmp_path) == []


def test_invalid_requirement_names_file_line_and_reason(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "numpy\n# ok\ntorch>>2\n"})
    with pytest.raises(ContractError, match=r"^requirements.txt:3: invalid requirement 'torch>>2': .+"):
        read_dependencies(tmp_path)


def test_invalid_requirement_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "-r extra.txt\n", "extra.txt": "numpy\nnot a req!\n"})
    with pytest.raises(ContractError, match=r"^extra.txt:2: invalid requirement 'not a req!'"):
        read_dependencies(tmp_path)


@pytest.mark.parametrize(
    ("line", "option"),
    [("-e .", "-e"), ("--index-url https://example.org/simple", "--index-url"), ("-c constraints.txt", "-c")],
)
def test_options_other_than_r_are_rejected_with_file_line(tmp_path: Path, line: str, option: str) -> None:
    write_files(tmp_path, {"requirements.txt": f"numpy\n{line}\n"})
    with pytest.raises(ContractError, match=rf"^requirements.txt:2: option '{option}' is not supported"):
        read_dependencies(tmp_path)


@pytest.mark.parametrize(
    "line",
    [
        "https://example.org/pkg-1.0.tar.gz",
        "git+https://github.com/org/pkg.git",
        "./vendor/pkg",
        "pkg @ https://example.org/pkg-1.0-py3-none-any.whl",
    ],
)
def test_urls_and_paths_are_rejected(tmp_path: Path, line: str) -> None:
    write_files(tmp_path, {"requirements.txt": f"{line}\n"})
    with pytest.raises(ContractError, match=r"^requirements.txt:1: .*(URL|path)"):
        read_dependencies(tmp_path)


def test_missing_included_file_is_reported(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "-r nope.txt\n"})
    with pytest.raises(ContractError, match=r"^requirements.txt:1: included file not found: nope.txt"):
        read_dependencies(tmp_path)


def test_include_cycle_is_reported(tmp_path: Path) -> None:
    write_files(tmp_path, {"requirements.txt": "-r a.txt\n", "a.txt": "numpy\n-r requirements.txt\n"})
    with pytest.raises(ContractError, match=r"^a.txt:2: 'requirements.txt' includes itself"):
        read_dependencies(tmp_path)


def test_include_outside_the_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_files(tmp_path, {"secret.txt": "numpy\n", "repo/requirements.txt": "-r ../secret.txt\n"})
    with pytest.raises(ContractError, match=r"outside the repository"):
        read_dependencies(repo)


def test_invalid_pyproject_requirement_names_its_line(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": '[project]\nname = "x"\ndependencies = [\n  "torch",\n  "numpy>>1",\n]\n'})
    with pytest.raises(ContractError, match=r"^pyproject.toml:5: invalid requirement 'numpy>>1'"):
        read_dependencies(tmp_path)


def test_dynamic_pyproject_dependencies_are_rejected(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": '[project]\nname = "x"\ndynamic = ["dependencies"]\n'})
    with pytest.raises(ContractError, match=r"dynamic"):
        read_dependencies(tmp_path)


def test_invalid_toml_is_a_contract_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": "[project\n"})
    with pytest.raises(ContractError, match=r"^pyproject.toml: invalid TOML"):
        read_dependencies(tmp_path)


# --- issue 9: FLOps owns Flower's version; torch's local labels; conda.yaml ---

from flops.dependencies import read_declared_dependencies  # noqa: E402


def test_flwr_requirements_are_replaced_with_one_warning_each(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("flwr[simulation]>=1.12\nnumpy\nflwr==1.7.0\nflwr-datasets[vision]>=0.5\n")
    declared = read_declared_dependencies(tmp_path)
    assert declared.requirements == ["numpy", "flwr-datasets[vision]>=0.5"]  # flwr-datasets is the user's own
    assert [w.split(": ")[0] for w in declared.warnings] == ["requirements.txt:1", "requirements.txt:3"]
    assert declared.warnings[1].startswith("requirements.txt:3: 'flwr==1.7.0' replaced by FLOps' flwr 1.42")
    assert declared.origins == {"numpy": "requirements.txt:2", "flwr-datasets[vision]>=0.5": "requirements.txt:4"}


def test_a_cpu_local_label_on_torch_is_read_as_its_version(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch==2.13.0+cpu\ntorchvision==0.28.0+cu121\n")
    assert read_declared_dependencies(tmp_path).requirements == ["torch==2.13.0", "torchvision==0.28.0"]


def test_conda_yaml_gives_its_pip_list_and_conda_packages_as_pypi_names(tmp_path: Path) -> None:
    (tmp_path / "conda.yaml").write_text(
        "name: x\ndependencies:\n  - python=3.11\n  - pip\n  - pytorch=2.13\n  - conda-forge::numpy\n"
        "  - pip:\n      - scikit-learn>=1.4\n")
    declared = read_declared_dependencies(tmp_path)
    assert declared.requirements == ["torch==2.13.*", "numpy", "scikit-learn>=1.4"]
    assert declared.origins["scikit-learn>=1.4"] == "conda.yaml:8"


def test_index_urls_with_credentials_reach_uv_through_its_environment_not_its_command_line(monkeypatch) -> None:  # noqa: ANN001
    from flops.resolution import index_environment, index_options

    monkeypatch.setenv("PIP_INDEX_URL", "https://alice:s3cret@pkgs.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://bob:t0ken@extra.example/simple https://pypi.org/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    assert index_options() == ["--find-links", "/opt/wheels"]  # nothing secret on the command line
    assert index_environment() == {"UV_DEFAULT_INDEX": "https://alice:s3cret@pkgs.example/simple",
                                   "UV_INDEX": "https://bob:t0ken@extra.example/simple https://pypi.org/simple"}
