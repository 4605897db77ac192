"""`flops validate`, `flops augment` and `flops schema`: look at a source without running it."""

from __future__ import annotations

from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import echo_json, json_option, workdir_option
from flops.config import config_json_schema, load_config
from flops.preparation import augment_source, validate_source
from flops.workdir import cache_dir


@click.command("validate")
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit.")
@workdir_option
@json_option
@reports_errors
def validate_command(source: str, ref: str | None, workdir: Path, as_json: bool) -> None:
    """Check that SOURCE fits the ML contract: static check, then an import check in its environment."""
    checked = validate_source(source, ref, cache_dir(workdir))
    src, spec, probe = checked.source, checked.spec, checked.probe
    for warning in checked.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json({"source_url": src.url, "commit": src.commit, "task": spec.task_label, **probe.model_dump()})
        return
    click.echo(f"{src.url} @ {src.commit[:12]}: {spec.task_label} fits the {spec.contract} contract "
               f"({probe.num_parameters} parameters in {probe.num_arrays} arrays, torch {probe.torch_version}"
               f"{'' if probe.accuracy_reported else '; test() reports no accuracy, only loss'})")


@click.command("augment")
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the Flower app into (must be empty or missing unless --force).")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@workdir_option
@reports_errors
def augment_command(source: str, ref: str | None, output: Path, force: bool, config_file: Path | None,
                    workdir: Path) -> None:
    """Write the Flower app FLOps generates for SOURCE, for inspection or for `flwr run`."""
    app = augment_source(source, ref, load_config(config_file, {}), cache_dir(workdir), output, force=force)
    click.echo(str(app.app_dir))


@click.command("schema")
def schema_command() -> None:
    """Print the JSON schema of the run config file."""
    click.echo(config_json_schema(), nl=False)
