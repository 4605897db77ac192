"""`flops submit`, `status`, `list`, `logs`, `stop` and `ui`: running and watching federated runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from cli.errors import reports_errors
from cli.options import echo_json, json_option, workdir_option
from cli.progress import make_progress
from flops.config import load_config
from flops.errors import BadInputError, ConfigError, FlopsError
from flops.orchestrators import NEEDS_IMAGE, ORCHESTRATORS
from flops.plan import RunPlan
from flops.runstate import RunState, latest_run_id, list_states, load_state

# flops.submission pulls in MLflow (seconds of imports): loaded by the commands that run or stop runs only.

EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "STOPPED": 1}


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
@click.option("--tracking-uri", help="MLflow tracking URI (default: SQLite store in the work dir).")
@workdir_option
@json_option
@click.option("--detach", is_flag=True, help="Return once the run is prepared; follow it with `flops status`.")
@reports_errors
def submit_command(source: str, ref: str | None, config_file: Path | None, rounds: int | None,
                   learners: int | None, epochs: int | None, batch_size: int | None, lr: float | None,
                   clusters: int | None, local_rounds: int | None, topology_file: Path | None,
                   assignment: str | None, comm_budget: float | None, target_accuracy: float | None,
                   round_timeout: float | None, orchestrator: str, image: str | None, registry: str | None,
                   base_image: str | None, pip_find_links: tuple[str, ...], platform_constraints: tuple[str, ...],
                   tls_verify: bool | None, tracking_uri: str | None, workdir: Path,
                   as_json: bool, detach: bool) -> None:
    """Fetch SOURCE (git URL or path), check it, and run it as a federation tracked in MLflow."""
    from flops.submission import execute_run, prepare_run
    from flops.tracking import default_tracking_uri

    config = load_config(config_file, {
        "rounds": rounds, "learners": learners, "training.local_epochs": epochs,
        "training.batch_size": batch_size, "training.learning_rate": lr, "round_timeout_s": round_timeout,
        "clusters": clusters, "local_rounds": local_rounds, "assignment": assignment,
        "comm_budget": comm_budget, "target_accuracy": target_accuracy,
    })
    workdir = workdir.resolve()
    build_options = None
    if orchestrator in NEEDS_IMAGE and not image:
        if not registry:
            raise ConfigError(f"--orchestrator {orchestrator} runs a FLOps image: pass --image, or --registry to build one")
        build_options = {"registry": registry, "base_image": base_image, "pip_find_links": list(pip_find_links),
                         "platform_constraints": platform_constraints, "tls_verify": tls_verify}
    progress = make_progress()
    plan = prepare_run(source, ref, config, workdir, orchestrator, tracking_uri or default_tracking_uri(workdir),
                       progress, topology_file, image)
    if build_options is not None:
        try:
            plan = plan.model_copy(update={"image": _build_run_image(plan, **build_options)})
        except FlopsError as exc:
            load_state(workdir, plan.run_id).update(status="FAILED", phase="building image", message=str(exc))
            raise
        plan.save()
    for cluster in plan.clusters:
        click.echo(f"cluster {cluster.name}: {', '.join(l.name for l in cluster.learners)}", err=True)
    if detach:
        _start_detached(plan)
        state = load_state(workdir, plan.run_id)
        if as_json:
            echo_json({"run_id": plan.run_id, "status": state.status, "run_dir": str(plan.run_dir)})
        else:
            click.echo(f"run {plan.run_id} started; follow it with: flops status {plan.run_id}")
        return
    state = execute_run(plan, progress)
    _report(state, as_json)
    sys.exit(EXIT_CODES[state.status])


def _build_run_image(plan: RunPlan, registry: str, base_image: str | None, pip_find_links: list[str],
                     platform_constraints: tuple[str, ...], tls_verify: bool | None) -> str:
    """The run's app as an image for this machine's platform, built or found in the registry by its hash."""
    from cli.build import ProgressPrinter, app_requirements, image_name, parse_platform_constraints
    from flops.app_image import build_image, flower_app_spec
    from image_builder.spec import host_platform

    target = host_platform() or "linux/amd64"
    spec = flower_app_spec(
        plan.app_dir, name=image_name(plan.source_name), requirements=app_requirements(plan.dependencies),
        source_url=plan.source_url, commit=plan.commit, platforms=[target], registry=registry,
        base_image=base_image, pip_find_links=pip_find_links, tls_verify=tls_verify,
        platform_constraints=parse_platform_constraints(platform_constraints, [target]),
    )
    result = build_image(spec, progress=ProgressPrinter())
    click.echo(f"image {result.image}{' (cached)' if result.cached else ''}", err=True)
    return result.image


def _start_detached(plan: RunPlan) -> None:
    """Run the controller in its own session; it survives this shell and writes state.json as it goes."""
    with open(plan.logs_dir / "controller.log", "ab") as log:
        controller = subprocess.Popen([sys.executable, "-m", "cli.main", "_execute", str(plan.run_dir)],
                                      stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    # Recorded at once, so a `flops stop` right after this finds the controller to signal.
    load_state(plan.run_dir.parent.parent, plan.run_id).update(controller_pid=controller.pid)


@click.command("_execute", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@reports_errors
def execute_command(run_dir: Path) -> None:
    """Internal: the controller of a detached run."""
    from flops.submission import execute_run

    state = execute_run(RunPlan.load(run_dir), make_progress(quiet=True))
    sys.exit(EXIT_CODES[state.status])


@click.command("status")
@click.argument("run_id", required=False)
@workdir_option
@json_option
@reports_errors
def status_command(run_id: str | None, workdir: Path, as_json: bool) -> None:
    """Show a run's status, phase, round and latest metrics (default: the latest run)."""
    state = load_state(workdir, run_id or latest_run_id(workdir))
    if as_json:
        echo_json({**state.summary(), "phase": state.phase, "rounds": state.rounds})
        return
    click.echo(f"{state.run_id}  {state.status}  phase: {state.phase}  round {state.rounds_completed}/{state.rounds}")
    for key, value in sorted(state.latest_metrics.items()):
        click.echo(f"  {key}: {value:.6g}")
    if state.message:
        click.echo(f"  {state.message}")


@click.command("list")
@workdir_option
@json_option
@reports_errors
def list_command(workdir: Path, as_json: bool) -> None:
    """List runs in the work dir, newest last."""
    states = sorted(list_states(workdir), key=lambda s: s.started_at)
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
    state = load_state(workdir, run_id)
    path = state.run_dir / "logs" / f"{component}.log"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (state.run_dir / "logs").glob("*.log")))
        raise BadInputError(f"no log for component '{component}' in run {run_id} (have: {known})")
    with open(path, errors="replace") as fh:
        while True:
            chunk = fh.read()
            if chunk:
                click.echo(chunk, nl=False)
            if not follow or load_state(workdir, run_id).status in EXIT_CODES:
                break
            time.sleep(0.5)


@click.command("stop")
@click.argument("run_id")
@workdir_option
@reports_errors
def stop_command(run_id: str, workdir: Path) -> None:
    """Stop a run and everything it started."""
    from flops.submission import stop_run

    state = stop_run(workdir, run_id)
    click.echo(f"run {run_id}: {state.status}")


@click.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--tracking-uri", help="Store to show (default: the work dir's SQLite store).")
@workdir_option
def ui_command(port: int, tracking_uri: str | None, workdir: Path) -> None:
    """Open the MLflow UI on the same store `flops submit` writes."""
    from flops.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(workdir.resolve())
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
            "--port", str(port)]
    click.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port}", err=True)
    sys.exit(subprocess.call(argv))
