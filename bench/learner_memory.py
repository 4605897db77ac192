"""Memory of a learner's host and round time, for 3, 12 and 24 learners of the wine MLP (issue 14's targets).

Submits bench/wine_mlp as a flat run per learner count (detached), and samples every component's process group
(a learner: the warm launcher, its flower-supernode and the run's warm worker) every second with psutil:
- per learner: the peak of the summed RSS of its group (an upper bound for the learner's host: pages shared
  between its processes count once per process) and of the summed USS (pages only those processes hold);
- the whole run: the peak summed RSS of every process carrying the run id (root SuperLink, ServerApp, all learners);
- seconds per round (the root's round events), median over the rounds after the first.
Baseline, same run: the task alone, in one plain Python process without Flower or FLOps (its imports,
load_data, then train and test once per round), peak RSS. What a learner's host holds above it is FLOps' and
Flower's cost.
Target: a learner's host <= 400 MB RSS; round time growing no faster than linearly in learners.

    python bench/learner_memory.py [--learners 3 12 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
from common import FLOPS_CLI, REPO_ROOT, example_repo, load_average, round_events

from flops.orchestrators.local import RUN_ID_ENV, processes_of_run  # noqa: E402 - common puts the repo on sys.path
from flops.runstate import TERMINAL  # noqa: E402

TASK_DIR = REPO_ROOT / "bench" / "wine_mlp"
MB = 1024 * 1024
# The wine MLP's own work in one process, as a user would run it without federated learning.
TASK_ALONE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import task
trainloader, testloader = task.load_data(0, int(sys.argv[2]))
net = task.Net()
for _ in range(int(sys.argv[3])):
    task.train(net, trainloader, 1)
    task.test(net, testloader)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def task_alone_rss(learners: int, rounds: int) -> int:
    """Peak RSS (bytes) of the task run by itself in plain Python: the baseline for a learner's host."""
    done = subprocess.run([sys.executable, "-c", TASK_ALONE, str(TASK_DIR), str(learners), str(rounds)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def _state(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "runs" / run_id / "state.json").read_text())


def _sample(run_id: str, learner_groups: dict[int, str]) -> tuple[dict[str, int], dict[str, int], int]:
    """RSS and USS per learner (summed over its process group), and RSS of the whole run."""
    rss: dict[str, int] = defaultdict(int)
    uss: dict[str, int] = defaultdict(int)
    total = 0
    for pid in processes_of_run(run_id):
        try:
            proc = psutil.Process(pid)
            info = proc.memory_full_info()
            group = os.getpgid(pid)
        except (psutil.Error, ProcessLookupError):
            continue
        total += info.rss
        name = learner_groups.get(group)
        if name is not None:
            rss[name] += info.rss
            uss[name] += info.uss
    return rss, uss, total


def measure(source: str, learners: int, rounds: int, workdir: Path) -> dict:
    argv = [str(FLOPS_CLI), "submit", source, "--learners", str(learners), "--rounds", str(rounds),
            "--round-timeout", "1200", "--workdir", str(workdir), "--detach", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"flops submit failed: {done.stderr.strip()[-800:]}")
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    peak_rss: dict[str, int] = defaultdict(int)
    peak_uss: dict[str, int] = defaultdict(int)
    peak_total = 0
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        state = _state(workdir, run_id)
        if state["status"] in TERMINAL:
            break
        components = (state.get("deployment") or {}).get("components", [])
        groups = {c["pid"]: c["name"] for c in components if c["role"] == "learner" and c.get("pid")}
        if groups:
            rss, uss, total = _sample(run_id, groups)
            for name in rss:
                peak_rss[name] = max(peak_rss[name], rss[name])
                peak_uss[name] = max(peak_uss[name], uss[name])
            peak_total = max(peak_total, total)
        time.sleep(1.0)
    state = _state(workdir, run_id)
    durations = [e["duration_s"] for e in round_events(workdir / "runs" / run_id) if "duration_s" in e]
    return {
        "learners": learners, "status": state["status"], "run_id": run_id,
        "learner_rss_mb_max": max(peak_rss.values(), default=0) / MB,
        "learner_rss_mb_median": statistics.median(peak_rss.values()) / MB if peak_rss else 0,
        "learner_uss_mb_max": max(peak_uss.values(), default=0) / MB,
        "run_rss_mb": peak_total / MB,
        "round_s": durations,
        "round_s_median_after_first": statistics.median(durations[1:]) if len(durations) > 1 else None,
        "load": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, nargs="+", default=[3, 12, 24])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        source = example_repo(Path(tmp), TASK_DIR)
        workdir = Path(tmp) / "work"
        print(f"# wine MLP, flat, {args.rounds} rounds; load before {load_average()}; {RUN_ID_ENV} groups sampled 1/s")
        alone = task_alone_rss(min(args.learners), args.rounds) / MB
        print(f"# baseline: the task alone in plain Python (no Flower, no FLOps), peak RSS {alone:.0f} MB")
        print("learners  status    learner RSS max/median MB  above the task alone MB  learner USS max MB  run RSS MB"
              "  s/round (after 1st)  load")
        for count in args.learners:
            r = measure(source, count, args.rounds, workdir)
            per_round = "-" if r["round_s_median_after_first"] is None else f"{r['round_s_median_after_first']:.1f}"
            print(f"{count:8d}  {r['status']:8s}  {r['learner_rss_mb_max']:10.0f} / {r['learner_rss_mb_median']:<10.0f}"
                  f"  {r['learner_rss_mb_max'] - alone:23.0f}  {r['learner_uss_mb_max']:18.0f}  {r['run_rss_mb']:10.0f}  {per_round:>19s}  {r['load']}",
                  flush=True)
            print(f"#   rounds {[round(d, 1) for d in r['round_s']]}", flush=True)


if __name__ == "__main__":
    main()
