"""`mnist-cnn serve` against hostile clients: each attack from the review, on a real server
where the connection matters (timeouts, header sizes, connection limits, the 413 drain), else
on its app in this process.

Every test is bounded in time (socket timeouts) and in what it sends.
"""

from __future__ import annotations

import functools
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servers import InProcess, Server, multipart, png_bytes

from mnist_cnn.preprocessing import ImageError, load_image


@functools.lru_cache
def big_png(side: int) -> bytes:
    """A valid side x side grayscale PNG of a few hundred kilobytes at most (a decoding bomb)."""
    import zlib

    raw = zlib.compress(b"\0" * ((side + 1) * side), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") + side.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def ico_bomb(side: int = 12_000) -> bytes:
    """An ICO whose directory says 16x16 but which holds a side x side PNG: Pillow's ICO reader
    decodes it while *opening* the file, before any size check could run."""
    png = big_png(side)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def icns_bomb(side: int = 12_000) -> bytes:
    """An ICNS icon family holding a side x side PNG as its 'ic10' (1024 px) entry."""
    png = big_png(side)
    block = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(block)) + block


@pytest.fixture(scope="module")
def app(real_run):
    """The real run's app, as `mnist-cnn serve` makes it on loopback, in this process."""
    service = InProcess(str(real_run.run_dir))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def strict(real_run, tmp_path_factory):
    """A server with short timeouts, a small header limit and its own allowed hosts (one
    process, PyTorch)."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    server = Server(
        str(real_run.run_dir),
        log,
        "--workers",
        "1",
        "--runtime",
        "pytorch",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-header",
        "16",
        "--allowed-hosts",
        "127.0.0.1,*.example.org",
    )
    yield server
    server.stop()


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection (bounded by the socket timeout)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize(("kind", "bomb"), [("ico", ico_bomb), ("icns", icns_bomb)])
def test_icon_bombs_are_refused_before_decoding(app, kind, bomb):
    data = bomb()
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(data)  # the library refuses it too (predict, the CLI)
    body, headers = multipart(data, f"bomb.{kind}", content_type="image/x-icon")
    status, _, answer = app.request("POST", "/v1/predict", body, headers)
    assert status == 415, answer
    assert "accepted format" in json.loads(answer)["error"]
    assert app.request("GET", "/healthz")[0] == 200


def test_a_client_that_never_finishes_its_headers_gets_408(strict):
    with connect(strict) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = read_all(s)  # the server answers and closes after --header-timeout (1 s)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"headers took too long" in answer
    with connect(strict) as s:  # one that says nothing at all is closed without a word
        assert read_all(s) == b""
    assert strict.request("GET", "/healthz")[0] == 200


def test_a_stalled_body_gets_408_and_leaves_no_temporary_file(strict):
    pid = strict.process.pid
    before = open_files(pid)
    bodies = [(b'{"pixels": [[0,', "application/json", 100_000)]
    start, headers = multipart(b"\x89PNG" + b"\0" * 2_000_000)  # over starlette's 1 MB spool
    bodies.append((start[:2_000_000], headers["Content-Type"], len(start)))
    for part, kind, length in bodies:
        with connect(strict) as s:
            s.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {length}\r\n\r\n".encode()
                + part
            )
            answer = read_all(s)  # after --body-timeout (1 s) without a byte
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"body stalled" in answer
    time.sleep(0.5)
    assert open_files(pid) <= before  # no upload was ever spooled to disk
    assert strict.request("GET", "/healthz")[0] == 200
    log = strict.log.read_text()
    assert log.count("request body stalled: 408") == 2 and "Traceback" not in log


def open_files(pid: int) -> set[str]:
    """The regular files (not sockets, pipes or devices) a process holds open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/") and not target.startswith("/dev/"):
            found.add(target)
    return {f for f in found if "(deleted)" in f or "/tmp" in f}


def test_a_100_mb_header_gets_431_after_a_few_kilobytes(strict):
    """The server stops reading at --max-header (16 KB): the client is told 431 long before
    it has sent its 100 MB, and the server never holds more than a chunk of it."""
    piece = b"a" * 65536
    answer = b""
    with connect(strict) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
        sent = 0
        while sent < 100 * 1024 * 1024 and not answer:
            try:
                s.sendall(piece)
                sent += len(piece)
            except OSError:  # the server has closed its side
                break
            if select.select([s], [], [], 0)[0]:
                answer = s.recv(4096)
        if not answer:
            answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert sent < 10 * 1024 * 1024
    assert strict.request("GET", "/healthz")[0] == 200


