"""Run the cdx app on Ray Serve from one process: a local Ray instance (or the cluster at `address`), the
HTTP proxy on host:port, the app deployed and ready, then serve until interrupted and shut down cleanly."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

from ..errors import CdxError, InputError
from .options import ServeOptions

APP_NAME = "cdx"


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port that something already listens on (Serve's proxy would only log it)."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: expected 1..65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's server does (TIME_WAIT is fine)
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"{host}:{port}: cannot listen there ({e.strerror}); choose another --port "
                             "or --host") from None


def start(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          ray_init: dict | None = None, say: Callable[[str], None] = print) -> str:
    """Start (or join) Ray, start Serve's proxy on host:port and deploy the app; return its URL once every
    replica is ready (warm-up included)."""
    if address is None:
        check_port_free(host, port)
        # A local instance talks over the loopback address only. Ray replaces 127.0.0.1 in
        # _node_ip_address by the machine's routable address; this flag (off by default for one-machine
        # instances on macOS and Windows) makes every Ray process bind and dial 127.0.0.1 instead. Ray reads
        # it when imported, so it is set before the import (a process that imported Ray already keeps its own).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, logging_level="WARNING")
        kwargs.update(ray_init or {})
        ray.init(address=address, **kwargs)
        say(f"ray: {'joined the cluster' if address else 'started a local instance'} at "
            f"{ray.get_runtime_context().gcs_address}")
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    say(f"deploying {options.replicas} model replica(s) (max batch {options.max_batch}, wait "
        f"{options.batch_wait_ms:g} ms); the first start exports the model, which takes minutes on a CPU")
    try:
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
    except Exception as e:  # noqa: BLE001 - Serve reports a replica that failed to start as a RuntimeError
        raise CdxError(f"the app did not start: {' '.join(str(e).split())[:400]}") from None
    return f"http://{host}:{port}/"


def stop(local: bool) -> None:
    """Remove the app; a Ray instance this process started is shut down with it (a cluster is left running)."""
    import ray
    from ray import serve

    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def serve_forever(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  say: Callable[[str], None] = print) -> None:
    """`cdx serve`: start, print the URL, serve until Ctrl-C (or SIGTERM), then stop cleanly."""
    import signal

    def term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, term)
    try:
        url = start(options, host, port, address, say=say)
        say(f"serving {url} (the page), {url}v1/generate (the API); Ctrl-C stops")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        stop(local=address is None)
        say("stopped")
