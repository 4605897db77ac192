"""Read the user's Python dependencies from requirements.txt or pyproject.toml, validated as PEP 508 requirements."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from importlib.metadata import version

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel

from flops.errors import ContractError

REQUIREMENTS_FILE = "requirements.txt"
PYPROJECT_FILE = "pyproject.toml"
CONDA_FILE = "conda.yaml"  # Oakestra FLOps ML repos declare their environment this way
# conda entries that are the interpreter or its installer, not packages; conda's name for torch.
_CONDA_SKIPPED = {"python", "pip"}
_CONDA_NAMES = {"pytorch": "torch"}

_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s+|=)(?P<path>\S+)$")
_COMMENT = re.compile(r"(^|\s)#.*$")  # pip's rule: '#' starts a comment at line start or after whitespace
_URL_OR_PATH = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://|\.{0,2}/|[a-zA-Z][a-zA-Z0-9+.-]*\+)")


# FLOps owns Flower's version: the user's flwr requirement (pins, extras such as [simulation]) is replaced by it.
FLOWER_DISTRIBUTION = "flwr"
# Local version labels (+cpu, +cu121) pick a build from PyTorch's own index; FLOps runs on the host's CPU build.
LOCAL_LABEL_PACKAGES = ("torch", "torchvision", "torchaudio")


class DeclaredDependencies(BaseModel):
    """The repo's requirements after FLOps' own packages are taken out, with where each was declared."""

    requirements: list[str]  # canonical requirement strings, the user's order
    origins: dict[str, str]  # requirement -> "requirements.txt:3"
    warnings: list[str]  # one line per requirement FLOps replaced or changed


def read_dependencies(code_dir: Path) -> list[str]:
    """The repo's requirements (requirements.txt first, else pyproject's [project].dependencies), or []."""
    return read_declared_dependencies(code_dir).requirements


def read_declared_dependencies(code_dir: Path) -> DeclaredDependencies:
    """The repo's requirements with their origins; flwr dropped (FLOps' version is used) and torch's +cpu kept off."""
    code_dir = Path(code_dir).resolve()
    if (code_dir / REQUIREMENTS_FILE).is_file():
        found = _read_requirements_file(code_dir / REQUIREMENTS_FILE, code_dir, seen=())
    elif (code_dir / PYPROJECT_FILE).is_file():
        found = _read_pyproject(code_dir / PYPROJECT_FILE, code_dir)
    elif (code_dir / CONDA_FILE).is_file():
        found = _read_conda(code_dir / CONDA_FILE, code_dir)
    else:
        found = []
    requirements: list[str] = []
    origins: dict[str, str] = {}
    warnings: list[str] = []
    for text, where in found:
        cleaned, warning = _clean(text, where)
        if warning:
            warnings.append(warning)
        if cleaned is not None and cleaned not in origins:  # drop exact duplicates, keep the user's order
            requirements.append(cleaned)
            origins[cleaned] = where
    return DeclaredDependencies(requirements=requirements, origins=origins, warnings=warnings)


def _clean(text: str, where: str) -> tuple[str | None, str | None]:
    """(the requirement FLOps installs or None, a warning line or None) for one declared requirement."""
    requirement = Requirement(text)
    name = canonicalize_name(requirement.name)
    if name == FLOWER_DISTRIBUTION:
        flower = version("flwr")
        return None, f"{where}: '{text}' replaced by FLOps' flwr {flower} (FLOps owns Flower's version)"
    if name in LOCAL_LABEL_PACKAGES and any("+" in spec.version for spec in requirement.specifier):
        requirement.specifier = SpecifierSet(",".join(
            f"{spec.operator}{spec.version.split('+')[0]}" for spec in requirement.specifier))
        return str(requirement), None  # the label only picks a build variant: the version is what is checked
    return text, None


