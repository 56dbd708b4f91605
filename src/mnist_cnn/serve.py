"""The HTTP service: FastAPI on uvicorn, micro-batched predictions, and the drawing page.

``create_app(predictor)`` builds the application; ``serve(...)`` runs it. Each request's image
is preprocessed (large ones in a small thread pool, so they never stall the others), then
queued for the model; one task takes whatever is queued (waiting up to ``batch_wait`` for
more while requests are still arriving) and runs it as one forward pass, so a busy server
answers many images per pass. ``workers`` processes (one per core by default) share one socket.

Hostile clients are met in three places: connections.py (header size, read timeouts, the
connection limit), :class:`Guard` (Host header, body size, log lines) and preprocessing's
``load_image`` (image formats, pixel limits). serve_model.py refuses a broken model at start.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import serve_model
from .connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
    Limits,
    ServiceConfig,
    default_max_connections,
)
from .defaults import SERVE_BATCH_WAIT as DEFAULT_BATCH_WAIT
from .defaults import SERVE_MAX_BATCH as DEFAULT_MAX_BATCH
from .defaults import SERVE_MAX_BODY as DEFAULT_MAX_BODY
from .defaults import SERVE_MAX_PIXELS as DEFAULT_MAX_PIXELS
from .errors import ConfigError, MnistCnnError
from .metrics import MULTIPROCESS_DIR, Metrics
from .preprocessing import (
    SIZE,
    ImageError,
    Preprocessed,
    UnsupportedImage,
    as_drawn,
    load_image,
    load_image_sized,
    open_image,
    to_mnist,
)

log = logging.getLogger("mnist_cnn.serve")

INLINE_PIXELS = 128 * 128  # images this small are decoded and preprocessed on the event loop
DRAIN_BYTES = 64 * 1024 * 1024  # a refused body is read and dropped up to this size ...
DRAIN_SECONDS = 10.0  # ... and for at most this long, so that every client reads the 413
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the default --allowed-hosts on loopback
ACCEPTED = "PNG, JPEG, GIF, BMP, WebP or TIFF"


# What /v1/predict and /v1/features take, for the OpenAPI docs (they read the body themselves,
# since one endpoint accepts two content types).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "pixels": {
                            "type": "array",
                            "description": "28 rows of 28 values in 0..255",
                            "items": {"type": "array", "items": {"type": "number"}},
                        }
                    },
                    "required": ["pixels"],
                }
            },
        },
    }
}

# ?as_drawn=true: the whole image shrunk to 28x28, not boxed and centred (the page's switch for
# watching what a moved digit does to the answer and the feature maps)
AS_DRAWN_STYLE = "as-drawn"
AS_DRAWN = Query(False, description="skip the box and centring: the whole image as 28x28")


class ApiError(Exception):
    """An answer other than 200: an HTTP status and one line saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ModelInfo:
    architecture: str
    dataset: str
    classes: list[str]
    test_accuracy: float | None
    parameters: int | None
    runtime: str
    mean: float
    std: float


def model_info(predictor) -> ModelInfo:
    """What ``GET /v1/model`` says about the model behind ``predictor``."""
    model = predictor.model
    if hasattr(model, "session"):  # an exported .onnx on ONNX Runtime
        meta = model.metadata
        accuracy = _float_or_none(meta.get("test_accuracy"))
        parameters = int(meta["parameters"]) if meta.get("parameters", "").isdigit() else None
        architecture, runtime = meta.get("architecture", "CustomCNN"), "onnxruntime"
    else:
        from .model import count_parameters

        metrics = model.config.get("metrics") or {}
        accuracy = _float_or_none(metrics.get("test_accuracy"))
        parameters = count_parameters(model.model)
        architecture, runtime = model.config["model"]["architecture"], "pytorch"
    return ModelInfo(
        architecture,
        model.dataset,
        list(model.classes),
        accuracy,
        parameters,
        runtime,
        float(model.mean),
        float(model.std),
    )


