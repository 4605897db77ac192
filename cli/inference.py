"""`flops bundle`, `flops serve` and `flops package`: export a trained model, serve it, build its image."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import workdir_option
from cli.progress import ProgressPrinter
from flops.app_image import parse_platform_constraints
from flops.model_ref import resolve_model
from inference.settings import DEFAULT_PORT

tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store holding the model, e.g. sqlite:///WORKDIR/mlflow.db"
)


@click.command("bundle")
@click.argument("model_ref", metavar="RUN_ID|MODEL_URI")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@tracking_option
@workdir_option
@click.option("--classifier/--no-classifier", default=None, help="Add argmax labels (default: from the output shape)")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle metadata as JSON")
@reports_errors
def bundle_command(
    model_ref: str, dest: Path, tracking_uri: str | None, workdir: Path, classifier: bool | None, as_json: bool
) -> None:
    """Export a logged model into DEST: weights, code and metadata that the server loads without MLflow."""
    from inference.export import export_bundle

    model_uri, tracking_uri = resolve_model(model_ref, tracking_uri, workdir)
    metadata = export_bundle(model_uri, dest, tracking_uri=tracking_uri, classifier=classifier)
    if as_json:
        click.echo(metadata.model_dump_json(indent=2))
    else:
        click.echo(f"bundle of {metadata.display_name} written to {dest}")


@click.command("serve")
@click.argument("model_ref", metavar="RUN_ID|MODEL_URI|IMAGE")
@tracking_option
@workdir_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--image", is_flag=True, help="MODEL_REF is an image from `flops package`: run it with podman or docker")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=None, help="Refuse larger bodies with 413")
@click.option("--platform", default=None, help="With --image: the platform to run, e.g. linux/arm64 (under QEMU)")
@click.option("--run-arg", "run_args", multiple=True, help="With --image: extra argument for `podman/docker run`")
@reports_errors
def serve_command(
    model_ref: str, tracking_uri: str | None, workdir: Path, port: int, host: str, image: bool,
    max_request_bytes: int | None, platform: str | None, run_args: tuple[str, ...],
) -> None:
    """Serve a model over HTTP (POST /predict, /health, /ready, /metadata, /metrics, /docs) until Ctrl-C."""
    from inference import launch

    if image:
        launch.bind_listening_socket(host, port).close()  # a busy port or bad host: one line, before podman runs
        click.echo(f"serving image {model_ref} on http://{host}:{port}", err=True)
        container = launch.start_container(model_ref, port, host, platform=platform, extra_args=run_args)
        raise SystemExit(launch.run_in_foreground(container))
    sock = launch.bind_listening_socket(host, port)  # first: a busy port is one line before any loading
    model_uri, tracking_uri = resolve_model(model_ref, tracking_uri, workdir)
    launch.serve_model_here(
        model_uri, tracking_uri, sock, max_request_bytes,
        on_ready=lambda m: click.echo(f"serving {m.display_name} on http://{host}:{port} (docs at /docs)", err=True),
    )


@click.command("package")
@click.argument("model_ref", metavar="RUN_ID|MODEL_URI")
@tracking_option
@workdir_option
@click.option("--platform", "platforms", default="linux/amd64,linux/arm64", show_default=True,
              help="Comma-separated target platforms.")
@click.option("--registry", default=None, help="HOST[:PORT] to push the manifest list to.")
@click.option("--name", default=None, help="Repository name in the registry (default: flops/<model>-inference).")
@click.option("--base-image", default=None, help="Multi-arch base (default: docker.io/library/python:3.11-slim).")
@click.option("--pip-index-url", default=None)
@click.option("--pip-extra-index-url", "pip_extra_index_urls", multiple=True)
@click.option("--pip-find-links", "pip_find_links", multiple=True, type=click.Path(file_okay=False))
@click.option("--platform-constraint", "platform_constraints", multiple=True, metavar="PLATFORM=REQ",
              help="Extra constraint for one platform (default: torch pinned to the model's version, CPU build, "
                   "from --pip-find-links or the PyTorch CPU index).")
@click.option("--classifier/--no-classifier", default=None, help="Add argmax labels (default: from the output shape)")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--output", default=None, help="oci-archive:PATH to write the image to (no registry needed).")
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="TLS to the registry (default: as registries.conf says for it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")
@reports_errors
def package_command(
    model_ref: str, tracking_uri: str | None, workdir: Path, platforms: str, registry: str | None, name: str | None,
    base_image: str | None, pip_index_url: str | None, pip_extra_index_urls: tuple[str, ...],
    pip_find_links: tuple[str, ...], platform_constraints: tuple[str, ...], classifier: bool | None,
    no_cache: bool, output: str | None, tls_verify: bool | None, as_json: bool,
) -> None:
    """Build a multi-arch inference image of a logged model: the server and the model, no MLflow inside."""
    from flops.app_image import build_image
    from flops.errors import ConfigError
    from inference.export import export_bundle
    from inference.package import inference_image_spec, stage_context

    platform_list = [p.strip() for p in platforms.split(",") if p.strip()]
    if not registry and not output:
        raise ConfigError("give --registry HOST[:PORT] or --output oci-archive:PATH")
    constraints = parse_platform_constraints(platform_constraints, platform_list)
    with tempfile.TemporaryDirectory(prefix="flops-package-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        model_uri, tracking_uri = resolve_model(model_ref, tracking_uri, workdir)
        metadata = export_bundle(model_uri, bundle_dir, tracking_uri=tracking_uri, classifier=classifier)
        spec = inference_image_spec(
            stage_context(bundle_dir, Path(tmp) / "context"), name=name, platforms=platform_list,
            registry=registry, base_image=base_image, pip_index_url=pip_index_url,
            pip_extra_index_urls=list(pip_extra_index_urls),
            pip_find_links=[str(Path(p).resolve()) for p in pip_find_links], platform_constraints=constraints,
            no_cache=no_cache, output=output, tls_verify=tls_verify,
        )
        result = build_image(spec, progress=ProgressPrinter(), torch_version=metadata.torch_version)
    if as_json:
        click.echo(json.dumps({
            **result.model_dump(include={"image", "platforms", "size_bytes", "duration_s", "cached", "emulated"}),
            "model": metadata.display_name, "run_id": metadata.run_id,
        }))
        return
    sizes = ", ".join(f"{p} {b / 1e6:.0f} MB" for p, b in result.size_bytes.items())
    state = "cached (nothing built)" if result.cached else f"built in {result.duration_s:.1f} s"
    click.echo(f"{result.image}\n  {metadata.display_name}; {state}; {sizes}")
