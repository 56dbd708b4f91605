"""The HTTP service: FastAPI on uvicorn, micro-batched predictions, and the drawing page.

``create_app(predictor)`` builds the application; ``serve(...)`` runs it. Each request's image
is preprocessed (large ones in a small thread pool, so they never stall the others), then
queued for the model; one task takes whatever is queued (waiting up to ``batch_wait`` for
more while requests are still arriving) and runs it as one forward pass, so a busy server
answers many images per pass. ``workers`` > 1 runs that many such processes on one socket.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import numpy as np
from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .errors import MnistCnnError
from .predict import Predictor
from .preprocessing import SIZE, ImageError, Preprocessed, load_image, to_mnist

log = logging.getLogger("mnist_cnn.serve")

DEFAULT_MAX_BODY = 5 * 1024 * 1024  # bytes
DEFAULT_MAX_PIXELS = 16_000_000  # a 16-megapixel phone photo; larger uploads are refused
DEFAULT_BATCH_WAIT = 0.002  # seconds to wait for more requests while others are arriving
DEFAULT_MAX_BATCH = 64
INLINE_PIXELS = 128 * 128  # images this small are decoded and preprocessed on the event loop


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
    return ModelInfo(architecture, model.dataset, list(model.classes), accuracy, parameters,
                     runtime, float(model.mean), float(model.std))  # fmt: skip


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Batcher:
    """Runs queued single images through the model together, one forward pass per batch."""

    def __init__(self, predictor, max_batch: int = DEFAULT_MAX_BATCH,
                 wait: float = DEFAULT_BATCH_WAIT):  # fmt: skip
        self.predictor, self.max_batch, self.wait = predictor, max_batch, wait
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
    it is no image format at all."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(422, "the uploaded file is empty")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(
            415, "the upload is not an image (send PNG, JPEG, GIF, BMP, WebP...)"
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


def create_app(predictor, *, max_body: int = DEFAULT_MAX_BODY,
               max_pixels: int = DEFAULT_MAX_PIXELS, batch_wait: float = DEFAULT_BATCH_WAIT,
               max_batch: int = DEFAULT_MAX_BATCH, preprocess_threads: int = 2):  # fmt: skip
    """The FastAPI application serving ``predictor`` (a :class:`~mnist_cnn.Predictor`)."""
    info = model_info(predictor)
    batcher = Batcher(predictor, max_batch=max_batch, wait=batch_wait)
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
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        if not batcher.alive():
            return JSONResponse({"status": "model worker stopped"}, status_code=503)
        return {"status": "ok"}

    features = info.runtime == "pytorch"  # an .onnx file exposes only its output

    @app.api_route("/v1/model", methods=["GET", "HEAD"])
    async def model() -> dict:
        return {**info.__dict__, "max_body_bytes": max_body, "max_pixels": max_pixels,
                "features": features}  # fmt: skip

    @app.post("/v1/features", openapi_extra=PREDICT_BODY)
    async def feature_maps(request: Request):
        """The image's feature maps after each block's ReLU, for the drawing page's panel.

        Same input as ``/v1/predict``. Layer1's 32 maps, then the 16 most active of layer2 and
        of layer3, each stage scaled to 0..255. Only for a run directory (PyTorch).
        """
        if not features:
            raise ApiError(501, "feature maps need a run directory (PyTorch), not an .onnx")
        import torch

        from .anatomy import feature_panel
        from .evaluation import normalize

        name, pre = await _read_input(request)
        net = predictor.model
        device = next(net.model.parameters()).device
        x = normalize(torch.from_numpy(pre.image[None]).to(device), net.mean, net.std)
        return JSONResponse({"file": name, "stages": feature_panel(net.model, x)})

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=len(info.classes), description="classes to return"),
        image: bool = Query(False, description="also return the 28x28 image the model saw"),
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
            name, pre = await _read_input(request, arrived)
        finally:
            if counted:  # queued next (no await in between), or failed
                batcher.pending -= 1
        probs = await batcher.probabilities(pre.image)
        record = predictor.record(name, probs, top_k)
        if image:
            record["image"] = pre.to_uint8().tolist()
        request.state.result = f"{record['class']} {record['probability']:.3f}"
        return JSONResponse(record)  # already plain JSON types: skip FastAPI's re-encoding

    @app.post("/v1/read", openapi_extra=PREDICT_BODY)
    async def read(request: Request) -> dict:
        """Read a whole number (several digits in one image). Same input as ``/v1/predict``.

        Answers with the record ``mnist-cnn read --json`` prints: number, digits (label,
        probability, box ``[x0, y0, x1, y1]`` in the image's pixels, left to right) and the
        number's probability (the product of its digits').
        """
        if predictor.style != "mnist":
            raise ApiError(501, f"reading numbers needs a model of digits, not {info.dataset}")
        name, gray, small = await _read_input(request, decoded=True)
        record = await offload(_read_number, name, gray, predictor, small=small)
        request.state.result = f"{record['number']} {record['probability']:.3f}"
        return JSONResponse(record)

    async def offload(fn, *args, small: bool):
        """Small images inline (a thread hop costs more than the work, and contends for the
        GIL); large ones in the worker threads, so that they never stall the event loop."""
        if small:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(workers, fn, *args)

    async def _read_input(request: Request, arrived=lambda: None, decoded: bool = False):
        """The request's image, preprocessed: (its file name or None, Preprocessed); or with
        ``decoded``, only decoded: (name, grayscale image, whether it is small).

        ``arrived()`` is called once the body has been received, before preprocessing."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=10, max_part_size=max_body)
            except ClientDisconnect:
                raise
            except Exception as e:  # malformed multipart, too many parts
                raise ApiError(422, f"malformed multipart body ({_detail(e)})") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, 'send the image as the multipart field "file"')
            data = await upload.read()
            arrived()
            img = open_upload(data)
            small = img.width * img.height <= INLINE_PIXELS
            if decoded:
                return upload.filename, await offload(_decode, img, max_pixels, small=small), small
            # decoded and preprocessed in one go: a queued large upload holds only its bytes
            pre = await offload(_decode_and_preprocess, img, max_pixels, predictor.style,
                                small=small)  # fmt: skip
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
                return None, parse_pixels(payload), True
            return None, _to_mnist(parse_pixels(payload), predictor.style)
        raise ApiError(
            415,
            'send an image as multipart/form-data field "file", or JSON {"pixels": [[...]]}'
            + (f", not {kind}" if kind else ""),
        )

    return Guard(app, max_body)


