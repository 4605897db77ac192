"""Start and watch a Flower run through the SuperLink's Control API, as `flwr run` does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import Status, SubStatus
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.supercore.fab import Fab
from flwr.proto.control_pb2 import ListRunsRequest, StartRunRequest, StopRunRequest  # pylint: disable=E0611
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

from flops.errors import DeployError


@dataclass(frozen=True)
class FlowerRunStatus:
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def completed(self) -> bool:
        return self.finished and self.sub_status == SubStatus.COMPLETED


class FlowerControl:
    """A small client of one SuperLink's Control API."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=True,  # loopback only; a remote SuperLink gets TLS through its own adapter
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    def start_run(self, app_dir: Path, overrides: dict[str, str | int | float | bool]) -> int:
        """Build the app's FAB and start it; returns Flower's run id."""
        fab_bytes = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(overrides))
        try:
            response = self._client.StartRun(request)
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise DeployError(f"SuperLink at {self.address} refused the run: {exc}") from exc
        if not response.HasField("run_id"):
            raise DeployError(f"SuperLink at {self.address} did not start the run")
        return int(response.run_id)

    def run_status(self, run_id: int) -> FlowerRunStatus:
        run = self._client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        return FlowerRunStatus(run.status.status, run.status.sub_status, run.status.details)

    def stop_run(self, run_id: int) -> None:
        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        self._client.close()
