"""The inference server against hostile bundles and heavy requests: no unpickling, paths kept in, caps, no stalls."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import httpx
import pytest
import torch
from test_inference_server import make_bundle  # type: ignore[import-not-found]

from inference.bundle import read_metadata, write_metadata
from inference.errors import BundleError
from inference.model import ServedModel
from inference.server import create_app
from inference.settings import ServerSettings

ROW = [[1.0, 2.0], [3.0, 4.0]]


class Payload:
    """A pickle that would run a command when unpickled by pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, serialization="pickle")
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, bundle / "model" / "model.pth")
    with pytest.raises(BundleError, match="cannot load the model: refused by the weights-only loader"):
        ServedModel(bundle)
    assert not marker.exists()


def test_a_pickled_module_of_the_bundles_own_code_loads_weights_only(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, serialization="pickle")
    model = ServedModel(bundle)
    assert model.predict(torch.tensor([ROW])).shape == (1, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("weights_file", "../outside.pt2"), ("weights_file", "/etc/passwd"), ("code_dir", "../..")],
)
def test_metadata_paths_leading_out_of_the_bundle_are_refused(tmp_path: Path, field: str, value: str) -> None:
    bundle = make_bundle(tmp_path)
    (tmp_path / "outside.pt2").write_bytes((bundle / "model" / "model.pt2").read_bytes())
    write_metadata(bundle, read_metadata(bundle).model_copy(update={field: value}))
    with pytest.raises(BundleError, match=rf"field '{field}': '{value}' points outside the bundle"):
        read_metadata(bundle)


def test_a_symlink_leading_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    outside = tmp_path / "elsewhere.pt2"
    (bundle / "model" / "model.pt2").rename(outside)
    (bundle / "model" / "model.pt2").symlink_to(outside)
    with pytest.raises(BundleError, match="points outside the bundle"):
        read_metadata(bundle)


class BlockingModel:
    """Stands in for the loaded model: predict waits until the test releases it (or 20 s pass)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(20)
        return torch.zeros(inputs.shape[0], 3)


def serve_with(tmp_path: Path, model: BlockingModel | None = None, **settings: object) -> httpx.AsyncClient:
    app = create_app(ServerSettings(bundle_dir=make_bundle(tmp_path), **settings), load_in_background=False)
    if model is not None:
        app.state.slot.model = model
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server")


def test_health_answers_while_a_prediction_is_running(tmp_path: Path) -> None:
    model = BlockingModel()

    async def scenario() -> list[str]:
        order: list[str] = []
        async with serve_with(tmp_path, model) as client:

            async def predict() -> None:
                response = await client.post("/predict", json={"inputs": [ROW] * 1000})
                order.append(f"predict {response.status_code}")

            async def health() -> None:
                while not model.entered.is_set():
                    await asyncio.sleep(0.01)
                response = await client.get("/health")
                order.append(f"health {response.status_code}")
                model.release.set()

            await asyncio.gather(predict(), health())
        return order

    # Were the forward pass on the event loop, /health would wait for it: predict would finish first.
    assert asyncio.run(scenario()) == ["health 200", "predict 200"]


def test_a_prediction_over_the_timeout_answers_504(tmp_path: Path) -> None:
    model = BlockingModel()

    async def scenario() -> httpx.Response:
        async with serve_with(tmp_path, model, request_timeout_s=0.5) as client:
            try:
                return await client.post("/predict", json={"inputs": [ROW]})
            finally:
                model.release.set()

    response = asyncio.run(scenario())
    assert response.status_code == 504
    assert "longer than 0.5 s" in response.json()["detail"]


def test_more_rows_than_the_cap_answer_413(tmp_path: Path) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with serve_with(tmp_path, max_rows=4) as client:
            return (await client.post("/predict", json={"inputs": [ROW] * 5}),
                    await client.post("/predict", json={"inputs": [ROW] * 4}))

    over, at_cap = asyncio.run(scenario())
    assert over.status_code == 413 and "5 rows exceed the limit of 4" in over.json()["detail"]
    assert at_cap.status_code == 200


def test_a_busy_port_and_an_unknown_host_are_one_line_bad_input() -> None:
    import socket

    from inference.errors import ServeAddressError
    from inference.launch import bind_listening_socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ServeAddressError, match=rf"^--port {port}: already in use on 127.0.0.1; pass another") as e:
            bind_listening_socket("127.0.0.1", port)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    with pytest.raises(ServeAddressError, match=r"^--host 'no-such-host.invalid': not a host name or address"):
        bind_listening_socket("no-such-host.invalid", 8080)
    with pytest.raises(ServeAddressError, match=r"^--host '192.0.2.1': not an address of this machine"):
        bind_listening_socket("192.0.2.1", 8080)
    free = bind_listening_socket("127.0.0.1", 0)
    assert free.getsockname()[0] == "127.0.0.1"
    free.close()
