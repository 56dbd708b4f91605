"""`mnist-cnn serve`: its app in this process through httpx (routes, answers, errors), and a
real uvicorn server on 127.0.0.1 for what needs one (workers, ports, chunked bodies, hang-ups,
log lines, concurrent clients)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from servers import InProcess, Server, multipart, png_bytes, served_predictor

from mnist_cnn.cli import main
from mnist_cnn.model import CustomCNN, count_parameters


@pytest.fixture(scope="module")
def app(real_run):
    """The real run's app, as `mnist-cnn serve` makes it, answered in this process."""
    service = InProcess(str(real_run.run_dir))
    yield service
    service.stop()


def post_png(server, image: np.ndarray, query: str = "") -> tuple[int, dict]:
    body, headers = multipart(png_bytes(image))
    status, _, data = server.request("POST", "/v1/predict" + query, body, headers)
    return status, json.loads(data)


def post_json(server, payload, query: str = "") -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    status, _, data = server.request("POST", "/v1/predict" + query, body, headers)
    return status, json.loads(data)


def test_health_model_and_docs(app, real_run):
    status, _, body = app.request("GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    status, _, body = app.request("GET", "/v1/model")
    info = json.loads(body)
    assert status == 200
    assert info["architecture"] == "CustomCNN" and info["dataset"] == "mnist"
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["parameters"] == count_parameters(CustomCNN()) == 1_379_557
    assert info["test_accuracy"] == pytest.approx(real_run.final["test_accuracy"])
    assert info["runtime"] == "onnxruntime"  # the run, exported in memory at start

    status, headers, body = app.request("GET", "/docs")
    assert status == 200 and b"swagger" in body.lower()
    status, _, body = app.request("GET", "/openapi.json")
    spec = json.loads(body)
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_the_page_and_its_files_work_offline(app):
    status, headers, page = app.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = page.decode()
    assert "<canvas" in html and 'name="viewport"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        status, _, body = app.request("GET", asset)
        assert status == 200 and len(body) > 500
        # nothing from a CDN or a font service: the page must work with no internet
        assert b"http://" not in body and b"https://" not in body
    assert "http://" not in html and "https://" not in html


def test_predict_upload_matches_the_cli(app, real_run, test_digits, tmp_path, capsys):
    images, labels = test_digits
    right = 0
    for i in range(20):
        status, record = post_png(app, images[i])
        assert status == 200
        right += record["label"] == labels[i]
    assert right >= 19  # the run is ~97% accurate

    path = tmp_path / "seven.png"
    path.write_bytes(png_bytes(images[0]))
    assert main(["predict", str(real_run.run_dir), str(path), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    body, headers = multipart(path.read_bytes(), filename="seven.png")
    status, _, data = app.request("POST", "/v1/predict", body, headers)
    record = json.loads(data)
    assert status == 200
    assert set(record) == set(cli) == {"file", "label", "class", "probability", "unsure", "top_k"}
    assert record["file"] == "seven.png"
    assert (record["label"], record["class"]) == (cli["label"], cli["class"])
    assert record["probability"] == pytest.approx(cli["probability"], abs=1e-5)
    assert [t["label"] for t in record["top_k"]] == [t["label"] for t in cli["top_k"]]


def test_json_pixels_give_the_same_answer_as_the_png(app, test_digits):
    images, labels = test_digits
    for i in range(5):
        s1, from_png = post_png(app, images[i])
        s2, from_json = post_json(app, {"pixels": images[i].tolist()})
        assert s1 == s2 == 200
        assert from_json["label"] == from_png["label"]
        assert from_json["probability"] == pytest.approx(from_png["probability"], abs=1e-5)
        assert from_json["file"] is None


def test_top_k_and_the_image_the_model_saw(app, test_digits):
    images, _ = test_digits
    status, record = post_png(app, images[1], "?top_k=10&image=true")
    assert status == 200
    probs = [t["probability"] for t in record["top_k"]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    seen = np.array(record["image"])
    assert seen.shape == (28, 28) and seen.min() >= 0 and seen.max() == 255
    # an MNIST digit passes through preprocessing nearly unchanged
    assert np.abs(seen.astype(float) - images[1]).mean() < 3
    for bad in ("?top_k=0", "?top_k=11", "?top_k=two"):
        status, answer = post_png(app, images[1], bad)
        assert status == 422 and "top_k" in answer["error"]


def pixel_bomb() -> bytes:
    """A valid 20000 x 20000 grayscale PNG of a few kilobytes (400 megapixels)."""
    w = h = 20_000
    raw = zlib.compress(b"\0" * ((w + 1) * h), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))  # fmt: skip


def bad_requests(digit: np.ndarray) -> list[tuple[str, int, bytes, dict, str]]:
    """(case, expected status, body, headers, a word the error must contain)."""
    png = png_bytes(digit)
    blank = png_bytes(np.zeros((28, 28), np.uint8))
    tiff = io.BytesIO()  # float pixels with an infinity in them
    floats = digit.astype(np.float32)
    floats[0, 0] = np.inf
    Image.fromarray(floats, mode="F").save(tiff, format="TIFF")
    deep = b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge = b'{"pixels": [[1' + b"0" * 400 + b"]]}"
    jpeg = io.BytesIO()
    Image.fromarray(digit).save(jpeg, format="JPEG")
    as_json = {"Content-Type": "application/json"}
    cases = [
        ("not an image", 415, *multipart(b"%PDF-1.4 hello", "doc.pdf"), "not an image"),
        ("text file", 415, *multipart(b"just some text\n", "notes.txt"), "not an image"),
        ("truncated png", 422, *multipart(png[: len(png) // 2]), "image"),
        ("truncated jpeg", 422, *multipart(jpeg.getvalue()[:200], "x.jpg"), "image"),
        ("pixel bomb", 422, *multipart(pixel_bomb(), "bomb.png"), "pixels"),
        ("empty file", 422, *multipart(b"", "empty.png"), "empty"),
        ("blank image", 422, *multipart(blank, "blank.png"), "no ink"),
        ("wrong field", 422, *multipart(png, field="image"), '"file"'),
        ("malformed json", 422, b'{"pixels": [[0, 1', as_json, "JSON"),
        ("json not object", 422, b"[1, 2, 3]", as_json, "pixels"),
        ("wrong shape", 422, json.dumps({"pixels": [[0] * 28] * 27}).encode(), as_json, "28"),
        (
            "ragged",
            422,
            json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 5]}).encode(),
            as_json,
            "28",
        ),  # fmt: skip
        ("strings", 422, json.dumps({"pixels": [["a"] * 28] * 28}).encode(), as_json, "28"),
        (
            "out of range",
            422,
            json.dumps({"pixels": [[300] * 28] * 28}).encode(),
            as_json,
            "between",
        ),  # fmt: skip
        ("negative", 422, json.dumps({"pixels": [[-1] * 28] * 28}).encode(), as_json, "between"),
        ("float tiff with inf", 422, *multipart(tiff.getvalue(), "x.tif"), "infinite"),
        ("deeply nested json", 422, deep, as_json, "nested"),
        ("huge integer", 422, huge, as_json, "28"),
        (
            "numbers as strings",
            422,
            json.dumps({"pixels": [["5"] * 28] * 28}).encode(),
            as_json,
            "28",
        ),  # fmt: skip
        ("booleans", 422, json.dumps({"pixels": [[True] * 28] * 28}).encode(), as_json, "28"),
        ("no content type", 415, png, {}, "multipart"),
        (
            "form urlencoded",
            415,
            b"a=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "multipart",
        ),  # fmt: skip
        (
            "broken multipart",
            422,
            b"--x\r\nnonsense",
            {"Content-Type": "multipart/form-data; boundary=x"},
            '"file"',
        ),  # fmt: skip
        ("over 5 MB", 413, *multipart(b"\0" * (5 * 1024 * 1024 + 10)), "5 MB"),
    ]
    return cases


def test_every_bad_input_gets_a_clear_error_and_the_server_lives(app, test_digits):
    for case, expected, body, headers, word in bad_requests(test_digits[0][0]):
        status, _, data = app.request("POST", "/v1/predict", body, headers)
        assert status == expected, (case, status, data[:200])
        error = json.loads(data)["error"]
        assert word.lower() in error.lower(), (case, error)
        assert "\n" not in error and "Traceback" not in error
    assert app.request("GET", "/healthz")[0] == 200
    assert app.request("GET", "/no-such-page")[0] == 404
    assert app.request("DELETE", "/v1/predict")[0] == 405


def test_a_chunked_body_over_the_limit_is_refused(served):
    """No Content-Length to trust: the server counts what arrives."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/json\r\n\r\n")  # fmt: skip
        piece = b"x" * 65536
        try:
            for _ in range(100):  # 6.4 MB
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before we finished: fine
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert served.request("GET", "/healthz")[0] == 200


def test_one_log_line_per_request_and_no_500(served, test_digits):
    paths = [f"/log-check-{os.getpid()}-{i}" for i in range(3)]
    for path in paths:
        assert served.request("GET", path)[0] == 404
    status, record = post_png(served, test_digits[0][0])
    log = served.log.read_text()  # each line is written before its answer is sent
    assert [log.count(f'"GET {path}" 404 ') for path in paths] == [1, 1, 1]
    assert " 500 " not in log and "Traceback" not in log
    line = [x for x in log.splitlines() if '"POST /v1/predict" 200' in x][-1]
    # time, process, client, "method path", status, milliseconds, answer
    assert line.split()[3] == "127.0.0.1"
    assert line.rstrip().endswith(f"{record['class']} {record['probability']:.3f}")


def test_a_client_that_hangs_up_mid_body_is_no_error(served):
    host, port = served.url.removeprefix("http://").split(":")
    for kind in ("application/json", "multipart/form-data; boundary=x"):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                      "Content-Length: 1000\r\n\r\n{\"pixels\": [[0,".encode())  # fmt: skip
    assert served.request("GET", "/healthz")[0] == 200
    # the worker that had the request logs it once it notices the hang-up; with several
    # workers, /healthz may have been answered by another one first
    deadline = time.monotonic() + 20
    while '"POST /v1/predict" 499' not in served.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = served.log.read_text()
    assert " 500 " not in log and "Traceback" not in log
    assert '"POST /v1/predict" 499' in log  # logged as the client's doing


def test_head_requests_for_health_checks(app):
    for path in ("/", "/healthz", "/v1/model"):
        status, _, body = app.request("HEAD", path)
        assert status == 200 and body == b""


def test_the_api_docs_work_offline(app):
    status, _, page = app.request("GET", "/docs")
    assert status == 200 and b"cdn." not in page and b"https://" not in page
    for asset in re.findall(rb'(?:src|href)="(/[^"]+)"', page):
        assert app.request("GET", asset.decode())[0] == 200, asset


def test_feature_maps_for_the_page(app, real_run, test_digits):
    body, headers = multipart(png_bytes(test_digits[0][0]))
    status, _, data = app.request("POST", "/v1/features", body, headers)
    assert status == 200
    stages = json.loads(data)["stages"]
    assert [s["name"] for s in stages] == ["layer1", "layer2", "layer3"]
    assert [s["shape"] for s in stages] == [[32, 28, 28], [64, 14, 14], [128, 7, 7]]
    maps = [np.array(s["maps"]) for s in stages]
    assert [m.shape for m in maps] == [(32, 28, 28), (16, 14, 14), (16, 7, 7)]
    for m in maps:
        assert m.min() >= 0 and m.max() == 255
    # the same channels, in the same order, as the library picks for this image
    from mnist_cnn.anatomy import feature_maps, strongest_channels
    from mnist_cnn.preprocessing import to_mnist

    pre = to_mnist(test_digits[0][0] / 255.0)
    x = torch.from_numpy((pre.image[None, None] - 0.1307) / 0.3081).float()
    relu = {s.name: s.maps for s in feature_maps(real_run.model.cpu(), x)}["layer2.relu"]
    assert stages[1]["channels"] == strongest_channels(relu, 16).tolist()
    assert json.loads(app.request("GET", "/v1/model")[2])["features"] is True


def test_a_burst_of_concurrent_requests_all_succeed(served, test_digits):
    """16 clients at once, 20 requests each: every answer a 200, nearly all right."""
    images, labels = test_digits
    bodies = [multipart(png_bytes(images[i])) for i in range(64)]

    def client(k: int) -> list[tuple[int, bool]]:
        out = []
        for j in range(20):
            i = (k * 20 + j) % 64
            status, _, data = served.request("POST", "/v1/predict", *bodies[i])
            out.append((status, status == 200 and json.loads(data)["label"] == labels[i]))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 320
    assert all(status == 200 for status, _ in results)
    assert sum(ok for _, ok in results) >= 0.95 * 320


def test_serves_an_exported_onnx_model(exported, test_digits):
    images, labels = test_digits
    server = InProcess(str(exported / "model.onnx"))
    try:
        info = json.loads(server.request("GET", "/v1/model")[2])
        assert info["runtime"] == "onnxruntime" and info["parameters"] == 1_379_557
        assert info["classes"] == [str(d) for d in range(10)]
        assert info["features"] is False
        body, headers = multipart(png_bytes(images[0]))
        status, _, data = server.request("POST", "/v1/features", body, headers)
        assert status == 501 and "run directory" in json.loads(data)["error"]
        right = sum(post_png(server, images[i])[1]["label"] == labels[i] for i in range(10))
        assert right >= 9
    finally:
        server.stop()


def test_several_worker_processes_share_the_port(real_run, test_digits, tmp_path):
    images, labels = test_digits
    server = Server(str(real_run.run_dir), tmp_path / "workers.log", "--workers", "2")
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: post_png(server, images[i]), range(12)))
        assert all(status == 200 for status, _ in answers)
        assert sum(r["label"] == labels[i] for i, (_, r) in enumerate(answers)) >= 11
        server.request("GET", "/healthz")
        log = server.log.read_text()
        assert log.count('"POST /v1/predict" 200') == 12  # every worker logs its requests
    finally:
        server.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_cnn", "serve", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-run"], "no-such-run"),
        (["{run}", "--workers", "0"], "--workers"),
        (["{run}", "--port", "70000"], "--port"),
        (["{run}", "--max-body", "0"], "--max-body"),
        (["{run}", "--max-body", "nan"], "--max-body"),
        (["{run}", "--max-body", "inf"], "--max-body"),
        (["{run}", "--host", "no.such.host.invalid"], "--host"),
    ],
)
def test_bad_command_lines_are_one_line_errors(real_run, args, message):
    done = run_cli(*[a.format(run=real_run.run_dir) for a in args])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_a_taken_port_is_a_one_line_error(real_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        done = run_cli(str(real_run.run_dir), "--port", str(s.getsockname()[1]))
    assert done.returncode == 2
    assert "cannot listen" in done.stderr and "Traceback" not in done.stderr


def test_importing_the_service_package_imports_neither_fastapi_nor_torch():
    """`import mnist_cnn.serve` is light (the CLI's --help imports it); its names load on use."""
    code = (
        "import sys, mnist_cnn, mnist_cnn.serve\n"
        "print([m for m in ('fastapi', 'uvicorn', 'torch', 'onnxruntime') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr

    import mnist_cnn
    import mnist_cnn.serve
    from mnist_cnn.serve.app import create_app

    assert mnist_cnn.create_app is mnist_cnn.serve.create_app is create_app


def test_a_batch_waits_for_requests_being_preprocessed_and_no_longer(real_run, test_digits):
    """A request inside ``expecting()`` (its body in, its image being preprocessed) joins the
    batch being formed; a lone request's batch leaves at once, not after ``wait``."""
    from mnist_cnn.serve.batcher import Batcher

    predictor = served_predictor(str(real_run.run_dir))
    images = test_digits[0][:2].astype(np.float32) / 255

    async def scenario() -> tuple[list[int], float, np.ndarray]:
        sizes: list[int] = []
        batcher = Batcher(predictor, wait=30.0, on_batch=sizes.append)  # far beyond the test
        batcher.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.probabilities(images[0])  # nobody else on the way
        alone = loop.time() - start

        async def preprocessed_late():
            async with batcher.expecting():
                await asyncio.sleep(0.3)  # preprocessing while the first image waits
            return await batcher.probabilities(images[1])

        late = asyncio.create_task(preprocessed_late())
        await asyncio.sleep(0)  # the late request is expected before the first one queues
        probs = await asyncio.gather(batcher.probabilities(images[0]), late)
        with pytest.raises(ValueError):  # preprocessing failed: no longer expected
            async with batcher.expecting():
                raise ValueError
        assert batcher.pending == 0
        await batcher.stop()
        return sizes, alone, np.stack(probs)

    sizes, alone, probs = asyncio.run(scenario())
    assert sizes == [1, 2]  # the first image alone, then both in one forward pass
    assert alone < 10  # it did not wait the 30 s meant for requests on their way
    np.testing.assert_allclose(probs, predictor.probabilities(images), atol=1e-6)
