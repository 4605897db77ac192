"""The detached controller: `flops submit` hands a prepared run to its own process, which runs it; the
submitting shell only follows the run record, so killing it does not stop training."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from flops.errors import FlopsError
from flops.plan import RunPlan
from flops.preparation import Progress
from flops.runstate import TERMINAL, RunState, controller_alive, load_state, observed_state, process_start_time

EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "STOPPED": 1}


def start_detached(plan: RunPlan, resume: bool = False) -> RunState:
    """Run the controller in its own session; it survives this shell and writes state.json as it goes."""
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "flops.controller", str(plan.run_dir), *(["--resume"] if resume else [])]
    with open(plan.logs_dir / "controller.log", "ab") as log:
        controller = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    # Recorded at once, so a `flops stop` right after this finds the controller to signal.
    return load_state(plan.run_dir.parent.parent, plan.run_id).update(
        controller_pid=controller.pid, controller_started=process_start_time(controller.pid))


def follow_run(workdir: Path, run_id: str, progress: Progress, stop_on_interrupt: bool) -> RunState:
    """Watch a run's record until it ends and its controller has closed everything; Ctrl-C stops the run."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if stop_on_interrupt else None
    shown_round, shown_phase = -1, ""
    try:
        while True:
            state = observed_state(workdir, run_id)
            if state.phase != shown_phase:
                shown_phase = state.phase
                progress.phase(state)
            if state.rounds_completed != shown_round:
                if shown_round >= 0 and state.rounds_completed:
                    progress.round(state)
                shown_round = state.rounds_completed
            if state.status in TERMINAL and not controller_alive(state):
                return state
            time.sleep(0.3)
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            raise
        from flops.execution import stop_run

        return stop_run(workdir, run_id)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
        state = execute_run(RunPlan.load(Path(argv[0])), _ControllerLog(), resume="--resume" in argv[1:])
    except FlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_CODES[state.status]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
