"""A request's image: a multipart upload or JSON pixels, read, checked and preprocessed.

Every client mistake is an :class:`ApiError` (415 for what is not an accepted image, 422 for
what is broken); large images are decoded in a small thread pool, so that they never stall
the event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np
from fastapi import Query, Request
from starlette.requests import ClientDisconnect

from ..preprocessing import (
    SIZE,
    ImageError,
    Preprocessed,
    UnsupportedImage,
    as_drawn,
    load_image,
    load_image_sized,
    open_image,
    to_mnist,
)

# Images up to this size are decoded and preprocessed on the event loop: at most ~10 ms of one
# core (a 300x512 PNG photo), which stalls the other connections less than handing it to a
# thread does, since the thread then contends for the GIL with the loop (measured with wrk, 16
# connections: photo crops p99 59-113 ms inline against 93-178 ms through the threads). Larger
# images (a phone photo: 10-100 ms) go to the threads, so that they never stall the loop.
INLINE_PIXELS = 512 * 512
ACCEPTED = "PNG, JPEG, GIF, BMP, WebP or TIFF"

# What /v1/predict and /v1/features take, for the OpenAPI docs (they read the body themselves,
# since one endpoint accepts two content types).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "pixels": {
                            "type": "array",
                            "description": "28 rows of 28 values in 0..255",
                            "items": {"type": "array", "items": {"type": "number"}},
                        }
                    },
                    "required": ["pixels"],
                }
            },
        },
    }
}

# ?as_drawn=true: the whole image shrunk to 28x28, not boxed and centred (the page's switch for
# watching what a moved digit does to the answer and the feature maps)
AS_DRAWN_STYLE = "as-drawn"
AS_DRAWN = Query(False, description="skip the box and centring: the whole image as 28x28")


class ApiError(Exception):
    """An answer other than 200: an HTTP status and one line saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Body:
    """A request's body, received whole: an upload's bytes, or the JSON text."""

    name: str | None  # the upload's file name; None for JSON
    data: bytes
    is_json: bool


class Inputs:
    """Reads requests' images for a service with these limits; owns the decoding threads."""

    def __init__(self, max_body: int, max_pixels: int, threads: int = 2):
        self.max_body, self.max_pixels = max_body, max_pixels
        self.workers = ThreadPoolExecutor(threads, thread_name_prefix="preprocess")

    def close(self) -> None:
        self.workers.shutdown(wait=False)

    async def receive(self, request: Request) -> Body:
        """The whole body: the multipart field ``file``, or JSON; 415 for anything else."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await _read_form(request, self.max_body)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, 'send the image as the multipart field "file"')
                return Body(upload.filename, await upload.read(), is_json=False)
            finally:
                await form.close()
        if kind == "application/json" or kind.endswith("+json"):
            return Body(None, await request.body(), is_json=True)
        raise ApiError(
            415,
            'send an image as multipart/form-data field "file", or JSON {"pixels": [[...]]}'
            + (f", not {kind}" if kind else ""),
        )

    async def preprocessed(self, body: Body, style: str) -> Preprocessed:
        """The body's image as the model's 28x28 input, preprocessed in ``style`` (a
        preprocessing style, or AS_DRAWN_STYLE: the whole image shrunk, no box, no centring)."""
        if body.is_json:
            return _to_mnist(parse_pixels(_json(body.data)), style)
        img = open_upload(body.data)
        # decoded and preprocessed in one go: a queued large upload holds only its bytes
        small = _inline(img)
        return await self.offload(_decode_and_preprocess, img, self.max_pixels, style, small=small)

    async def decoded(self, body: Body) -> tuple[np.ndarray, tuple[float, float], bool]:
        """The body's image only decoded, for reading a number: (grayscale image, the scale
        from its pixels to the upload's own, whether it is small)."""
        if body.is_json:
            return parse_pixels(_json(body.data)), (1.0, 1.0), True
        img = open_upload(body.data)
        small = _inline(img)
        gray, scale = await self.offload(_decode, img, self.max_pixels, small=small)
        return gray, scale, small

    async def offload(self, fn, *args, small: bool):
        """Small images inline (a thread hop costs more than the work, and contends for the
        GIL); large ones in the worker threads, so that they never stall the event loop."""
        if small:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)


