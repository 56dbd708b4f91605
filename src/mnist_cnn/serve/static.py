"""The drawing page and its files, served from the package (no CDN: the page works offline)."""

from __future__ import annotations

from importlib import resources

from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

FOLDER = resources.files("mnist_cnn") / "static"  # shipped as package data


def add_page(app) -> None:
    """``/`` (the page) and ``/static/...`` (its script and style) on ``app``."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(str(FOLDER / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(FOLDER)), name="static")
