"""Rounds completed and final accuracy under a dropout schedule vs no faults, and the time each dropout costs.

Two runs of the same seeded task (tests/fixtures/faulty_learners, no faults in the code) with N learners
and R rounds: one undisturbed, one where at the start of round r (r = 1..R) learner (r - 1) mod N is killed
with SIGKILL (its whole process group), so with R = 5 and N = 5 each learner is down for about 20% of the
rounds. FLOps restarts each killed learner; the round it was killed in closes at the deadline
(round_timeout_s) or when Flower reports the node unavailable. Prints per run: status, rounds completed,
rounds with a learner missing, restarts, final accuracy, wall time; then the time lost per dropout.

    python bench/resilience.py [--learners 5] [--rounds 5] [--round-timeout 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from common import FLOPS_CLI, REPO_ROOT, example_repo, load_average

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "faulty_learners"


def _state(workdir: Path) -> dict | None:
    states = list(workdir.glob("runs/*/state.json"))
    return json.loads(states[0].read_text()) if states else None


def _run(source: str, workdir: Path, args: argparse.Namespace, dropouts: bool) -> dict:
    argv = [str(FLOPS_CLI), "submit", source, "--workdir", str(workdir), "--json", "--learners", str(args.learners),
            "--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout), "--lr", "0.1"]
    load_before = load_average()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed: list[tuple[int, str]] = []
    while dropouts and proc.poll() is None:
        state = _state(workdir)
        next_round = len(killed) + 1
        # Round r starts once r - 1 rounds are done: kill that round's learner right then.
        if state and state["phase"] == "training" and state["rounds_completed"] == next_round - 1 \
                and next_round <= args.rounds:
            name = f"learner-{(next_round - 1) % args.learners}"
            pid = next(c["pid"] for c in state["deployment"]["components"] if c["name"] == name)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append((next_round, name))
        time.sleep(0.2)
    stdout, _ = proc.communicate(timeout=3600)
    wall = time.perf_counter() - start
    summary = json.loads(stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in Path(summary["run_dir"], "output", "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round" and e["round"] > 0]
    return {"summary": summary, "wall": wall, "killed": killed, "load": (load_before, load_average()),
            "missing_rounds": sum(1 for e in rounds if e.get("missing")),
            "durations": [round(e["duration_s"], 1) for e in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=30.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-resilience-"))
    source = example_repo(tmp, FIXTURE)
    print(f"# {args.learners} learners, {args.rounds} rounds, round_timeout_s {args.round_timeout}; work in {tmp}")
    results = {}
    for name, dropouts in (("no faults", False), ("dropouts", True)):
        workdir = tmp / name.replace(" ", "-")
        results[name] = result = _run(source, workdir, args, dropouts)
        s = result["summary"]
        print(f"  {name:9s} {s['status']} rounds {s['rounds_completed']}/{args.rounds} "
              f"rounds with a learner missing {result['missing_rounds']} restarts {sum(s['restarts'].values())} "
              f"accuracy {s['final_metrics']['accuracy']:.3f} wall {result['wall']:.1f} s "
              f"round durations {result['durations']} killed {result['killed']} load {result['load']}", flush=True)
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    lost = results["dropouts"]["wall"] - results["no faults"]["wall"]
    drops = max(1, len(results["dropouts"]["killed"]))
    print(f"\n  time lost per dropout: {lost / drops:.1f} s ({lost:.1f} s over {drops} dropouts)")


if __name__ == "__main__":
    main()
