"""Flat vs hierarchical FL with the same learner work, and the aggregation throughput of weighted_average.

Runs: 8 learners flat for F rounds, and 8 learners in 2 and 4 clusters for G global x L local rounds (G x L = F,
so every learner trains the same number of times). Prints wall time, bytes into the root (bytes_to_root),
bytes over every link (bytes_total) and final central accuracy side by side. Then times the dtype-preserving
weighted_average (templates/flower_app/flops_app/aggregation.py) over M models of ~S MB in MB of updates per
second, against a plain numpy sum of the same arrays as the memory-bandwidth baseline.

    python bench/hfl.py [--learners 8] [--flat-rounds 2] [--global-rounds 1] [--local-rounds 2] [--clusters 2 4]
                        [--repeat 2] [--models 8] [--model-mb 10] [--skip-runs]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO_ROOT, example_repo, flops_submit, fmt, load_average, median_spread, round_events

AGGREGATION_PY = REPO_ROOT / "templates" / "flower_app" / "flops_app" / "aggregation.py"


def _weighted_average():  # noqa: ANN202 - the function as the template ships it
    spec = importlib.util.spec_from_file_location("flops_aggregation", AGGREGATION_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weighted_average


def run_federations(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hfl-"))
    source = example_repo(tmp)
    common_args = ["--learners", str(args.learners), "--epochs", str(args.epochs)]
    configs = {"flat": ["--rounds", str(args.flat_rounds)]}
    for k in args.clusters:
        configs[f"{k} clusters"] = ["--clusters", str(k), "--rounds", str(args.global_rounds),
                                    "--local-rounds", str(args.local_rounds)]
    print(f"# {args.learners} learners, {args.epochs} epoch(s); flat {args.flat_rounds} rounds, clusters "
          f"{args.global_rounds} global x {args.local_rounds} local; work in {tmp}")
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for attempt in range(args.repeat):
        for name, extra in configs.items():
            summary = flops_submit(source, tmp / "work", [*common_args, *extra], timeout_s=1800)
            rounds = [e["duration_s"] for e in round_events(Path(summary["run_dir"]))]
            results[name].append(summary)
            print(f"  run {attempt + 1} {name:11s} {summary['status']} wall {summary['cli_wall_s']:.1f} s "
                  f"(run {summary['duration_s']:.1f} s) global rounds {[round(r, 1) for r in rounds]} "
                  f"to_root {summary['bytes_to_root']} total {summary['bytes_total']} "
                  f"acc {summary['final_metrics']['accuracy']:.3f} load {summary['load_before']}", flush=True)
    print("\n## median [min-max] over runs")
    flat_wall = median_spread([s["cli_wall_s"] for s in results["flat"]])[0]
    flat_root = statistics.median(s["bytes_to_root"] for s in results["flat"])
    print(f"  {'config':11s} {'wall (CLI)':>24s} {'wall/flat':>9s} {'bytes_to_root':>14s} {'vs flat':>7s} "
          f"{'bytes_total':>12s} {'accuracy':>20s}  loads")
    for name, runs in results.items():
        wall = [s["cli_wall_s"] for s in runs]
        to_root = statistics.median(s["bytes_to_root"] for s in runs)
        total = statistics.median(s["bytes_total"] for s in runs)
        acc = [s["final_metrics"]["accuracy"] for s in runs]
        print(f"  {name:11s} {fmt(wall):>24s} {median_spread(wall)[0] / flat_wall:9.2f} {to_root:14.0f} "
              f"{to_root / flat_root:7.2f} {total:12.0f} {fmt(acc, ''):>20s}  {[s['load_before'] for s in runs]}")


def _model(rng: np.random.Generator, mb: float) -> list[np.ndarray]:
    """A ~MB-sized model: float32 conv/linear-like layers plus a BatchNorm-style int64 counter."""
    n = int(mb * 1e6 / 4)
    sizes = [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8]
    return [rng.standard_normal(s, dtype=np.float32) for s in sizes] + [np.array(7 + rng.integers(3), dtype=np.int64)]


def _best_of(repeat: int, fn) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def aggregation_throughput(models_n: int, model_mb: float, repeat: int) -> None:
    weighted_average = _weighted_average()
    rng = np.random.default_rng(0)
    models = [_model(rng, model_mb) for _ in range(models_n)]
    weights = [float(100 + i) for i in range(models_n)]
    mb = sum(layer.nbytes for m in models for layer in m) / 1e6
    stacked = [np.stack(layers) for layers in zip(*models)]

    def sum_stacked() -> None:
        for s in stacked:
            np.sum(s, axis=0)

    def sum_loop() -> None:
        for layers in zip(*models):
            acc = np.zeros_like(layers[0])
            for layer in layers:
                acc += layer

    def inplace_f64() -> None:
        # Candidate: same float64 maths and dtype handling, no temporaries per (model, layer).
        factors = [w / sum(weights) for w in weights]
        for layers in zip(*models):
            acc = np.zeros(layers[0].shape, dtype=np.float64)
            scratch = np.empty_like(acc)
            for layer, f in zip(layers, factors):
                np.multiply(layer, f, out=scratch)
                acc += scratch
            dtype = layers[0].dtype
            (acc if np.issubdtype(dtype, np.floating) else np.rint(acc)).astype(dtype)

    load = load_average()
    rows = [("weighted_average (FLOps)", _best_of(repeat, lambda: weighted_average(models, weights))),
            ("numpy sum, pre-stacked", _best_of(repeat, sum_stacked)),
            ("numpy += loop (float32)", _best_of(repeat, sum_loop)),
            ("candidate: in-place float64", _best_of(repeat, inplace_f64))]
    print(f"\n## aggregation of {models_n} models x {mb / models_n:.1f} MB = {mb:.0f} MB of updates, {repeat} runs, "
          f"load {load} -> {load_average()}")
    base = statistics.median(rows[1][1])
    for label, times in rows:
        med = statistics.median(times)
        print(f"  {label:28s} {fmt(times)}  {mb / med:8.0f} MB/s  time / pre-stacked sum {med / base:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--flat-rounds", type=int, default=2)
    parser.add_argument("--global-rounds", type=int, default=1)
    parser.add_argument("--local-rounds", type=int, default=2)
    parser.add_argument("--clusters", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--model-mb", type=float, default=10.0)
    parser.add_argument("--skip-runs", action="store_true", help="only the aggregation throughput")
    args = parser.parse_args()
    print(f"# load before: {load_average()}  (shared 2-core machine)")
    if not args.skip_runs:
        run_federations(args)
    aggregation_throughput(args.models, args.model_mb, 7)
    print(f"# load after: {load_average()}")


if __name__ == "__main__":
    main()
