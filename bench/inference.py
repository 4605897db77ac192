"""Benchmark FLOps' inference server against `mlflow models serve --env-manager local` on the same model.

Both servers run on this machine's loopback; each scenario sends a bounded number of requests from
CONCURRENCY keep-alive connections and reports p50/p99 latency and requests/s side by side with ratios.

    python bench/inference.py [--requests 2000] [--rounds 3] [--rows 1 32] [--concurrency 1 8 32] [--json OUT]
                              [--torch-threads N | --mlflow-torch-threads N]

--torch-threads N gives both servers N torch intra-op threads (the fair comparison); without it FLOps' server
runs its default (1) and MLflow's torch's own default (one per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flops.orchestrators.local import free_port  # noqa: E402
from inference import launch  # noqa: E402
from inference.export import export_bundle  # noqa: E402

TASK_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(x.flatten(1))
    """
)
READY_TIMEOUT_S = 180
SCENARIO_TIMEOUT_S = 300


@dataclass
class Result:
    server: str
    rows: int
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rps: float
    cpu_ms_per_request: float  # server process tree's CPU time per request: robust to other load on the machine


def log_model(workdir: Path) -> tuple[str, str, np.ndarray]:
    """Log the digits CNN the way a FLOps run does; return (tracking URI, models:/ URI, sample inputs)."""
    import mlflow
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits

    (workdir / "task.py").write_text(TASK_SOURCE)
    sys.path.insert(0, str(workdir))
    import task  # type: ignore[import-not-found]

    images = (load_digits().images / 16.0).astype(np.float32)[:, None, :, :]
    torch.manual_seed(0)
    model = task.Net().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(images[:4])).numpy()
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = mlflow.create_experiment("bench", artifact_location=str(workdir / "mlartifacts"))
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name="bench-digits",
            signature=infer_signature(images[:4], output),
            input_example=images[:4],
            code_paths=[str(workdir / "task.py")],
        )
    return tracking_uri, f"models:/bench-digits/{info.registered_model_version}", images


def wait_http_200(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} not ready after {READY_TIMEOUT_S}s")


async def _one_connection(port: int, request: bytes, count: int, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(port: int, request: bytes, total: int, concurrency: int) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    errors: list[int] = []
    per_connection = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(_one_connection(port, request, n, latencies, errors) for n in per_connection)),
        SCENARIO_TIMEOUT_S,
    )
    return latencies, errors, time.perf_counter() - started


def http_post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its descendants (mlflow serves from a uvicorn grandchild)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(
    server: str, pid: int, port: int, path: str, inputs: np.ndarray, total: int, concurrency: int
) -> Result:
    request = http_post(path, json.dumps({"inputs": inputs.tolist()}).encode())
    asyncio.run(_load(port, request, min(200, total), concurrency))  # warm-up, not counted
    cpu_before = tree_cpu_seconds(pid)
    latencies, errors, elapsed = asyncio.run(_load(port, request, total, concurrency))
    cpu = tree_cpu_seconds(pid) - cpu_before
    ms = np.asarray(latencies) * 1000
    return Result(
        server, len(inputs), concurrency, total, len(errors),
        float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), total / elapsed, cpu * 1000 / total,
    )


