"""The download path against a real HTTP server on 127.0.0.1: mirrors down, corrupt, good."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from processes import dead_pid

from mnist_cnn import MnistCnnError, fetch, get_dataset_info, load_dataset, verify_folder
from mnist_cnn.cli import main
from mnist_cnn.datasets import cache_dir
from mnist_cnn.files import temp_name_suffix

KINDS = ("good", "corrupt", "garbled", "short", "endless", "huge", "slow")


class Mirrors:
    """One server, several mirrors: /good/ serves the files, /corrupt/ serves valid gzip of the
    wrong bytes, /garbled/ damaged gzip, /short/ hangs up halfway, /endless/ streams zeros
    without a length until the client goes, /huge/ announces 10 GB, /slow/ serves the files
    in small pieces; every request is recorded."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        self.streamed: dict[str, int] = {}  # bytes sent by the endless and huge mirrors
        mirrors = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                mirrors.requests.append(self.path)
                kind, _, name = self.path.strip("/").partition("/")
                body = mirrors.files.get(name)
                if body is None or kind not in KINDS:
                    self.send_error(404)
                    return
                if kind in ("endless", "huge", "slow"):
                    self.stream(kind, body)
                    return
                if kind == "corrupt":
                    body = gzip.compress(b"not the file you are looking for")
                elif kind == "garbled":
                    body = body[:100] + bytes(len(body) - 100)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if kind == "short" else body)

            def stream(self, kind, body):
                self.send_response(200)
                if kind != "endless":
                    self.send_header("Content-Length", str(10**10 if kind == "huge" else len(body)))
                self.end_headers()
                try:
                    if kind == "slow":
                        for i in range(0, len(body), 1 << 16):
                            self.wfile.write(body[i : i + (1 << 16)])
                            time.sleep(0.002)
                        return
                    while True:  # until the client hangs up
                        mirrors.streamed[kind] = mirrors.streamed.get(kind, 0) + (1 << 16)
                        self.wfile.write(bytes(1 << 16))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, kind: str) -> str:
        return f"{self.base}/{kind}/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A mirror that is down: a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def mnist_mirrors(mnist_dir):
    folder = mnist_dir
    server = Mirrors({p.name: p.read_bytes() for p in folder.glob("*.gz")})
    yield server
    server.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_down_and_corrupt_mirrors_are_skipped_and_nothing_half_written(mnist_mirrors):
    info = get_dataset_info("mnist")
    mirrors = [closed_port_url(), mnist_mirrors.url("corrupt"), mnist_mirrors.url("good")]
    dest = fetch(info, mirrors=mirrors)
    assert dest == cache_dir("mnist")
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.gz_name for f in info.files.values())
    assert all(c.ok for c in verify_folder(info, dest))
    # every file was tried on the corrupt mirror before the good one
    assert sum(r.startswith("/corrupt/") for r in mnist_mirrors.requests) == 4
    assert sum(r.startswith("/good/") for r in mnist_mirrors.requests) == 4
    # a second fetch finds the files verified in the cache and downloads nothing
    before = len(mnist_mirrors.requests)
    fetch(info, mirrors=[mnist_mirrors.url("good")])
    assert len(mnist_mirrors.requests) == before


