"""`flops submit`, `resume`, `status`, `list`, `logs`, `stop` and `ui`: running and watching federated runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import echo_json, json_option, workdir_option
from cli.progress import ProgressPrinter, make_progress
from flops.app_image import ImageOptions, run_image_step
from flops.config import load_config
from flops.controller import EXIT_CODES, follow_run
from flops.errors import ConfigError
from flops.orchestrators import NEEDS_IMAGE, ORCHESTRATORS
from flops.orchestrators.netns import MODES as NETWORK_MODES
from flops.plan import KubernetesTarget
from flops.run_inspection import component_log, component_pods
from flops.runstate import RunState, latest_run_id, list_states, load_state, observed_state

# flops.execution pulls in MLflow (seconds of imports): loaded by the commands that run or stop runs only.

NO_ACCURACY = "accuracy not reported: the task's test() returns a loss only"


def _report(state: RunState, as_json: bool) -> None:
    summary = state.summary()
    if as_json:
        echo_json(summary)
        return
    acc, loss = summary["final_metrics"]["accuracy"], summary["final_metrics"]["loss"]
    click.echo(f"run {state.run_id}: {state.status} after {summary['duration_s']:.1f}s, "
               f"{state.rounds_completed}/{state.rounds} rounds")
    if state.message:
        click.echo(f"  {state.message}")
    if acc is not None:
        click.echo(f"  accuracy {acc:.4f}  loss {loss:.4f}  bytes to root {state.bytes_to_root}")
    elif loss is not None:
        click.echo(f"  loss {loss:.4f}  bytes to root {state.bytes_to_root}  ({NO_ACCURACY})")
    click.echo(f"  MLflow: {state.tracking_uri}  run {state.mlflow_run_id}")
    if state.model_uri:
        click.echo(f"  model: {state.model_uri}")


@click.command("submit")
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit (default: the repository's HEAD).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML run config.")
@click.option("--rounds", type=int, help="Global rounds.")
@click.option("--learners", type=int, help="Number of learners.")
@click.option("--epochs", type=int, help="Local epochs per round.")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--clusters", type=int, help="Cluster aggregators between learners and root (hierarchical FL).")
@click.option("--local-rounds", type=int, help="Cluster rounds per global round (hierarchical FL).")
@click.option("--topology", "topology_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML topology: root, clusters, learners, link costs, labels.")
@click.option("--assignment", help="Learner-to-cluster strategy: balanced, min-comm-cost, label-balance, manual.")
@click.option("--comm-budget", type=float, help="Stop before a global round that would exceed this cost.")
@click.option("--target-accuracy", type=float, help="Stop once central accuracy reaches this.")
@click.option("--round-timeout", type=float, help="Seconds a round may take before the run fails.")
@click.option("--orchestrator", type=click.Choice(sorted(ORCHESTRATORS)), default="local", show_default=True)
@click.option("--image", help="FLOps image from `flops build` (for --orchestrator docker).")
@click.option("--registry", help="With --orchestrator docker and no --image: build (or reuse) the image, push it here.")
@click.option("--base-image", help="Base of the image built for --registry (default: python slim).")
@click.option("--pip-find-links", "pip_find_links", multiple=True, type=click.Path(file_okay=False),
              help="Extra wheel folder for the image's dependencies.")
@click.option("--platform-constraint", "platform_constraints", multiple=True, metavar="PLATFORM=REQ",
              help="Constraint for the image's dependencies, e.g. linux/amd64=torch==2.13.0+cpu.")
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="TLS to the registry (default: as registries.conf says for it).")
@click.option("--namespace", help="--orchestrator kubernetes: namespace of the run's objects (default: default).")
@click.option("--kube-context", help="--orchestrator kubernetes: kubeconfig context (default: the current one).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: SQLite store in the work dir).")
@click.option("--insecure", is_flag=True,
              help="Plain-text Flower links and no SuperNode authentication (default: TLS with a CA per run).")
@click.option("--allow-insecure-network", is_flag=True, help="Allow --insecure on addresses other than loopback.")
@click.option("--network", type=click.Choice(NETWORK_MODES), default="loopback", show_default=True,
              help="--orchestrator local: loopback, or one network namespace per host (root, cluster gateway, "
                   "learner) with its own address on a bridge (root only).")
@workdir_option
@json_option
@click.option("--detach", is_flag=True, help="Return once the run is prepared; follow it with `flops status --wait`.")
@reports_errors
def submit_command(source: str, ref: str | None, config_file: Path | None, rounds: int | None,
                   learners: int | None, epochs: int | None, batch_size: int | None, lr: float | None,
                   clusters: int | None, local_rounds: int | None, topology_file: Path | None,
                   assignment: str | None, comm_budget: float | None, target_accuracy: float | None,
                   round_timeout: float | None, orchestrator: str, image: str | None, registry: str | None,
                   base_image: str | None, pip_find_links: tuple[str, ...], platform_constraints: tuple[str, ...],
                   tls_verify: bool | None, namespace: str | None, kube_context: str | None,
                   tracking_uri: str | None, insecure: bool, allow_insecure_network: bool, network: str,
                   workdir: Path, as_json: bool, detach: bool) -> None:
    """Fetch SOURCE (git URL or path), check it, and run it as a federation tracked in MLflow.

    The run's controller always runs detached from this shell: killing this command does not stop
    training; Ctrl-C stops the run.
    """
    from flops.preparation import RunRequest
    from flops.submission import submit
    from flops.tracking import default_tracking_uri

    config = load_config(config_file, {
        "rounds": rounds, "learners": learners, "training.local_epochs": epochs,
        "training.batch_size": batch_size, "training.learning_rate": lr, "round_timeout_s": round_timeout,
        "clusters": clusters, "local_rounds": local_rounds, "assignment": assignment,
        "comm_budget": comm_budget, "target_accuracy": target_accuracy,
    })
    workdir = workdir.resolve()
    image_flags = {"--image": image, "--registry": registry, "--base-image": base_image,
                   "--pip-find-links": pip_find_links, "--platform-constraint": platform_constraints}
    given = [flag for flag, value in image_flags.items() if value]
    if orchestrator not in NEEDS_IMAGE and given:
        raise ConfigError(f"{', '.join(given)}: only for container orchestrators "
                          f"({', '.join(sorted(NEEDS_IMAGE))}); --orchestrator {orchestrator} runs local processes")
    build_image = None
    if orchestrator in NEEDS_IMAGE and not image:
        if not registry:
            raise ConfigError(f"--orchestrator {orchestrator} runs a FLOps image: pass --image, or --registry to build one")
        build_image = run_image_step(ImageOptions.checked(
            registry=registry, base_image=base_image, pip_find_links=list(pip_find_links),
            platform_constraints=list(platform_constraints), tls_verify=tls_verify), ProgressPrinter())
    kubernetes = KubernetesTarget(namespace=namespace or "default", context=kube_context) \
        if namespace or kube_context else None
    if insecure:
        click.echo("warning: --insecure: Flower links are plain text and any SuperNode may join", err=True)
    request = RunRequest(source=source, ref=ref, config=config, workdir=workdir, orchestrator=orchestrator,
                         tracking_uri=tracking_uri or default_tracking_uri(workdir), topology_file=topology_file,
                         image=image, insecure=insecure, allow_insecure_network=allow_insecure_network,
                         kubernetes=kubernetes, network=network)
    # The run is not this shell: killing it does not stop training (Ctrl-C does).
    plan, state = submit(request, make_progress(), detach, build_image)
    if detach:
        if as_json:
            echo_json({"run_id": plan.run_id, "status": state.status, "run_dir": str(plan.run_dir)})
        else:
            click.echo(f"run {plan.run_id} started; follow it with: flops status {plan.run_id}")
        return
    _report(state, as_json)
    sys.exit(EXIT_CODES[state.status])


@click.command("resume")
@click.argument("run_id")
@workdir_option
@json_option
@reports_errors
def resume_command(run_id: str, workdir: Path, as_json: bool) -> None:
    """Continue a run whose SuperLink, controller or host died, from its last checkpoint (same MLflow run)."""
    from flops.submission import resume

    state = resume(workdir.resolve(), run_id, make_progress())
    _report(state, as_json)
    sys.exit(EXIT_CODES[state.status])


@click.command("status")
@click.argument("run_id", required=False)
@click.option("--wait", is_flag=True, help="Follow the run (rounds as they complete) until it ends; exit code as submit.")
@workdir_option
@json_option
@reports_errors
def status_command(run_id: str | None, wait: bool, workdir: Path, as_json: bool) -> None:
    """Show a run's status, phase, round and latest metrics (default: the latest run)."""
    run_id = run_id or latest_run_id(workdir)
    state = observed_state(workdir, run_id)
    if wait:
        state = follow_run(workdir, run_id, make_progress(), stop_on_interrupt=False)
    if as_json:
        echo_json({**state.summary(), "phase": state.phase, "rounds": state.rounds})
        return
    click.echo(f"{state.run_id}  {state.status}  phase: {state.phase}  round {state.rounds_completed}/{state.rounds}")
    for key, value in sorted(state.latest_metrics.items()):
        click.echo(f"  {key}: {value:.6g}")
    if "central_loss" in state.latest_metrics and "central_accuracy" not in state.latest_metrics:
        click.echo(f"  {NO_ACCURACY}")
    for name, pod in component_pods(state).items():  # kubernetes runs: each component's pod, from the cluster
        click.echo(f"  {name}: " + (f"{pod.phase}{' ready' if pod.ready else ''}, {pod.restarts} restarts"
                                    + (f" ({pod.waiting_reason})" if pod.waiting_reason else "") if pod else "no pod"))
    if state.message:
        click.echo(f"  {state.message}")
    if wait:
        sys.exit(EXIT_CODES.get(state.status, 0))


