"""Running the service: the listening socket, uvicorn with the connection limits, and worker
processes that share the socket."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from typing import Any

from ..errors import ConfigError, MnistCnnError
from ..metrics import MULTIPROCESS_DIR
from . import model as served_model
from .app import DEFAULT_MAX_BODY, create_app
from .connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
    Limits,
    ServiceConfig,
    default_max_connections,
)
from .model import model_info

log = logging.getLogger("mnist_cnn.serve")

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the default --allowed-hosts on loopback


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
    predictor = served_model.load(
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
        workers = served_model.default_workers() if str(device) == "cpu" else 1
    if workers > 1 and threads is None:
        threads = max(1, served_model.default_workers() // workers)
    # fails here, once, with one line, if RUN is unusable
    predictor = served_model.load(run, device=device, threads=threads, runtime=runtime)
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
        if isinstance(exported, served_model.ExportedRun) and exported.onnx_bytes:  # checked once,
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
            "mnist_cnn.serve.server:app_from_environment",
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
