"""Label-balance assignment: clusters whose label mix is close to the global one, from label histograms only."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from flops.assignment.base import AssignmentStrategy, capacities, in_partition_order, pinned
from flops.assignment.label_mix import LabelMix, histogram_matrix
from flops.topology import Topology

_EPS = 1e-12
_MIN_PASS_GAIN = 0.01  # stop once a pass improves the summed KL by less than 1%
_NEGLIGIBLE_MEAN_KL = 1e-6  # nats: a cluster this close to the global mix cannot be told from it


class LabelBalanceAssignment(AssignmentStrategy):
    """Minimises the sum over clusters of KL(cluster label mix || global label mix).

    Greedy, then a bounded local search; no exhaustive search, so 1,000 learners take well under a second:
    1. learners in order of how skewed their own histogram is (most skewed first) each join, among the
       emptiest clusters with room, the one where the summed KL grows least (capacity: own or ceil(N/K));
    2. up to `max_passes` passes over the learners, each trying to move the learner to a cluster with room
       and to swap it with `swap_candidates` sampled learners of other clusters, keeping the best improvement;
       a pass that gains less than 1%, or a mean cluster KL below 1e-6 nats, ends the search.
    The sample comes from a seeded generator, so the same inputs give the same assignment.
    """

    name: ClassVar[str] = "label-balance"

    def __init__(self, max_passes: int = 3, swap_candidates: int = 32, seed: int = 0) -> None:
        self.max_passes = max_passes
        self.swap_candidates = swap_candidates
        self.seed = seed

    def assign(self, topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
        if topology.is_flat:
            return {}
        raw = histogram_matrix(topology, label_histograms)
        mix = LabelMix(raw)
        state = _ClusterState(topology, mix, mix.restrict(raw))
        state.place_greedily()
        state.improve(self.max_passes, self.swap_candidates, np.random.default_rng(self.seed))
        clusters = [c.name for c in topology.clusters]
        result: dict[str, list[str]] = {c: [] for c in clusters}
        for i, name in enumerate(topology.learner_names()):
            result[clusters[state.cluster[i]]].append(name)
        return in_partition_order(topology, result)


class _ClusterState:
    """Per-cluster class sums, sizes and KLs, kept current as learners are placed, moved and swapped."""

    def __init__(self, topology: Topology, mix: LabelMix, counts: np.ndarray) -> None:
        self.mix = mix
        self.counts = counts
        n, k = len(topology.learners), len(topology.clusters)
        self.capacity = np.array(list(capacities(topology).values()))
        self.cluster = np.full(n, -1)
        home = {name: c for c, members in enumerate(pinned(topology).values()) for name in members}
        for i, name in enumerate(topology.learner_names()):
            self.cluster[i] = home.get(name, -1)
        self.movable = self.cluster < 0
        self.sums = np.zeros((k, counts.shape[1]))
        np.add.at(self.sums, self.cluster[~self.movable], counts[~self.movable])
        self.size = np.bincount(self.cluster[~self.movable], minlength=k)
        self.kl = mix.kl(self.sums)
        skew = mix.kl(counts)
        self.order = [i for i in np.argsort(-skew, kind="stable") if self.movable[i]]

    def place_greedily(self) -> None:
        for i in self.order:
            room = self.size < self.capacity
            # Only the emptiest clusters with room compete: clusters grow level, so none is left with the leftovers.
            room &= self.size == self.size[room].min()
            new_kl = self.mix.kl(self.sums + self.counts[i])
            k = int(np.argmin(np.where(room, new_kl - self.kl, np.inf)))
            self._add(i, k, new_kl[k])

    def improve(self, max_passes: int, swap_candidates: int, rng: np.random.Generator) -> None:
        movable = np.flatnonzero(self.movable)
        if movable.size < 2:
            return
        for _ in range(max_passes):
            before = self.kl.sum()
            if before <= _NEGLIGIBLE_MEAN_KL * len(self.kl):
                return
            for i in self.order:
                if not self._best_move(i):
                    self._best_swap(i, rng.choice(movable, min(swap_candidates, movable.size)))
            if before - self.kl.sum() <= _MIN_PASS_GAIN * before:
                return

    def _best_move(self, i: int) -> bool:
        a = self.cluster[i]
        room = (self.size < self.capacity) & (np.arange(len(self.size)) != a)
        if self.size[a] < 2 or not room.any():
            return False
        kl_a = self.mix.kl(self.sums[a] - self.counts[i])
        new_kl = self.mix.kl(self.sums + self.counts[i])
        change = np.where(room, kl_a + new_kl - self.kl[a] - self.kl, np.inf)
        b = int(np.argmin(change))
        if change[b] >= -_EPS:
            return False
        self._remove(i, kl_a)
        self._add(i, b, new_kl[b])
        return True

    def _best_swap(self, i: int, candidates: np.ndarray) -> bool:
        a = self.cluster[i]
        js = candidates[self.cluster[candidates] != a]
        if js.size == 0:
            return False
        bs = self.cluster[js]
        diff = self.counts[js] - self.counts[i]
        kl_a = self.mix.kl(self.sums[a] + diff)
        kl_b = self.mix.kl(self.sums[bs] - diff)
        change = kl_a + kl_b - self.kl[a] - self.kl[bs]
        best = int(np.argmin(change))
        if change[best] >= -_EPS:
            return False
        j, b = int(js[best]), int(bs[best])
        self.sums[a] += diff[best]
        self.sums[b] -= diff[best]
        self.kl[a], self.kl[b] = kl_a[best], kl_b[best]
        self.cluster[i], self.cluster[j] = b, a
        return True

    def _add(self, i: int, k: int, new_kl: float) -> None:
        self.cluster[i] = k
        self.sums[k] += self.counts[i]
        self.size[k] += 1
        self.kl[k] = new_kl

    def _remove(self, i: int, new_kl: float) -> None:
        k = self.cluster[i]
        self.sums[k] -= self.counts[i]
        self.size[k] -= 1
        self.kl[k] = new_kl
        self.cluster[i] = -1
