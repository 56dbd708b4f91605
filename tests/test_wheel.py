"""The package as users get it: the sdist and wheel built, the wheel installed in a fresh venv.

The fresh environment sees the test environment's dependencies (torch and the rest, so nothing
is downloaded) through a .pth line naming their folder; a plain .pth line adds that folder
only, so the checkout's editable hook in it is never run, and the test checks that mnist_cnn
is imported from the wheel.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mnist_cnn import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
STATIC = {"index.html", "app.js", "style.css"}


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """sdist, then the wheel built from the sdist (python -m build's default), no network."""
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT)
    return dist


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv with the wheel (and its serve extra) installed; returns its bin folder."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False, symlinks=True)
    python = home / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (wheel,) = built.glob("*.whl")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-index",
        f"{wheel}[serve,tensorboard]", cwd=home)  # fmt: skip
    return home / "bin"


def test_the_wheel_and_sdist_carry_the_license_the_page_and_the_type_marker(built):
    (wheel,) = built.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"mnist_cnn/static/{n}" for n in STATIC} <= set(names)
    assert "mnist_cnn/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode()
    (sdist,) = built.glob("*.tar.gz")
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/mnist_cnn/py.typed"} <= members


def test_the_installed_wheel_runs_without_the_checkout(installed, tiny_data, tmp_path):
    python, cli = installed / "python", installed / "mnist-cnn"
    where = run(python, "-c", "import mnist_cnn; print(mnist_cnn.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout
    assert "usage: mnist-cnn" in run(cli, "--help", cwd=tmp_path).stdout
    assert "1,379,557" in run(python, "-m", "mnist_cnn", "summary", cwd=tmp_path).stdout
    out = tmp_path / "runs"
    train(TrainConfig(data_dir=str(tiny_data), out=str(out), name="small", epochs=1))
    image = tmp_path / "one.png"
    drawing = Image.new("L", (60, 60), 255)  # a dark stroke on white paper: a "1"
    ImageDraw.Draw(drawing).line([(30, 8), (30, 52)], fill=0, width=5)
    drawing.save(image)
    predicted = run(cli, "predict", out / "small", image, "--json", cwd=tmp_path).stdout
    assert json.loads(predicted)["class"] in [str(d) for d in range(10)]
    served = subprocess.Popen([cli, "serve", out / "small", "--port", "0"], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = _listening(served)
        with urllib.request.urlopen(url + "/", timeout=30) as page:
            assert page.status == 200 and "<canvas" in page.read().decode()
        with urllib.request.urlopen(url + "/static/app.js", timeout=30) as script:
            assert script.status == 200
    finally:
        served.terminate()
        served.wait(15)


def _listening(process: subprocess.Popen) -> str:
    """The URL `mnist-cnn serve` says it listens on (read from its log on stderr)."""
    for line in process.stderr:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"the server exited with {process.wait()}")
