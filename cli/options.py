"""Options shared by several commands: where FLOps keeps its state, and machine-readable output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from flops.workdir import default_workdir

workdir_option = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=default_workdir,
    show_default="$FLOPS_HOME or ~/.flops", help="Where runs, caches and the embedded MLflow store live.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")


def echo_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, default=str))
