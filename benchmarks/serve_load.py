"""Load on `mnist-cnn serve`: requests/s, latency p50/p99 and errors, for a bounded time and count.

Each client keeps one HTTP/1.1 connection open and sends single-image requests back to back
(MNIST test digits as PNG uploads or as JSON pixels, or real photo crops of handwritten digits
as PNG uploads). The client is plain asyncio, so that it costs the machine as little as
possible next to the server it measures.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000          # a running server
    python benchmarks/serve_load.py --start RUN [--server-args "..."]    # starts one itself
    python benchmarks/serve_load.py --start RUN --payload photo --photos DIR

``--payload photo`` sends the photographed digits of a labelled folder (labels.csv: file,label,
kind; the PNGs of kind "photo" larger than 28x28, such as a 131x223 crop of a phone photo).
``--write-wrk DIR`` writes the request bodies and a Lua script for ``wrk`` instead of measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from mnist_cnn.datasets import DATASETS, find_files, locate
from mnist_cnn.idx import load_idx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import Server  # noqa: E402  (the repository root, found above)


def payloads(kind: str, count: int, data_dir: str | None) -> tuple[list[bytes], list[int]]:
    """(request bodies with their headers' content type, true labels) from MNIST's test set."""
    info = DATASETS["mnist"]
    folder = locate(info, data_dir)
    if folder is None:
        sys.exit("MNIST not found: pass --data-dir or set MNIST_CNN_DATA")
    files = find_files(info, folder)
    images = load_idx(files["test-images"])[:count]
    labels = load_idx(files["test-labels"])[:count]
    bodies = []
    for image in images:
        if kind == "json":
            bodies.append(json.dumps({"pixels": image.tolist()}).encode())
        else:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            bodies.append(buffer.getvalue())
    return bodies, [int(x) for x in labels]


def photos(folder: str) -> tuple[list[bytes], list[int]]:
    """(PNG files, labels) of the photographed digits in ``folder`` (its labels.csv)."""
    import csv
    from pathlib import Path

    root = Path(folder)
    bodies, labels = [], []
    for row in csv.DictReader((root / "labels.csv").open()):
        if row["kind"] != "photo" or not row["file"].endswith(".png"):
            continue
        with Image.open(root / row["file"]) as img:
            if max(img.size) <= 28:  # already MNIST-sized: not a photo crop
                continue
        bodies.append((root / row["file"]).read_bytes())
        labels.append(int(row["label"]))
    if not bodies:
        sys.exit(f"no photo PNGs listed in {root / 'labels.csv'}")
    return bodies, labels


def write_wrk(folder: str, kind: str, bodies: list[bytes]) -> None:
    """Request bodies and a Lua script that makes ``wrk`` send them in turn."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, body in enumerate(bodies):
        head, _, data = request_bytes("h", "/v1/predict", kind, body).partition(b"\r\n\r\n")
        (out / f"{i}.body").write_bytes(data)
        names.append(f'"{out.resolve() / f"{i}.body"}"')
    ctype = "application/json" if kind == "json" else "multipart/form-data; boundary=mnistcnnload"
    (out / "post.lua").write_text(
        f"local files = {{{', '.join(names)}}}\nlocal bodies = {{}}\n"
        "for i, name in ipairs(files) do local f = io.open(name, 'rb') bodies[i] = f:read('*a') "
        "f:close() end\nlocal n = 0\n"
        f"wrk.method = 'POST'\nwrk.headers['Content-Type'] = '{ctype}'\n"
        "request = function() n = n % #bodies + 1 "
        "return wrk.format(nil, '/v1/predict', nil, bodies[n]) end\n"
    )
    print(f"wrk -t2 -c16 -d10s --latency -s {out / 'post.lua'} http://127.0.0.1:8000")


def request_bytes(host: str, path: str, kind: str, body: bytes) -> bytes:
    if kind == "json":
        ctype = "application/json"
    else:
        boundary = "mnistcnnload"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        ctype = f"multipart/form-data; boundary={boundary}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def client(host, port, requests, labels, stop_at, budget, results, start=0):
    reader, writer = await asyncio.open_connection(host, port)
    i = start % len(requests)
    expected = [f'"label":{label},'.encode() for label in labels]
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            begin = time.perf_counter()
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            body = await reader.readexactly(length)
            first = body.find(b'"label":')  # the answer's own label comes before top_k's
            ok = status == 200 and body.startswith(expected[i], first)  # cheaper than json
            results.append((time.perf_counter() - begin, status, ok))
            i = (i + 1) % len(requests)
    finally:
        writer.close()


async def drive(url: str, kind: str, concurrency: int, duration: float, count: int,
                bodies: list[bytes], labels: list[int]) -> tuple[list, float]:  # fmt: skip
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    requests = [request_bytes(parts.netloc, "/v1/predict", kind, b) for b in bodies]
    warm: list = []  # one request per client first: connections and the model warm
    await asyncio.gather(*(client(host, port, requests, labels, float("inf"), [1], warm)
                           for _ in range(concurrency)))  # fmt: skip
    results: list = []
    budget = [count]
    start = time.perf_counter()
    stop_at = start + duration
    spread = len(requests) // concurrency  # each client starts at its own part of the set
    await asyncio.gather(*(client(host, port, requests, labels, stop_at, budget, results,
                                  k * spread) for k in range(concurrency)))  # fmt: skip
    return results, time.perf_counter() - start


def start_server(run: str, extra: str, folder: Path) -> Server:
    """``mnist-cnn serve RUN`` on a free loopback port (the tests' own helper), its log in
    ``folder``."""
    try:
        return Server(run, folder / "server.log", *shlex.split(extra))
    except AssertionError as e:  # it exited, or did not come up: its log says why
        sys.exit(str(e))


def run(coroutine):
    """asyncio.run on uvloop when it is there (it comes with uvicorn[standard]): the client
    shares the machine with the server, so the less it costs, the truer the figures."""
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--start", metavar="RUN", help="start `mnist-cnn serve RUN` on a free port")
    parser.add_argument("--server-args", default="", help="more options for the started server")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once (16)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds at most (10)")
    parser.add_argument("--requests", type=int, default=20000, help="requests at most (20000)")
    parser.add_argument("--payload", choices=("png", "json", "photo"), default="png")
    parser.add_argument("--images", type=int, default=1000, help="distinct test images (1000)")
    parser.add_argument("--data-dir", help="where MNIST is (default: the usual search)")
    parser.add_argument("--photos", metavar="DIR", help="the labelled folder --payload photo uses")
    parser.add_argument("--write-wrk", metavar="DIR", help="write a wrk script there, and stop")
    args = parser.parse_args()

    if args.payload == "photo":
        if not args.photos:
            parser.error("--payload photo needs --photos DIR")
        bodies, labels = photos(args.photos)
    else:
        bodies, labels = payloads(args.payload, args.images, args.data_dir)
    kind = "json" if args.payload == "json" else "png"
    if args.write_wrk:
        write_wrk(args.write_wrk, kind, bodies)
        return
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        server = start_server(args.start, args.server_args, Path(tmp)) if args.start else None
        url = server.url if server else args.url
        try:
            results, seconds = run(drive(url, kind, args.concurrency, args.duration,
                                         args.requests, bodies, labels))  # fmt: skip
        finally:
            if server:
                server.stop()
    latency = np.array([r[0] for r in results]) * 1000
    errors = sum(r[1] != 200 for r in results)
    wrong = sum(r[1] == 200 and not r[2] for r in results)
    print(f"{len(results)} requests ({args.payload}, {len(bodies)} distinct) from "
          f"{args.concurrency} clients in "
          f"{seconds:.1f} s, {os.cpu_count()} CPUs shared by server and clients")  # fmt: skip
    print(f"requests/s {len(results) / seconds:,.0f}  p50 {np.percentile(latency, 50):.1f} ms  "
          f"p99 {np.percentile(latency, 99):.1f} ms  max {latency.max():.1f} ms  "
          f"errors {errors}  misclassified {wrong}")  # fmt: skip


if __name__ == "__main__":
    main()
