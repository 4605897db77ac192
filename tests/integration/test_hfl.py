"""Hierarchical FL end to end through `flops submit`: learners -> cluster aggregators -> root.

Two kinds of run, each shared by several tests (module-scoped fixtures, the machine is small):
- `exact_run`: the test-only task of tests/fixtures/hfl_exact_task, whose train() makes a known change,
  in two hand-placed clusters, so the final model can be worked out by hand; it also carries a
  --comm-budget that allows one global round of two, and runs with --network namespaces (a network
  namespace and address per host).
- `cnn_runs`: examples/digits-cnn hierarchical (4 learners, 2 clusters, 3 global x 2 local rounds) and
  flat (4 learners, 6 rounds: the same learner work), compared on accuracy and bytes to the root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import EXAMPLE_DIR, FIXTURES_DIR, SubmittedRun, assert_no_process_left, git_repo_of, run_flops, run_state

pytestmark = pytest.mark.slow
# Each module fixture runs on the first test that asks for it: its run counts against that test's timeout.

# --- the exact run: hand-computable hierarchical FedAvg ---

INITIAL = np.array([0.0, 1.0, -2.0])  # hfl_exact_task's INITIAL_WEIGHTS
LOCAL_ROUNDS = 2
GLOBAL_ROUNDS = 2  # the budget below allows the first only
# Partition i has 10 * (i + 1) training examples and train() adds (i + 1) to every weight (one epoch).
# Cluster a = learners 0, 1 (10 and 20 examples); cluster b = learners 2, 3 (30 and 40 examples).
# One local round moves a cluster's model by the example-weighted mean of its learners' steps:
STEP_A = (10 * 1 + 20 * 2) / 30  # 5/3
STEP_B = (30 * 3 + 40 * 4) / 70  # 25/7
# After 2 local rounds a cluster reports its model and the examples of its LAST local round (30, 70:
# not the running totals 60, 140); the root averages the two cluster models by those examples:
EXAMPLES_A, EXAMPLES_B = 30, 70
STEP_ROOT = (EXAMPLES_A * LOCAL_ROUNDS * STEP_A + EXAMPLES_B * LOCAL_ROUNDS * STEP_B) / (EXAMPLES_A + EXAMPLES_B)  # 6
# Bytes on the wire per global round, with the model being 3 float64 (24 bytes): each of the 2 clusters
# receives and returns one model from/to the root, and in each of its 2 local rounds sends each of its 2
# learners the model twice (the train and the evaluate message both carry it) and receives one back (the
# train reply). Without link costs the cost unit is MB over all links.
MODEL_BYTES = 3 * 8
BYTES_PER_GLOBAL_ROUND = 2 * 2 * MODEL_BYTES + 2 * (2 * LOCAL_ROUNDS * MODEL_BYTES + 2 * LOCAL_ROUNDS * 2 * MODEL_BYTES)  # 672
COMM_BUDGET = 1.5 * BYTES_PER_GLOBAL_ROUND / 1e6  # one global round fits, a second would not

EXACT_TOPOLOGY = """\
    # Two clusters placed by hand; learners[i] trains on partition i of 4. The root at an address and port of
    # the file's choosing, cluster a's gateway by name with its SuperLink's port, learners 0 and 1 on one box;
    # the rest where FLOps puts them.
    assignment: manual
    root_host: {root_host}
    root_port: 9300
    clusters:
      - name: a
        host: gateway-a
        port: 9301
        learners: [learner-0, learner-1]
      - name: b
        learners: [learner-2, learner-3]
    learners:
      - name: learner-0
        host: edge-box
      - name: learner-1
        host: edge-box
      - name: learner-2
      - name: learner-3
