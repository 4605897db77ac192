"""The controller's client of the root SuperLink's Control API: the app's own client (start, watch, stop, log)
plus node registration, and the run's log followed line by line."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from flwr.proto.control_pb2 import (  # pylint: disable=E0611
    ListNodesRequest,
    RegisterNodeRequest,
    UnregisterNodeRequest,
)
from flops_templates.flower_app.flops_app.control import ControlClient, ControlError, RunStatus

from flops.errors import DeployError, FlopsError

__all__ = ["ControlUnavailable", "FlowerControl", "RunLog", "RunStatus", "describe_tls_failure"]


def describe_tls_failure(error: str) -> str | None:
    """What a failed certificate check of a SuperLink means, from the TLS library's message; None if ERROR is not
    one (the same wording reaches a SuperNode's log and this module's client)."""
    if "CERTIFICATE_VERIFY_FAILED" not in error:
        return None
    if "expired" in error:
        return f"TLS: the SuperLink's certificate has expired ({error})"
    if "mismatch" in error or "not valid for" in error:
        return f"TLS: the SuperLink's certificate is not valid for the address it was reached at ({error})"
    return f"TLS: the SuperLink's certificate is not signed by the CA it trusts ({error})"


class ControlUnavailable(FlopsError):
    """The SuperLink's Control API did not answer: the SuperLink is down, unreachable or overloaded."""


class FlowerControl(ControlClient):
    """The app's Control API client, its failures as FLOps' errors, plus what only the controller does."""

    def register_node(self, public_key_pem: bytes, name: str) -> int:
        """Register a SuperNode's public key (what `flwr supernode register` does); returns its node id."""
        try:
            response = self._client.RegisterNode(RegisterNodeRequest(public_key=public_key_pem, name=name))
        except Exception as exc:  # the client raises transport and protocol errors of several types
            why = describe_tls_failure(str(exc)) or str(exc)
            raise DeployError(f"{name} cannot be registered with the SuperLink at {self.address}: {why}") from exc
        return int(response.node_id)

    def unregister_node(self, node_id: int, name: str) -> None:
        """Unregister a SuperNode (what `flwr supernode unregister` does): it is offline from now on."""
        try:
            self._client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise DeployError(f"SuperLink at {self.address} refused to unregister {name} (node {node_id}): {exc}") from exc

    def start_run(self, app_dir: Path, overrides: dict[str, str | int | float | bool]) -> int:
        try:
            return super().start_run(app_dir, overrides)
        except ControlError as exc:
            raise DeployError(str(exc)) from exc

    def list_nodes(self) -> list:
        """The SuperLink's registered SuperNodes (NodeInfo: node_id, name, status, ...)."""
        try:
            return list(self._client.ListNodes(ListNodesRequest()).nodes_info)
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise ControlUnavailable(f"SuperLink at {self.address}: ListNodes: {exc}") from exc

    def run_status(self, run_id: int) -> RunStatus:
        try:
            return super().run_status(run_id)
        except ControlError as exc:
            raise ControlUnavailable(str(exc)) from exc


class RunLog:
    """The root ServerApp's output, followed over the Control API as `flwr log` does, in complete lines.

    A thread of its own reads the stream (its own connection), and picks up after the last line it got when the
    SuperLink was out of reach for a moment. `ended` is set once the run finished and every line arrived.
    """

    RETRY_S = 0.5

    def __init__(self, address: str, ca_cert: Path | None, run_id: int) -> None:
        self._control = ControlClient(address, ca_cert)
        self._run_id = run_id
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._closed = threading.Event()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"run-log-{run_id}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        after, partial = 0.0, ""
        while not self._closed.is_set():
            try:
                for text, latest in self._control.log_chunks(self._run_id, after):
                    after = max(after, latest)
                    *complete, partial = (partial + text).split("\n")
                    for line in complete:
                        self._lines.put(line)
                    if self._closed.is_set():
                        return
            except ControlError:
                time.sleep(self.RETRY_S)  # a restarting or busy SuperLink: go on from the last timestamp
                continue
            if partial:
                self._lines.put(partial)
            self.ended.set()
            return

    def lines(self) -> list[str]:
        """The complete lines that arrived since the last call."""
        found = []
        while True:
            try:
                found.append(self._lines.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        """Stop following. The reading thread is left to end by itself (its daemon thread ends with the stream or
        the process): closing its connection from here blocks while a stream is open, which hung a stopped run."""
        self._closed.set()
