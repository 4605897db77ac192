"""The model of a real `flops submit` run, served (`flops serve RUN_ID`) and packaged (`flops package RUN_ID`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import FLOPS, SubmittedRun, assert_one_line_error, flops_env, run_flops, run_git, valid_task_source
from conftest import wait_for, write_files
from containers.support import BASE, FIND_LINKS, REGISTRY, require_containers

from flops.orchestrators.local import free_port

ROWS = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> SubmittedRun:
    """Two learners, one round of the minimal task: a registered model with a run id, as a user gets one.

    The round may take long on a loaded machine (60-130 s per round is common on 2 shared cores): a generous
    round timeout keeps the machine's load from failing a test about serving.
    """
    repo = tmp_path_factory.mktemp("repo") / "tiny-task"
    write_files(repo, {"task.py": valid_task_source(), "requirements.txt": "torch\nnumpy\n"})
    run_git(repo, "init", "-q", "-b", "main")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "tiny task")
    workdir = tmp_path_factory.mktemp("work")
    result = run_flops("submit", repo.as_uri(), "--learners", "2", "--rounds", "1", "--round-timeout", "2400",
                       "--workdir", str(workdir), "--json", timeout_s=3000)
    assert result.returncode == 0, result.output
    return SubmittedRun(workdir, result, result.last_json(), repo=repo)


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def registered_predictions(run: SubmittedRun, rows: np.ndarray) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(run.summary["tracking_uri"])
    mlflow.set_registry_uri(run.summary["tracking_uri"])
    return np.asarray(mlflow.pyfunc.load_model(run.summary["model_uri"]).predict(rows), dtype=np.float32)


@pytest.fixture
def served(tiny_run: SubmittedRun, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`flops serve RUN_ID` as a user starts it, with its own TMPDIR so FLOps' leftovers there can be seen."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(FLOPS), "serve", tiny_run.summary["run_id"], "--workdir", str(tiny_run.workdir), "--port", str(port)],
        env=flops_env(TMPDIR=str(tmpdir)), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    try:
        yield process, f"http://127.0.0.1:{port}", tmpdir
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        log.close()


def test_serve_by_run_id_predicts_what_the_registered_model_does_and_a_kill_9_leaves_nothing(
    tiny_run: SubmittedRun, served: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, url, tmpdir = served

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flops serve exited: {(tmpdir.parent / 'serve.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 600, "flops serve to answer /ready")
    response = httpx.post(f"{url}/predict", json={"inputs": ROWS.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    served_outputs = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(served_outputs, registered_predictions(tiny_run, ROWS), rtol=1e-6, atol=1e-6)
    assert httpx.get(f"{url}/metadata").json()["run_id"] == tiny_run.mlflow_run_id

    # The server is this very process (no child to orphan), and its exported bundle was removed once loaded.
    assert children_of(process.pid) == []
    # (torch keeps its own compile cache, torchinductor_<user>, in TMPDIR: that one is torch's, and reused.)
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("flops-")] == []
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    port = int(url.rsplit(":", 1)[1])
    time.sleep(0.5)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "something still answers on the port after kill -9"


def test_serve_on_a_busy_port_or_an_unknown_host_is_one_line_and_exit_2(tiny_run: SubmittedRun) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_flops("serve", tiny_run.summary["run_id"], "--workdir", str(tiny_run.workdir),
                           "--port", str(port), timeout_s=300)
    message = assert_one_line_error(result)
    assert f"--port {port}: already in use" in message, message
    result = run_flops("serve", tiny_run.summary["run_id"], "--workdir", str(tiny_run.workdir),
                       "--host", "no-such-host.invalid", timeout_s=300)
    assert "--host 'no-such-host.invalid'" in assert_one_line_error(result)


def test_package_by_run_id_builds_a_non_root_cpu_image_of_the_runs_model(
    tiny_run: SubmittedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_containers()
    # The machine's build settings from a defaults file, as .ci/setup-containers.sh writes it: no other flags.
    defaults = tmp_path / "build-defaults.toml"
    defaults.write_text(f"base_image = {json.dumps(BASE)}\npip_find_links = {json.dumps(FIND_LINKS)}\n")
    monkeypatch.setenv("FLOPS_BUILD_DEFAULTS", str(defaults))
    result = run_flops("package", tiny_run.summary["run_id"], "--workdir", str(tiny_run.workdir),
                       "--platform", "linux/amd64", "--registry", REGISTRY, "--json", timeout_s=1800)
    assert result.returncode == 0, result.output
    report = result.last_json()
    assert report["run_id"] == tiny_run.mlflow_run_id
    assert "CUDA LIBRARIES" not in result.stderr, result.stderr
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"docker://{report['image']}"],
                                       capture_output=True, text=True, check=True).stdout)["config"]
    assert config["User"].split(":")[0] not in ("", "0", "root"), config
    # torch pinned to the run's version, CPU build: 2.13.0+cpu from the wheel folder, not PyPI's CUDA build.
    assert report["size_bytes"]["linux/amd64"] < 1_000_000_000, report
