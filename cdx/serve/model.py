"""The model deployment: one `cdx.Pipeline` per replica; `@serve.batch` collects the jobs, and `run_jobs`
turns them into as few pipeline calls as their keys allow.

`@serve.batch` forms its next batch as soon as requests arrive, also while a call runs: the batch then
holds only what came within `batch_wait_ms` of its first request, and the rest of the requests that wait
for that call end up in further, small batches (calls of 2-5 images with 8 clients waiting, measured).
So the replica lets requests into the batch queue only while no call runs: when a call ends, everything
that waited for it enters at once and forms one full batch."""
from __future__ import annotations

import asyncio
import logging

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
        if o.warm:  # export on first use, sessions, and (OpenVINO) one compile per batch size: now, not in a
            warm = _warm_conditions(self.pipe.cfg)  # user's request; every call size the batching can form
            for b in range(1, min(o.max_items, o.max_batch * o.max_request_batch) + 1):
                self.pipe(**warm, steps=1, batch=b)
        self.generate_batch.set_max_batch_size(o.max_batch)
        self.generate_batch.set_batch_wait_timeout_s(o.batch_wait_ms / 1000)
        log.info("model replica ready: %s", self.pipe.description)

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
            return await asyncio.to_thread(run_jobs, self.pipe, jobs, self.options.max_items, self._allow_guidance)
        finally:
            self.free.set()

    async def generate(self, job: Job) -> Reply:
        await self.free.wait()
        return await self.generate_batch(job)


def _warm_conditions(cfg) -> dict:
    """A caption and an all-background mask for the model's text and mask modalities (whichever it has)."""
    import numpy as np

    kinds = {m.kind for m in cfg.modalities}
    warm = {"text": "a face", "mask": np.zeros((32, 32), np.uint8)}
    return {k: v for k, v in warm.items() if k in kinds}