def test_bodies_larger_than_the_header_limit_are_not_headers(strict, test_digits):
    """Whole requests in one write, on one keep-alive connection, each over --max-header."""
    pixels = json.dumps({"pixels": test_digits[0][0].tolist()}) + " " * 40_000
    request = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(pixels)}\r\n\r\n{pixels}"
    ).encode()
    with connect(strict) as s:
        reader = s.makefile("rb")
        for _ in range(3):
            s.sendall(request)
            assert reader.readline().startswith(b"HTTP/1.1 200"), "refused as a header"
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert json.loads(reader.read(length))["label"] == test_digits[1][0]


def test_connections_past_the_limit_get_503(real_run, tmp_path):
    server = Server(
        str(real_run.run_dir),
        tmp_path / "limit.log",
        "--workers",
        "1",
        "--runtime",
        "pytorch",
        "--max-connections",
        "4",
    )
    idle = []
    try:
        idle = [connect(server) for _ in range(4)]  # held open, saying nothing
        time.sleep(0.2)
        status, _, body = server.request("GET", "/healthz")
        assert status == 503, body
        assert "too many connections" in json.loads(body)["error"]
        for s in idle:
            s.close()
        idle = []
        deadline = time.monotonic() + 10
        while server.request("GET", "/healthz")[0] != 200:  # the slots come back
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_urllib_reads_the_413_of_an_over_limit_upload(served):
    """urllib sends its whole body before reading: the server drains it, then answers."""
    body, headers = multipart(b"\0" * (6 * 1024 * 1024))
    request = urllib.request.Request(served.url + "/v1/predict", body, headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert json.loads(caught.value.read()) == {"error": "the body is over 5 MB"}


def test_a_path_cannot_forge_a_log_line(served):
    forged = '2026-11-28 18:40:00,000 1 127.0.0.1 "POST /v1/admin" 200'
    path = "/x%0a" + forged.replace(" ", "%20").replace('"', "%22")
    assert served.request("GET", path)[0] == 404
    served.request("GET", "/healthz")  # the line above is written by now
    lines = served.log.read_text().splitlines()
    assert not any(line.startswith("2026-11-28 18:40:00,000") for line in lines)
    line = next(x for x in lines if "/x\\n" in x)
    assert line.endswith("404 " + line.split(" 404 ")[1]) and '\\"POST /v1/admin\\"' in line


def test_only_the_allowed_hosts_are_answered(app):
    """Bound to loopback, only loopback names: a DNS-rebinding page sends its own name."""
    port = 8000
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert app.request("GET", "/v1/model", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        status, _, body = app.request("GET", "/v1/model", headers={"Host": host})
        assert status == 400, host
        assert "--allowed-hosts" in json.loads(body)["error"]


def test_allowed_hosts_can_be_given(strict):
    """--allowed-hosts 127.0.0.1,*.example.org: those names, a domain's subdomains only."""
    for host, expected in (
        ("127.0.0.1", 200),
        ("digits.example.org", 200),
        ("example.org", 400),
        ("localhost", 400),
    ):
        assert strict.request("GET", "/healthz", headers={"Host": host})[0] == expected, host


def test_metrics_in_prometheus_text_format(served, test_digits):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        status, headers, body = served.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def count(families, route, code) -> float:
        samples = families["mnist_cnn_requests"].samples
        return sum(
            s.value
            for s in samples
            if s.name == "mnist_cnn_requests_total"
            and s.labels["route"] == "/v1/predict"
            and s.labels["status"] == code
        )

    before = scrape()
    body, headers = multipart(png_bytes(test_digits[0][0]))
    for _ in range(3):
        assert served.request("POST", "/v1/predict", body, headers)[0] == 200
    served.request("POST", "/v1/predict", b"{}", {"Content-Type": "application/json"})
    after = scrape()
    assert count(after, "/v1/predict", "200") - count(before, "/v1/predict", "200") == 3
    assert count(after, "/v1/predict", "422") - count(before, "/v1/predict", "422") == 1
    latency = {
        s.name: s
        for s in after["mnist_cnn_request_duration_seconds"].samples
        if s.labels.get("route") == "/v1/predict" and s.labels.get("le") in (None, "+Inf")
    }
    assert latency["mnist_cnn_request_duration_seconds_count"].value >= 4
    batches = {s.name: s.value for s in after["mnist_cnn_batch_size"].samples}
    assert batches["mnist_cnn_batch_size_count"] >= 3
    assert batches["mnist_cnn_batch_size_sum"] >= batches["mnist_cnn_batch_size_count"]
    (info,) = after["mnist_cnn_model_info"].samples
    assert info.value == 1 and info.labels["dataset"] == "mnist"
    assert info.labels["runtime"] == "onnxruntime"
    assert "mnist_cnn_requests_in_flight" in after


def broken_models(real_run, tmp_path) -> dict[str, Path]:
    """A copy of the run with std 0, one with a NaN weight, the .onnx with std 0, and the .onnx
    with a NaN weight."""
    import shutil

    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file, save_file

    from mnist_cnn.checkpoint import load_run
    from mnist_cnn.serve.model import export_checked

    runs = {}
    for case in ("std 0", "nan weight"):
        run = tmp_path / case.replace(" ", "-")
        shutil.copytree(real_run.run_dir, run)
        if case == "std 0":
            config = json.loads((run / "config.json").read_text())
            config["data"]["std"] = 0.0
            (run / "config.json").write_text(json.dumps(config))
        else:
            tensors = load_file(run / "model.safetensors")
            tensors["fc2.weight"][0, 0] = np.nan
            save_file(tensors, run / "model.safetensors")
        runs[case] = run
    exported = export_checked(load_run(real_run.run_dir))
    model = onnx.load_from_string(exported)
    for entry in model.metadata_props:
        if entry.key == "std":
            entry.value = "0.0"
    onnx.save(model, str(tmp_path / "std0.onnx"))
    runs["onnx std 0"] = tmp_path / "std0.onnx"
    model = onnx.load_from_string(exported)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # a weight matrix
    a = numpy_helper.to_array(weights).copy()
    a.flat[0] = np.nan  # one NaN among many: a blank image may not show it at the output
    weights.CopyFrom(numpy_helper.from_array(a, weights.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    runs["onnx nan weight"] = tmp_path / "nan.onnx"
    return runs


def test_a_broken_model_is_refused_at_start_with_one_line(real_run, tmp_path):
    from mnist_cnn.errors import MnistCnnError
    from mnist_cnn.serve.model import load

    for case, path in broken_models(real_run, tmp_path).items():
        with pytest.raises(MnistCnnError) as refused:
            load(str(path))  # what `mnist-cnn serve` does first
        line = str(refused.value)
        assert "\n" not in line and str(path) in line, (case, line)
        assert ("std" in line) if "std" in case else ("NaN" in line), (case, line)
        if case == "onnx nan weight":  # found in the weights, before anything runs
            assert "weights hold NaN" in line, line
    # and the command says it in one line on stderr, exit status 2
    broken = str(tmp_path / "nan-weight")
    done = subprocess.run(
        [sys.executable, "-m", "mnist_cnn", "serve", broken, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "NaN" in lines[0] and broken in lines[0], lines[0]


def test_large_photos_are_decoded_small_with_the_same_result(tmp_path):
    """A 12-megapixel JPEG is decoded at reduced scale (draft mode) and reduced before the
    digit is looked for: the 28x28 image is the one a full decode gives, EXIF rotation kept."""
    from PIL import ImageDraw, ImageOps

    from mnist_cnn.preprocessing import REDUCED_SIDE, to_mnist

    canvas = Image.new("L", (4000, 3000), 235)  # paper, and a dark stroke on it
    ImageDraw.Draw(canvas).line([(1700, 900), (2300, 2100)], fill=20, width=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    buffer = io.BytesIO()
    canvas.convert("RGB").save(buffer, format="JPEG", quality=90, exif=exif)
    fast = load_image(buffer.getvalue())
    assert max(fast.shape) <= REDUCED_SIDE and fast.shape[0] > fast.shape[1]  # rotated
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("L")
    full = np.asarray(full, np.float32) / 255
    a, b = to_mnist(fast).image, to_mnist(full).image
    # the same digit, up to where centring by mass rounds it (one pixel at most)
    shifted = [np.roll(b, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert min(np.abs(a - c).mean() for c in shifted) < 0.01
    assert (a > 0.5).sum() == pytest.approx((b > 0.5).sum(), rel=0.1)
