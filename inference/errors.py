"""Errors of the inference step, placed in the FLOps hierarchy so the CLI maps them to exit codes."""

from __future__ import annotations

from flops.errors import BadInputError, DeployError


class BundleError(BadInputError):
    """A model cannot be exported to a bundle, or a bundle directory is missing, incomplete or unsupported."""


class ServeError(DeployError):
    """The inference server could not be started or did not become ready."""


class ServeAddressError(BadInputError):
    """The address to serve on cannot be used: an unknown host, a port in use or not allowed."""
