"""Server settings, read from the environment a container or `flops serve` gives the process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from flops.errors import ConfigError

DEFAULT_PORT = 8080
DEFAULT_BUNDLE_DIR = Path("/opt/flops/bundle")
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_ROWS = 10_000
DEFAULT_REQUEST_TIMEOUT_S = 30.0

# Environment variable -> settings field.
ENVIRONMENT = {
    "PORT": "port",
    "HOST": "host",
    "FLOPS_BUNDLE": "bundle_dir",
    "FLOPS_MAX_REQUEST_BYTES": "max_request_bytes",
    "FLOPS_LOG_LEVEL": "log_level",
    "FLOPS_TORCH_THREADS": "torch_threads",
    "FLOPS_MAX_ROWS": "max_rows",
    "FLOPS_REQUEST_TIMEOUT_S": "request_timeout_s",
}


class ServerSettings(BaseModel):
    """Where the bundle is, where to listen, and how large and slow a request may be."""

    bundle_dir: Path = DEFAULT_BUNDLE_DIR
    host: str = "0.0.0.0"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1, description="rows one /predict may carry")
    request_timeout_s: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="parse + forward pass; longer answers 504"
    )
    log_level: str = "info"
    # One intra-op thread: requests already keep the cores busy, and on small CPUs OpenMP threads that
    # spin between tiny ops cost more than they give (2-7x slower per pass measured on 2 cores under load).
    torch_threads: int = Field(default=1, ge=1)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        environ = os.environ if environ is None else environ
        values = {field: environ[name] for name, field in ENVIRONMENT.items() if environ.get(name)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0])
            variable = next(name for name, known in ENVIRONMENT.items() if known == field)
            raise ConfigError(f"${variable}={environ.get(variable)!r}: {first['msg']}") from None