def test_all_mirrors_failing_leaves_the_cache_clean(mnist_mirrors, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_DATA", "")
    info = get_dataset_info("mnist")
    bad = [closed_port_url(), mnist_mirrors.url("corrupt"), mnist_mirrors.url("garbled"),
           mnist_mirrors.url("short"), mnist_mirrors.url("missing")]  # fmt: skip
    with pytest.raises(MnistCnnError) as err:
        fetch(info, mirrors=bad)
    message = str(err.value)
    assert "Connection refused" in message
    assert "sha256 mismatch" in message
    assert "unreadable" in message
    assert "connection closed after" in message or "IncompleteRead" in message
    assert "HTTP 404" in message
    assert "--data-dir" in message and str(cache_dir("mnist")) in message
    assert list(cache_dir("mnist").iterdir()) == []


def test_load_dataset_downloads_when_nothing_is_found(mnist_mirrors, monkeypatch):
    monkeypatch.delenv("MNIST_CNN_DATA", raising=False)
    monkeypatch.setenv("MNIST_CNN_MIRRORS", mnist_mirrors.url("good"))
    data = load_dataset("mnist")
    assert data.source == cache_dir("mnist")
    assert data.train_images.shape == (60000, 28, 28) and data.test_labels.shape == (10000,)
    assert leftovers(cache_dir("mnist")) == []


def test_cli_fetch_and_verify(mnist_mirrors, monkeypatch, capsys):
    monkeypatch.delenv("MNIST_CNN_DATA", raising=False)
    argv = ["data", "fetch", "--mirror", closed_port_url(), "--mirror", mnist_mirrors.url("good")]
    assert main(argv) == 0
    assert "downloaded and verified" in capsys.readouterr().out
    assert main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("sha256 ok") == 4
    # damage one cached file: verify says so and fails
    target = cache_dir("mnist") / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(b"not mnist"))
    assert main(["data", "verify"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out
    # fetching again replaces exactly the damaged file
    assert main(["data", "fetch", "--mirror", mnist_mirrors.url("good")]) == 0
    assert main(["data", "verify"]) == 0


def test_md5_only_datasets_verify_the_gz(tmp_path, monkeypatch):
    """KMNIST publishes only the MD5 of each .gz: a download is checked against it."""
    import hashlib

    from .conftest import write_dataset

    folder = write_dataset(tmp_path / "gen")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = get_dataset_info("kmnist")
    fake = type(real)(**{**real.__dict__, "files": {
        k: type(f)(f.name, None, hashlib.md5(files[f.gz_name]).hexdigest())
        for k, f in real.files.items()
    }})  # fmt: skip
    server = Mirrors(files)
    try:
        dest = fetch(fake, mirrors=[server.url("corrupt"), server.url("good")])
    finally:
        server.close()
    assert [c.detail for c in verify_folder(fake, dest)] == ["md5 ok"] * 4


def test_a_killed_download_leaves_nothing_that_counts(mnist_mirrors):
    info = get_dataset_info("mnist")
    dest = cache_dir("mnist")
    dest.mkdir(parents=True)
    (dest / f".train-images-idx3-ubyte.gz.x1y2{temp_name_suffix(dead_pid())}").write_bytes(b"x")
    fetch(info, mirrors=[mnist_mirrors.url("good")])
    assert leftovers(dest) == []
    assert (dest / "train-images-idx3-ubyte.gz").stat().st_mode & 0o044, "readable like any file"


def test_a_folder_of_one_dataset_is_not_taken_for_another(mnist_dir, tmp_path, capsys):
    # the family shares file names: MNIST's folder must not pass for Kuzushiji-MNIST
    from mnist_cnn.datasets import identify, locate

    assert identify(mnist_dir) == "mnist"
    assert locate(get_dataset_info("mnist"), mnist_dir) == mnist_dir
    assert locate(get_dataset_info("kmnist"), mnist_dir) is None
    assert main(["data", "list", "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"found: {mnist_dir} (verified)") == 1


def test_offline_error_lists_every_place_searched(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_CNN_MIRRORS", closed_port_url())
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--dataset", "kmnist", "--data-dir", str(empty), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for place in (empty / "kmnist", cache_dir("kmnist"), Path("/usr/share/datasets/kmnist")):
        assert str(place) in err
    assert "--data-dir" in err and "MNIST_CNN_DATA" in err


def test_an_endless_or_oversized_download_stops_at_the_files_known_size(mnist_mirrors):
    info = get_dataset_info("mnist")
    with pytest.raises(MnistCnnError) as err:
        fetch(info, mirrors=[mnist_mirrors.url("huge"), mnist_mirrors.url("endless")])
    message = str(err.value)
    limit = info.files["train-images"].max_gz_size
    assert f"announces 10,000,000,000 bytes, more than the {limit:,}" in message
    assert f"sent more than the {limit:,} bytes train-images-idx3-ubyte.gz can be" in message
    assert limit < 48_000_000  # the decompressed file is 47,040,016 bytes
    assert list(cache_dir("mnist").iterdir()) == [], "nothing kept, no lock left"


def test_two_fetches_into_one_cache_do_not_undo_each_other(mnist_mirrors):
    """The second waits for the first (a lock), then finds every file verified in place."""
    info = get_dataset_info("mnist")
    errors = []

    def first():
        try:
            fetch(info, mirrors=[mnist_mirrors.url("slow")])
        except Exception as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    while not mnist_mirrors.requests:  # the first holds the lock once it asks for a file
        time.sleep(0.01)
    fetch(info, mirrors=[mnist_mirrors.url("good")])
    thread.join()
    assert errors == []
    assert not any(r.startswith("/good/") for r in mnist_mirrors.requests), "nothing fetched twice"
    assert all(c.ok for c in verify_folder(info, cache_dir("mnist")))
    assert leftovers(cache_dir("mnist")) == []