def _inline(img) -> bool:
    """Whether an opened upload is small enough to decode on the event loop (INLINE_PIXELS)."""
    return img.width * img.height <= INLINE_PIXELS


def _json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(422, f"malformed JSON ({e})") from None
    except RecursionError:
        raise ApiError(422, "malformed JSON (nested too deeply)") from None


def open_upload(data: bytes):
    """An upload opened as an image, only its header read yet (so its size is known): 415 if
    it is not in one of the accepted formats, which is known before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(422, "the uploaded file is empty")
    try:
        return open_image(io.BytesIO(data))
    except (UnidentifiedImageError, UnsupportedImage):
        raise ApiError(
            415, f"the upload is not an image in an accepted format ({ACCEPTED})"
        ) from None
    except Image.DecompressionBombError:
        raise ApiError(422, "the image has too many pixels") from None
    except Exception as e:
        raise ApiError(422, f"the image cannot be read ({e})") from None


def decode_upload(img, max_pixels: int) -> np.ndarray:
    """An opened upload decoded as grayscale 0..1; 422 if it is too large or broken."""
    try:
        return load_image(img, max_pixels=max_pixels)
    except ImageError as e:
        raise ApiError(422, _strip_name(str(e))) from None


def _strip_name(message: str) -> str:
    return message.split(": ", 1)[1] if message.startswith("image: ") else message


def parse_pixels(payload) -> np.ndarray:
    """``{"pixels": 28 rows of 28 values in 0..255}`` as grayscale 0..1 (either polarity)."""
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(422, 'the JSON body must be an object with "pixels": 28 rows of 28 values')
    try:
        a = np.asarray(payload["pixels"])
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged rows, huge ints
        a = None
    if a is not None and a.dtype.kind not in "iuf":  # strings, booleans, objects
        a = None
    if a is not None:
        try:
            a = a.astype(np.float64)
        except OverflowError:
            a = None
    if a is None or a.shape != (SIZE, SIZE):
        raise ApiError(422, f'"pixels" must be {SIZE} rows of {SIZE} numbers')
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise ApiError(422, '"pixels" values must be between 0 and 255')
    return (a / 255.0).astype(np.float32)


async def _read_form(request: Request, max_body: int):
    """The multipart form, its files kept in memory (the body is at most ``max_body``): no
    temporary file is ever written, so none can be left behind by a client that stalls or
    hangs up."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async with aclosing(request.stream()) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=1, max_fields=10, max_part_size=max_body
        )
        parser.spool_max_size = max_body + 1  # never rolls over to a file on disk
        try:
            return await parser.parse()
        except ClientDisconnect:
            raise
        except MultiPartException as e:  # too many parts, a part too large
            raise ApiError(422, f"malformed multipart body ({e.message})") from None
        except Exception as e:  # python-multipart's own complaints about a malformed body
            raise ApiError(422, f"malformed multipart body ({_detail(e)})") from None


def _decode_and_preprocess(img, max_pixels: int, style: str) -> Preprocessed:
    with img:  # closed once decoded, whatever happens
        return _to_mnist(decode_upload(img, max_pixels), style)


def _decode(img, max_pixels: int) -> tuple[np.ndarray, tuple[float, float]]:
    """An upload decoded for reading a number (at most segment's WORK_SIDE pixels), and the
    scale from those pixels to the upload's own."""
    from ..segment import WORK_SIDE

    with img:
        try:
            gray, (w, h) = load_image_sized(img, max_pixels=max_pixels, side=WORK_SIDE)
        except ImageError as e:
            raise ApiError(422, _strip_name(str(e))) from None
    return gray, (w / gray.shape[1], h / gray.shape[0])


def _to_mnist(gray: np.ndarray, style: str) -> Preprocessed:
    try:
        return as_drawn(gray) if style == AS_DRAWN_STYLE else to_mnist(gray, style)
    except ImageError as e:
        raise ApiError(422, str(e)) from None


def _detail(e: Exception) -> str:
    return getattr(e, "detail", None) or str(e) or type(e).__name__