def post_json(port: int, path: str, inputs: np.ndarray) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps({"inputs": inputs.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (bounded)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32], help="rows per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="repeat every scenario; report medians")
    parser.add_argument(
        "--mlflow-torch-threads", type=int, help="OMP_NUM_THREADS for the mlflow server (default: torch's own)"
    )
    parser.add_argument("--torch-threads", type=int, help="the same torch thread count for both servers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--image-size", action="store_true",
                        help="instead of latency: build both images (needs .ci/setup-containers.sh) and compare sizes")
    args = parser.parse_args()
    if args.torch_threads:
        args.mlflow_torch_threads = args.torch_threads

    with tempfile.TemporaryDirectory(prefix="flops-bench-") as tmp:
        workdir = Path(tmp)
        tracking_uri, model_uri, images = log_model(workdir)
        bundle = workdir / "bundle"
        export_bundle(model_uri, bundle, tracking_uri=tracking_uri)
        mlflow_model_dir = next(workdir.glob("mlartifacts/**/MLmodel")).parent
        if args.image_size:
            sizes = image_sizes(workdir, tracking_uri, model_uri, mlflow_model_dir)
            base = sizes["base"]
            print(f"linux/amd64 image, pushed bytes: flops {sizes['flops'] / 1e6:.1f} MB "
                  f"(base {base / 1e6:.1f} + {(sizes['flops'] - base) / 1e6:.1f}), "
                  f"mlflow generate-dockerfile {sizes['mlflow'] / 1e6:.1f} MB "
                  f"(base {base / 1e6:.1f} + {(sizes['mlflow'] - base) / 1e6:.1f}), "
                  f"ratio {sizes['flops'] / sizes['mlflow']:.3f}x")
            return 0

        ours_port, mlflow_port = free_port(), free_port()
        ours = launch.start_local_server(
            bundle, ours_port,
            extra_env={"FLOPS_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else None,
        )
        print(f"torch threads: flops {args.torch_threads or 1}, mlflow {args.mlflow_torch_threads or 'default'}",
              flush=True)
        theirs = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(mlflow_model_dir),
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # mlflow execs a bare `uvicorn`: put this interpreter's bin directory first on PATH.
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": tracking_uri,
                **({"OMP_NUM_THREADS": str(args.mlflow_torch_threads)} if args.mlflow_torch_threads else {}),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )
        try:
            wait_http_200(f"http://127.0.0.1:{ours_port}/ready", ours)
            wait_http_200(f"http://127.0.0.1:{mlflow_port}/ping", theirs)
            ours_out = np.asarray(post_json(ours_port, "/predict", images[:64])["predictions"], dtype=np.float32)
            theirs_json = post_json(mlflow_port, "/invocations", images[:64])
            theirs_out = np.asarray(theirs_json["predictions"], dtype=np.float32)
            print(f"identical float32 predictions on 64 rows: {bool((ours_out == theirs_out).all())}", flush=True)
            print(f"load average before: {os.getloadavg()}", flush=True)
            rounds: list[Result] = []
            # Rounds alternate the servers so a burst of other load on the machine hits both alike.
            for round_index in range(args.rounds):
                for rows in args.rows:
                    for concurrency in args.concurrency:
                        for name, pid, port, path in (
                            ("flops", ours.pid, ours_port, "/predict"),
                            ("mlflow", theirs.pid, mlflow_port, "/invocations"),
                        ):
                            r = measure(name, pid, port, path, images[:rows], args.requests, concurrency)
                            rounds.append(r)
                            print(f"  round {round_index + 1} {name:6} rows={rows:<3} c={concurrency:<3} "
                                  f"p50={r.p50_ms:.2f}ms p99={r.p99_ms:.2f}ms {r.rps:.0f} req/s "
                                  f"cpu={r.cpu_ms_per_request:.2f}ms/req errors={r.errors}",
                                  flush=True)
            print(f"load average after: {os.getloadavg()}", flush=True)
            results = median_of_rounds(rounds)
        finally:
            launch.stop(ours)
            launch.stop(theirs)

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}, indent=2))
    return 0


def median_of_rounds(rounds: list[Result]) -> list[Result]:
    """One result per (server, rows, concurrency): the median of each metric over the rounds."""
    grouped: dict[tuple[str, int, int], list[Result]] = {}
    for r in rounds:
        grouped.setdefault((r.server, r.rows, r.concurrency), []).append(r)
    return [
        Result(
            server, rows, concurrency, sum(r.requests for r in group), sum(r.errors for r in group),
            float(np.median([r.p50_ms for r in group])), float(np.median([r.p99_ms for r in group])),
            float(np.median([r.rps for r in group])), float(np.median([r.cpu_ms_per_request for r in group])),
        )
        for (server, rows, concurrency), group in grouped.items()
    ]


