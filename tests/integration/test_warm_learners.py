"""Warm learners: one process per learner and run serves every round, with the same results as Flower's
one-process-per-message path; a killed warm process is a lost learner for one round and leaves nothing behind.

The task (tests/fixtures/warm_probe_task) is seeded and writes "<call> <pid> <partition>" per load_data()
and train() call to probe.log, so the tests see which process did what.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES_DIR, FLOPS, FlopsResult, assert_no_process_left, flops_env, git_repo_of, wait_for

pytestmark = pytest.mark.slow

LEARNERS, ROUNDS = 2, 2


@dataclass
class ProbedRun:
    result: FlopsResult
    calls: list[tuple[str, int, str]]  # (call, pid, partition) in the order they happened
    final_weights: list[np.ndarray]
    run_dir: Path

    def pids(self, call: str, partition: str) -> list[int]:
        return [pid for c, pid, p in self.calls if c == call and p == partition]


def _submit(repo: Path, base: Path, cold: bool) -> ProbedRun:
    probe, workdir = base / "probe", base / "work"
    probe.mkdir(parents=True)
    env = flops_env(FLOPS_TEST_PROBE_DIR=str(probe), **({"FLOPS_COLD_LEARNERS": "1"} if cold else {}))
    done = subprocess.run([str(FLOPS), "submit", repo.as_uri(), "--learners", str(LEARNERS), "--rounds", str(ROUNDS),
                           "--round-timeout", "300", "--workdir", str(workdir), "--json"],
                          capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    result = FlopsResult(done.returncode, done.stdout, done.stderr, 0.0)
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert_no_process_left(summary["run_id"])
    calls = [(c, int(pid), p) for c, pid, p in (line.split() for line in (probe / "probe.log").read_text().splitlines())]
    with np.load(Path(summary["run_dir"]) / "output" / "final_model.npz") as saved:
        weights = [saved[k] for k in saved.files]
    return ProbedRun(result, calls, weights, Path(summary["run_dir"]))


@pytest.fixture(scope="module")
def probe_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return git_repo_of(FIXTURES_DIR / "warm_probe_task", tmp_path_factory.mktemp("warm") / "warm-probe-task")


@pytest.fixture(scope="module")
def warm_and_cold(probe_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProbedRun, ProbedRun]:
    base = tmp_path_factory.mktemp("warm-and-cold")
    return _submit(probe_repo, base / "warm", cold=False), _submit(probe_repo, base / "cold", cold=True)


@pytest.mark.timeout(1800)  # its fixture runs two federations, one of them on Flower's cold path
def test_each_learner_keeps_one_process_and_loads_its_data_once(warm_and_cold: tuple[ProbedRun, ProbedRun]) -> None:
    warm, cold = warm_and_cold
    learner_pids = set()
    for i in range(LEARNERS):
        trains = warm.pids("train", str(i))
        assert len(trains) == ROUNDS, warm.calls
        assert len(set(trains)) == 1, f"learner {i} trained in processes {trains}: not one warm process"
        # The learner's process loaded its partition once (the root's central test set and the model logger's
        # input example are loaded by processes of their own).
        assert [p for p in warm.pids("load_data", f"{i}/{LEARNERS}") if p in trains] == trains[:1], warm.calls
        learner_pids |= set(trains)
        # Its SuperNode ran Flower's loop with the short idle poll (prompt_supernode.py found what it replaces).
        log = (warm.run_dir / "logs" / f"learner-{i}.log").read_text()
        assert "[prompt-supernode] idle poll" in log, log[-2000:]
    assert len(learner_pids) == LEARNERS, warm.calls
    # The cold path, for contrast: a fresh process, and a fresh load_data(), per message.
    for i in range(LEARNERS):
        assert len(set(cold.pids("train", str(i)))) == ROUNDS, cold.calls
        assert len(cold.pids("load_data", f"{i}/{LEARNERS}")) >= ROUNDS, cold.calls


def test_a_seeded_task_ends_with_the_same_weights_warm_and_cold(warm_and_cold: tuple[ProbedRun, ProbedRun]) -> None:
    warm, cold = warm_and_cold
    assert len(warm.final_weights) == len(cold.final_weights) == 4  # fc1, fc2: weight and bias
    for got, expected in zip(warm.final_weights, cold.final_weights):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert warm.result.last_json()["final_metrics"] == pytest.approx(cold.result.last_json()["final_metrics"], abs=1e-6)


def _zombies_under(pids: set[int]) -> list[str]:
    """<defunct> processes whose parent is one of PIDS."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, rest = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            state, ppid = rest.split()[:2]
            if state == "Z" and int(ppid) in pids:
                found.append(f"{entry.name} {name.split('(', 1)[1]} (parent {ppid})")
    return found


def _run_processes(run_id: str) -> set[int]:
    from flops.orchestrators.local import processes_of_run

    return set(processes_of_run(run_id))


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:  # a process of the run that has just ended
        return None


def test_kill_9_of_a_warm_learner_mid_round_leaves_it_out_of_that_round_only(probe_repo: Path, tmp_path: Path) -> None:
    """A warm worker killed mid-round is a lost learner, not broken code: the round closes without it, the next
    task starts a new warm worker, the run finishes, and no zombie or process is left behind."""
    probe, workdir = tmp_path / "probe", tmp_path / "work"
    probe.mkdir()
    (probe / "hold").touch()  # every train() waits: the kill lands mid-round
    env = flops_env(FLOPS_TEST_PROBE_DIR=str(probe))
    proc = subprocess.Popen([str(FLOPS), "submit", probe_repo.as_uri(), "--learners", "2", "--rounds", "3",
                             "--round-timeout", "300", "--workdir", str(workdir), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        def training_learners() -> dict[str, int]:
            log = probe / "probe.log"
            found = {p: int(pid) for c, pid, p in (ln.split() for ln in log.read_text().splitlines()) if c == "train"} \
                if log.exists() else {}
            return found if len(found) == LEARNERS else {}

        pids = wait_for(training_learners, 600, "both learners to start training")
        run_id = next(p.name for p in (workdir / "runs").iterdir())
        assert not _zombies_under(_run_processes(run_id)), _zombies_under(_run_processes(run_id))
        # A learner is two processes: its SuperNode (which also takes and hands out the tasks) and the worker.
        group = [p for p in _run_processes(run_id) if _process_group(p) == os.getpgid(pids["1"])]
        supernode = int(Path(f"/proc/{pids['1']}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert sorted(group) == sorted([supernode, pids["1"]]), group
        assert b"warm_executor.py" in Path(f"/proc/{supernode}/cmdline").read_bytes()
        os.kill(pids["1"], signal.SIGKILL)
        (probe / "hold").unlink()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    result = FlopsResult(proc.returncode, stdout, stderr, 0.0)
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert summary["status"] == "FINISHED" and summary["rounds_completed"] == 3, summary
    rounds = [json.loads(line) for line in (Path(summary["run_dir"]) / "output" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in rounds if e["event"] == "round" and e["round"] >= 1]
    assert [e["missing"] for e in rounds] == [["learner-1"], [], []], rounds
    trains = [int(pid) for c, pid, p in (ln.split() for ln in (probe / "probe.log").read_text().splitlines())
              if c == "train" and p == "1"]
    assert trains[0] == pids["1"] and len(set(trains[1:])) == 1 and pids["1"] not in trains[1:], trains
    assert "Traceback" not in result.stderr, result.stderr
    assert_no_process_left(run_id)
    assert not _zombies_under({os.getpid()}), "flops left <defunct> children"
