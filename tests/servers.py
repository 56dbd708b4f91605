"""Helpers for tests that talk HTTP to the service: a real `mnist-cnn serve` process
(:class:`Server`, also what benchmarks/serve_load.py starts), or its app in this process
(:class:`InProcess`); both answer ``request`` the same way."""

from __future__ import annotations

import functools
import http.client
import io
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np


class Server:
    """``mnist-cnn serve`` running for real in a subprocess, on a free loopback port."""

    def __init__(self, target: str, log: Path, *options: str):
        self.log = log
        cmd = [sys.executable, "-m", "mnist_cnn", "serve", target, "--port", "0", *options]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 180  # starting exports the model to ONNX and checks it
        while time.monotonic() < deadline:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                if self._healthy():
                    return
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {log.read_text()}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the server did not come up: {log.read_text()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:  # fmt: skip
        """(status, headers, body) of one HTTP request; errors are answers, not exceptions."""
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class InProcess:
    """The app ``create_app`` makes for ``target``, answered in this process through httpx
    (starlette's TestClient: an httpx client whose transport calls the ASGI app, with the
    app's lifespan, and so its micro-batcher, running on the client's event loop).

    No socket and no uvicorn: for what the app decides (routes, answers, the Host check, body
    limits), not what a connection does (ports, workers, timeouts, chunked bodies).
    The Host is 127.0.0.1 and the client 127.0.0.1, and the allowed hosts, unless given, are
    the loopback names, as for `mnist-cnn serve` on loopback.
    """

    def __init__(self, target: str, **options):
        from starlette.testclient import TestClient

        from mnist_cnn.serve import create_app
        from mnist_cnn.serve.server import LOOPBACK_HOSTS

        options.setdefault("allowed_hosts", list(LOOPBACK_HOSTS))
        app = create_app(served_predictor(target), **options)
        self.client = TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000))
        self.client.__enter__()  # the lifespan: the batcher starts

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request, as :meth:`Server.request` gives them."""
        response = self.client.request(method, path, content=body, headers=headers or {})
        return response.status_code, dict(response.headers), response.content

    def stop(self) -> None:
        self.client.__exit__(None, None, None)


@functools.lru_cache
def served_predictor(target: str):
    """``target`` loaded as `mnist-cnn serve` loads it (a run: exported to ONNX in memory and
    checked), once per test session."""
    from mnist_cnn.serve.model import load

    return load(target)


def multipart(data: bytes, filename: str = "digit.png", field: str = "file",
              content_type: str = "image/png") -> tuple[bytes, dict]:  # fmt: skip
    boundary = "testboundary7d"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
