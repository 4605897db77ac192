"""Load a bundle's model without unpickling arbitrary objects: torch's weights-only loader, never pickle.load."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from inference.errors import BundleError

# Files of a .pt2 archive that torch.export.load reads with pickle.loads or TorchScript's unpickler, whatever
# TORCH_FORCE_WEIGHTS_ONLY_LOAD says: an archive holding them is refused.
_PT2_UNSAFE_PREFIXES = ("custom_obj_", "opaque_obj_")
# Python 2 module names protocol-2 pickles use for builtins.
_RENAMED_MODULES = {"__builtin__": "builtins"}


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load inside, including those in torch.export.load that pass weights_only=False, is weights-only."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_exported(weights: Path) -> torch.nn.Module:
    """A torch.export archive's module; BundleError when it carries pickled custom objects."""
    try:
        names = zipfile.ZipFile(weights).namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{weights}: cannot load the model: not a torch.export archive ({exc})") from None
    unsafe = [name for name in names if Path(name).name.startswith(_PT2_UNSAFE_PREFIXES)]
    if unsafe:
        raise BundleError(f"{weights}: cannot load the model: it holds pickled custom objects ({unsafe[0]}), which the server does not unpickle")
    with weights_only_loads():
        return torch.export.load(str(weights)).module()


def load_pickled_module(weights: Path, code_dir: Path | None) -> torch.nn.Module:
    """A module saved with torch.save(model), loaded weights-only.

    The loader rebuilds only torch's own types plus the classes the pickle names from torch.nn and from the
    bundle's code directory (the model's own code, which serving a pickled model imports by design). A pickle
    naming anything else (os.system, a class pickled by value through cloudpickle) is refused.
    """
    allowed = [_allowed_class(module, name, code_dir, weights) for module, name in pickle_globals(weights)]
    try:
        with weights_only_loads(), torch.serialization.safe_globals([cls for cls in allowed if cls is not None]):
            module = torch.load(str(weights), weights_only=True)
    except Exception as exc:  # torch's UnpicklingError names the refused global
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{weights}: cannot load the model: refused by the weights-only loader: {first}") from None
    if not isinstance(module, torch.nn.Module):
        raise BundleError(f"{weights}: cannot load the model: it holds a {type(module).__name__}, not a torch.nn.Module")
    return module


def pickle_globals(weights: Path) -> list[tuple[str, str]]:
    """(module, name) of every global a torch.save zip's pickle refers to, read without unpickling."""
    try:
        with zipfile.ZipFile(weights) as archive:
            data_name = next(name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl")
            data = archive.read(data_name)
    except (zipfile.BadZipFile, StopIteration, OSError):
        raise BundleError(f"{weights}: cannot load the model: not a torch.save zip archive (legacy formats are not served)") from None
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = str(arg).split(" ", 1)
            found.add((_RENAMED_MODULES.get(module, module), name))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add((strings[-2], strings[-1]))
        if isinstance(arg, str):
            strings.append(arg)
    return sorted(found)


def _allowed_class(module: str, name: str, code_dir: Path | None, weights: Path) -> type | None:
    """The class to allow for one global: torch.nn's modules and classes of the bundle's own code, else None."""
    top = module.split(".", 1)[0]
    from_code = code_dir is not None and (
        (code_dir / f"{top}.py").is_file() or (code_dir / top / "__init__.py").is_file()
    )
    if not (module.startswith("torch.nn.") or from_code):
        return None  # left to torch's own allow-list, which refuses what it does not know
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise BundleError(f"{weights}: cannot load the model: the pickle names {module}.{name}, which cannot be imported: {exc}") from None
    return found if isinstance(found, type) else None
