"""Warm learner: one flower-supernode (--isolation process) and, per run, one long-lived worker that keeps the
run's ClientApp (the user's task, model and data) loaded and serves every message of that run.

    python warm_executor.py [--poll-interval S] -- flower-supernode --insecure --superlink HOST:PORT ...

Two processes per component, one process group. The launcher's process runs Flower's own SuperNode in its
main thread (prompt_supernode.py shortens its idle sleeps) and, in a second thread, takes the SuperNode's
ClientApp tasks over the Runtime API (as Flower's SuperExec would) and hands each task's token to the worker
of that task's run and FAB. A new run or FAB gets a new worker; the previous one is retired. The SuperNode
and the launcher share one process because they import the same Flower modules (a separate launcher cost
~90 MB of a learner's memory); the user's code stays in the worker, so its crash never takes the SuperNode
down. The process exits when the SuperNode does (with its code); a worker that dies mid-task is answered
with a "crashed" error reply naming the learner, as Flower answers for a dead flwr-clientapp: the aggregator
leaves the learner out of that round instead of waiting for it, and the next task starts a new worker.

Runs as a script (not as part of the flops_app package) and imports only Flower, the standard library and
prompt_supernode.py beside it: the worker loads the run's ClientApp from the FAB the SuperNode hands out, like
flwr-clientapp does.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import prompt_supernode  # beside this script: sys.path[0] when it runs

SUPERNODE_COMMAND = "flower-supernode"
# Once the SuperNode says when a message is stored, looking for a task without being told is only a safety net.
TOLD_POLL_S = 1.0
RUNTIME_API_DEFAULT = ("127.0.0.1", 9094)  # flower-supernode's own defaults for --host / --port
CLIENT_APP_TASK = "flwr-clientapp"
STOP_GRACE_S = 5.0
WAIT_TICK_S = 0.2
# Flower's code for "the ClientApp raised", as in client_app.py.
CLIENT_APP_RAISED_EXCEPTION = 2
PR_SET_PDEATHSIG = 1
# Flower retries an object that is not stored yet after 1 s, doubling (flwr/supercore/constant.py). A worker asks
# for its message while the SuperNode is still storing it (~0.3 s), so it would wait that second on nearly
# every message; the store is local, so the worker looks again after 20 ms instead.
MESSAGE_PULL_BACKOFF_S = {"initial_backoff": 0.02, "backoff_cap": 0.5}


def _die_with_parent(parent_pid: int) -> None:
    """In the worker: get SIGKILL when the launcher dies, even by SIGKILL, so nothing is orphaned. Set here
    rather than between fork and exec, which is unsafe in the launcher's threaded process."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the launcher died before the line above
        os._exit(1)


def _runtime_api_address(supernode_argv: list[str]) -> str:
    """HOST:PORT of the SuperNode's Runtime API, read from its own --host / --port arguments."""
    host, port = RUNTIME_API_DEFAULT
    for flag, value in zip(supernode_argv, supernode_argv[1:]):
        if flag == "--host":
            host = value
        elif flag == "--port":
            port = int(value)
    return f"{host}:{port}"


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def _reap_orphans(own: set[int]) -> None:
    """As a container's PID 1, reap the zombies orphaned processes leave (children of the user's code)."""
    if os.getpid() != 1:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == 1:
            try:
                os.waitpid(int(entry.name), os.WNOHANG)
            except ChildProcessError:
                pass


def _log(text: str) -> None:
    print(f"[warm-executor {os.getpid()}] {text}", file=sys.stderr, flush=True)


