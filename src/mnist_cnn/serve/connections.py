"""The service's connection limits, enforced where requests are parsed (uvicorn's protocol).

Below the ASGI app, because that is where a hostile client does its damage before any app code
runs: a header that never ends, a request sent a byte a minute, thousands of idle connections.

- at most ``max_header_bytes`` of request line and headers: beyond that, 431 and close;
- the request line and headers within ``header_timeout`` seconds of the connection (or of the
  first byte of the next request on it): else 408 and close;
- no gap longer than ``body_timeout`` seconds while the body arrives: else 408 and close;
- at most ``max_connections`` open at once: a connection beyond them is answered 503 once its
  request line and headers are in (or closed after ``OVER_LIMIT_WAIT`` seconds), so that idle
  connections can never use up the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..defaults import SERVE_BODY_TIMEOUT as DEFAULT_BODY_TIMEOUT
from ..defaults import SERVE_HEADER_TIMEOUT as DEFAULT_HEADER_TIMEOUT
from ..defaults import SERVE_MAX_HEADER_BYTES as DEFAULT_MAX_HEADER_BYTES

log = logging.getLogger("mnist_cnn.serve")

OVER_LIMIT_WAIT = 1.0  # seconds a connection beyond the limit may take to send its request
LINGER_SECONDS = 2.0  # after a refusal, what the client still sends is read and dropped this long
RESERVED_FDS = 128  # model files, logs, thread pools, the listening socket...
MAX_OPEN_FILES = 65536  # the soft limit is raised towards the hard one, up to this


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT


def default_max_connections() -> int:
    """Half of what the open-file limit leaves after a reserve: every connection is a file
    descriptor, and one beyond the limit still needs one while it is being refused. The soft
    limit is raised to the hard one first (at most MAX_OPEN_FILES), as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    soft = MAX_OPEN_FILES if soft == resource.RLIM_INFINITY else soft
    return max(16, (soft - RESERVED_FDS) // 2)


class ServiceConfig(Config):
    """uvicorn's Config, carrying the limits to every connection (and to worker processes,
    which receive the config pickled)."""

    def __init__(self, app, *, limits: Limits, **kwargs):
        super().__init__(app, http=LimitedProtocol, **kwargs)
        self.limits = limits


_refusals = {"count": 0, "logged": float("-inf")}


def _note_refusal(limit: int) -> None:
    """A log line for connections refused past the limit, at most one every 10 s (a flood of
    them must not flood the log too)."""
    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["logged"] >= 10:
        log.warning("connection limit (%d) reached: %d refused with 503", limit, _refusals["count"])
        _refusals.update(count=0, logged=now)


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (one instance per connection)."""

    def __init__(self, config: ServiceConfig, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = config.limits
        self._reading_head = True  # between requests, or inside a request line and headers
        self._head_bytes = 0
        self._heads = 0  # requests whose headers are complete (a chunk may hold a whole one)
        self._timer: asyncio.TimerHandle | None = None
        self._over_limit = False
        self._discarding = False  # refused: what arrives now is dropped

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._over_limit = True  # answered 503 once its request is in, or closed
            self._arm(OVER_LIMIT_WAIT, self._close)
        else:
            self._arm(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding or self.transport.is_closing():
            return
        head, heads = self._reading_head, self._heads
        if head and self._timer is None:  # the first bytes of the next request
            self._arm(self.limits.header_timeout, self._header_timed_out)
        super().data_received(data)
        if head and heads == self._heads and not self.transport.is_closing():
            # no end of headers in this chunk: all of it was head (a chunk is at most a few
            # hundred KB, so the excess parsed before this check is bounded)
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                kb = self.limits.max_header_bytes // 1024
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request line and headers are over {kb} KB",
                )

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes = False, 0
        self._heads += 1
        if self._over_limit:
            _note_refusal(self.limits.max_connections)
            self._refuse(503, "Service Unavailable", "too many connections; try again shortly")
            return
        self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()  # the app has the whole request; idle time after it is keep-alive's
        self._reading_head = True
        super().on_message_complete()

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timed_out(self) -> None:
        self._timer = None
        if self._head_bytes:
            self._refuse(408, "Request Timeout", "the request headers took too long")
        else:
            self._close()  # a connection that never said anything gets no answer

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.scope["state"]["result"] = "request body stalled: 408"
            self._refuse(408, "Request Timeout", "the request body stalled")
        else:
            self._close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() and send() see a hang-up
        self.transport.write(_answer(status, reason, message))
        self._linger()

    def _linger(self) -> None:
        """Close our side and drop what the client still sends, for a moment, before closing:
        closing with unread data would reset the connection, and the client lose the answer
        (a "lingering close", as Apache and nginx do)."""
        self._discarding = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()
