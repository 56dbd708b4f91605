"""The HTTP application: FastAPI routes over one model, its micro-batcher and the guard.

``create_app(predictor)`` builds it; server.py runs it. Each request's image is read and
preprocessed (inputs.py: large ones in a small thread pool, so they never stall the others),
then queued for the model (batcher.py: one task takes whatever is queued and runs it as one
forward pass, so a busy server answers many images per pass).

Hostile clients are met in three places: connections.py (header size, read timeouts, the
connection limit), guard.py (Host header, body size, log lines) and preprocessing's
``load_image`` (image formats, pixel limits). model.py loads the model, whose loaders refuse a
broken one at start.
"""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..defaults import SERVE_MAX_BODY as DEFAULT_MAX_BODY
from ..defaults import SERVE_MAX_PIXELS as DEFAULT_MAX_PIXELS
from ..metrics import Metrics
from ..preprocessing import ImageError
from . import model as served_model
from .batcher import DEFAULT_BATCH_WAIT, DEFAULT_MAX_BATCH, Batcher
from .guard import Guard
from .inputs import AS_DRAWN, AS_DRAWN_STYLE, PREDICT_BODY, ApiError, Inputs
from .model import ModelInfo, model_info, model_labels
from .static import add_page

log = logging.getLogger("mnist_cnn.serve")


def create_app(
    predictor,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_wait: float = DEFAULT_BATCH_WAIT,
    max_batch: int = DEFAULT_MAX_BATCH,
    preprocess_threads: int = 2,
    allowed_hosts: list[str] | None = None,
):
    """The FastAPI application serving ``predictor`` (a :class:`~mnist_cnn.Predictor`).

    ``allowed_hosts``: the names the Host header may carry (``*.example.org`` for a domain's
    subdomains); None or ``["*"]`` accepts any.
    """
    info = model_info(predictor)
    metrics = Metrics(model_labels(info))
    batcher = Batcher(
        predictor, max_batch=max_batch, wait=batch_wait, on_batch=metrics.batch_size.observe
    )
    inputs = Inputs(max_body, max_pixels, preprocess_threads)
    service = Service(predictor, info, metrics, batcher, inputs)

    @asynccontextmanager
    async def lifespan(app):
        gc.collect()  # the model and the app live for good: keep them out of the collector's
        gc.freeze()  # sweeps, which otherwise stall a busy server for tens of milliseconds
        batcher.start()
        yield
        await batcher.stop()
        inputs.close()

    app = FastAPIOffline(  # FastAPI, with /docs served from the package: no CDN
        title="mnist-cnn",
        summary=f"CustomCNN trained on {info.dataset}: draw or upload a digit, get its class",
        version=__version__,
        lifespan=lifespan,
    )
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    add_page(app)
    for path, endpoint in (("/healthz", service.healthz), ("/v1/model", service.model)):
        app.get(path)(endpoint)
        app.head(path, include_in_schema=False)(endpoint)  # one operation per path in the docs
    app.get("/metrics", include_in_schema=False)(service.prometheus_metrics)
    app.post("/v1/features", openapi_extra=PREDICT_BODY)(service.feature_maps)
    app.post("/v1/predict", openapi_extra=PREDICT_BODY)(service.predict_endpoint())
    app.post("/v1/read", openapi_extra=PREDICT_BODY)(service.read)
    return Guard(app, max_body, allowed_hosts, metrics)


