"""Cost of secure links: TLS + SuperNode authentication vs --insecure, and the per-run CA and keys.

1. Setup: a run's CA, one SuperLink certificate and N SuperNode key pairs (flops/credentials.py), median of
   --repeat attempts (target: < 2 s for 100 learners).
2. Runs: the same source and config submitted twice at the same time, once by default (TLS + authentication)
   and once with --insecure, so both see the same machine load. Prints seconds per round (the root's round
   events) and CPU seconds per round of each run's processes (every process carrying FLOPS_RUN_ID, sampled
   from /proc every 0.5 s; the last half second of short-lived flwr-clientapp processes can be missed, alike
   in both runs).

    python bench/link_security.py [--learners-setup 100] [--repeat 5] [--learners 2] [--rounds 3] [--skip-runs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import EXAMPLE_DIR, example_repo, flops_submit, fmt, load_average, round_events

from flops.credentials import RunAuthority
from flops.orchestrators.local import RUN_ID_ENV


def time_setup(learners: int, repeat: int) -> list[float]:
    times = []
    for attempt in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
            start = time.perf_counter()
            authority = RunAuthority(Path(tmp), f"bench-{attempt}")
            authority.server_credentials("superlink", ["127.0.0.1", "localhost"])
            for i in range(learners):
                authority.node_key(f"learner-{i}")
            times.append(time.perf_counter() - start)
    return times


class CpuSampler:
    """CPU seconds (user + system) of every live process per FLOPS_RUN_ID, highest value seen per process."""

    def __init__(self) -> None:
        self.cpu: dict[str, dict[int, float]] = defaultdict(dict)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        marker, tick = f"{RUN_ID_ENV}=".encode(), os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                    run_id = next((e[len(marker):].decode() for e in environ if e.startswith(marker)), None)
                    if run_id is None:
                        continue
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                    pid = int(entry.name)
                    self.cpu[run_id][pid] = max(self.cpu[run_id].get(pid, 0.0), seconds)
                except (OSError, ValueError, IndexError):
                    continue
            time.sleep(0.5)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return {run_id: sum(per_pid.values()) for run_id, per_pid in self.cpu.items()}


def side_by_side(learners: int, rounds: int, source: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    repo = example_repo(tmp, source)
    args = ["--learners", str(learners), "--rounds", str(rounds)]
    print(f"# {learners} learners, {rounds} rounds of {source.name}, both runs at once; work in {tmp}")
    flops_submit(repo, tmp / "work", ["--learners", "1", "--rounds", "1"], timeout_s=3600)  # warm the env cache
    sampler = CpuSampler()
    summaries: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda n=name, extra=extra: summaries.__setitem__(
        n, flops_submit(repo, tmp / "work", [*args, *extra], timeout_s=3600)))
        for name, extra in (("tls+auth", []), ("insecure", ["--insecure"]))]
    load = load_average()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = sampler.stop()
    print(f"load before {load}, after {load_average()}")
    print(f"  {'run':9s} {'status':8s} {'s/round':>22s} {'CPU s/round':>12s} {'CPU s total':>12s} {'accuracy':>9s}")
    per_round = {}
    for name in ("tls+auth", "insecure"):
        summary = summaries[name]
        durations = [e["duration_s"] for e in round_events(Path(summary["run_dir"]))]
        run_cpu = cpu.get(summary["run_id"], 0.0)
        per_round[name] = (statistics.median(durations), run_cpu / rounds)
        print(f"  {name:9s} {summary['status']:8s} {fmt(durations):>22s} {run_cpu / rounds:12.2f} {run_cpu:12.2f} "
              f"{summary['final_metrics']['accuracy']:9.3f}")
    (tls_s, tls_cpu), (plain_s, plain_cpu) = per_round["tls+auth"], per_round["insecure"]
    print(f"  ratio tls/insecure: seconds per round {tls_s / plain_s:.3f}x, CPU per round {tls_cpu / plain_cpu:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners-setup", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", type=Path, default=EXAMPLE_DIR, help="Folder of a task (default: digits-cnn).")
    parser.add_argument("--skip-runs", action="store_true")
    args = parser.parse_args()
    setup = time_setup(args.learners_setup, args.repeat)
    print(f"CA + SuperLink certificate + {args.learners_setup} SuperNode key pairs: {fmt(setup)} "
          f"(median [min-max] of {args.repeat}; load {load_average()})")
    if not args.skip_runs:
        side_by_side(args.learners, args.rounds, args.source)


if __name__ == "__main__":
    main()
