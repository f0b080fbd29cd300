"""`cdx serve`: the model behind HTTP on Ray Serve, with dynamic batching and a page to paint masks."""
from __future__ import annotations

from pathlib import Path

import click

from .options import backend_option, checkpoint_option


@click.command()
@checkpoint_option
@backend_option()
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None, help="Serve a given export/engine folder.")
@click.option("--device", default=None, help="cpu or cuda (torch and onnxruntime backends).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the HTTP server listens on (0.0.0.0: every one; Ray itself stays on 127.0.0.1). "
                   "A request's Host header must name it (on loopback: 127.0.0.1, localhost or [::1]; "
                   "on 0.0.0.0: any name).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True, help="Model replicas (one per GPU on a cluster).")
@click.option("--gpus-per-replica", type=float, default=0.0, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Requests batched into one call (1: dynamic batching off).")
@click.option("--batch-wait-ms", type=float, default=50.0, show_default=True,
              help="How long a batch waits for more requests.")
@click.option("--max-queued", type=int, default=64, show_default=True,
              help="Requests that may wait for a replica; more are answered 503 with Retry-After.")
@click.option("--max-steps", type=int, default=100, show_default=True, help="The most steps a request may ask for.")
@click.option("--address", default=None,
              help="Join the Ray cluster at this address (HOST:PORT of its head) instead of starting one.")
@click.option("--drain-timeout", type=click.FloatRange(0, 3600), default=120.0, show_default=True,
              help="On SIGINT or SIGTERM, how long to wait for the requests in flight (new ones get 503).")
@click.option("--verbose", is_flag=True, help="Also show Ray's and Serve's own output (the replicas' logs, access "
                                              "logs); by default one line per event of cdx serve's.")
def serve(checkpoint, backend, engine_dir, device, host, port, replicas, gpus_per_replica, max_batch, batch_wait_ms,
          max_queued, max_steps, address, drain_timeout, verbose):
    """Serve the model over HTTP (the page at /, the API at /v1) until SIGINT or SIGTERM, which drain it."""
    try:
        from ..serve.lifecycle import serve_forever
        from ..serve.options import ServeOptions
    except ModuleNotFoundError as e:
        from ..errors import CdxError

        raise CdxError(f"cdx serve needs the serve extra ({e.name} is missing): pip install -e \".[serve]\"") from None
    options = ServeOptions(checkpoint=str(checkpoint) if checkpoint else None, backend=backend, device=device,
                           engine_dir=str(engine_dir) if engine_dir else None, replicas=replicas,
                           gpus_per_replica=gpus_per_replica, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                           max_queued=max_queued, max_steps=max_steps)
    serve_forever(options, host, port, address, say=lambda msg: click.echo(msg, err=True), verbose=verbose,
                  drain_timeout_s=drain_timeout)


command = serve