def _model_labels(info: ModelInfo) -> dict[str, str]:
    return {
        "architecture": info.architecture,
        "dataset": info.dataset,
        "runtime": info.runtime,
        "classes": str(len(info.classes)),
    }


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Batcher:
    """Runs queued single images through the model together, one forward pass per batch."""

    def __init__(
        self,
        predictor,
        max_batch: int = DEFAULT_MAX_BATCH,
        wait: float = DEFAULT_BATCH_WAIT,
        on_batch=lambda size: None,
    ):
        self.predictor, self.max_batch, self.wait = predictor, max_batch, wait
        self.on_batch = on_batch  # told each batch's size
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0  # requests whose body is in, still being preprocessed: about to queue
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._ended)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _ended(self, task: asyncio.Task) -> None:
        """If the loop ever stops, no request may wait for it forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the model worker stopped", exc_info=task.exception())
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the model worker stopped"))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def probabilities(self, image: np.ndarray) -> np.ndarray:
        if not self.alive():
            raise RuntimeError("the model worker stopped")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0 or self.pending == 0:  # nobody else is on the way
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except (TimeoutError, asyncio.TimeoutError):  # two classes before Python 3.11
                    break
            batch = [(image, f) for image, f in batch if not f.done()]  # clients gone
            if not batch:
                continue
            images = np.stack([image for image, _ in batch])
            self.on_batch(len(batch))
            try:
                # On the event loop, not in a thread: a thread would fight the loop for the GIL
                # between every layer (measured: a third less throughput, twice the p99), and
                # while the loop is busy here the next batch simply piles up.
                probs = self.predictor.probabilities(images)
            except Exception as e:  # never leave a request waiting forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), p in zip(batch, probs, strict=True):
                if not future.done():
                    future.set_result(p)


def open_upload(data: bytes):
    """An upload opened as an image, only its header read yet (so its size is known): 415 if
    it is not in one of the accepted formats, which is known before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(422, "the uploaded file is empty")
    try:
        return open_image(io.BytesIO(data))
    except (UnidentifiedImageError, UnsupportedImage):
        raise ApiError(
            415, f"the upload is not an image in an accepted format ({ACCEPTED})"
        ) from None
    except Image.DecompressionBombError:
        raise ApiError(422, "the image has too many pixels") from None
    except Exception as e:
        raise ApiError(422, f"the image cannot be read ({e})") from None


def decode_upload(img, max_pixels: int) -> np.ndarray:
    """An opened upload decoded as grayscale 0..1; 422 if it is too large or broken."""
    try:
        return load_image(img, max_pixels=max_pixels)
    except ImageError as e:
        raise ApiError(422, _strip_name(str(e))) from None


def _strip_name(message: str) -> str:
    return message.split(": ", 1)[1] if message.startswith("image: ") else message


