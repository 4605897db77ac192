"""Subprocess entry run in the run's environment: build Net, load the final weights, log and register it.

Reads one JSON request on stdin, prints one JSON line: {"model_uri", "registered_model", "version"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _code_paths(code_dir: Path) -> list[str]:
    """Top-level modules and packages of the user's code, so the pickled Net imports as it did here."""
    return sorted(
        str(p) for p in code_dir.iterdir()
        if (p.suffix == ".py" and p.is_file()) or (p.is_dir() and (p / "__init__.py").exists())
    )


def main() -> int:
    request = json.loads(sys.stdin.read())
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from flops.contract.probe import load_adapter

    code_dir = Path(request["code_dir"])
    sys.path.append(str(code_dir.parent))  # the app's flops_app package (contract shims), after the user's code
    # The generated app's own adapter: default weight functions and errors located in the user's code.
    task = load_adapter().load_task(request["task_module"], code_dir)
    net = task.build_net()
    with np.load(request["weights"]) as npz:
        task.set_weights(net, [npz[f"arr_{i}"] for i in range(len(npz.files))])
    net.eval()
    example = np.load(request["input_example"])
    with torch.no_grad():
        output = net(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(request["tracking_uri"])
    with mlflow.start_run(run_id=request["mlflow_run_id"]):
        info = mlflow.pytorch.log_model(
            net,
            name=request["artifact_name"],
            signature=infer_signature(example, output),
            input_example=example,
            code_paths=_code_paths(code_dir),
            pip_requirements=request["pip_requirements"] or None,
            registered_model_name=request["registered_model_name"],
        )
    print(json.dumps({
        "model_uri": f"models:/{request['registered_model_name']}/{info.registered_model_version}",
        "logged_model_uri": info.model_uri,
        "registered_model": request["registered_model_name"],
        "version": str(info.registered_model_version),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
