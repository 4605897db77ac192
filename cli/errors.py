"""Turn FlopsError into one line on stderr and its exit code; never a traceback for a known failure."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from flops.errors import FlopsError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Decorate a click command so a FlopsError becomes `error: <message>` and the error's exit code.

    A command run with --json (an `as_json` parameter) also prints {"status": "FAILED", "message": ...} as the
    last line of stdout, so a script reading that line sees every failure, not only a failed run.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FlopsError as exc:
            message = " ".join(str(exc).split("\n")[0:1]) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            if kwargs.get("as_json"):
                click.echo(json.dumps({"status": "FAILED", "message": message, "exit_code": exc.exit_code}))
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]