def parse_pixels(payload) -> np.ndarray:
    """``{"pixels": 28 rows of 28 values in 0..255}`` as grayscale 0..1 (either polarity)."""
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(422, 'the JSON body must be an object with "pixels": 28 rows of 28 values')
    try:
        a = np.asarray(payload["pixels"])
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged rows, huge ints
        a = None
    if a is not None and a.dtype.kind not in "iuf":  # strings, booleans, objects
        a = None
    if a is not None:
        try:
            a = a.astype(np.float64)
        except OverflowError:
            a = None
    if a is None or a.shape != (SIZE, SIZE):
        raise ApiError(422, f'"pixels" must be {SIZE} rows of {SIZE} numbers')
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise ApiError(422, '"pixels" values must be between 0 and 255')
    return (a / 255.0).astype(np.float32)


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
    metrics = Metrics(_model_labels(info))
    batcher = Batcher(
        predictor, max_batch=max_batch, wait=batch_wait, on_batch=metrics.batch_size.observe
    )
    workers = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
    static = resources.files("mnist_cnn") / "static"

    @asynccontextmanager
    async def lifespan(app):
        gc.collect()  # the model and the app live for good: keep them out of the collector's
        gc.freeze()  # sweeps, which otherwise stall a busy server for tens of milliseconds
        batcher.start()
        yield
        await batcher.stop()
        workers.shutdown(wait=False)

    app = FastAPIOffline(  # FastAPI, with /docs served from the package: no CDN
        title="mnist-cnn",
        summary=f"CustomCNN trained on {info.dataset}: draw or upload a digit, get its class",
        version=_version(),
        lifespan=lifespan,
    )

    @app.exception_handler(ClientDisconnect)
    async def gone(request, exc):  # nobody is listening; the log says 499, as nginx does
        if not getattr(request.state, "result", None):  # a read timeout may have said more
            request.state.result = "client disconnected"
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def failure(request, exc: Exception):  # a bug: logged with its traceback, answered
        log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse(
            {"error": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        if not batcher.alive():
            return JSONResponse({"status": "model worker stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        """Prometheus' text format: what monitoring tools scrape."""
        body, kind = metrics.exposition()
        return Response(body, media_type=kind)

    torch_model = serve_model.torch_model(predictor)
    features = torch_model is not None  # an .onnx file exposes only its output

    @app.api_route("/v1/model", methods=["GET", "HEAD"])
    async def model() -> dict:
        return {
            **info.__dict__,
            "max_body_bytes": max_body,
            "max_pixels": max_pixels,
            "features": features,
        }

    @app.post("/v1/features", openapi_extra=PREDICT_BODY)
    async def feature_maps(request: Request, as_drawn: bool = AS_DRAWN):
        """The image's feature maps after each block's ReLU, for the drawing page's panel.

        Same input as ``/v1/predict``. Layer1's 32 maps, then the 16 most active of layer2 and
        of layer3, each stage scaled to 0..255. Only for a run directory (PyTorch).
        """
        if not features:
            raise ApiError(501, "feature maps need a run directory (PyTorch), not an .onnx")
        import torch

        from .anatomy import feature_panel
        from .evaluation import normalize

        name, pre = await _read_input(request, as_drawn=as_drawn)
        net = torch_model
        device = next(net.model.parameters()).device
        x = normalize(torch.from_numpy(pre.image[None]).to(device), net.mean, net.std)
        return JSONResponse({"file": name, "stages": feature_panel(net.model, x)})

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=len(info.classes), description="classes to return"),
        image: bool = Query(False, description="also return the 28x28 image the model saw"),
        as_drawn: bool = AS_DRAWN,
    ) -> dict:
        """Classify one image: multipart field ``file``, or JSON ``{"pixels": [[...]]}``.

        Answers with the record ``mnist-cnn predict --json`` prints: label, class, probability,
        top_k (and ``image``, 28 rows of 28 values, when asked).
        """
        counted = False

        def arrived():  # the body is in: this request will want the model soon
            nonlocal counted
            batcher.pending += 1
            counted = True

        try:
            name, pre = await _read_input(request, arrived, as_drawn=as_drawn)
        finally:
            if counted:  # queued next (no await in between), or failed
                batcher.pending -= 1
        probs = await batcher.probabilities(pre.image)
        record = predictor.record(name, probs, top_k)
        if image:
            record["image"] = pre.to_uint8().tolist()
        request.state.result = f"{record['class']} {record['probability']:.3f}"
        return JSONResponse(record)  # type: ignore[return-value]  # JSON types: not re-encoded

    @app.post("/v1/read", openapi_extra=PREDICT_BODY)
    async def read(request: Request) -> dict:
        """Read a whole number (several digits in one image). Same input as ``/v1/predict``.

        Answers with the record ``mnist-cnn read --json`` prints: number, digits (label,
        probability, box ``[x0, y0, x1, y1]`` in the image's pixels, left to right) and the
        number's probability (the product of its digits').
        """
        if predictor.style != "mnist":
            raise ApiError(501, f"reading numbers needs a model of digits, not {info.dataset}")
        name, (gray, scale), small = await _read_input(request, decoded=True)
        record = await offload(_read_number, name, gray, scale, predictor, small=small)
        request.state.result = f"{record['number']} {record['probability']:.3f}"
        return JSONResponse(record)  # type: ignore[return-value]  # JSON types: not re-encoded

    async def offload(fn, *args, small: bool):
        """Small images inline (a thread hop costs more than the work, and contends for the
        GIL); large ones in the worker threads, so that they never stall the event loop."""
        if small:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(workers, fn, *args)

    async def _read_input(
        request: Request, arrived=lambda: None, as_drawn: bool = False, decoded: bool = False
    ):
        """The request's image, preprocessed: (its file name or None, Preprocessed); or with
        ``decoded``, only decoded: (name, grayscale image, whether it is small).

        ``arrived()`` is called once the body has been received, before preprocessing;
        ``as_drawn`` shrinks the whole image instead (no box, no centring)."""
        style = AS_DRAWN_STYLE if as_drawn else predictor.style
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await _read_form(request, max_body)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, 'send the image as the multipart field "file"')
                data = await upload.read()
            finally:
                await form.close()
            arrived()
            img = open_upload(data)
            small = img.width * img.height <= INLINE_PIXELS
            if decoded:
                return upload.filename, await offload(_decode, img, max_pixels, small=small), small
            # decoded and preprocessed in one go: a queued large upload holds only its bytes
            pre = await offload(_decode_and_preprocess, img, max_pixels, style, small=small)
            return upload.filename, pre
        if kind == "application/json" or kind.endswith("+json"):
            body = await request.body()
            arrived()
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(422, f"malformed JSON ({e})") from None
            except RecursionError:
                raise ApiError(422, "malformed JSON (nested too deeply)") from None
            if decoded:
                return None, (parse_pixels(payload), (1.0, 1.0)), True
            return None, _to_mnist(parse_pixels(payload), style)
        raise ApiError(
            415,
            'send an image as multipart/form-data field "file", or JSON {"pixels": [[...]]}'
            + (f", not {kind}" if kind else ""),
        )

    return Guard(app, max_body, allowed_hosts, metrics)


async def _read_form(request: Request, max_body: int):
    """The multipart form, its files kept in memory (the body is at most ``max_body``): no
    temporary file is ever written, so none can be left behind by a client that stalls or
    hangs up."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async with aclosing(request.stream()) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=1, max_fields=10, max_part_size=max_body
        )
        parser.spool_max_size = max_body + 1  # never rolls over to a file on disk
        try:
            return await parser.parse()
        except ClientDisconnect:
            raise
        except MultiPartException as e:  # too many parts, a part too large
            raise ApiError(422, f"malformed multipart body ({e.message})") from None
        except Exception as e:  # python-multipart's own complaints about a malformed body
            raise ApiError(422, f"malformed multipart body ({_detail(e)})") from None


def _decode_and_preprocess(img, max_pixels: int, style: str) -> Preprocessed:
    with img:  # closed once decoded, whatever happens
        return _to_mnist(decode_upload(img, max_pixels), style)


def _decode(img, max_pixels: int) -> tuple[np.ndarray, tuple[float, float]]:
    """An upload decoded for reading a number (at most segment's WORK_SIDE pixels), and the
    scale from those pixels to the upload's own."""
    from .segment import WORK_SIDE

    with img:
        try:
            gray, (w, h) = load_image_sized(img, max_pixels=max_pixels, side=WORK_SIDE)
        except ImageError as e:
            raise ApiError(422, _strip_name(str(e))) from None
    return gray, (w / gray.shape[1], h / gray.shape[0])


def _read_number(name: str | None, gray: np.ndarray, scale, predictor) -> dict:
    """The record of the number written in ``gray`` (segmentation checks and the digits' own
    batch run on the model directly, not through the micro-batcher)."""
    from .segment import number_record, read_number

    try:
        digits, _, probs = read_number(gray, predictor.probabilities)
    except ImageError as e:
        raise ApiError(422, str(e)) from None
    return number_record(name, digits, probs, predictor.classes, scale)


def _to_mnist(gray: np.ndarray, style: str) -> Preprocessed:
    try:
        return as_drawn(gray) if style == AS_DRAWN_STYLE else to_mnist(gray, style)
    except ImageError as e:
        raise ApiError(422, str(e)) from None


def _detail(e: Exception) -> str:
    return getattr(e, "detail", None) or str(e) or type(e).__name__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist-cnn")
    except PackageNotFoundError:
        return "0"


class Guard:
    """ASGI middleware: the Host check (400), the body size limit (413), a 500 for any failure,
    the metrics, one log line each.

    Sits outside FastAPI so that a request is refused before anything reads it, and counts
    what arrives, since a chunked upload carries no Content-Length. A refused body is drained
    (up to DRAIN_BYTES, for DRAIN_SECONDS) before the 413 goes out: clients that send their
    whole body before reading the answer (Python's urllib) would otherwise see the connection
    reset instead of the 413.
    """

    def __init__(
        self,
        app,
        max_body: int,
        allowed_hosts: list[str] | None = None,
        metrics: Metrics | None = None,
    ):
        self.app, self.max_body, self.metrics = app, max_body, metrics
        hosts = [_host_name(h) for h in allowed_hosts or ["*"]]
        self.allowed_hosts = None if "*" in hosts else hosts

    def __getattr__(self, name):  # app.state, app.openapi() ... for whoever holds the app
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 0, "refused": False, "recorded": False}
        scope.setdefault("state", {})

        def record():  # once, before the answer's last bytes: whoever reads it finds it logged
            if not status["recorded"]:
                status["recorded"] = True
                self._record(scope, status["code"], time.perf_counter() - start)

        limit = f"{self.max_body / 1024 / 1024:g} MB"

        async def send_and_note(message):
            if status["refused"]:  # we answered 413 already; the app's answer goes nowhere
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif not message.get("more_body"):
                record()
            await send(message)

        async def refuse(drain: bool):
            if drain:  # what the client is still sending, so that it reads the answer
                await _drain(scope, receive)
            await _send_json(send_and_note, 413, {"error": f"the body is over {limit}"}, close=True)
            status["refused"] = True

        try:
            length = int(_header(scope, b"content-length") or 0)
        except ValueError:
            length = 0
        received = 0

        async def limited_receive():
            nonlocal received
            if status["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body and not status["code"]:
                    # a chunked upload, which had no Content-Length to check
                    await refuse(drain=message.get("more_body", False))
                    return {"type": "http.disconnect"}
            return message

        if self.metrics:
            self.metrics.in_flight.inc()
        try:
            host = _header(scope, b"host") or ""
            if not self._allowed(host):
                scope["state"]["result"] = f"Host {_printable(host)} refused"
                await _send_json(
                    send_and_note,
                    400,
                    {
                        "error": f"the Host header ({host[:100]}) "
                        "is not one this service answers (--allowed-hosts)"
                    },
                )
            elif length > self.max_body:
                await refuse(drain=length <= DRAIN_BYTES)
            else:
                await self.app(scope, limited_receive, send_and_note)
        except Exception as e:  # an answer, never a dead server
            # FastAPI's own handler has answered (and logged) the app's failures; this is for
            # what fails before or around it
            if not status["refused"] and not status["code"]:
                log.exception("error on %s %s", scope.get("method"), _printable(scope.get("path")))
                await _send_json(send_and_note, 500, {"error": f"internal error ({e})"})
        finally:
            if self.metrics:
                self.metrics.in_flight.dec()
        record()  # for a request that got no answer (the client left)

    def _allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        name = _host_name(host)
        return any(
            name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in self.allowed_hosts
        )

    def _record(self, scope, code: int, seconds: float) -> None:
        """The request's log line (its path escaped: it is the client's text) and metrics."""
        client = scope.get("client") or ("-", 0)
        result = scope["state"].get("result", "")
        log.info(
            '%s "%s %s" %d %.1f ms %s',
            client[0],
            scope.get("method"),
            _printable(scope.get("path")),
            code,
            seconds * 1000,
            result,
        )
        if self.metrics:
            route = getattr(scope.get("route"), "path", None) or "other"  # bounded label values
            method = scope.get("method", "")
            method = method if method in ("GET", "HEAD", "POST") else "other"
            self.metrics.requests.labels(route, method, str(code)).inc()
            self.metrics.latency.labels(route).observe(seconds)


async def _drain(scope, receive) -> None:
    """Read and drop the rest of a refused body, within DRAIN_BYTES and DRAIN_SECONDS."""
    if (_header(scope, b"expect") or "").lower() == "100-continue":
        return  # the client sends nothing until told to, and will read the answer
    loop = asyncio.get_running_loop()
    deadline, drained = loop.time() + DRAIN_SECONDS, 0
    while drained <= DRAIN_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except (TimeoutError, asyncio.TimeoutError):  # two classes before Python 3.11
            return
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        drained += len(message.get("body", b""))


def _host_name(host: str) -> str:
    """The name in a Host header (or an --allowed-hosts entry): lower case, no port."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _printable(text) -> str:
    """Client-supplied text as it may appear in a log line: control characters, quotes and
    backslashes escaped, so that no client can start or forge a line."""
    return json.dumps(str(text))[1:-1]


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_json(send, status: int, body: dict, close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # what is left of the request is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port taken, unknown host, no permission)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError("host", f"{host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise MnistCnnError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")


_SPEC = "MNIST_CNN_SERVE_SPEC"  # how worker processes learn what to serve


def app_from_environment():
    """The app factory each worker process of ``serve(..., workers=N)`` calls."""
    _configure_logging()  # a fresh process: the parent's logging setup is not inherited
    spec = json.loads(os.environ[_SPEC])
    predictor = serve_model.load(
        spec["run"],
        device=spec["device"],
        threads=spec["threads"],
        runtime=spec["runtime"],
        onnx=spec["onnx"],
    )
    return create_app(predictor, **spec["options"])


def serve(
    run: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    runtime: str = "auto",
    allowed_hosts: list[str] | None = None,
    max_connections: int | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    **options,
) -> None:
    """Serve ``run`` until interrupted (Ctrl-C or SIGTERM).

    ``workers`` processes (default: one per core, or one on a GPU) share the listening socket,
    each with its own copy of the model and its own micro-batcher: Python's per-request work
    then runs on every core. ``allowed_hosts`` defaults to the loopback names when ``host`` is
    a loopback address (a web page elsewhere cannot reach the service through DNS rebinding),
    else any.
    ``max_connections`` defaults to what the open-file limit allows.
    """
    import uvicorn

    _configure_logging()
    if not workers:  # one per core on the CPU; one process owns a GPU and batches for it
        workers = serve_model.default_workers() if str(device) == "cpu" else 1
    if workers > 1 and threads is None:
        threads = max(1, serve_model.default_workers() // workers)
    # fails here, once, with one line, if RUN is unusable
    predictor = serve_model.load(run, device=device, threads=threads, runtime=runtime)
    info = model_info(predictor)
    if allowed_hosts is None:
        allowed_hosts = list(LOOPBACK_HOSTS) if _is_loopback(host) else ["*"]
    options["allowed_hosts"] = allowed_hosts
    limits = Limits(
        max_connections or default_max_connections(), max_header_bytes, header_timeout, body_timeout
    )
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving %s (%s, %d worker%s) on http://%s:%d  (API docs: /docs)",
        info.dataset,
        info.runtime,
        workers,
        "s" * (workers > 1),
        shown,
        sock.getsockname()[1],
    )
    log.info(
        "limits: %d connections, %g MB bodies, %d KB headers, %gs header and %gs body "
        "timeouts; Host: %s",
        limits.max_connections,
        options.get("max_body", DEFAULT_MAX_BODY) / 1024 / 1024,
        max_header_bytes // 1024,
        header_timeout,
        body_timeout,
        " ".join(allowed_hosts),
    )
    if not _is_loopback(host):
        log.warning("listening on %s: other machines can reach this service", host)
    quiet: dict[str, Any] = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    if workers == 1:
        app = create_app(predictor, **options)
        config = ServiceConfig(app, limits=limits, lifespan="on", **quiet)
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="mnist-cnn-serve-") as shared:
        onnx = None
        exported = predictor.model
        if isinstance(exported, serve_model.ExportedRun) and exported.onnx_bytes:  # checked once,
            onnx = os.path.join(shared, "model.onnx")  # here, for every worker to load
            with open(onnx, "wb") as f:
                f.write(exported.onnx_bytes)
        os.environ[MULTIPROCESS_DIR] = os.path.join(shared, "metrics")  # shared /metrics
        os.mkdir(os.environ[MULTIPROCESS_DIR])
        del predictor
        os.environ[_SPEC] = json.dumps(
            {
                "run": str(run),
                "device": str(device),
                "threads": threads,
                "runtime": runtime,
                "onnx": onnx,
                "options": options,
            }
        )
        config = ServiceConfig(
            "mnist_cnn.serve:app_from_environment",
            limits=limits,
            factory=True,
            workers=workers,
            lifespan="on",
            **quiet,
        )
        Multiprocess(config, sockets=[sock]).run()


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"
