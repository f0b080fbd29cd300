"""Dynamic batching without Ray: which queued jobs share a pipeline call, and how a call's output is split
back per job. The model deployment (model.py) feeds it the lists `@serve.batch` collects."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..sampling.request import Request, concat_requests
from ..errors import CdxError

log = logging.getLogger("cdx.serve")


@dataclass
class Job:
    """One HTTP request, validated: what the ingress sends a model replica."""

    request: Request
    guidance: Mapping[str, float] | None = None  # None: the model's own scales
    sent: float = field(default_factory=time.time)  # when the ingress sent it (queue time)

    def key(self) -> tuple:
        """Jobs with equal keys can run as one call: same modalities, steps, sampler, eta, shaping, influence
        (the request's compatible_key) and same guidance."""
        return self.request.compatible_key(), tuple(sorted((self.guidance or {}).items()))


@dataclass
class Reply:
    """A job's part of a call's output, or the one-line reason it failed."""

    arrays: np.ndarray | None = None  # (b, H, W, 3) uint8
    seeds: list[int] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    timesteps: np.ndarray | None = None  # (N,)
    influence: np.ndarray | None = None  # (N, M, b, h, w) float32, when asked
    timings: dict[str, float] = field(default_factory=dict)  # the call's encode/loop/decode ms, queue_ms
    backend: str = ""
    call_items: int = 0  # images in the call this job ran in (its dynamic batch)
    error: str | None = None
    user_error: bool = True  # the error is the request's (4xx), not the server's (5xx)


def plan_calls(jobs: list[Job], max_items: int) -> list[list[int]]:
    """Indices of `jobs` grouped into calls: compatible jobs in arrival order, at most max_items images a
    call (a job larger than that runs alone)."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, job in enumerate(jobs):
        calls = groups.setdefault(job.key(), [[]])
        size = sum(jobs[j].request.batch for j in calls[-1])
        if calls[-1] and size + job.request.batch > max_items:
            calls.append([])
        calls[-1].append(i)
    return [c for calls in groups.values() for c in calls]


def split_output(out, jobs: list[Job], started: float) -> list[Reply]:
    """Cut one call's Output back into a Reply per job, by each job's batch."""
    replies, at = [], 0
    total = sum(j.request.batch for j in jobs)
    for job in jobs:
        b = job.request.batch
        influence = None if out.influence is None else out.influence[:, :, at:at + b]
        timings = dict(out.timings, queue_ms=max(0.0, (started - job.sent) * 1000))
        replies.append(Reply(arrays=out.arrays[at:at + b], seeds=list(out.seeds[at:at + b]),
                             modalities=list(out.modalities), timesteps=np.asarray(out.timesteps),
                             influence=influence, timings=timings, backend=out.backend, call_items=total))
        at += b
    return replies


def run_jobs(pipe, jobs: list[Job], max_items: int, allow_guidance=lambda g: True) -> list[Reply]:
    """Run a list of jobs as few pipeline calls as their keys allow; a reply per job, in order. A call that
    fails fails only its own jobs, each with one line (a bad request's CdxError, or 'internal error')."""
    replies: list[Reply | None] = [None] * len(jobs)
    for call in plan_calls(jobs, max_items):
        group = [jobs[i] for i in call]
        started = time.time()
        try:
            if not allow_guidance(group[0].guidance):
                raise CdxError("this server already keeps runners for as many guidance settings as it allows; "
                               "use the model's guidance or one already in use")
            req = group[0].request if len(group) == 1 else concat_requests(j.request for j in group)
            out = pipe.generate(req, guidance=group[0].guidance)
            parts = split_output(out, group, started)
        except CdxError as e:
            parts = [Reply(error=" ".join(str(e).split()))] * len(group)
        except Exception as e:  # noqa: BLE001 - a bug must not take the other calls of the batch with it
            log.exception("a pipeline call of %d job(s) failed", len(group))
            parts = [Reply(error=f"internal error: {type(e).__name__}", user_error=False)] * len(group)
        for i, part in zip(call, parts):
            replies[i] = part
    return replies  # type: ignore[return-value]
