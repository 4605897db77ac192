"""Seconds per round of the same app and data three ways: `flops submit`, plain Flower started by hand, bare compute.

(a) flops: the CLI with --json; per-round seconds from MLflow's round_duration_s, total wall time of the CLI.
    FLOps runs warm learners (flops_app/warm_executor.py); "flops-cold" sets FLOPS_COLD_LEARNERS=1, i.e.
    Flower's own fresh ClientApp process per message, for comparison.
(b) plain: `flops augment` once, then flower-superlink, N flower-supernode and `flwr run --stream` started here;
    per-round seconds from the ServerApp's own `[flops] {"event": "round", ...}` lines.
(c) compute: the task imported directly; per round, train() then test() for each partition in turn.
Variants change FLWR_SUPEREXEC_TASK_POLL_INTERVAL (Flower's default 1.0 s, FLOps' 0.1 s) and skip federated
evaluation (fraction-evaluate 0). Also measured: Python/torch import time in the run env and, from the plain
SuperNodes' time-stamped logs, how long a node holds each message (receive -> reply sent).

    python bench/round_overhead.py [--learners 2] [--rounds 3] [--repeat 2] [--configs flops plain ...]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (EXAMPLE_DIR, FLOPS_CLI, Stamped, example_repo, flops_events, flops_submit, fmt, free_port,
                    load_average, median_spread, mlflow_round_durations, wait_for_port)

from flops.dependencies import read_dependencies  # noqa: E402 - common puts the repo on sys.path
from flops.environment import ensure_run_env  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # name: (how, poll interval, federated evaluation)
    "flops": {"how": "flops", "poll": "0.1", "evaluate": True},  # FLOps as shipped: warm learners
    "flops-cold": {"how": "flops", "poll": "0.1", "evaluate": True, "cold": True},
    "flops-poll1": {"how": "flops", "poll": "1.0", "evaluate": True},
    "flops-noeval": {"how": "flops", "poll": "0.1", "evaluate": False},
    "plain-poll1": {"how": "plain", "poll": "1.0", "evaluate": True},  # Flower's defaults
    "plain": {"how": "plain", "poll": "0.1", "evaluate": True},  # what FLOps runs, by hand
    "plain-noeval": {"how": "plain", "poll": "0.1", "evaluate": False},
    "compute": {"how": "compute"},
}
RUN_TIMEOUT_S = 600.0

def run_flops(source: str, tmp: Path, learners: int, rounds: int, cfg: dict[str, Any]) -> dict[str, Any]:
    args = ["--learners", str(learners), "--rounds", str(rounds)]
    if not cfg["evaluate"]:
        config = tmp / "noeval.yaml"
        config.write_text("strategy:\n  fraction_evaluate: 0.0\n  min_evaluate_nodes: 0\n")
        args += ["--config", str(config)]
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": cfg["poll"], **({"FLOPS_COLD_LEARNERS": "1"} if cfg.get("cold") else {})}
    summary = flops_submit(source, tmp / "work", args, env=env)
    rounds_s = mlflow_round_durations(summary["tracking_uri"], summary["mlflow_run_id"])
    return {"rounds_s": rounds_s, "wall_s": summary["cli_wall_s"], "run_s": summary["duration_s"],
            "accuracy": summary["final_metrics"]["accuracy"], "load": summary["load_before"]}


def _flwr_env(env_bin: Path, flwr_home: Path, poll: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{env_bin}{os.pathsep}{env['PATH']}", FLWR_HOME=str(flwr_home), PYTHONUNBUFFERED="1",
               FLWR_SUPEREXEC_TASK_POLL_INTERVAL=poll)
    return env


def node_hold_times(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """(message type, seconds from 'Receiving' to 'Sending') per message a SuperNode handled."""
    held, pending = [], {}
    for stamp, line in lines:
        if match := re.search(r"Receiving: (\w+) message", line):
            pending[match.group(1)] = stamp
        elif (match := re.search(r"Sending: (\w+) message", line)) and match.group(1) in pending:
            held.append((match.group(1), stamp - pending.pop(match.group(1))))
    return held


def run_plain(app_dir: Path, env_bin: Path, tmp: Path, learners: int, rounds: int, cfg: dict[str, Any]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="plain-", dir=tmp))
    port = free_port()
    flwr_home = run_dir / "flwr_home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = _flwr_env(env_bin, flwr_home, cfg["poll"])
    run_config = (f"num-server-rounds={rounds} min-train-nodes={learners} min-available-nodes={learners} "
                  + ("min-evaluate-nodes=%d" % learners if cfg["evaluate"] else "fraction-evaluate=0.0 min-evaluate-nodes=0"))
    load = load_average()
    procs: list[Stamped] = []
    start = time.perf_counter()
    try:
        procs.append(Stamped("superlink", [str(env_bin / "flower-superlink"), "--insecure",
                                           "--disable-runtime-dependency-installation", "--port", str(port)],
                             env, run_dir))
        wait_for_port(port)
        for i in range(learners):
            procs.append(Stamped(f"supernode-{i}", [
                str(env_bin / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions={learners}"],
                env, run_dir))
        run_started = time.perf_counter()
        flwr = Stamped("flwr-run", [str(env_bin / "flwr"), "run", str(app_dir), "local", "--stream",
                                    "--run-config", run_config], env, run_dir)
        code = flwr.wait(RUN_TIMEOUT_S)
        end = time.perf_counter()
        procs.append(flwr)
    finally:
        for proc in reversed(procs):
            proc.stop()
    events = flops_events(flwr.lines)
    if code != 0 or not any(e["event"] == "finished" for e in events):
        raise RuntimeError(f"plain Flower run failed ({code}); logs in {run_dir}")
    rounds_ev = [e for e in events if e["event"] == "round" and e["round"] >= 1]
    held = [h for p in procs if p.name.startswith("supernode") for h in node_hold_times(p.lines)]
    return {"rounds_s": [e["duration_s"] for e in rounds_ev], "wall_s": end - start, "run_s": end - run_started,
            "accuracy": rounds_ev[-1]["central"]["accuracy"], "load": load,
            "held_train": [s for t, s in held if t == "train"], "held_eval": [s for t, s in held if t == "evaluate"]}


def run_compute(learners: int, rounds: int, evaluate: bool = True) -> dict[str, Any]:
    """Each round: every partition's train() in turn, then its test() (the federated evaluation), then central test."""
    import sys

    sys.path.insert(0, str(EXAMPLE_DIR))
    import task  # the example's task.py, plain PyTorch
    from flops.config import RunConfig

    cfg = RunConfig().training  # the defaults `flops submit` and `flops augment` use
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "templates" / "flower_app"))
    from flops_app.aggregation import weighted_average

    net = task.Net()
    weights = task.get_weights(net)
    _, central = task.load_data(0, 1, cfg.batch_size)
    load = load_average()
    rounds_s = []
    for _ in range(rounds):
        start = time.perf_counter()
        models, counts = [], []
        for pid in range(learners):
            trainloader, testloader = task.load_data(pid, learners, cfg.batch_size)
            task.set_weights(net, weights)
            task.train(net, trainloader, testloader, cfg.local_epochs, cfg.learning_rate, cfg.device)
            models.append(task.get_weights(net))
            counts.append(len(trainloader.dataset))
        weights = weighted_average(models, counts)
        if evaluate:
            for pid in range(learners):
                _, testloader = task.load_data(pid, learners, cfg.batch_size)
                task.set_weights(net, weights)
                task.test(net, testloader, cfg.device)
        task.set_weights(net, weights)
        _, accuracy = task.test(net, central, cfg.device)
        rounds_s.append(time.perf_counter() - start)
    return {"rounds_s": rounds_s, "wall_s": sum(rounds_s), "run_s": sum(rounds_s), "accuracy": accuracy,
            "load": load}


