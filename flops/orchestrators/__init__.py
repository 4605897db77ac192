"""Orchestrators by name: how a run's Flower processes are started, watched and stopped."""

from __future__ import annotations

from flops.errors import ConfigError
from flops.orchestrators.base import ComponentRecord, Deployment, Orchestrator
from flops.orchestrators.docker import DockerOrchestrator
from flops.orchestrators.kubernetes import KubernetesOrchestrator
from flops.orchestrators.local import LocalOrchestrator
from flops.orchestrators.podman_kube import PodmanKubeOrchestrator
from flops.plan import KubernetesTarget, RunPlan

ORCHESTRATORS: dict[str, type[Orchestrator]] = {
    LocalOrchestrator.name: LocalOrchestrator,
    DockerOrchestrator.name: DockerOrchestrator,
    KubernetesOrchestrator.name: KubernetesOrchestrator,
    PodmanKubeOrchestrator.name: PodmanKubeOrchestrator,
}
# Orchestrators that run components from a FLOps image (`flops build`) rather than the run's environment.
NEEDS_IMAGE = frozenset({DockerOrchestrator.name, KubernetesOrchestrator.name, PodmanKubeOrchestrator.name})
# Orchestrators whose run can be written out as manifests (`flops export`).
EXPORTERS = frozenset({KubernetesOrchestrator.name, PodmanKubeOrchestrator.name})


def orchestrator_class(name: str) -> type[Orchestrator]:
    """The orchestrator registered under NAME; an unknown name lists the known ones."""
    try:
        return ORCHESTRATORS[name]
    except KeyError:
        known = ", ".join(sorted(ORCHESTRATORS))
        raise ConfigError(f"unknown orchestrator '{name}' (known: {known})") from None


def get_orchestrator(name: str, image: str | None = None, kubernetes: KubernetesTarget | None = None) -> Orchestrator:
    """An orchestrator instance by name; container orchestrators need the image to run."""
    cls = orchestrator_class(name)
    if name in EXPORTERS:
        target = kubernetes or KubernetesTarget()
        return cls(image=image, namespace=target.namespace, context=target.context)  # type: ignore[call-arg]
    if name in NEEDS_IMAGE:
        if not image:
            raise ConfigError(f"--orchestrator {name} runs a FLOps image: build one with `flops build` and pass --image")
        return cls(image=image)  # type: ignore[call-arg]
    return cls()


def orchestrator_for(plan: RunPlan) -> Orchestrator:
    """The orchestrator that runs (or ran) PLAN, with its image and Kubernetes target."""
    return get_orchestrator(plan.orchestrator, plan.image, plan.kubernetes)


__all__ = ["ComponentRecord", "Deployment", "Orchestrator", "get_orchestrator", "orchestrator_class", "orchestrator_for", "ORCHESTRATORS", "NEEDS_IMAGE", "EXPORTERS"]
