"""The micro-batcher: single images queued by concurrent requests, run through the model
together, one forward pass per batch."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import numpy as np

from ..defaults import SERVE_BATCH_WAIT as DEFAULT_BATCH_WAIT
from ..defaults import SERVE_MAX_BATCH as DEFAULT_MAX_BATCH

log = logging.getLogger("mnist_cnn.serve")


class Batcher:
    """Runs queued single images through the model together, one forward pass per batch.

    A batch waits (up to ``wait`` seconds) for more images only while some request is
    :meth:`expecting` the model: its body is in and it is being preprocessed. Otherwise the
    batch runs at once, so that a lone request never waits for company that is not coming.
    """

    def __init__(
        self,
        predictor,
        max_batch: int = DEFAULT_MAX_BATCH,
        wait: float = DEFAULT_BATCH_WAIT,
        on_batch=lambda size: None,
    ):
        self.predictor, self.max_batch, self.wait = predictor, max_batch, wait
        self.on_batch = on_batch  # told each batch's size
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0  # requests inside expecting(): about to queue an image
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._ended)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _ended(self, task: asyncio.Task) -> None:
        """If the loop ever stops, no request may wait for it forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the model worker stopped", exc_info=task.exception())
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the model worker stopped"))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    @asynccontextmanager
    async def expecting(self):
        """Around the work between a request's body arriving and its image being queued
        (preprocessing): batches forming meanwhile wait for it. Queue the image right after
        the block, with no ``await`` in between, so that no batch leaves without it."""
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def probabilities(self, image: np.ndarray) -> np.ndarray:
        if not self.alive():
            raise RuntimeError("the model worker stopped")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            images = np.stack([image for image, _ in batch])
            self.on_batch(len(batch))
            try:
                # On the event loop, not in a thread: a thread would fight the loop for the GIL
                # between every layer (measured: a third less throughput, twice the p99), and
                # while the loop is busy here the next batch simply piles up.
                probs = self.predictor.probabilities(images)
            except Exception as e:  # never leave a request waiting forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), p in zip(batch, probs, strict=True):
                if not future.done():
                    future.set_result(p)

    async def _next_batch(self) -> list:
        """What is queued, once the first image is: more while requests are on the way, up to
        ``max_batch`` and ``wait``; without the images whose clients are gone."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0 or self.pending == 0:  # nobody else is on the way
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except (TimeoutError, asyncio.TimeoutError):  # two classes before Python 3.11
                break
        return [(image, f) for image, f in batch if not f.done()]  # clients gone
