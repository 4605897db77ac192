"""The FastAPI inference server: /predict, /health, /ready, /metadata, /metrics and the OpenAPI docs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
import torch
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference.bundle import BundleMetadata, read_metadata
from inference.metrics import MetricsMiddleware, ServerMetrics
from inference.model import ServedModel
from inference.payload import (
    PredictRequest,
    PredictResponse,
    RequestRejected,
    encode_outputs,
    parse_inputs,
    torch_dtype,
)
from inference.settings import ServerSettings

log = logging.getLogger("flops.inference")


class ModelSlot:
    """Holds the model while it loads in a background thread, so /health and /ready answer meanwhile."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = bundle_dir
        self.model: ServedModel | None = None
        self.error: str | None = None
    def start(self) -> None:
        """Load in a daemon thread; the server answers probes (503 on /ready) until it is done."""
        threading.Thread(target=self.load, name="flops-model-loader", daemon=True).start()

    def load(self) -> None:
        started = time.perf_counter()
        try:
            self.model = ServedModel(self.bundle_dir)
        except Exception as exc:  # reported on /ready and /health instead of killing the server silently
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
            return
        log.info("model loaded in %.2fs", time.perf_counter() - started)


def create_app(settings: ServerSettings, load_in_background: bool = True) -> FastAPI:
    """Build the app for the bundle in `settings.bundle_dir`; reads its metadata now and raises BundleError."""
    metadata = read_metadata(settings.bundle_dir)
    torch_dtype(metadata.inputs.dtype)  # a dtype /predict cannot fill is a bad bundle, not a 500 per request
    metrics = ServerMetrics(metadata)
    slot = ModelSlot(settings.bundle_dir)
    app = FastAPI(
        title=f"FLOps inference: {metadata.display_name}",
        description=_describe(metadata),
        version=metadata.model_version or "0",
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.slot = slot
    if load_in_background:
        slot.start()
    else:
        slot.load()
    metrics.ready.set_function(lambda: 1.0 if slot.model is not None else 0.0)
    _add_predict(app, metadata, slot, metrics, settings)
    _add_probes(app, metadata, slot, metrics)
    return app


def _add_predict(
    app: FastAPI, metadata: BundleMetadata, slot: ModelSlot, metrics: ServerMetrics, settings: ServerSettings
) -> None:
    max_request_bytes = settings.max_request_bytes

    def parse_and_predict(body: bytes, model: ServedModel) -> tuple[torch.Tensor, int, float]:
        # In a worker thread: decoding a large batch and the forward pass would otherwise stall /health.
        inputs = parse_inputs(body, metadata.inputs)
        if inputs.shape[0] > settings.max_rows:
            raise RequestRejected(413, f"{inputs.shape[0]} rows exceed the limit of {settings.max_rows} per request")
        started = time.perf_counter()
        return model.predict(inputs), inputs.shape[0], time.perf_counter() - started

    @app.post(
        "/predict",
        response_model=PredictResponse,
        summary="Predict one batch in one forward pass",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
        responses={
            400: {"description": "Body is not valid JSON"},
            413: {"description": f"Body larger than {max_request_bytes} bytes or more than {settings.max_rows} rows"},
            415: {"description": "Content-Type is not JSON"},
            422: {"description": "Inputs do not match the model's input schema"},
            503: {"description": "Model still loading or failed to load"},
            504: {"description": f"Not answered within {settings.request_timeout_s:g} s"},
        },
    )
    async def predict(request: Request) -> Response:
        # The body is parsed by hand, not by a pydantic parameter: orjson straight into one torch tensor of the
        # schema's dtype (no numpy in the image) is ~5x faster for a 32-row batch than FastAPI's json.loads plus
        # pydantic, and lets us answer 400 (not FastAPI's 422) for a body that is not JSON.
        try:
            _check_content_type(request.headers.get("content-type"))
            body = await _read_limited(request, max_request_bytes)
            model = slot.model
            if model is None:
                return _error(503, slot.error or "model is still loading; retry when /ready answers 200")
            # The thread is not cancelled on timeout (Python cannot): the client gets its answer, the pass ends.
            outputs, rows, seconds = await asyncio.wait_for(
                run_in_threadpool(parse_and_predict, body, model), settings.request_timeout_s
            )
        except RequestRejected as rejected:
            return _error(rejected.status_code, rejected.message)
        except TimeoutError:
            return _error(504, f"prediction took longer than {settings.request_timeout_s:g} s")
        metrics.model_seconds.observe(seconds)
        metrics.batch_rows.observe(rows)
        return Response(encode_outputs(outputs, metadata.classifier), media_type="application/json")


def _add_probes(app: FastAPI, metadata: BundleMetadata, slot: ModelSlot, metrics: ServerMetrics) -> None:
    @app.get("/health", summary="Liveness: 200 unless the model failed to load")
    async def health() -> JSONResponse:
        if slot.error:
            return _error(503, slot.error)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="Readiness: 200 once the model is loaded and can predict")
    async def ready() -> JSONResponse:
        if slot.model is None:
            return _error(503, slot.error or "model is still loading")
        return JSONResponse({"status": "ready", "model": metadata.display_name})

    @app.get("/metadata", summary="The served model: name, version, run, source and signature")
    async def model_metadata() -> dict[str, Any]:
        return metadata.model_dump(
            include={
                "model_name", "model_version", "run_id", "source_url", "source_commit",
                "inputs", "outputs", "classifier", "serialization", "torch_version",
            }
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _check_content_type(content_type: str | None) -> None:
    # A missing Content-Type is read as JSON (curl --data-binary sends none); an explicit other type is refused.
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise RequestRejected(415, f"Content-Type {media_type!r} is not supported; send application/json")


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise RequestRejected(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status_code)


def _describe(metadata: BundleMetadata) -> str:
    source = f"{metadata.source_url or 'unknown source'} @ {metadata.source_commit or 'unknown commit'}"
    return (
        f"Serves model **{metadata.display_name}** (run {metadata.run_id or 'unknown'}, {source}).\n\n"
        f"Input: `{metadata.inputs.dtype}` shaped `{metadata.inputs.shape}`; "
        f"output: `{metadata.outputs.dtype}` shaped `{metadata.outputs.shape}` (-1 = any size)."
    )
