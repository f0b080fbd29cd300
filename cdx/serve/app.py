"""The cdx Serve application: an ingress bound to a model deployment, both configured from ServeOptions.

`build_app(options)` is what `cdx serve` runs; `app_builder` is the same for `serve run` / `serve deploy`
with a config file (deploy/serve.yaml: `import_path: cdx.serve.app:app_builder`, options under `args`)."""
from __future__ import annotations

from typing import Any, Mapping

from ray.serve import Application

from .ingress import Ingress
from .model import Model
from .options import ServeOptions


def build_app(options: ServeOptions) -> Application:
    o = options.to_dict()
    # Backpressure is Serve's own: a replica holds at most two batches (the one running and the next one
    # forming); beyond that requests wait at the ingress's handle, at most max_queued of them, and the
    # next one raises BackPressureError, which the ingress answers with 503 and Retry-After.
    model = Model.options(
        num_replicas=options.replicas,
        max_ongoing_requests=2 * options.max_batch,
        max_queued_requests=options.max_queued,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
    ).bind(o)
    # the ingress takes every request it is sent (so that the model's queue, not the proxy's, says 503)
    ingress = Ingress.options(max_ongoing_requests=options.max_queued + 2 * options.max_batch * options.replicas + 64)
    return ingress.bind(model, o)


def app_builder(args: Mapping[str, Any] | None = None) -> Application:
    """For Serve config files: `args` are ServeOptions fields (unknown ones are refused in one line)."""
    return build_app(ServeOptions.from_dict(args))
