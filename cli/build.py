"""`flops build`: intake, contract check and augmentation, then one multi-arch image of the Flower app."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import workdir_option
from cli.progress import ProgressPrinter
from flops.app_image import ImageOptions, build_source_image
from flops.config import load_config
from image_builder import BuildResult


@click.command("build")
@click.argument("source")
@click.option("--ref", default=None, help="Branch, tag or commit (default: HEAD).")
@click.option("--platform", "platforms", default="linux/amd64,linux/arm64", show_default=True,
              help="Comma-separated target platforms.")
@click.option("--registry", default=None, help="HOST[:PORT] to push the manifest list to.")
@click.option("--name", default=None, help="Repository name in the registry (default: flops/<source name>).")
@click.option("--base-image", default=None,
              help="Multi-arch base (default: the build defaults file's, else docker.io/library/python:3.11-slim).")
@click.option("--pip-index-url", default=None)
@click.option("--pip-extra-index-url", "pip_extra_index_urls", multiple=True)
@click.option("--pip-find-links", "pip_find_links", multiple=True, type=click.Path(file_okay=False))
@click.option("--platform-constraint", "platform_constraints", multiple=True, metavar="PLATFORM=REQ",
              help="Extra constraint for one platform, e.g. linux/amd64=torch==2.13.0+cpu (default: torch pinned to "
                   "this machine's version, CPU build, from --pip-find-links or the PyTorch CPU index).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run config baked into the app as its defaults.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--output", default=None, help="oci-archive:PATH to write the image to (no registry needed).")
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="TLS to the registry (default: as registries.conf says for it).")
@click.option("--no-emulation", is_flag=True, help="Fail instead of installing wheel-less packages under QEMU.")
@workdir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")
@reports_errors
def build_command(
    source: str, ref: str | None, platforms: str, registry: str | None, name: str | None,
    base_image: str | None, pip_index_url: str | None, pip_extra_index_urls: tuple[str, ...],
    pip_find_links: tuple[str, ...], platform_constraints: tuple[str, ...], config_path: Path | None,
    no_cache: bool, output: str | None, tls_verify: bool | None, no_emulation: bool, workdir: Path, as_json: bool,
) -> None:
    """Build one multi-arch image of SOURCE's Flower app, serving learner, aggregator and selfcheck roles."""
    options = ImageOptions.checked(
        registry=registry, base_image=base_image, pip_index_url=pip_index_url,
        pip_extra_index_urls=list(pip_extra_index_urls), pip_find_links=list(pip_find_links),
        platform_constraints=list(platform_constraints), tls_verify=tls_verify, no_cache=no_cache,
        no_emulation=no_emulation, output=output,
    )
    with tempfile.TemporaryDirectory(prefix="flops-build-app-") as tmp:
        result = build_source_image(
            source, ref, load_config(config_path, {}), workdir, Path(tmp),
            [p.strip() for p in platforms.split(",") if p.strip()], options, name=name, progress=ProgressPrinter(),
        )
    print_result(result, as_json)


def print_result(result: BuildResult, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json(include={"image", "platforms", "size_bytes", "duration_s", "cached",
                                                   "emulated"}))
        return
    sizes = ", ".join(f"{p} {b / 1e6:.0f} MB" for p, b in result.size_bytes.items())
    state = "cached (nothing built)" if result.cached else f"built in {result.duration_s:.1f} s"
    click.echo(f"{result.image}\n  {state}; {sizes}")
