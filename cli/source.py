"""`flops validate`, `flops augment` and `flops schema`: look at a source without running it."""

from __future__ import annotations

from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import echo_json, json_option, workdir_option
from flops.augment import AppSpec, augment_app
from flops.config import config_json_schema, load_config
from flops.contract import check_contract
from flops.dependencies import read_dependencies
from flops.intake import fetch_source
from flops.preparation import check_source


@click.command("validate")
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit.")
@workdir_option
@json_option
@reports_errors
def validate_command(source: str, ref: str | None, workdir: Path, as_json: bool) -> None:
    """Check that SOURCE fits the ML contract: static check, then an import check in its environment."""
    cache_dir = workdir.resolve() / "cache"
    checked = check_source(fetch_source(source, ref, cache_dir), cache_dir, None, num_partitions=2, batch_size=32)
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
              help="Directory to write the Flower app into (replaced).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@workdir_option
@reports_errors
def augment_command(source: str, ref: str | None, output: Path, config_file: Path | None, workdir: Path) -> None:
    """Write the Flower app FLOps generates for SOURCE, for inspection or for `flwr run`."""
    src = fetch_source(source, ref, workdir.resolve() / "cache")
    spec = check_contract(src.path)
    app_dir = augment_app(
        AppSpec(source_url=src.url, source_name=src.name, commit=src.commit, code_dir=spec.code_dir,
                task_module=spec.task_module, dependencies=read_dependencies(src.path)),
        load_config(config_file, {}), output,
    )
    click.echo(str(app_dir))


@click.command("schema")
def schema_command() -> None:
    """Print the JSON schema of the run config file."""
    click.echo(config_json_schema(), nl=False)
