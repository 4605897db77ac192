"""A small client of a SuperLink's Control API: start a run from an app folder, watch it, stop it, read its log
(what `flwr run` and `flwr log` do). A cluster aggregator drives its cluster's local rounds with it; FLOps'
controller extends it. Only Flower and the standard library: the app needs nothing of FLOps."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import Status, SubStatus
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (  # pylint: disable=E0611
    ListRunsRequest,
    StartRunRequest,
    StopRunRequest,
    StreamLogsRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor


class ControlError(Exception):
    """The SuperLink refused a request or did not answer it."""


@dataclass(frozen=True)
class RunStatus:
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def completed(self) -> bool:
        return self.finished and self.sub_status == SubStatus.COMPLETED


class ControlClient:
    """One SuperLink's Control API: over TLS trusting only the run's CA, unless ca_cert is None (an insecure run)."""

    def __init__(self, address: str, ca_cert: Path | str | None = None) -> None:
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=ca_cert is None,
            # Bytes, not a path: Flower then builds a context that trusts this CA alone, not the system's.
            root_certificates=Path(ca_cert).read_bytes() if ca_cert is not None else None,
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
            raise ControlError(f"SuperLink at {self.address} refused the run: {exc}") from exc
        if not response.HasField("run_id"):
            raise ControlError(f"SuperLink at {self.address} did not start the run")
        return int(response.run_id)

    def run_status(self, run_id: int) -> RunStatus:
        try:
            run = self._client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise ControlError(f"SuperLink at {self.address}: ListRuns: {exc}") from exc
        return RunStatus(run.status.status, run.status.sub_status, run.status.details)

    def stop_run(self, run_id: int) -> None:
        self._client.StopRun(StopRunRequest(run_id=run_id))

    def log_chunks(self, run_id: int, after_timestamp: float = 0.0) -> Iterator[tuple[str, float]]:
        """The ServerApp's output of a run as the SuperLink keeps it: (text, its latest timestamp), until the run
        has finished and all of it was sent. Text is cut anywhere, not at line ends."""
        request = StreamLogsRequest(run_id=run_id, after_timestamp=after_timestamp)
        try:
            for response in self._client.StreamLogs(request):
                yield response.log_output, response.latest_timestamp
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise ControlError(f"SuperLink at {self.address}: StreamLogs: {exc}") from exc

    def close(self) -> None:
        self._client.close()
