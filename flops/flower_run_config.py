"""The Flower run config FLOps passes to the root aggregator (override_config of the Control API's StartRun)."""

from __future__ import annotations

import json

from flops.plan import RunPlan


def root_overrides(plan: RunPlan, state_dir: str) -> dict[str, str | int | float]:
    """Run config for the root aggregator: the folder of its own host it keeps its checkpoint and events in
    (STATE_DIR, as its orchestrator placed it), and in a hierarchy, its K cluster nodes."""
    overrides: dict[str, str | int | float] = {"flops-output-dir": state_dir}
    members = ({str(c.index): c.name for c in plan.clusters} if plan.hierarchical
               else {str(l.partition_id): l.name for l in plan.learners})
    overrides["flops-members"] = json.dumps(members)
    costs = [c.cost_to_root for c in plan.clusters] + [c.learner_link_cost for c in plan.clusters]
    if plan.hierarchical:
        k = len(plan.clusters)
        # Clusters evaluate their learners every local round; the root evaluates centrally.
        quorum = plan.config.quorum(k)
        overrides.update({"fraction-evaluate": 0.0, "min-train-nodes": quorum, "min-evaluate-nodes": 0,
                          "min-available-nodes": quorum})
        if any(costs):
            overrides["flops-link-costs"] = json.dumps(
                {"clusters": {str(c.index): [c.cost_to_root, c.learner_link_cost] for c in plan.clusters}})
    return overrides
