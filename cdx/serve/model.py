"""The model deployment: one `cdx.Pipeline` per replica; `@serve.batch` collects the jobs, and `run_jobs`
turns them into as few pipeline calls as their keys allow.

`@serve.batch` forms its next batch as soon as requests arrive, also while a call runs: the batch then
holds only what came within `batch_wait_ms` of its first request, and the rest of the requests that wait
for that call end up in further, small batches (calls of 2-5 images with 8 clients waiting, measured).
So the replica lets requests into the batch queue only while no call runs: when a call ends, everything
that waited for it enters at once and forms one full batch.

A replica is ready once its model is loaded (on a new machine `Pipeline.load` makes the export first). The
warm-up, a 1-step call of every size a call can have (OpenVINO compiles each size once, static shapes),
runs after that in a thread, one size at a time and only while no request waits: a request waits at most
for the one warm-up call that is running, and a size not warmed yet is compiled on its first use."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from ray import serve

from .batching import Job, Reply, run_jobs
from .options import ServeOptions
from .security import loopback_replica_grpc

log = logging.getLogger("cdx.serve")


@serve.deployment(name="Model")
class Model:
    def __init__(self, options: dict):
        from ..api import Pipeline

        loopback_replica_grpc()  # before Serve starts this replica's gRPC server (after __init__)
        self.options = o = ServeOptions.from_dict(options)
        self.pipe = Pipeline.load(o.checkpoint, o.backend, o.device, None, o.engine_dir,
                                  progress=lambda msg: log.info("%s", msg))
        self.guidance_sets: set[tuple] = set()
        self.free = asyncio.Event()  # set while no pipeline call runs (the gate of the batch queue)
        self.free.set()
        self.calling = threading.Lock()  # one pipeline call at a time: a batch's or the warm-up's
        self.waiting = 0  # requests at this replica: the warm-up lets them go first
        self.generate_batch.set_max_batch_size(o.max_batch)
        self.generate_batch.set_batch_wait_timeout_s(o.batch_wait_ms / 1000)
        if o.warm:  # every call size the batching can form, once this replica is ready (module docstring)
            sizes = list(range(1, min(o.max_items, o.max_batch * o.max_request_batch) + 1))
            threading.Thread(target=self._warm, args=(sizes,), name="cdx-warm-up", daemon=True).start()
        log.info("model replica ready: %s", self.pipe.description)

    def _warm(self, sizes: list[int]) -> None:
        warm, started = _warm_conditions(self.pipe.cfg), time.monotonic()
        for b in sizes:
            while self.waiting:  # requests first
                time.sleep(0.05)
            with self.calling:
                try:
                    self.pipe(**warm, steps=1, batch=b)
                except Exception:  # noqa: BLE001 - logged; a request of that size says what is wrong
                    log.exception("warm-up call of %d image(s) failed", b)
                    return
        log.info("warm-up done: %d call sizes in %.1f s", len(sizes), time.monotonic() - started)

    def _run(self, jobs: list[Job]) -> list[Reply]:
        with self.calling:
            return run_jobs(self.pipe, jobs, self.options.max_items, self._allow_guidance)

    def describe(self) -> str:
        """The backend this replica runs on, in one line."""
        return self.pipe.description

    def _allow_guidance(self, guidance) -> bool:
        key = tuple(sorted((guidance or {}).items()))
        if key and key not in self.guidance_sets:
            if len(self.guidance_sets) >= self.options.max_guidance_sets:
                return False
            self.guidance_sets.add(key)
        return True

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # set from the options in __init__
    async def generate_batch(self, jobs: list[Job]) -> list[Reply]:
        # in a worker thread, so this replica's event loop keeps taking requests (they wait at the gate)
        self.free.clear()
        try:
            return await asyncio.to_thread(self._run, jobs)
        finally:
            self.free.set()

    async def generate(self, job: Job) -> Reply:
        self.waiting += 1
        try:
            await self.free.wait()
            return await self.generate_batch(job)
        finally:
            self.waiting -= 1


def _warm_conditions(cfg) -> dict:
    """A caption and an all-background mask for the model's text and mask modalities (whichever it has)."""
    import numpy as np

    kinds = {m.kind for m in cfg.modalities}
    warm = {"text": "a face", "mask": np.zeros((32, 32), np.uint8)}
    return {k: v for k, v in warm.items() if k in kinds}
