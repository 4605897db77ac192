"""The detached controller: `flops submit --detach` hands a prepared run to its own process, which runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flops.errors import FlopsError
from flops.plan import RunPlan
from flops.runstate import RunState, load_state

EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "STOPPED": 1}


def start_detached(plan: RunPlan) -> RunState:
    """Run the controller in its own session; it survives this shell and writes state.json as it goes."""
    with open(plan.logs_dir / "controller.log", "ab") as log:
        controller = subprocess.Popen([sys.executable, "-m", "flops.controller", str(plan.run_dir)],
                                      stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    # Recorded at once, so a `flops stop` right after this finds the controller to signal.
    return load_state(plan.run_dir.parent.parent, plan.run_id).update(controller_pid=controller.pid)


class _ControllerLog:
    """Phases and rounds as plain lines in controller.log."""

    def phase(self, state: RunState) -> None:
        print(f"[{state.run_id}] {state.status} {state.phase}", file=sys.stderr, flush=True)

    def round(self, state: RunState) -> None:
        print(f"[{state.run_id}] round {state.rounds_completed}/{state.rounds} {state.latest_metrics}",
              file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Execute the run whose plan is in argv[0]; the exit code says how it ended."""
    from flops.execution import execute_run  # MLflow: seconds of imports, only in the controller

    try:
        state = execute_run(RunPlan.load(Path(argv[0])), _ControllerLog())
    except FlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_CODES[state.status]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
