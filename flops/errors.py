"""One exception hierarchy for FLOps; each class carries the exit code the CLI maps it to."""


class FlopsError(Exception):
    """Base of every error FLOps raises on purpose."""

    exit_code = 1


class BadInputError(FlopsError):
    """The user's input (source, config, topology, flags) is wrong: nothing was started."""

    exit_code = 2


class IntakeError(BadInputError):
    """The source cannot be fetched or pinned to a commit."""


class ContractError(BadInputError):
    """The user's code does not fit the ML contract."""


class ConfigError(BadInputError):
    """A config or topology file, or a flag, is invalid."""


class ToolError(FlopsError):
    """An external tool (git, pip, buildah, skopeo, ...) failed; carries its last lines of output."""

    def __init__(self, tool: str, message: str, output: str = "") -> None:
        self.tool = tool
        self.output = output
        super().__init__(f"{tool}: {message}")


class EnvironmentSetupError(FlopsError):
    """The run's Python environment could not be created."""


class BuildError(FlopsError):
    """An image build failed."""


class DeployError(FlopsError):
    """An orchestrator could not start or stop a component."""


class RunFailedError(FlopsError):
    """A run started but failed (a learner or aggregator raised, died or timed out)."""
