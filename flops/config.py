"""The run configuration a user writes (YAML) or passes as flags, validated by pydantic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flops.errors import ConfigError


class StrategyConfig(BaseModel):
    """Server-side strategy, named as in Flower's tutorials."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavg"] = "fedavg"
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, description="Fraction of learners sampled for training each round.")
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of learners sampled for evaluation.")
    min_train_nodes: int | None = Field(None, ge=1, description="Minimum learners per training round (default: all).")
    min_evaluate_nodes: int | None = Field(None, ge=0, description="Minimum learners per evaluation round (default: all).")
    min_available_nodes: int | None = Field(None, ge=1, description="Learners that must be connected before a round starts (default: all).")


class TrainingConfig(BaseModel):
    """What each learner does in a round."""

    model_config = ConfigDict(extra="forbid")

    local_epochs: int = Field(1, ge=1, description="Epochs of local training per round.")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    device: str = Field("cpu", description="torch device string passed to train() and test().")


# Kubernetes resource quantities, e.g. 500m, 2, 1.5, 256Mi, 1G.
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]
ResourceName = Literal["cpu", "memory", "ephemeral-storage"]


class ResourceRequirements(BaseModel):
    """Requests and limits of one kind of component, in Kubernetes quantities."""

    model_config = ConfigDict(extra="forbid")

    requests: dict[ResourceName, Quantity] = Field(default_factory=dict, description="e.g. {cpu: 500m, memory: 512Mi}")
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict, description="e.g. {cpu: '2', memory: 2Gi}")


class ComponentResources(BaseModel):
    """Resources per kind of component, for orchestrators that schedule (kubernetes)."""

    model_config = ConfigDict(extra="forbid")

    learner: ResourceRequirements | None = None
    aggregator: ResourceRequirements | None = Field(None, description="SuperLinks and cluster aggregators.")


class RunConfig(BaseModel):
    """Everything that shapes one federated run; flags on `flops submit` override the file."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, description="Global rounds.")
    learners: int = Field(2, ge=1, description="Learners (SuperNodes); learner i trains on partition i of N.")
    strategy: StrategyConfig = StrategyConfig()
    training: TrainingConfig = TrainingConfig()
    clusters: int = Field(0, ge=0, description="Cluster aggregators between learners and root (0 = flat FL).")
    local_rounds: int = Field(1, ge=1, description="Hierarchical FL: cluster rounds per global round.")
    assignment: str = Field("balanced", description="How learners are assigned to clusters: manual, balanced, min-comm-cost, label-balance.")
    target_accuracy: float | None = Field(None, gt=0, le=1, description="Stop after the global round whose central accuracy reaches this.")
    comm_budget: float | None = Field(None, gt=0, description="Stop before a global round that would exceed this communication cost (cost units, or MB without link costs).")
    round_timeout_s: float = Field(600.0, gt=0, description="A round that takes longer fails the run.")
    startup_timeout_s: float = Field(120.0, gt=0, description="Time allowed for the SuperLink and learners to come up.")
    resources: ComponentResources | None = Field(None, description="Kubernetes requests and limits per kind of component.")

    @model_validator(mode="after")
    def _node_minimums_fit(self) -> RunConfig:
        if self.clusters > self.learners:
            raise ValueError(f"clusters = {self.clusters} exceeds learners = {self.learners}")
        for field in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            value = getattr(self.strategy, field)
            if value is not None and value > self.learners:
                raise ValueError(f"strategy.{field} = {value} exceeds learners = {self.learners}")
        return self

    def min_nodes(self, field: str) -> int:
        """A strategy minimum, defaulting to every learner (a local run waits for all of them)."""
        value = getattr(self.strategy, field)
        return self.learners if value is None else value


def _first_error_line(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{origin}: field '{where}': {err['msg']}"


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Read the YAML file (if any), apply dotted-key overrides from flags, validate.

    `overrides` maps dotted field names (e.g. "training.batch_size") to values; None values are ignored.
    """
    data: dict[str, Any] = {}
    origin = "flags"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded or {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc, origin)) from None


def config_json_schema() -> str:
    """The published JSON schema of the config file (docs/schema/config.schema.json)."""
    return json.dumps(RunConfig.model_json_schema(), indent=2, sort_keys=True) + "\n"
