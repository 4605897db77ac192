"""Orchestrators by name: how a run's Flower processes are started, watched and stopped."""

from __future__ import annotations

from flops.errors import ConfigError
from flops.orchestrators.base import ComponentRecord, Deployment, Orchestrator
from flops.orchestrators.local import LocalOrchestrator

ORCHESTRATORS: dict[str, type[Orchestrator]] = {LocalOrchestrator.name: LocalOrchestrator}


def get_orchestrator(name: str) -> Orchestrator:
    """An orchestrator instance by name; an unknown name lists the known ones."""
    try:
        return ORCHESTRATORS[name]()
    except KeyError:
        known = ", ".join(sorted(ORCHESTRATORS))
        raise ConfigError(f"unknown orchestrator '{name}' (known: {known})") from None


__all__ = ["ComponentRecord", "Deployment", "Orchestrator", "get_orchestrator", "ORCHESTRATORS"]
