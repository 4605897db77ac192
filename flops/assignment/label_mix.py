"""Learners' label histograms (counts per class, never data) and the KL divergence of a label mix from the global one."""

from __future__ import annotations

import numpy as np

from flops.topology import Topology


def histogram_matrix(topology: Topology, label_histograms: dict[str, list[int]] | None) -> np.ndarray:
    """learners x classes counts in partition order; ConfigError when a histogram is missing, unknown or malformed."""
    if not label_histograms:
        raise topology.config_error(
            "assignment", f"'{topology.assignment}' needs each learner's label histogram (counts per class); none were given"
        )
    names = topology.learner_names()
    unknown = sorted(set(label_histograms) - set(names))
    if unknown:
        raise topology.config_error("label_histograms", f"unknown learner(s) {', '.join(unknown[:8])}")
    missing = [name for name in names if name not in label_histograms]
    if missing:
        raise topology.config_error("label_histograms", f"no histogram from learner(s) {', '.join(missing[:8])}")
    lengths = {len(label_histograms[name]) for name in names}
    if len(lengths) != 1 or 0 in lengths:
        raise topology.config_error("label_histograms", f"histograms must have one length > 0 (got lengths {sorted(lengths)})")
    counts = np.array([label_histograms[name] for name in names], dtype=float)
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise topology.config_error("label_histograms", "counts must be finite and non-negative")
    if counts.sum() == 0:
        raise topology.config_error("label_histograms", "every histogram is empty: no labels to balance")
    return counts


class LabelMix:
    """KL(q || p) of label mixes q against the global mix p, vectorised over rows of class counts."""

    def __init__(self, counts: np.ndarray) -> None:
        totals = counts.sum(axis=0)
        self.support = totals > 0  # classes nobody holds cannot appear in any cluster
        self.log_p = np.log(totals[self.support] / totals.sum())

    def restrict(self, counts: np.ndarray) -> np.ndarray:
        """COUNTS with the classes nobody holds dropped (do this once before calling kl())."""
        return counts[..., self.support]

    def kl(self, counts: np.ndarray) -> np.ndarray:
        """KL divergence (nats) of each row's label mix from the global mix; 0 for an empty row."""
        totals = counts.sum(axis=-1, keepdims=True)
        q = counts / np.where(totals > 0, totals, 1.0)
        positive = q > 0
        log_q = np.log(np.where(positive, q, 1.0))
        return np.where(positive, q * (log_q - self.log_p), 0.0).sum(axis=-1)


def cluster_label_kl(topology: Topology, histograms: dict[str, list[int]]) -> dict[str, float]:
    """Each cluster's KL divergence (nats) from the global label mix; {} for a flat topology."""
    if topology.is_flat:
        return {}
    counts = histogram_matrix(topology, histograms)
    mix = LabelMix(counts)
    counts = mix.restrict(counts)
    index = {name: i for i, name in enumerate(topology.learner_names())}
    sums = np.array([counts[[index[n] for n in c.learners]].sum(axis=0) for c in topology.clusters])
    return {c.name: float(v) for c, v in zip(topology.clusters, mix.kl(sums))}
