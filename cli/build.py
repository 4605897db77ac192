"""`flops build`: intake, contract check and augmentation, then one multi-arch image of the Flower app."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from cli.errors import reports_errors
from flops.app_image import build_image, flower_app_spec
from flops.errors import ConfigError
from image_builder import SUPPORTED_PLATFORMS, BuildResult, ProgressEvent


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLOPS_CACHE_DIR", Path.home() / ".cache" / "flops"))


def parse_platform_constraints(values: tuple[str, ...], platforms: list[str]) -> dict[str, list[str]]:
    """'linux/arm64=torch<=2.10' pairs -> {platform: [constraint, ...]}.

    torch is pinned to its CPU build per platform at build time (flops.app_image) unless a constraint names it.
    """
    given: dict[str, list[str]] = {}
    for value in values:
        platform, sep, constraint = value.partition("=")
        if not sep or platform not in SUPPORTED_PLATFORMS:
            raise ConfigError(
                f"--platform-constraint {value!r}: expected PLATFORM=REQUIREMENT with PLATFORM one of "
                f"{', '.join(SUPPORTED_PLATFORMS)}"
            )
        given.setdefault(platform, [])
        if constraint.strip():
            given[platform].append(constraint.strip())
    return {p: c for p, c in given.items() if c and p in platforms}


def image_name(source_name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in source_name.lower()).strip("-")
    return f"flops/{cleaned or 'app'}"


class ProgressPrinter:
    """Steps per platform: coloured with rich on a terminal, plain lines otherwise; tool output in the log only."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.console = None
        if self.tty:
            from rich.console import Console

            self.console = Console(stderr=True)

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "line":
            return
        where = event.platform or "all"
        step = f"{event.step} done" if event.kind == "done" else event.step
        text = f"[{where}] {step}" + (f": {event.message}" if event.message else "")
        if self.console is None:
            click.echo(("warning: " if event.kind == "warning" else "") + text, err=True)
            return
        style = {"step": "cyan", "done": "green", "warning": "bold yellow"}[event.kind]
        mark = {"step": "…", "done": "✓", "warning": "!"}[event.kind]
        self.console.print(f"[{style}]{mark}[/] [dim]{where:<12}[/] {event.step}"
                           + (f" [dim]{event.message}[/]" if event.message else ""), highlight=False)


def augmented_app(source: str, ref: str | None, config_path: Path | None, work_dir: Path) -> tuple[Path, dict]:
    """Fetch, check and augment SOURCE; return the app dir and what the image needs to know about it."""
    from flops.augment import AppSpec, augment_app
    from flops.config import load_config
    from flops.contract import check_contract
    from flops.dependencies import read_dependencies
    from flops.intake import fetch_source

    fetched = fetch_source(source, ref, default_cache_dir())
    contract = check_contract(fetched.path)
    dependencies = read_dependencies(fetched.path)
    app_spec = AppSpec(
        source_url=fetched.url, source_name=fetched.name, commit=fetched.commit,
        code_dir=fetched.path, task_module=contract.task_module, dependencies=dependencies,
    )
    app_dir = augment_app(app_spec, load_config(config_path, {}), work_dir / "app")
    return app_dir, {"name": fetched.name, "url": fetched.url, "commit": fetched.commit, "deps": dependencies}


def app_requirements(dependencies: list[str]) -> list[str]:
    """The user's dependencies plus what the image itself runs: Flower at the host's minor release."""
    from importlib.metadata import version

    major, minor, *_ = version("flwr").split(".")
    return [f"flwr>={major}.{minor}.0,<{major}.{int(minor) + 1}", *dependencies]


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")
@reports_errors
def build_command(
    source: str, ref: str | None, platforms: str, registry: str | None, name: str | None,
    base_image: str | None, pip_index_url: str | None, pip_extra_index_urls: tuple[str, ...],
    pip_find_links: tuple[str, ...], platform_constraints: tuple[str, ...], config_path: Path | None,
    no_cache: bool, output: str | None, tls_verify: bool | None, no_emulation: bool, as_json: bool,
) -> None:
    """Build one multi-arch image of SOURCE's Flower app, serving learner, aggregator and selfcheck roles."""
    platform_list = [p.strip() for p in platforms.split(",") if p.strip()]
    if not registry and not output:
        raise ConfigError("give --registry HOST[:PORT] or --output oci-archive:PATH")
    constraints = parse_platform_constraints(platform_constraints, platform_list)
    with tempfile.TemporaryDirectory(prefix="flops-build-app-") as tmp:
        app_dir, app = augmented_app(source, ref, config_path, Path(tmp))
        spec = flower_app_spec(
            app_dir, name=name or image_name(app["name"]), requirements=app_requirements(app["deps"]),
            source_url=app["url"], commit=app["commit"], platforms=platform_list, registry=registry,
            base_image=base_image, pip_index_url=pip_index_url, pip_extra_index_urls=list(pip_extra_index_urls),
            pip_find_links=[str(Path(p).resolve()) for p in pip_find_links], platform_constraints=constraints,
            no_cache=no_cache, output=output, tls_verify=tls_verify, no_emulation=no_emulation,
        )
        result = build_image(spec, progress=ProgressPrinter())
    print_result(result, as_json)


def print_result(result: BuildResult, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json(include={"image", "platforms", "size_bytes", "duration_s", "cached",
                                                   "emulated"}))
        return
    sizes = ", ".join(f"{p} {b / 1e6:.0f} MB" for p, b in result.size_bytes.items())
    state = "cached (nothing built)" if result.cached else f"built in {result.duration_s:.1f} s"
    click.echo(f"{result.image}\n  {state}; {sizes}")
