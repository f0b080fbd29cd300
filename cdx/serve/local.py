"""Run the cdx app on Ray Serve from one process: a local Ray instance (or the cluster at `address`), the
HTTP proxy on host:port, the app deployed and ready, then serve until interrupted and shut down cleanly.

A local instance is private to its user (docs/serving.md, "What listens where"): every Ray socket on the
loopback address (Ray's node address, GCS, raylet, agents, workers; the replicas' gRPC servers through
security.loopback_replica_grpc), no dashboard, Ray's files in a fresh folder only its owner can enter,
created under umask 077 (the processes Ray starts inherit it), and Ray's token file owner-only."""
from __future__ import annotations

import dataclasses
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import CdxError, InputError
from .options import ServeOptions
from .security import is_loopback, served_hosts

APP_NAME = "cdx"
# Read by Ray (and Serve) when imported, in this process and in every process a local instance starts:
# Ray's node address is 127.0.0.1 (on Linux Ray would replace a loopback _node_ip_address by the
# machine's routable address), and Serve starts no per-replica HTTP/gRPC ingress servers (direct ingress,
# HAProxy), which would listen on every interface.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
             "RAY_SERVE_ENABLE_HA_PROXY": "0"}


def private_temp_dir() -> Path:
    """A fresh folder for a local Ray instance's files (sockets, logs, session), 0700, under RAY_TMPDIR (or
    the system's temp folder). Ray's own folder is `ray` inside it: Ray makes the folders it creates 0777,
    this one keeps everyone else out of them."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="cdx-", dir=base))  # short: Ray's socket paths must fit 107 bytes
    os.chmod(root, 0o700)
    return root


def token_path() -> Path:
    """The file Ray reads its authentication token from (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def make_token_private(say: Callable[[str], None] = print) -> Path | None:
    """Make Ray's token file readable by its owner alone (Ray writes it with the umask's mode, 0644 by
    default, and whoever reads it can run code through Ray's ports); the path, or None when there is none."""
    path = token_path()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as e:
            raise CdxError(f"{path}: Ray's token file is readable by others (mode {mode:o}) and cannot be made "
                           f"private ({e.strerror}); chmod 600 it") from None
        say(f"ray: {path} was readable by others (mode {mode:o}); it is now 600")
    return path


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
    local = address is None
    if local:
        check_port_free(host, port)
        # before Ray is imported (a process that imported Ray already keeps what it read: checked below)
        os.environ.update(LOCAL_ENV)
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
            say(f"ray: RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: Ray's ports take requests without a token, "
                "so any user of this machine can run code as you through them")
    if options.allowed_hosts is None:
        options = dataclasses.replace(options, allowed_hosts=served_hosts(host))
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        make_token_private(say)
        if local:
            root = private_temp_dir()
            kwargs = dict(include_dashboard=False, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                          _temp_dir=str(root / "ray"), logging_level="WARNING")
        else:
            kwargs = dict(include_dashboard=False, logging_level="WARNING")
        kwargs.update(ray_init or {})
        umask = os.umask(0o077)  # Ray's files, its token, and every process it starts (they inherit it)
        try:
            ray.init(address=address, **kwargs)
        finally:
            os.umask(umask)
        gcs = ray.get_runtime_context().gcs_address
        if local:
            node = ray.util.get_node_ip_address()
            if not (is_loopback(node) and is_loopback(gcs.rpartition(":")[0])):
                ray.shutdown()
                raise CdxError(f"Ray started on {node} (GCS {gcs}), not on the loopback address: import cdx's "
                               "serve before Ray, or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
            say(f"ray: started a local instance at {gcs} (loopback only, files under {root} owner-only)")
        else:
            say(f"ray: joined the cluster at {gcs}")
        if (token := make_token_private(say)) is not None:
            say(f"ray: token in {token} (owner-only)")
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
