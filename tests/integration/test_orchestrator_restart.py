"""The local orchestrator restarts a dead component from its recorded argv, with backoff (real processes)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from flops.errors import DeployError
from flops.orchestrators.base import MAX_RESTARTS, ComponentRecord, Deployment
from flops.orchestrators.link_security import LinkSecurity
from flops.orchestrators.local import LocalOrchestrator
from flops.plan import RunPlan


def _wait_for_lines(log: Path, count: int) -> None:
    deadline = time.monotonic() + 60
    while not log.exists() or log.read_text().count("up") < count:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.1)


def test_a_killed_component_is_restarted_with_the_same_argv_after_a_backoff(tmp_path: Path) -> None:
    plan = RunPlan.model_construct(run_id="r-restart", run_dir=tmp_path, python=Path(sys.executable))
    orchestrator = LocalOrchestrator()
    orchestrator.security = LinkSecurity(plan.model_copy(update={"insecure": True}))  # deploy() sets it
    record = ComponentRecord(name="learner-0", role="learner", log_path=tmp_path / "logs" / "learner-0.log")
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    deployment = Deployment(orchestrator="local", run_id=plan.run_id, control_address="",
                            components=[orchestrator._spawn(plan, record, argv)])
    try:
        _wait_for_lines(record.log_path, 1)
        first_pid = record.pid
        os.killpg(first_pid, signal.SIGKILL)
        time.sleep(0.5)
        assert orchestrator.status(deployment) == {"learner-0": False}
        assert orchestrator.restart(plan, deployment, "learner-0") is False  # backing off
        deadline = time.monotonic() + 10
        while not orchestrator.restart(plan, deployment, "learner-0"):
            assert time.monotonic() < deadline, "no restart within the first backoff"
            time.sleep(0.1)
        assert record.restarts == 1 and record.pid != first_pid and record.argv == argv
        assert orchestrator.status(deployment) == {"learner-0": True}
        _wait_for_lines(record.log_path, 2)  # one log, appended by each start

        record.restarts = MAX_RESTARTS
        with pytest.raises(DeployError, match=f"learner-0 died {MAX_RESTARTS + 1} times"):
            orchestrator.restart(plan, deployment, "learner-0")
    finally:
        orchestrator.stop(deployment)
    assert orchestrator.status(deployment) == {"learner-0": False}