def import_times(python: Path, repeat: int) -> dict[str, list[float]]:
    """Seconds for a fresh interpreter of the run env to start and import what a ClientApp imports."""
    out: dict[str, list[float]] = {}
    for label, code in (("python (no imports)", "pass"), ("import flwr", "import flwr.clientapp"),
                        ("import torch, flwr", "import torch, flwr.clientapp"),
                        ("import torch, flwr, sklearn", "import torch, flwr.clientapp, sklearn.model_selection")):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([str(python), "-c", code], check=True)
            times.append(time.perf_counter() - start)
        out[label] = times
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["compute", "flops", "flops-cold", "plain", "flops-noeval"],
                        choices=list(CONFIGS))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-round-overhead-"))
    source = example_repo(tmp)
    python = ensure_run_env(read_dependencies(EXAMPLE_DIR), tmp / "work" / "cache")
    app_dir = tmp / "app"
    subprocess.run([str(FLOPS_CLI), "augment", source, "-o", str(app_dir), "--workdir", str(tmp / "work")],
                   check=True, capture_output=True)
    print(f"# {args.learners} learners, {args.rounds} rounds, {args.repeat} runs per configuration; work in {tmp}")
    print(f"# load before: {load_average()}  (shared 2-core machine)")

    imports = import_times(python, 3)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    for attempt in range(args.repeat):  # interleaved, so load drift hits every configuration alike
        for name in args.configs:
            cfg = CONFIGS[name]
            if cfg["how"] == "flops":
                result = run_flops(source, tmp, args.learners, args.rounds, cfg)
            elif cfg["how"] == "plain":
                result = run_plain(app_dir, python.parent, tmp, args.learners, args.rounds, cfg)
            else:
                result = run_compute(args.learners, args.rounds)
            results[name].append(result)
            print(f"  run {attempt + 1} {name:13s} per round {[round(s, 2) for s in result['rounds_s']]} "
                  f"wall {result['wall_s']:.1f} s  acc {result['accuracy']:.3f}  load {result['load']}", flush=True)

    print("\n## import time of a fresh process in the run env (3 runs, median [min-max])")
    for label, times in imports.items():
        print(f"  {label:28s} {fmt(times)}")
    print("\n## seconds per round: median over runs of each run's median round [spread over runs]; wall time")
    per_round: dict[str, float] = {}
    for name, runs in results.items():
        medians = [statistics.median(r["rounds_s"]) for r in runs]
        per_round[name] = median_spread(medians)[0]
        extra = ""
        if runs and "held_train" in runs[0]:
            held_t = [s for r in runs for s in r["held_train"]]
            held_e = [s for r in runs for s in r["held_eval"]]
            extra = f"  node holds train msg {fmt(held_t)}" + (f", evaluate msg {fmt(held_e)}" if held_e else "")
        compute = per_round.get("compute")
        if compute is not None and name != "compute":
            extra += f"  minus compute {per_round[name] - compute:.2f} s"
        print(f"  {name:13s} round {fmt(medians)}  wall {fmt([r['wall_s'] for r in runs])}  "
              f"run {fmt([r['run_s'] for r in runs])}  loads {[r['load'] for r in runs]}{extra}")
    print("\n## ratios (per-round medians)")
    for a, b in (("plain", "flops"), ("flops-cold", "flops"), ("flops", "compute"), ("plain", "compute"),
                 ("plain-poll1", "plain"), ("flops-poll1", "flops"), ("plain-noeval", "plain"),
                 ("flops-noeval", "flops")):
        if a in per_round and b in per_round:
            print(f"  {a}/{b}: {per_round[a] / per_round[b]:.2f}")
    print(f"# load after: {load_average()}")


if __name__ == "__main__":
    main()