def image_sizes(workdir: Path, tracking_uri: str, model_uri: str, mlflow_model_dir: Path) -> dict[str, int]:
    """Pushed (compressed) linux/amd64 bytes of FLOps' image and of `mlflow models generate-dockerfile`'s, same base."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
    from containers.support import BASE, CONSTRAINTS, FIND_LINKS, REGISTRY  # type: ignore[import-not-found]

    from image_builder import build_image
    from inference.package import inference_image_spec, stage_context

    export_bundle(model_uri, workdir / "size-bundle", tracking_uri=tracking_uri)
    ours = build_image(inference_image_spec(
        stage_context(workdir / "size-bundle", workdir / "size-context"), name="flops-bench/inference",
        platforms=["linux/amd64"], registry=REGISTRY, base_image=BASE, tls_verify=False, pip_find_links=FIND_LINKS,
        platform_constraints=CONSTRAINTS,
    ))
    context = workdir / "mlflow-docker"
    subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", str(mlflow_model_dir), "-d",
         str(context), "--env-manager", "local"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    dockerfile = (context / "Dockerfile").read_text()
    # Same base as ours (Debian's python3, hence the break-system-packages and `python` link); the same CPU
    # torch wheel through find-links; the host's CA for pip. Everything else is MLflow's recipe unchanged.
    first_line = dockerfile.splitlines()[0] if dockerfile.startswith("FROM") else next(
        line for line in dockerfile.splitlines() if line.startswith("FROM"))
    dockerfile = dockerfile.replace(first_line, "\n".join([
        f"FROM {BASE}",
        "ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_CERT=/flops-ca.crt PIP_FIND_LINKS=" + " ".join(FIND_LINKS),
        "RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip",
    ]), 1)
    (context / "Dockerfile").write_text(dockerfile)
    ca = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    volumes = ["-v", f"{ca}:/flops-ca.crt:ro"] + [x for links in FIND_LINKS for x in ("-v", f"{links}:{links}:ro")]
    image = "localhost/flops-bench/mlflow-generated:amd64"
    subprocess.run(
        ["buildah", "build", "--layers=false", "--isolation", "chroot", "--tls-verify=false", "--platform",
         "linux/amd64", *volumes, "-t", image, "-f", str(context / "Dockerfile"), str(context)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pushed = f"{REGISTRY}/flops-bench/mlflow-generated:amd64"
    subprocess.run(["buildah", "push", "--quiet", "--tls-verify=false", image, f"docker://{pushed}"], check=True,
                   stdout=subprocess.DEVNULL)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{pushed}"],
                         capture_output=True, text=True, check=True).stdout
    manifest = json.loads(raw)
    theirs = sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    base_manifest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{BASE.rsplit(':', 1)[0]}@{_amd64_digest(BASE)}"],
        capture_output=True, text=True, check=True).stdout)
    base = sum(layer["size"] for layer in base_manifest["layers"])
    return {"flops": ours.size_bytes["linux/amd64"], "mlflow": theirs, "base": base}


def _amd64_digest(ref: str) -> str:
    index = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                      capture_output=True, text=True, check=True).stdout)
    return next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64")


def print_table(results: list[Result]) -> None:
    print(f"\nmachine: {machine()}")
    print(f"{'rows':>4} {'conc':>4} | {'flops p50':>9} {'mlflow p50':>10} {'ratio':>6} | {'flops p99':>9} "
          f"{'mlflow p99':>10} | {'flops rps':>9} {'mlflow rps':>10} {'ratio':>6} | {'cpu/req':>7} {'mlflow':>7} "
          f"{'ratio':>6}")
    by_key = {(r.server, r.rows, r.concurrency): r for r in results}
    for (server, rows, concurrency), ours in by_key.items():
        if server != "flops":
            continue
        theirs = by_key[("mlflow", rows, concurrency)]
        print(f"{rows:>4} {concurrency:>4} | {ours.p50_ms:>7.2f}ms {theirs.p50_ms:>8.2f}ms "
              f"{ours.p50_ms / theirs.p50_ms:>5.2f}x | {ours.p99_ms:>7.2f}ms {theirs.p99_ms:>8.2f}ms | "
              f"{ours.rps:>9.0f} {theirs.rps:>10.0f} {ours.rps / theirs.rps:>5.2f}x | "
              f"{ours.cpu_ms_per_request:>5.2f}ms {theirs.cpu_ms_per_request:>5.2f}ms "
              f"{ours.cpu_ms_per_request / theirs.cpu_ms_per_request:>5.2f}x")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
