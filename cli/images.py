"""`flops images prune`: remove old images FLOps built, locally and in a registry."""

from __future__ import annotations

import click

from cli.errors import reports_errors
from cli.options import echo_json


@click.group("images")
def images_group() -> None:
    """Images FLOps built."""


@images_group.command("prune")
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), default=7.0, show_default=True,
              help="Local build and cache images older than this many days go.")
@click.option("--registry", default=None, help="HOST[:PORT]: also delete old tags of FLOps-built images there.")
@click.option("--keep", type=click.IntRange(min=0), default=3, show_default=True,
              help="With --registry: the newest tags kept per repository.")
@click.option("--repository", "repositories", multiple=True,
              help="With --registry: only this repository (repeatable; default: every one).")
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="TLS to the registry (default: as registries.conf says for it).")
@click.option("--dry-run", is_flag=True, help="Only list what would go.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")
@reports_errors
def prune_command(older_than_days: float, registry: str | None, keep: int, repositories: tuple[str, ...],
                  tls_verify: bool | None, dry_run: bool, as_json: bool) -> None:
    """Remove FLOps' old local images and, with --registry, all but the newest --keep tags there."""
    from flops.app_image import prune_images

    pruned = prune_images(older_than_days, registry, keep, tls_verify, dry_run, repositories)
    if as_json:
        echo_json({**pruned.model_dump(), "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    for name in [*pruned.local, *pruned.registry]:
        click.echo(f"{verb} {name}")
    click.echo(f"{verb} {len(pruned.local)} local image name(s), {len(pruned.registry)} registry tag(s)", err=True)
