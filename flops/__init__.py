"""FLOps core: source intake, contract check, augmentation, run planning, orchestration and tracking."""

__version__ = "0.1.0"