"""


def _free_root_address() -> str:
    """An address in a /24 this machine does not route (what --network namespaces accepts for a placed host)."""
    import ipaddress

    from flops.orchestrators.netns import _used_networks

    free = next(net for net in ipaddress.ip_network("10.250.0.0/16").subnets(new_prefix=24)
                if not any(net.overlaps(used) for used in _used_networks()))
    return str(free[10])


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory: pytest.TempPathFactory) -> SubmittedRun:
    base = tmp_path_factory.mktemp("hfl-exact")
    repo = git_repo_of(FIXTURES_DIR / "hfl_exact_task", base / "hfl-exact-task")
    topology = base / "two-clusters.yaml"
    topology.write_text(textwrap.dedent(EXACT_TOPOLOGY).format(root_host=_free_root_address()))
    workdir = base / "work"
    result = run_flops(
        "submit", repo.as_uri(), "--topology", str(topology), "--rounds", str(GLOBAL_ROUNDS),
        "--local-rounds", str(LOCAL_ROUNDS), "--comm-budget", repr(COMM_BUDGET), "--round-timeout", "900",
        # Every host its own network namespace and address: the answer below is the same as on loopback.
        "--network", "namespaces",
        "--workdir", str(workdir), "--json", timeout_s=2400,  # generous limits for a shared, loaded CI machine
    )
    assert result.returncode == 0, result.output
    return SubmittedRun(workdir, result, result.last_json())


def _expected_model(global_rounds: int) -> np.ndarray:
    return INITIAL + STEP_ROOT * global_rounds


@pytest.mark.timeout(2700)
def test_root_model_is_the_example_weighted_average_of_the_cluster_models(exact_run: SubmittedRun) -> None:
    summary = exact_run.summary
    assert summary["status"] == "FINISHED", summary
    assert summary["rounds_completed"] >= 1
    expected = _expected_model(summary["rounds_completed"])
    with np.load(Path(summary["run_dir"]) / "output" / "final_model.npz") as npz:
        assert npz.files == ["arr_0"]
        final = npz["arr_0"]
    np.testing.assert_allclose(final, expected, rtol=1e-12, atol=1e-12)
    # An unweighted mean of the two cluster models would give something else.
    assert not np.allclose(final, INITIAL + (LOCAL_ROUNDS * STEP_A + LOCAL_ROUNDS * STEP_B) / 2)
    # The central evaluation saw the same model: test() returns the sum of the weights as its loss.
    assert summary["final_metrics"]["loss"] == pytest.approx(expected.sum(), abs=1e-9)


@pytest.mark.timeout(2700)
def test_each_cluster_keeps_one_flower_run_for_every_global_round(exact_run: SubmittedRun) -> None:
    # One cluster run serves all global rounds: its ServerApp and its learners' warm workers load once per run.
    run_dir = Path(exact_run.summary["run_dir"])
    done = exact_run.summary["rounds_completed"]
    for cluster in ("cluster-0", "cluster-1"):
        requests = [json.loads(p.read_text()) for p in (run_dir / "hosts" / cluster).glob("round-*/request.json")]
        assert sorted(r["global_round"] for r in requests)[:done] == list(range(1, done + 1)), requests
        assert len({r["cluster_run"] for r in requests}) == 1, requests


@pytest.mark.timeout(2700)
def test_each_host_had_its_own_address_and_nothing_of_the_network_is_left(exact_run: SubmittedRun) -> None:
    state = run_state(exact_run.workdir, exact_run.summary["run_id"])
    deployment = state["deployment"]
    hosts = json.loads(deployment["settings"]["netns-hosts"])
    root_host = json.loads((Path(state["run_dir"]) / "plan.json").read_text())["topology"]["root_host"]
    # Where the topology file put them: the root at its address, cluster a's gateway by name, learners 0 and 1
    # on one box; cluster b's gateway and learners 2 and 3 each a host of their own.
    assert sorted(hosts) == sorted([root_host, "gateway-a", "edge-box", "cluster-1", "learner-2", "learner-3"])
    assert hosts[root_host] == root_host
    assert len(set(hosts.values())) == len(hosts) and "127.0.0.1" not in hosts.values()
    # What each component dials is what the other was told to listen on.
    assert deployment["control_address"] == f"{root_host}:9300"
    components = {c["name"]: c for c in deployment["components"]}
    assert f"{hosts['gateway-a']}:9301" in " ".join(components["cluster-0-aggregator"]["argv"])
    learner_0 = components["learner-0"]["argv"]
    assert learner_0[learner_0.index("--superlink") + 1] == f"{hosts['gateway-a']}:9301"
    assert learner_0[learner_0.index("netns") + 2] == components["learner-1"]["argv"][learner_0.index("netns") + 2]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"flops-{deployment['settings']['netns-tag']}-" not in listed


@pytest.mark.timeout(2700)
def test_registered_model_holds_the_hand_computed_weights(
    exact_run: SubmittedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = exact_run.summary
    assert summary["model_uri"], summary
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    # Net.forward(x) = x * w: a row of ones reads the weights back.
    prediction = np.asarray(model.predict(np.ones((1, 3), dtype=np.float64)))
    np.testing.assert_allclose(prediction, [_expected_model(summary["rounds_completed"])], rtol=1e-12, atol=1e-12)


@pytest.mark.timeout(2700)
def test_the_assignment_from_the_topology_file_is_printed(exact_run: SubmittedRun) -> None:
    stderr = exact_run.result.stderr
    assert "cluster a: learner-0, learner-1" in stderr, stderr
    assert "cluster b: learner-2, learner-3" in stderr, stderr
    assert "Traceback" not in exact_run.result.output


@pytest.mark.timeout(2700)
def test_each_cluster_has_a_nested_mlflow_run_with_one_point_per_local_round(exact_run: SubmittedRun) -> None:
    client, parent = exact_run.client, exact_run.mlflow_run_id
    experiment_id = client.get_run(parent).info.experiment_id
    nested = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    by_cluster = {run.data.tags["flops.cluster"]: run for run in nested}
    assert sorted(by_cluster) == ["a", "b"], [r.data.tags for r in nested]
    # Each local round's cluster model, read through its learners' test() (loss = sum of the weights):
    # the cluster model after local round r is INITIAL + r * step of the cluster.
    expected_step = {"a": STEP_A, "b": STEP_B}
    parent_run = client.get_run(parent)
    for name, run in by_cluster.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.params["learner_names"] == {"a": "learner-0,learner-1", "b": "learner-2,learner-3"}[name]
        # Local-round metrics say so in their names: no chart mixes them with the parent's global rounds.
        assert all(key.startswith("local_round/") for key in run.data.metrics), run.data.metrics
        for key in ("local_round/evaluate_loss", "local_round/train_step", "local_round/examples",
                    "local_round/global_round"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(1, LOCAL_ROUNDS + 1)), (name, key, history)
        history = sorted(client.get_metric_history(run.info.run_id, "local_round/evaluate_loss"), key=lambda m: m.step)
        losses = [m.value for m in history]
        wanted = [float((INITIAL + r * expected_step[name]).sum()) for r in range(1, LOCAL_ROUNDS + 1)]
        assert losses == pytest.approx(wanted, abs=1e-9), (name, losses, wanted)
        examples = [m.value for m in client.get_metric_history(run.info.run_id, "local_round/examples")]
        assert examples == [{"a": EXAMPLES_A, "b": EXAMPLES_B}[name]] * LOCAL_ROUNDS, (name, examples)
        # The cluster's own working time: from the root's first round to its last local round.
        assert parent_run.info.start_time < run.info.start_time <= history[0].timestamp, name
        assert run.info.end_time == history[-1].timestamp < parent_run.info.end_time, name
        # Its slice of the topology, as an artifact of its own run.
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="topology/cluster.json",
            tracking_uri=exact_run.summary["tracking_uri"], dst_path=str(exact_run.workdir / f"slice-{name}"),
        ))
        assert [l["name"] for l in json.loads(local.read_text())["learners"]] == run.data.params["learner_names"].split(",")


@pytest.mark.timeout(2700)
def test_parent_and_cluster_runs_share_param_names_and_the_parent_records_the_hierarchy(exact_run: SubmittedRun) -> None:
    client, parent = exact_run.client, exact_run.mlflow_run_id
    run = client.get_run(parent)
    params = run.data.params
    assert (params["clusters"], params["local_rounds"], params["assignment"]) == ("2", str(LOCAL_ROUNDS), "manual")
    assert params["learners"] == "4"
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    for child in children:
        shared = set(child.data.params) & set(params)
        assert {"rounds", "local_rounds", "epochs", "batch_size", "learning_rate", "strategy", "commit"} <= shared
        assert {k: child.data.params[k] for k in shared - {"learners"}} == {k: params[k] for k in shared - {"learners"}}
        assert child.data.params["learners"] == "2"  # a count in both runs, never a list
    assert sum(int(c.data.params["learners"]) for c in children) == int(params["learners"])
    assert run.info.run_name == "hfl-exact-task 4 learners in 2 clusters x 2 rounds x 2 local fedavg"
    # The cluster's evaluation after its last local round, on the parent's global-round axis.
    for name in ("a", "b"):
        history = client.get_metric_history(parent, f"cluster-{name}/evaluate_loss")
        assert [m.step for m in history] == [1], (name, history)
    central = sorted(m.step for m in client.get_metric_history(parent, "central_loss"))
    assert central == [0, 1], central
    # One dataset per learner partition, sized as the task's load_data makes them (10 * (i + 1) examples).
    partitions = {d.dataset.name: json.loads(d.dataset.profile)["num_rows"] for d in run.inputs.dataset_inputs}
    assert [partitions[f"partition {i} of 4 (train)"] for i in range(4)] == [10, 20, 30, 40], partitions


@pytest.mark.timeout(2700)
def test_clusters_report_the_examples_of_their_last_local_round_to_the_root(exact_run: SubmittedRun) -> None:
    client, parent = exact_run.client, exact_run.mlflow_run_id
    metrics = client.get_run(parent).data.metrics
    assert metrics["cluster-a/examples"] == EXAMPLES_A, metrics  # not 2 * 30, a running total
    assert metrics["cluster-b/examples"] == EXAMPLES_B, metrics
    assert metrics["examples"] == EXAMPLES_A + EXAMPLES_B, metrics


@pytest.mark.timeout(2700)
def test_topology_picture_and_accuracy_curve_are_artifacts_of_the_parent_run(exact_run: SubmittedRun) -> None:
    client, parent = exact_run.client, exact_run.mlflow_run_id
    topology = {a.path for a in client.list_artifacts(parent, "topology")}
    assert "topology/topology.png" in topology, topology
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    assert "plots/accuracy.png" in plots, plots
    for path in ("topology/topology.png", "plots/accuracy.png"):
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=parent, artifact_path=path, tracking_uri=exact_run.summary["tracking_uri"],
            dst_path=str(exact_run.workdir / "downloaded"),
        ))
        assert local.read_bytes().startswith(b"\x89PNG"), path


@pytest.mark.timeout(2700)
def test_bytes_are_counted_on_every_link_of_the_hierarchy(exact_run: SubmittedRun) -> None:
    summary = exact_run.summary
    rounds = summary["rounds_completed"]
    assert summary["bytes_total"] == BYTES_PER_GLOBAL_ROUND * rounds, summary
    assert summary["bytes_to_root"] == 2 * MODEL_BYTES * rounds, summary
    assert summary["comm_cost"] == pytest.approx(summary["bytes_total"] / 1e6)
    for name in ("a", "b"):
        cluster = summary["clusters"][name]
        assert cluster["bytes_to_root"] == cluster["bytes_from_root"] == MODEL_BYTES * rounds, cluster
        replies = 2 * LOCAL_ROUNDS * MODEL_BYTES * rounds  # 2 learners, one train reply per local round
        assert cluster["bytes_learners_to_cluster"] == replies, cluster
        assert cluster["bytes_cluster_to_learners"] == 2 * replies, cluster  # train and evaluate messages


@pytest.mark.timeout(2700)
def test_comm_budget_stops_the_run_cleanly_before_it_is_exceeded(exact_run: SubmittedRun) -> None:
    summary = exact_run.summary
    assert exact_run.result.returncode == 0
    assert summary["status"] == "FINISHED", summary
    assert summary["rounds_completed"] == 1 < GLOBAL_ROUNDS, summary
    assert summary["comm_cost"] <= COMM_BUDGET, summary
    assert "budget" in summary["stopped_early"], summary
    assert summary["model_uri"], summary
    state = run_state(exact_run.workdir, summary["run_id"])
    assert (state["status"], state["phase"]) == ("FINISHED", "done"), state
    assert exact_run.client.get_run(exact_run.mlflow_run_id).info.status == "FINISHED"
    assert_no_process_left(summary["run_id"], grace_s=0)


# --- the example: hierarchical against flat, same learner work ---

TRAINING_FLAGS = ("--epochs", "1", "--batch-size", "32", "--lr", "0.005", "--round-timeout", "600")


@dataclass
class CnnRuns:
    hierarchical: SubmittedRun
    flat: SubmittedRun


# Appended to the example's task.py for this comparison only: every process that imports the task seeds torch,
# so both runs start from the same initial model and shuffle alike, and the gap between them is the design's,
# not two random initialisations'.
SEEDING = "\n\ntorch.manual_seed(0)  # test_hfl: same initial model and shuffles in the flat and hierarchical runs\n"


@pytest.fixture(scope="module")
def seeded_example_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("seeded-example") / "digits-cnn"
    shutil.copytree(EXAMPLE_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    with open(source / "task.py", "a") as task:
        task.write(SEEDING)
    return git_repo_of(source, source.parent / "repo" / "digits-cnn")


@pytest.fixture(scope="module")
def cnn_runs(seeded_example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> CnnRuns:
    runs = {}
    for kind, shape in (("hierarchical", ("--learners", "4", "--clusters", "2", "--rounds", "3", "--local-rounds", "2")),
                        ("flat", ("--learners", "4", "--rounds", "6"))):
        workdir = tmp_path_factory.mktemp(f"hfl-cnn-{kind}")
        result = run_flops("submit", seeded_example_repo.as_uri(), *shape, *TRAINING_FLAGS, "--workdir", str(workdir),
                           "--json", timeout_s=1500)
        assert result.returncode == 0, f"{kind} run failed:\n{result.output}"
        runs[kind] = SubmittedRun(workdir, result, result.last_json())
    return CnnRuns(**runs)


@pytest.mark.timeout(2400)
def test_hierarchical_example_matches_flat_accuracy_with_a_fraction_of_the_bytes_to_root(cnn_runs: CnnRuns) -> None:
    hfl, flat = cnn_runs.hierarchical.summary, cnn_runs.flat.summary
    assert (hfl["status"], hfl["rounds_completed"]) == ("FINISHED", 3), hfl
    assert (flat["status"], flat["rounds_completed"]) == ("FINISHED", 6), flat
    hfl_acc, flat_acc = hfl["final_metrics"]["accuracy"], flat["final_metrics"]["accuracy"]
    assert abs(hfl_acc - flat_acc) <= 0.03, (hfl_acc, flat_acc)
    # 3 global rounds x 2 cluster models vs 6 rounds x 4 learner models: a quarter of the uploads.
    assert 0 < hfl["bytes_to_root"] <= 0.3 * flat["bytes_to_root"], (hfl["bytes_to_root"], flat["bytes_to_root"])


@pytest.mark.timeout(2400)
def test_hierarchical_json_breaks_bytes_down_per_cluster(cnn_runs: CnnRuns) -> None:
    hfl = cnn_runs.hierarchical.summary
    assert sorted(hfl["clusters"]) == ["cluster-0", "cluster-1"], hfl["clusters"]
    keys = ("bytes_to_root", "bytes_from_root", "bytes_learners_to_cluster", "bytes_cluster_to_learners")
    for name, cluster in hfl["clusters"].items():
        for key in keys:
            assert cluster.get(key, 0) > 0, (name, key, cluster)
    assert hfl["bytes_total"] == sum(c[k] for c in hfl["clusters"].values() for k in keys), hfl
    assert hfl["bytes_to_root"] == sum(c["bytes_to_root"] for c in hfl["clusters"].values()), hfl
    # Learner traffic stays in the clusters: far more bytes move there than to the root.
    assert hfl["bytes_total"] > 2 * hfl["bytes_to_root"]


@pytest.mark.timeout(2400)
def test_hierarchical_example_prints_the_chosen_assignment(cnn_runs: CnnRuns) -> None:
    lines = [line for line in cnn_runs.hierarchical.result.stderr.splitlines() if line.startswith("cluster cluster-")]
    assert [line.split(":")[0] for line in lines] == ["cluster cluster-0", "cluster cluster-1"], lines
    placed = sorted(name.strip() for line in lines for name in line.split(":", 1)[1].split(","))
    assert placed == [f"learner-{i}" for i in range(4)], lines


@pytest.mark.timeout(2400)
def test_both_example_runs_exit_cleanly_and_leave_no_process(cnn_runs: CnnRuns) -> None:
    for run in (cnn_runs.hierarchical, cnn_runs.flat):
        assert run.result.returncode == 0
        assert "Traceback" not in run.result.output, run.result.output
        assert_no_process_left(run.summary["run_id"], grace_s=0)
