"""The image pool: real worker processes, one of which really dies on a poison image."""

from __future__ import annotations

import asyncio
import os
import time

from streamcap.downloader.imagepool import ImagePool
from streamcap.downloader.imageproc import ImageOptions, ProcessedImage, Rejection, process_image
from tests.support.images import jpeg_bytes

POISON = b"POISON"
STUCK = b"STUCK"


def die_on_poison(data: bytes, opts: ImageOptions) -> ProcessedImage | Rejection:
    """process_image, except that the worker process exits hard on the poison bytes."""
    if data == POISON:
        os._exit(139)  # what a segfaulting decoder looks like from outside
    if data == STUCK:
        time.sleep(3600)  # a decoder caught in a loop
    return process_image(data, opts)


async def test_images_are_processed_in_worker_processes():
    pool = ImagePool(ImageOptions(), workers=2)
    try:
        results = await asyncio.gather(*(pool.process(jpeg_bytes(320, 240, seed=i)) for i in range(6)))
        assert all(isinstance(r, ProcessedImage) and (r.width, r.height) == (341, 256) for r in results)
        assert isinstance(await pool.process(b"<html>"), Rejection)
        assert pool.crashes == 0
    finally:
        pool.close()


async def test_a_row_that_kills_its_worker_is_a_processing_crash_and_the_pool_recovers():
    pool = ImagePool(ImageOptions(), workers=2, process_fn=die_on_poison)
    try:
        inputs = [jpeg_bytes(320, 240, seed=i) for i in range(5)]
        inputs.insert(2, POISON)
        results = await asyncio.gather(*(pool.process(data) for data in inputs))
        assert results[2] == Rejection("processing_crash", "the image worker process died on this image")
        innocent = results[:2] + results[3:]
        assert all(isinstance(r, ProcessedImage) for r in innocent), innocent
        assert pool.crashes >= 1
        again = await pool.process(jpeg_bytes(320, 240, seed=9))  # the pool works after the crash
        assert isinstance(again, ProcessedImage)
    finally:
        pool.close()


async def test_a_stuck_worker_is_killed_and_its_row_is_a_processing_crash():
    pool = ImagePool(ImageOptions(), workers=1, process_fn=die_on_poison, timeout_s=2.0)

    async def queued_behind() -> ProcessedImage | Rejection:
        await asyncio.sleep(1.0)  # its own clock runs out after the stuck one's: no tie
        return await pool.process(jpeg_bytes(320, 240))

    try:
        stuck, innocent = await asyncio.gather(pool.process(STUCK), queued_behind())
        assert stuck == Rejection("processing_crash", "image processing took longer than 2 s")
        assert isinstance(innocent, ProcessedImage)  # queued behind the stuck one, retried alone
        assert isinstance(await pool.process(jpeg_bytes(320, 240, seed=3)), ProcessedImage)
    finally:
        pool.close()


def _booted_slowly(seconds: float):
    time.sleep(seconds)  # runs in the worker while it unpickles its process_fn: its boot
    return process_image


class SlowBoot:
    """A process_fn whose worker takes `seconds` to boot, like imports on a busy machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return _booted_slowly, (self.seconds,)


async def test_a_worker_s_boot_is_not_charged_to_the_first_image():
    # The image's clock starts once its worker is ready: a 3 s boot against a 1.5 s budget
    # used to reject an innocent image as "took longer than 1.5 s".
    pool = ImagePool(ImageOptions(), workers=1, process_fn=SlowBoot(3.0), timeout_s=1.5)
    try:
        assert isinstance(await pool.process(jpeg_bytes(320, 240)), ProcessedImage)
        assert pool.crashes == 0
    finally:
        pool.close()


def _never_boots(seconds: float):
    os._exit(3)  # an import that kills the interpreter


class NeverBoots(SlowBoot):
    def __reduce__(self):
        return _never_boots, (0.0,)


async def test_workers_that_die_before_they_are_ready_fail_the_images_instead_of_respawning_forever():
    pool = ImagePool(ImageOptions(), workers=1, process_fn=NeverBoots(0.0))
    try:
        result = await asyncio.wait_for(pool.process(jpeg_bytes(320, 240)), timeout=600)
        assert result == Rejection("processing_crash", "the image worker could not start")
    finally:
        pool.close()
