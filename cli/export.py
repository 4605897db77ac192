"""`flops export`: a run's Kubernetes manifests as YAML, the objects `flops submit --orchestrator kubernetes` creates."""

from __future__ import annotations

from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import echo_json, json_option, workdir_option
from cli.progress import ProgressPrinter, make_progress
from flops.config import load_config
from flops.errors import ConfigError
from flops.orchestrators import EXPORTERS
from flops.plan import KubernetesTarget


@click.command("export")
@click.argument("source")
@click.option("--orchestrator", type=click.Choice(sorted(EXPORTERS)), default="kubernetes", show_default=True,
              help="kubernetes: Services between components; podman-kube: host network, for `podman kube play`.")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the YAML (one file per run: kubectl apply -f DIR).")
@click.option("--image", help="FLOps image from `flops build` (nothing is built).")
@click.option("--registry", help="No --image: build (or reuse) the app's image for this machine and push it here.")
@click.option("--base-image", help="Base of the image built for --registry (default: python slim).")
@click.option("--tls-verify/--no-tls-verify", default=True, show_default=True, help="TLS to the registry.")
@click.option("--namespace", default="default", show_default=True, help="Namespace of every object.")
@click.option("--ref", help="Branch, tag or commit (default: the repository's HEAD).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML run config.")
@click.option("--rounds", type=int)
@click.option("--learners", type=int)
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--clusters", type=int)
@click.option("--local-rounds", type=int)
@click.option("--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML topology; node_selector and tolerations per learner or cluster place its pods.")
@click.option("--assignment")
@click.option("--tracking-uri", help="MLflow tracking URI (default: SQLite store in the work dir).")
@click.option("--insecure", is_flag=True, help="Plain-text Flower links (required: Kubernetes runs carry no TLS material yet).")
@workdir_option
@json_option
@reports_errors
def export_command(source: str, orchestrator: str, output_dir: Path, image: str | None, registry: str | None,
                   base_image: str | None, tls_verify: bool, namespace: str, ref: str | None,
                   config_file: Path | None, rounds: int | None, learners: int | None, epochs: int | None,
                   batch_size: int | None, lr: float | None, clusters: int | None, local_rounds: int | None,
                   topology_file: Path | None, assignment: str | None, tracking_uri: str | None,
                   insecure: bool, workdir: Path, as_json: bool) -> None:
    """Prepare SOURCE as a run (checks, environment, app) and write its manifests to OUTPUT."""
    from flops.app_image import ImageOptions, run_image_step
    from flops.preparation import RunRequest
    from flops.submission import export
    from flops.tracking import default_tracking_uri

    if not image and not registry:
        raise ConfigError(f"--orchestrator {orchestrator} runs a FLOps image: pass --image, or --registry to build one")
    config = load_config(config_file, {
        "rounds": rounds, "learners": learners, "training.local_epochs": epochs, "training.batch_size": batch_size,
        "training.learning_rate": lr, "clusters": clusters, "local_rounds": local_rounds, "assignment": assignment,
    })
    workdir = workdir.resolve()
    build_image = None
    if not image:
        options = ImageOptions.checked(registry=registry or "", base_image=base_image, pip_find_links=[],
                                       platform_constraints=[], tls_verify=tls_verify)
        build_image = run_image_step(options, ProgressPrinter())
    request = RunRequest(source=source, ref=ref, config=config, workdir=workdir, orchestrator=orchestrator,
                         tracking_uri=tracking_uri or default_tracking_uri(workdir), topology_file=topology_file,
                         image=image, insecure=insecure, kubernetes=KubernetesTarget(namespace=namespace))
    plan, path = export(request, output_dir, make_progress(), build_image)
    if as_json:
        echo_json({"run_id": plan.run_id, "manifests": str(path), "image": plan.image, "run_dir": str(plan.run_dir)})
    else:
        click.echo(f"run {plan.run_id}: manifests in {path}")
