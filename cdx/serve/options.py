"""What a cdx server is started with: one frozen dataclass, passed to both deployments as a plain dict."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..errors import InputError


@dataclass(frozen=True)
class ServeOptions:
    """The model, how requests are batched, and the limits a request must keep."""

    checkpoint: str | None = None  # bundle folder; None: the shipped model
    backend: str = "auto"
    device: str | None = None
    engine_dir: str | None = None
    replicas: int = 1
    cpus_per_replica: float = 1.0  # Ray's logical CPUs a model replica claims
    gpus_per_replica: float = 0.0
    max_batch: int = 8  # requests that @serve.batch collects into one call (1: batching off)
    batch_wait_ms: float = 50.0  # how long a batch waits for more requests once it has one (docs/serving.md)
    max_items: int = 16  # images one pipeline call may hold (requests are split into calls by it)
    max_queued: int = 64  # requests waiting at the ingress for a replica; more get 503
    max_request_batch: int = 4  # images one HTTP request may ask for
    max_steps: int = 100
    max_body_bytes: int = 4 << 20
    max_mask_side: int = 2048  # pixels, either side of a mask PNG
    max_text_chars: int = 4096  # characters of a caption (the shipped text encoder reads 75 tokens)
    max_guidance_sets: int = 4  # distinct guidance settings a replica keeps runners for (each is an export)
    # a 1-step call of every size a call can have (OpenVINO: one compile each), in the background once the
    # replica is ready (model.py); False: each size is compiled on its first use
    warm: bool = True
    # the names the Host header may carry ("*": any); None: any, except under `cdx serve` (local.start), which
    # sets the names of its --host (security.served_hosts: the loopback names for 127.0.0.1)
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self):
        ints = {"replicas": (1, 1024), "max_batch": (1, 256), "max_items": (1, 4096), "max_queued": (1, 1 << 20),
                "max_request_batch": (1, 4096), "max_steps": (1, 1000), "max_body_bytes": (1024, 1 << 30),
                "max_mask_side": (32, 16384), "max_guidance_sets": (1, 64),
                "max_text_chars": (1, 1 << 20)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"serve option {name} {v!r}: expected an integer in {lo}..{hi}")
        for name, (lo, hi) in {"batch_wait_ms": (0, 10_000), "cpus_per_replica": (0, 1024),
                               "gpus_per_replica": (0, 64)}.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"serve option {name} {v!r}: expected a number in {lo}..{hi}")
        hosts = self.allowed_hosts
        if hosts is not None:
            if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)) or not hosts or not all(
                    isinstance(h, str) and h.strip() and not any(c.isspace() for c in h) for h in hosts):
                raise InputError(f"serve option allowed_hosts {hosts!r}: expected a list of host names "
                                 "(\"*\": any)")
            object.__setattr__(self, "allowed_hosts", tuple(hosts))
        if self.max_request_batch > self.max_items:
            raise InputError(f"serve option max_request_batch {self.max_request_batch} exceeds max_items "
                             f"{self.max_items}: a request must fit in one call")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ServeOptions":
        """From a Serve config file's `args` (or `to_dict`); an unknown key is a one-line error."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"serve option {unknown[0]!r} is unknown; the options are {', '.join(sorted(known))}")
        return cls(**d)