@click.command("list")
@workdir_option
@json_option
@reports_errors
def list_command(workdir: Path, as_json: bool) -> None:
    """List runs in the work dir, newest last."""
    states = sorted((observed_state(workdir, s.run_id) for s in list_states(workdir)), key=lambda s: s.started_at)
    if as_json:
        echo_json({"runs": [s.summary() for s in states]})
        return
    for s in states:
        acc = s.latest_metrics.get("central_accuracy")
        acc_text = f"{acc:.4f}" if acc is not None else "-"
        click.echo(f"{s.run_id}  {s.status:<8}  {s.rounds_completed}/{s.rounds}  acc {acc_text}  {s.source_url}")


@click.command("logs")
@click.argument("run_id")
@click.option("--component", default="superlink", show_default=True, help="superlink, learner-N, controller, ...")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@workdir_option
@reports_errors
def logs_command(run_id: str, component: str, follow: bool, workdir: Path) -> None:
    """Print a component's log."""
    path = component_log(load_state(workdir, run_id), component)
    with open(path, errors="replace") as fh:
        while True:
            chunk = fh.read()
            if chunk:
                click.echo(chunk, nl=False)
            if not follow or observed_state(workdir, run_id).status in EXIT_CODES:
                break
            time.sleep(0.5)


@click.command("stop")
@click.argument("run_id")
@workdir_option
@reports_errors
def stop_command(run_id: str, workdir: Path) -> None:
    """Stop a run and everything it started."""
    from flops.execution import stop_run

    state = stop_run(workdir, run_id)
    click.echo(f"run {run_id}: {state.status}")


@click.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--tracking-uri", help="Store to show (default: the work dir's SQLite store).")
@workdir_option
@reports_errors
def ui_command(port: int, tracking_uri: str | None, workdir: Path) -> None:
    """Open the MLflow UI on the same store `flops submit` writes."""
    from flops.ui import serve_ui

    sys.exit(serve_ui(workdir, tracking_uri, port, lambda line: click.echo(line, err=True)))