def _decode_and_preprocess(img, max_pixels: int, style: str) -> Preprocessed:
    with img:  # closed once decoded, whatever happens
        return _to_mnist(decode_upload(img, max_pixels), style)


def _decode(img, max_pixels: int) -> np.ndarray:
    with img:
        return decode_upload(img, max_pixels)


def _read_number(name: str | None, gray: np.ndarray, predictor) -> dict:
    """The record of the number written in ``gray`` (segmentation checks and the digits' own
    batch run on the model directly, not through the micro-batcher)."""
    from .segment import number_record, read_number

    try:
        digits, _, probs = read_number(gray, predictor.probabilities)
    except ImageError as e:
        raise ApiError(422, str(e)) from None
    return number_record(name, digits, probs, predictor.classes)


def _to_mnist(gray: np.ndarray, style: str) -> Preprocessed:
    try:
        return to_mnist(gray, style)
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
    """ASGI middleware: the body size limit (413), a 500 for any failure, one log line each.

    Sits outside FastAPI so that an oversized body is refused before anything reads it, and
    counts what arrives, since a chunked upload carries no Content-Length.
    """

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    def __getattr__(self, name):  # app.state, app.openapi() ... for whoever holds the app
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 0, "refused": False}
        scope.setdefault("state", {})
        limit = f"{self.max_body / 1024 / 1024:g} MB"

        async def send_and_note(message):
            if status["refused"]:  # we answered 413 already; the app's answer goes nowhere
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        async def refuse():
            await _send_json(send_and_note, 413, {"error": f"the body is over {limit}"})
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
                    await refuse()  # a chunked upload, which had no Content-Length to check
                    return {"type": "http.disconnect"}
            return message

        try:
            if length > self.max_body:
                await refuse()
            else:
                await self.app(scope, limited_receive, send_and_note)
        except Exception as e:  # an answer, never a dead server
            # FastAPI's own handler has answered (and logged) the app's failures; this is for
            # what fails before or around it
            if not status["refused"] and not status["code"]:
                log.exception("error on %s %s", scope.get("method"), scope.get("path"))
                await _send_json(send_and_note, 500, {"error": f"internal error ({e})"})
        client = scope.get("client") or ("-", 0)
        ms = (time.perf_counter() - start) * 1000
        result = scope["state"].get("result", "")
        log.info('%s "%s %s" %d %.1f ms %s', client[0], scope.get("method"), scope.get("path"),
                 status["code"], ms, result)  # fmt: skip


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port taken, unknown host, no permission)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MnistCnnError(f"--host {host}: {e.strerror}") from None
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
    predictor = Predictor.from_run(spec["run"], spec["device"], spec["threads"])
    return create_app(predictor, **spec["options"])


def serve(run: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          device: str = "cpu", threads: int | None = None, **options) -> None:  # fmt: skip
    """Serve ``run`` until interrupted (Ctrl-C or SIGTERM).

    With ``workers`` > 1, that many processes share the listening socket, each with its own
    copy of the model and its own micro-batcher: Python's per-request work then runs on
    every core.
    """
    import uvicorn

    _configure_logging()
    if workers > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    predictor = Predictor.from_run(run, device, threads)  # fails here, once, if RUN is unusable
    info = model_info(predictor)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s (%s, %d worker%s) on http://%s:%d  (API docs: /docs)", info.dataset,
             info.runtime, workers, "s" * (workers > 1), shown, sock.getsockname()[1])  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach this service", host)
    quiet = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 5}
    if workers == 1:
        app = create_app(predictor, **options)
        uvicorn.Server(uvicorn.Config(app, lifespan="on", **quiet)).run(sockets=[sock])
        return
    del predictor
    os.environ[_SPEC] = json.dumps(
        {"run": str(run), "device": str(device), "threads": threads, "options": options}
    )
    config = uvicorn.Config("mnist_cnn.serve:app_from_environment", factory=True,
                            workers=workers, lifespan="on", **quiet)  # fmt: skip
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[sock]).run()
