"""Subprocess entry run in the run's environment: each learner partition's label histogram, never its data.

`python -m flops.label_probe CODE_DIR TASK_MODULE NUM_PARTITIONS BATCH_SIZE` prints one JSON line:
{"histograms": [[count of class 0, class 1, ...], ...]} in partition order. Used by the label-balance
assignment strategy; in a deployment each learner would compute its own row.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def _labels_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        return batch[1]
    if isinstance(batch, dict):
        for key in ("label", "labels", "target", "targets", "y"):
            if key in batch:
                return batch[key]
    raise TypeError("cannot find labels in a batch: expected (inputs, labels) or a dict with 'label'")


def histograms(task: Any, num_partitions: int, batch_size: int) -> list[list[int]]:
    counters = []
    for partition in range(num_partitions):
        trainloader, _ = task.load_data(partition, num_partitions, batch_size)
        counter: Counter[int] = Counter()
        for batch in trainloader:
            labels = _labels_of(batch)
            values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
            counter.update(int(v) for v in values)
        counters.append(counter)
    classes = max((max(c) for c in counters if c), default=-1) + 1
    return [[c.get(k, 0) for k in range(classes)] for c in counters]


def main(argv: list[str]) -> int:
    from flops.contract.probe import load_adapter

    code_dir, module, num_partitions, batch_size = argv
    task = load_adapter().load_task(module, Path(code_dir))  # load_data bound by parameter name, as on learners
    print(json.dumps({"histograms": histograms(task, int(num_partitions), int(batch_size))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
