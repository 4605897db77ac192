"""Seconds from `flops submit` to the first finished global round, per orchestrator, same app and settings.

The CLI is started here; the run's event log (output/events.jsonl) is watched for the first round >= 1, and the
state file for the moment the controller starts the Flower run (deployment done). Container orchestrators get
--image (an image already in the registry), so no build is timed. Every run is TLS with SuperNode authentication
(the default), or --insecure for all.

    python bench/first_round.py --image REF [--orchestrators local podman-kube] [--repeat 2] [--insecure]
    (podman-kube needs CONTAINERS_CONF naming a containers.conf with runtime runc on Debian's podman 4.3)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import FLOPS_CLI, example_repo, fmt, load_average, round_events


def first_round(source: str, workdir: Path, orchestrator: str, image: str | None, learners: int,
                config: str | None = None, insecure: bool = False) -> tuple[float, float]:
    """(seconds to the Flower run starting, seconds to the first round's event) of one submit."""
    argv = [str(FLOPS_CLI), "submit", source, "--workdir", str(workdir), "--json", "--learners", str(learners),
            "--rounds", "2", "--orchestrator", orchestrator, *(["--image", image] if image else []),
            *(["--insecure"] if insecure else []),
            *(["--config", config] if config else [])]
    before = set(workdir.glob("runs/*"))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deployed = None
    try:
        while proc.poll() is None:
            for run_dir in set(workdir.glob("runs/*")) - before:
                state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
                if deployed is None and state.get("flower_run_id"):
                    deployed = time.perf_counter() - start
                if round_events(run_dir):
                    return deployed or float("nan"), time.perf_counter() - start
            time.sleep(0.1)
        raise RuntimeError(f"{orchestrator}: run ended before a round ({proc.returncode}): {proc.stderr.read()[-800:]}")
    finally:
        proc.wait(timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="FLOps image of the example (from `flops build`) for container orchestrators")
    parser.add_argument("--source", help="git URL of the app (default: a copy of examples/digits-cnn)")
    parser.add_argument("--orchestrators", nargs="+", default=["local", "podman-kube"])
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--config", help="run config file (e.g. a longer startup_timeout_s on a busy machine)")
    parser.add_argument("--workdir", type=Path, help="work dir to reuse (its cached run environment)")
    parser.add_argument("--insecure", action="store_true", help="every run --insecure (plain-text Flower links)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flops-first-round-") as tmp:
        source = args.source or example_repo(Path(tmp))
        workdir = args.workdir or Path(tmp) / "work"
        if args.workdir is None:  # one untimed run first: the run environment is cached, as in everyday use
            first_round(source, workdir, "local", None, args.learners, args.config, args.insecure)
        load = load_average()
        for orchestrator in args.orchestrators:
            image = None if orchestrator == "local" else args.image
            results = [first_round(source, workdir, orchestrator, image, args.learners, args.config, args.insecure)
                       for _ in range(args.repeat)]
            print(f"{orchestrator}{' --insecure' if args.insecure else ' (TLS)'}: flower run started {fmt([r[0] for r in results])}, "
                  f"first round {fmt([r[1] for r in results])} (n={args.repeat}, load {load} -> {load_average()})",
                  flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