@dataclass
class Worker:
    """One run's warm process, fed task tokens over a pipe; it answers one line per task on another."""

    run_id: int
    fab_hash: str
    proc: subprocess.Popen
    tasks: int  # write end: one token per line
    results: int  # read end: "guard <hex>" once the message is pulled, then "done"
    buffer: bytes = field(default=b"")

    @classmethod
    def start(cls, run_id: int, fab_hash: str, runtime_api: str) -> Worker:
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", runtime_api, "--parent", str(os.getpid()),
             "--task-fd", str(task_read), "--result-fd", str(result_write)],
            stdin=subprocess.DEVNULL, pass_fds=(task_read, result_write),
        )
        os.close(task_read)
        os.close(result_write)
        _log(f"run {run_id}: started warm worker pid {proc.pid} (FAB {fab_hash[:12]})")
        return cls(run_id, fab_hash, proc, task_write, result_read)

    def read_line(self, timeout: float) -> str | None:
        """The next result line, None when none came within timeout; "" when the worker closed the pipe."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.results], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.results, 65536)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def stop(self) -> None:
        for fd in (self.tasks, self.results):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Launcher:
    """Runs the SuperNode in this process and owns the workers; its thread takes ClientApp tasks and
    dispatches them."""

    def __init__(self, supernode_argv: list[str], poll_interval: float) -> None:
        if Path(supernode_argv[0]).name != SUPERNODE_COMMAND:
            raise ValueError(f"the command after -- must be {SUPERNODE_COMMAND}, not {supernode_argv[0]!r}")
        self.supernode_args = supernode_argv[1:]
        if "--isolation" not in self.supernode_args:
            self.supernode_args += ["--isolation", "process"]
        self.runtime_api = _runtime_api_address(self.supernode_args)
        self.poll_interval = poll_interval
        self.worker: Worker | None = None
        self.message_stored = threading.Event()  # set by the SuperNode loop (prompt_supernode.install)
        self.told = False  # the SuperNode loop is the prompt one, so message_stored is set when one is stored
        self.stopping = False

    def run(self) -> None:
        """Flower's SuperNode in this thread, until it exits the process; the dispatch loop in another."""
        from flwr.supercore.exit import add_exit_handler
        from flwr.supernode.cli import flower_supernode

        self.told = prompt_supernode.prepare(self.message_stored.set)
        add_exit_handler(self.stop)  # Flower's exit path (SIGTERM included) retires the worker
        threading.Thread(target=self._dispatch_loop, name="warm-executor", daemon=True).start()
        sys.argv = [SUPERNODE_COMMAND, *self.supernode_args]
        flower_supernode()

    def _dispatch_loop(self) -> None:
        try:
            while not _port_open(self.runtime_api):
                time.sleep(0.1)
            client = _runtime_client(self.runtime_api, token=None)
            try:
                self._serve(client)
            finally:
                client.close()
        except BaseException:  # noqa: BLE001 - a SuperNode whose tasks nobody takes would hang its run
            if self.stopping:
                return  # the SuperNode is exiting and took the Runtime API or a worker pipe with it
            _log(f"dispatch loop failed, ending the learner:\n{traceback.format_exc()}")
            self._retire_worker()
            os._exit(1)

    def _serve(self, client) -> None:  # noqa: ANN001 - Flower's RuntimeHttpClient
        import httpx
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

        while not self.stopping:
            _reap_orphans({os.getpid()} | ({self.worker.proc.pid} if self.worker else set()))
            if self.worker is not None and self.worker.proc.poll() is not None:
                _log(f"run {self.worker.run_id}: idle warm worker exited with code {self.worker.proc.returncode}")
                self._retire_worker()
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
            except httpx.HTTPError as err:  # the SuperNode is stopping; its exit ends this thread
                _log(f"AcquireTask failed: {err}")
                time.sleep(WAIT_TICK_S)
                continue
            if res.HasField("task") and res.token:
                self._dispatch(res.task.run_id, res.task.fab_hash, res.token)
            else:
                self._wait_for_a_message()

    def _wait_for_a_message(self) -> None:
        """Until the SuperNode loop says a message is stored, or the poll interval if it never says (Flower's
        loop as shipped). A message stored between the wait and the clear is found by the next AcquireTask."""
        if self.message_stored.wait(TOLD_POLL_S if self.told else self.poll_interval):
            self.message_stored.clear()

    def _dispatch(self, run_id: int, fab_hash: str, token: str) -> None:
        if self.worker is not None and (self.worker.run_id, self.worker.fab_hash) != (run_id, fab_hash):
            _log(f"run {self.worker.run_id}: retiring its warm worker (next task is run {run_id})")
            self._retire_worker()
        if self.worker is None:
            self.worker = Worker.start(run_id, fab_hash, self.runtime_api)
        worker = self.worker
        try:
            os.write(worker.tasks, f"{token}\n".encode())
        except OSError:
            pass  # a dead worker: handled below like a death mid-task
        guard = None
        while not self.stopping:
            line = worker.read_line(WAIT_TICK_S)
            if line and line.startswith("guard "):
                guard = bytes.fromhex(line.split(" ", 1)[1])
            elif line == "done":
                return
            elif line == "" or worker.proc.poll() is not None:
                break
        if self.stopping:
            return
        code = worker.proc.wait()
        reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        _log(f"run {run_id}: warm worker pid {worker.proc.pid} {reason} during a task")
        self._retire_worker()
        _answer_for_dead_worker(self.runtime_api, token, guard, reason)

    def _retire_worker(self) -> None:
        worker, self.worker = self.worker, None  # both threads may retire it (a task's end, Flower's exit)
        if worker is not None:
            worker.stop()

    def stop(self) -> None:
        self.stopping = True
        self._retire_worker()


def _runtime_client(runtime_api: str, token: str | None):  # noqa: ANN202 - Flower's RuntimeHttpClient
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    if token is None:
        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    else:
        interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                        RuntimeTokenHttpInterceptor(token)]
    return RuntimeHttpClient.from_server_address(runtime_api, insecure=True, root_certificates=None,
                                                 interceptors=interceptors)