def parse_requirement(text: str, where: str) -> str:
    """TEXT as a normalised requirement string; ContractError naming WHERE (file:line) when it is not one."""
    if _URL_OR_PATH.match(text):
        raise ContractError(f"{where}: '{text}' is a URL or path; only named packages from an index are supported")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ContractError(f"{where}: invalid requirement '{text}': {reason}") from None
    if requirement.url:
        raise ContractError(f"{where}: '{text}' is a direct URL requirement; name a released version instead")
    return str(requirement)


def _read_requirements_file(path: Path, code_dir: Path, seen: tuple[Path, ...]) -> list[tuple[str, str]]:
    label = path.relative_to(code_dir).as_posix()
    found: list[tuple[str, str]] = []
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        where = f"{label}:{number}"
        if include := _INCLUDE.match(line):
            found += _read_requirements_file(_included(path, include["path"], code_dir, seen, where), code_dir, (*seen, path))
        elif line.startswith("-"):
            option = line.split()[0].split("=")[0]
            raise ContractError(
                f"{where}: option '{option}' is not supported; list packages by name (e.g. numpy>=1.26) or use -r"
            )
        else:
            found.append((parse_requirement(line, where), where))
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, content) without comments and blanks, joining '\\' continuations as pip does."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _included(including: Path, target: str, code_dir: Path, seen: tuple[Path, ...], where: str) -> Path:
    path = (including.parent / target).resolve()
    # The repo is untrusted: an include must not read files outside it.
    if not path.is_relative_to(code_dir):
        raise ContractError(f"{where}: included file '{target}' is outside the repository")
    if not path.is_file():
        raise ContractError(f"{where}: included file not found: {target}")
    if path in seen or path == including:
        raise ContractError(f"{where}: '{target}' includes itself (directly or through other -r files)")
    return path


def _read_pyproject(path: Path, code_dir: Path) -> list[tuple[str, str]]:
    label = path.relative_to(code_dir).as_posix()
    text = path.read_text(encoding="utf-8")
    try:
        project = tomllib.loads(text).get("project", {})
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"{label}: invalid TOML: {exc}") from None
    if "dependencies" in project.get("dynamic", []):
        raise ContractError(
            f"{label}: [project].dependencies is dynamic; list the dependencies there or in {REQUIREMENTS_FILE}"
        )
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise ContractError(f"{label}: [project].dependencies must be a list of strings")
    found = []
    for dependency in dependencies:
        where = f"{label}:{_line_of(text, dependency)}"
        found.append((parse_requirement(dependency, where), where))
    return found


def _line_of(text: str, needle: str) -> int:
    """Line number of the first line quoting NEEDLE (tomllib keeps no positions); 1 when not found."""
    for number, line in enumerate(text.splitlines(), start=1):
        if f'"{needle}"' in line or f"'{needle}'" in line:
            return number
    return 1


def _read_conda(path: Path, code_dir: Path) -> list[tuple[str, str]]:
    """conda.yaml's pip: list, and its conda packages read as PyPI names (conda's name=1.2 is 1.2.*)."""
    import yaml

    label = path.relative_to(code_dir).as_posix()
    text = path.read_text(encoding="utf-8")
    try:
        environment = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ContractError(f"{label}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    found: list[tuple[str, str]] = []
    for entry in environment.get("dependencies", []) if isinstance(environment, dict) else []:
        if isinstance(entry, dict):
            for pip_entry in entry.get("pip", []):
                where = f"{label}:{_line_of_plain(text, pip_entry)}"
                found.append((parse_requirement(str(pip_entry), where), where))
            continue
        name, _, pinned = str(entry).split("::")[-1].partition("=")
        name = _CONDA_NAMES.get(name.strip(), name.strip())
        if name in _CONDA_SKIPPED:
            continue
        where = f"{label}:{_line_of_plain(text, entry)}"
        spec = "" if not pinned else (f"=={pinned.lstrip('=')}" if pinned.startswith("=") else f"=={pinned}.*")
        found.append((parse_requirement(name + spec, where), where))
    return found


def _line_of_plain(text: str, needle: object) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if str(needle) in line:
            return number
    return 1
