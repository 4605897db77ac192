"""`flops bundle`, `flops serve` and `flops package`: export a trained model, serve it, build its image."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import click

from cli.errors import reports_errors
from inference.settings import DEFAULT_PORT

_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_ref(ref: str) -> str:
    """MODEL_URI (models:/, runs:/, a model dir) as given; a bare MLflow run id becomes runs:/<id>/model.

    The FLOps RUN_ID -> model URI lookup belongs to the core's tracking step; until it exists a run is
    named by its MLflow run id, the id the run's model was logged under.
    """
    if ":/" in ref or Path(ref).is_dir() or not _MLFLOW_RUN_ID.match(ref):
        return ref
    return f"runs:/{ref}/model"


tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store holding the model, e.g. sqlite:///WORKDIR/mlflow.db"
)


@click.command("bundle")
@click.argument("model_ref", metavar="RUN_ID|MODEL_URI")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@tracking_option
@click.option("--classifier/--no-classifier", default=None, help="Add argmax labels (default: from the output shape)")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle metadata as JSON")
@reports_errors
def bundle_command(model_ref: str, dest: Path, tracking_uri: str | None, classifier: bool | None, as_json: bool) -> None:
    """Export a logged model into DEST: weights, code and metadata that the server loads without MLflow."""
    from inference.export import export_bundle

    metadata = export_bundle(resolve_model_ref(model_ref), dest, tracking_uri=tracking_uri, classifier=classifier)
    if as_json:
        click.echo(metadata.model_dump_json(indent=2))
    else:
        click.echo(f"bundle of {metadata.display_name} written to {dest}")


@click.command("serve")
@click.argument("model_ref", metavar="RUN_ID|MODEL_URI|IMAGE")
@tracking_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--image", is_flag=True, help="MODEL_REF is an image from `flops package`: run it with podman or docker")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=None, help="Refuse larger bodies with 413")
@reports_errors
def serve_command(
    model_ref: str, tracking_uri: str | None, port: int, host: str, image: bool, max_request_bytes: int | None
) -> None:
    """Serve a model over HTTP (POST /predict, /health, /ready, /metadata, /metrics, /docs) until Ctrl-C."""
    from inference import launch

    if image:
        click.echo(f"serving image {model_ref} on http://{host}:{port}", err=True)
        raise SystemExit(launch.run_in_foreground(launch.start_container(model_ref, port, host)))
    from inference.export import export_bundle

    extra_env = {"FLOPS_MAX_REQUEST_BYTES": str(max_request_bytes)} if max_request_bytes else {}
    with tempfile.TemporaryDirectory(prefix="flops-serve-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        metadata = export_bundle(resolve_model_ref(model_ref), bundle_dir, tracking_uri=tracking_uri)
        click.echo(f"serving {metadata.display_name} on http://{host}:{port} (docs at /docs)", err=True)
        process = launch.start_local_server(bundle_dir, port, host, extra_env)
        code = launch.run_in_foreground(process)
    if code not in (0, -15):
        raise SystemExit(code)


def _print_json(payload: object) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))