def _answer_for_dead_worker(runtime_api: str, token: str, guard: bytes | None, reason: str) -> None:
    """Push the error reply the worker prepared (naming the learner) and close its task as failed."""
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = _runtime_client(runtime_api, token)
    try:
        if guard is not None:
            proto = ProtoMessage.FromString(guard)
            proto.error.reason = f"{proto.error.reason}: warm learner process {reason} during this task"
            # A lost process, not an exception from the user's code (which the worker answers itself).
            proto.error.code = ErrorCode.CLIENT_APP_CRASHED
            push_message(client, message_from_proto(proto), _Ids(proto.metadata.run_id, proto.metadata.src_node_id))
        push_task_output(client, None, SubStatus.FAILED, f"warm learner process {reason}")
    except Exception as err:  # noqa: BLE001 - the SuperNode may be gone too; the component's exit says so
        _log(f"could not answer for the dead worker: {err}")
    finally:
        client.close()


@dataclass
class _Ids:
    """What push_message reads from a Context: the run and this node."""

    run_id: int
    node_id: int


def _prompt_message_pulls() -> None:
    """Give run_clientapp's message pull our retry backoff (keyword arguments of Flower's own function)."""
    from flwr.supernode.runtime import run_clientapp

    run_clientapp.pull_and_inflate_object_from_tree = functools.partial(
        run_clientapp.pull_and_inflate_object_from_tree, **MESSAGE_PULL_BACKOFF_S)


def serve_worker(runtime_api: str, parent_pid: int, task_fd: int, result_fd: int) -> None:
    """Worker loop: one token per line; the ClientApp is loaded on the first task and kept."""
    _die_with_parent(parent_pid)
    _prompt_message_pulls()
    loaded: dict[str, object] = {}
    with os.fdopen(task_fd, "rb", buffering=0) as tasks, os.fdopen(result_fd, "wb", buffering=0) as results:
        for line in tasks:
            token = line.decode().strip()
            if token:
                _run_task(runtime_api, token, loaded, results)
                results.write(b"done\n")


def _run_task(runtime_api: str, token: str, loaded: dict[str, object], results) -> None:  # noqa: ANN001
    """flwr-clientapp's work for one task (supernode/runtime/run_clientapp.py), minus loading the app again."""
    from flwr.app import Error, Message
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import message_to_proto
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = _runtime_client(runtime_api, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        guard = Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=_who(context.node_config)), reply_to=message)
        results.write(f"guard {message_to_proto(guard).SerializeToString().hex()}\n".encode())
        if loaded.get("fab_hash") not in (None, fab.hash_str):
            raise LoadClientAppError(f"warm worker holds FAB {loaded['fab_hash']}, task needs {fab.hash_str}")
        if "app" not in loaded:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            loaded["app"], loaded["fab_hash"] = load(run.fab_id, run.fab_version, fab.hash_str), fab.hash_str
        reply = loaded["app"](message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - as flwr-clientapp: the failure becomes the reply
        _log(f"ClientApp raised: {type(ex).__name__}: {ex}")
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError) \
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = f"{type(ex)}:<'{ex}'>"
        if message is not None:
            reply = Message(Error(code=code, reason=f"{_who(context.node_config)}: {details}"), reply_to=message)
        if isinstance(ex, (LoadClientAppError, ImportError)):
            loaded.clear()  # this run's app cannot be loaded: the next task tries again from scratch
    finally:
        heartbeat.stop()
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, sub_status, details)
        finally:
            client.close()


def _who(node_config: dict) -> str:
    """How FLOps names this node in a failure: "learner N" or "cluster NAME"."""
    if "cluster-name" in node_config:
        return f"cluster {node_config['cluster-name']}"
    return f"learner {node_config.get('partition-id', '?')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between looks for a new ClientApp task when none is waiting")
    parser.add_argument("--worker", metavar="RUNTIME_API", help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--task-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("supernode", nargs=argparse.REMAINDER, help="-- then the flower-supernode command")
    args = parser.parse_args(argv)
    if args.worker:
        serve_worker(args.worker, args.parent, args.task_fd, args.result_fd)
        return 0
    supernode_argv = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    if not supernode_argv:
        parser.error(f"give the {SUPERNODE_COMMAND} command after --")
    try:
        launcher = Launcher(supernode_argv, args.poll_interval)
    except ValueError as err:
        parser.error(str(err))

    def _terminate(signum: int, _frame: object) -> None:  # until Flower's SuperNode installs its own handlers
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        launcher.run()
        return 0
    finally:
        launcher.stop()


if __name__ == "__main__":
    sys.exit(main())
