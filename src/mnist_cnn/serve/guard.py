"""The service's guard at the ASGI edge: the Host check (400), the body size limit (413, the
refused body drained first), a 500 for any failure, and one log line and the metrics for every
request. Below it, connections.py guards the connections themselves."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..metrics import Metrics

log = logging.getLogger("mnist_cnn.serve")

DRAIN_BYTES = 64 * 1024 * 1024  # a refused body is read and dropped up to this size ...
DRAIN_SECONDS = 10.0  # ... and for at most this long, so that every client reads the 413


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