class Service:
    """What the routes do, for one model: its description, its batcher, its inputs."""

    def __init__(self, predictor, info: ModelInfo, metrics: Metrics, batcher, inputs: Inputs):
        self.predictor, self.info, self.metrics = predictor, info, metrics
        self.batcher, self.inputs = batcher, inputs
        self.torch_model = served_model.torch_model(predictor)
        self.features = self.torch_model is not None  # an .onnx file exposes only its output

    async def healthz(self):
        if not self.batcher.alive():
            return JSONResponse({"status": "model worker stopped"}, status_code=503)
        return {"status": "ok"}

    async def prometheus_metrics(self):
        """Prometheus' text format: what monitoring tools scrape."""
        body, kind = self.metrics.exposition()
        return Response(body, media_type=kind)

    async def model(self) -> dict:
        return {
            **self.info.__dict__,
            "max_body_bytes": self.inputs.max_body,
            "max_pixels": self.inputs.max_pixels,
            "features": self.features,
        }

    async def feature_maps(self, request: Request, as_drawn: bool = AS_DRAWN):
        """The image's feature maps after each block's ReLU, for the drawing page's panel.

        Same input as ``/v1/predict``. Layer1's 32 maps, then the 16 most active of layer2 and
        of layer3, each stage scaled to 0..255. Only for a run directory (PyTorch).
        """
        if not self.features:
            raise ApiError(501, "feature maps need a run directory (PyTorch), not an .onnx")
        import torch

        from ..anatomy import feature_panel
        from ..evaluation import normalize

        body = await self.inputs.receive(request)
        pre = await self.inputs.preprocessed(body, self._style(as_drawn))
        net = self.torch_model
        device = next(net.model.parameters()).device
        x = normalize(torch.from_numpy(pre.image[None]).to(device), net.mean, net.std)
        return JSONResponse({"file": body.name, "stages": feature_panel(net.model, x)})

    def predict_endpoint(self):
        """``POST /v1/predict``, its ``top_k`` bounded by this model's classes."""
        top_k_query = Query(3, ge=1, le=len(self.info.classes), description="classes to return")

        async def predict(
            request: Request,
            top_k: int = top_k_query,
            image: bool = Query(False, description="also return the 28x28 image the model saw"),
            as_drawn: bool = AS_DRAWN,
        ) -> dict:
            """Classify one image: multipart field ``file``, or JSON ``{"pixels": [[...]]}``.

            Answers with the record ``mnist-cnn predict --json`` prints: label, class, probability,
            top_k (and ``image``, 28 rows of 28 values, when asked).
            """
            body = await self.inputs.receive(request)
            async with self.batcher.expecting():  # the body is in: the model's turn is near
                pre = await self.inputs.preprocessed(body, self._style(as_drawn))
            probs = await self.batcher.probabilities(pre.image)
            record = self.predictor.record(body.name, probs, top_k)
            if image:
                record["image"] = pre.to_uint8().tolist()
            request.state.result = f"{record['class']} {record['probability']:.3f}"
            return JSONResponse(record)  # type: ignore[return-value]  # JSON: not re-encoded

        return predict

    async def read(self, request: Request) -> dict:
        """Read a whole number (several digits in one image). Same input as ``/v1/predict``.

        Answers with the record ``mnist-cnn read --json`` prints: number, digits (label,
        probability, box ``[x0, y0, x1, y1]`` in the image's pixels, left to right) and the
        number's probability (the product of its digits').
        """
        if self.predictor.style != "mnist":
            raise ApiError(501, f"reading numbers needs a model of digits, not {self.info.dataset}")
        body = await self.inputs.receive(request)
        gray, scale, small = await self.inputs.decoded(body)
        record = await self.inputs.offload(
            _read_number, body.name, gray, scale, self.predictor, small=small
        )
        request.state.result = f"{record['number']} {record['probability']:.3f}"
        return JSONResponse(record)  # type: ignore[return-value]  # JSON types: not re-encoded

    def _style(self, as_drawn: bool) -> str:
        return AS_DRAWN_STYLE if as_drawn else self.predictor.style


def _read_number(name: str | None, gray: np.ndarray, scale, predictor) -> dict:
    """The record of the number written in ``gray`` (segmentation checks and the digits' own
    batch run on the model directly, not through the micro-batcher)."""
    from ..segment import number_record

    try:
        digits, _, probs = predictor.read_gray(gray)
    except ImageError as e:
        raise ApiError(422, str(e)) from None
    return number_record(name, digits, probs, predictor.classes, scale)


async def _client_gone(request, exc):  # nobody is listening; the log says 499, as nginx does
    if not getattr(request.state, "result", None):  # a read timeout may have said more
        request.state.result = "client disconnected"
    return Response(status_code=499)


async def _failure(request, exc: Exception):  # a bug: logged with its traceback, answered
    log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)


async def _api_error(request, exc: ApiError):
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _invalid_request(request, exc: RequestValidationError):
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)


async def _http_error(request, exc: StarletteHTTPException):
    return JSONResponse(
        {"error": str(exc.detail)},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


ERROR_HANDLERS = {
    ClientDisconnect: _client_gone,
    Exception: _failure,
    ApiError: _api_error,
    RequestValidationError: _invalid_request,
    StarletteHTTPException: _http_error,
}
