"""Load a bundle's PyTorch model with torch alone and predict exactly as MLflow's pyfunc wrapper does."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from inference.bundle import BundleMetadata, read_metadata
from inference.errors import BundleError
from inference.safe_load import load_exported, load_pickled_module


class ServedModel:
    """A loaded model plus its metadata; `predict` runs one forward pass over a whole batch."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = bundle_dir
        self.metadata: BundleMetadata = read_metadata(bundle_dir)
        self._module = _load_module(bundle_dir, self.metadata)
        self._forward = _fast_forward(self._module)
        # Exported (pt2) graphs and user modules are not documented as thread-safe; one pass at a time.
        self._lock = threading.Lock()

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mirror mlflow.pytorch._PyTorchWrapper.predict on CPU, so outputs match bit for bit.

        MLflow runs torch.from_numpy(inputs) through the model under no_grad and returns outputs.numpy();
        given a contiguous CPU tensor holding the same values, this runs the same forward pass on it.
        """
        with self._lock, torch.no_grad():
            outputs = self._forward(inputs)
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(f"the model returned {type(outputs).__name__}, expected one tensor")
        return outputs


# Hooks torch.export puts on the module it returns: a check that the inputs have the exported pytree
# structure, and a switch for nn.Module-typed graph inputs. With one tensor input (which the server's
# signature check guarantees) neither changes the result, and together they cost ~3x the forward pass
# of a small CNN. The graph's own shape guards run inside forward() and are kept.
_EXPORT_HOOK_OWNERS = ("_check_input_constraints_pre_hook", "_create_stateful_graph_module")


def _fast_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """module.forward when the only hooks are torch.export's own input checks, else the full module call."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    owned_by_export = (any(owner in getattr(h, "__qualname__", "") for owner in _EXPORT_HOOK_OWNERS) for h in hooks)
    if not hooks or not all(owned_by_export):
        return module
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return module
    return module.forward


def _load_module(bundle_dir: Path, metadata: BundleMetadata) -> torch.nn.Module:
    code_dir = (bundle_dir / metadata.code_dir).resolve() if metadata.code_dir else None
    if code_dir is not None and str(code_dir) not in sys.path:
        # Same as MLflow: the logged code directory goes first on sys.path so pickles find the user's classes.
        sys.path.insert(0, str(code_dir))
    weights = bundle_dir / metadata.weights_file
    try:
        if metadata.serialization == "pt2":
            # MLflow does not call eval() on exported programs; neither do we, to keep the same graph.
            return load_exported(weights)
        module = load_pickled_module(weights, code_dir)
    except BundleError:
        raise
    except Exception as exc:  # any failure to deserialize means the bundle cannot be served
        raise BundleError(f"{weights}: cannot load the model: {type(exc).__name__}: {exc}") from exc
    module.eval()
    return module
