"""The run configuration a user writes (YAML) or passes as flags, validated by pydantic."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from flops.errors import ConfigError

# Every number a user gives is finite, and an integer is an integer (YAML `true` is not 1). The upper bounds
# catch typos (`--rounds 99999999999999999999`) long before Flower's 64-bit config values would.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_ROUNDS = 100_000
MAX_LEARNERS = 10_000


# Each strategy's own parameters (keyword arguments of its class in flwr.serverapp.strategy).
STRATEGY_PARAMS: dict[str, frozenset[str]] = {
    "fedavg": frozenset(),
    "fedprox": frozenset({"proximal_mu"}),
    "fedmedian": frozenset(),
    "trimmed-mean": frozenset({"beta"}),
    "krum": frozenset({"num_malicious_nodes"}),
    "fedadam": frozenset({"eta", "eta_l", "beta_1", "beta_2", "tau"}),
}


class StrategyConfig(BaseModel):
    """Server-side strategy, named as in Flower's tutorials."""

    model_config = _STRICT

    name: Literal["fedavg", "fedprox", "fedmedian", "trimmed-mean", "krum", "fedadam"] = Field(
        "fedavg", description="Aggregation: fedavg, fedprox, fedmedian, trimmed-mean, krum (robust to poisoned updates) or fedadam.")
    params: dict[str, float] = Field({}, description="The strategy's own parameters, e.g. {beta: 0.2} for trimmed-mean.")
    min_fit_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Quorum: fraction of learners (at least 1) whose accepted updates close a round.")
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, description="Fraction of learners sampled for training each round.")
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of learners sampled for evaluation.")
    min_train_nodes: StrictInt | None = Field(None, ge=1, le=MAX_LEARNERS, description="Minimum learners per training round (default: the quorum).")
    min_evaluate_nodes: StrictInt | None = Field(None, ge=0, le=MAX_LEARNERS, description="Minimum learners per evaluation round (default: the quorum).")
    min_available_nodes: StrictInt | None = Field(None, ge=1, le=MAX_LEARNERS, description="Learners that must be connected before a round starts (default: the quorum).")

    @model_validator(mode="after")
    def _params_known(self) -> StrategyConfig:
        for key in self.params:
            if key not in STRATEGY_PARAMS[self.name]:
                known = ", ".join(sorted(STRATEGY_PARAMS[self.name])) or "none"
                raise ValueError(f"strategy.params.{key}: not a parameter of {self.name} (known: {known})")
        return self


class TrainingConfig(BaseModel):
    """What each learner does in a round."""

    model_config = _STRICT

    local_epochs: StrictInt = Field(1, ge=1, le=MAX_ROUNDS, description="Epochs of local training per round.")
    batch_size: StrictInt = Field(32, ge=1, le=2**31 - 1)
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

    model_config = _STRICT

    rounds: StrictInt = Field(3, ge=1, le=MAX_ROUNDS, description="Global rounds.")
    learners: StrictInt = Field(2, ge=1, le=MAX_LEARNERS, description="Learners (SuperNodes); learner i trains on partition i of N.")
    strategy: StrategyConfig = StrategyConfig()
    training: TrainingConfig = TrainingConfig()
    clusters: StrictInt = Field(0, ge=0, le=MAX_LEARNERS, description="Cluster aggregators between learners and root (0 = flat FL).")
    local_rounds: StrictInt = Field(1, ge=1, le=MAX_ROUNDS, description="Hierarchical FL: cluster rounds per global round.")
    assignment: str = Field("balanced", description="How learners are assigned to clusters: manual, balanced, min-comm-cost, label-balance.")
    target_accuracy: float | None = Field(None, gt=0, le=1, description="Stop after the global round whose central accuracy reaches this.")
    comm_budget: float | None = Field(None, gt=0, description="Stop before a global round that would exceed this communication cost (cost units, or MB without link costs).")
    round_timeout_s: float = Field(600.0, gt=0, description="Round deadline: the round closes with the replies it has; learners that did not reply are left out.")
    max_failed_rounds: int = Field(2, ge=1, description="The run fails when this many rounds in a row miss the quorum.")
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
        if self.strategy.name == "krum":
            self._check_krum()
        return self

    def _check_krum(self) -> None:
        """Krum scores each update by its n - f - 2 nearest others: with fewer than 2f + 3 updates to choose
        from it cannot outvote f poisoned ones (and with n - f - 2 <= 0 it picks arbitrarily)."""
        f = self.strategy.params.get("num_malicious_nodes", 0)
        if f != int(f) or f < 0:
            raise ValueError(f"strategy.params.num_malicious_nodes = {f}: must be a whole number >= 0")
        groups = {"learners": self.learners} if self.clusters == 0 else {
            "clusters (updates at the root)": self.clusters,
            "learners per cluster (at least learners // clusters)": self.learners // self.clusters}
        for what, n in groups.items():
            if n < 2 * f + 3:
                raise ValueError(f"strategy krum with num_malicious_nodes = {int(f)} needs at least {int(2 * f + 3)} "
                                 f"updates per aggregation (2f + 3); {what}: {n}")

    def hierarchy_options_given(self) -> list[str]:
        """Fields set by the user that only a hierarchical run uses (refused on a flat one)."""
        return [name for name in ("local_rounds", "assignment") if name in self.model_fields_set]

    def quorum(self, members: int | None = None) -> int:
        """Accepted updates a round needs among MEMBERS (default: the learners): min_fit_fraction, at least 1."""
        members = self.learners if members is None else members
        return max(1, math.ceil(self.strategy.min_fit_fraction * members - 1e-9))

    def min_nodes(self, field: str) -> int:
        """A strategy minimum, defaulting to the quorum: a lost learner must not stall every round."""
        value = getattr(self.strategy, field)
        return self.quorum() if value is None else value


def _first_error_line(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{origin}: field '{where}': {err['msg']}"


def read_user_text(path: Path, kind: str) -> str:
    """A user's text file (config or topology): a missing, unreadable or binary file is one ConfigError line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{kind} file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a YAML {kind} file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {kind} file: {exc.strerror or exc}") from None


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Read the YAML file (if any), apply dotted-key overrides from flags, validate.

    `overrides` maps dotted field names (e.g. "training.batch_size") to values; None values are ignored.
    """
    data: dict[str, Any] = {}
    origin = "flags"
    if path is not None:
        origin = str(path)
        text = read_user_text(path, "config")
        try:
            loaded = yaml.safe_load(text)
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
