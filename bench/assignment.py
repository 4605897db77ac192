"""Time the label-balance and min-comm-cost assignment strategies beside balanced, for 1,000 and 10,000 learners.

Histograms are drawn from a Dirichlet(alpha) label skew (small alpha: each learner holds few classes); link
costs are uniform random. Prints seconds per strategy and the mean cluster KL from the global label mix.

    python bench/assignment.py [--learners 1000 10000] [--clusters 10] [--classes 10] [--alpha 0.1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flops.assignment import assign, cluster_label_kl  # noqa: E402
from flops.topology import Topology, topology_from_dict  # noqa: E402


def make_topology(learners: int, clusters: int, assignment: str, rng: np.random.Generator) -> Topology:
    names = [f"cluster-{k}" for k in range(clusters)]
    costs = rng.uniform(0.1, 5.0, size=(learners, clusters))
    return topology_from_dict(
        {
            "learners": [{"name": f"learner-{i}", "link_costs": dict(zip(names, costs[i].tolist()))} for i in range(learners)],
            "clusters": [{"name": n} for n in names],
            "assignment": assignment,
        },
        "bench",
    )


def best_of(repeat: int, topology: Topology, histograms: dict[str, list[int]]) -> tuple[float, Topology]:
    times, result = [], topology
    for _ in range(repeat):
        start = time.perf_counter()
        result = assign(topology, histograms)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'learners':>9} {'strategy':>14} {'seconds':>9} {'vs balanced':>12} {'mean KL':>10}")
    for n in args.learners:
        rng = np.random.default_rng(0)
        histograms = {
            f"learner-{i}": rng.multinomial(200, rng.dirichlet([args.alpha] * args.classes)).tolist() for i in range(n)
        }
        baseline = None
        for strategy in ("balanced", "label-balance", "min-comm-cost"):
            topology = make_topology(n, args.clusters, strategy, np.random.default_rng(1))
            seconds, assigned = best_of(args.repeat, topology, histograms)
            baseline = baseline or seconds
            kl = float(np.mean(list(cluster_label_kl(assigned, histograms).values())))
            print(f"{n:>9} {strategy:>14} {seconds:>9.3f} {seconds / baseline:>11.1f}x {kl:>10.2e}")


if __name__ == "__main__":
    main()
