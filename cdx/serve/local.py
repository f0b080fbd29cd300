"""Run the cdx app on Ray Serve from one process: a local Ray instance (or the cluster at `address`), the
HTTP proxy on host:port, the app deployed and ready (`start`), and its removal (`stop`). `cdx serve` itself,
with its signals and its drain, is lifecycle.serve_forever.

A local instance is private to its user (docs/serving.md, "What listens where"): every Ray socket on the
loopback address (Ray's node address, GCS, raylet, agents, workers; the replicas' gRPC servers through
security.loopback_replica_grpc), no dashboard, Ray's files in a fresh folder only its owner can enter,
created under umask 077 (the processes Ray starts inherit it), and Ray's token file owner-only."""
from __future__ import annotations

import dataclasses
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import CdxError
from .logs import QUIET_ENV, failure_line, quiet_driver, ray_init_options, serve_logging
from .options import ServeOptions
from .preflight import CONNECT_TIMEOUT_S, check_port_free, preflight  # noqa: F401 - check_port_free: callers
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


def url_of(host: str, port: int) -> str:
    """The server's URL (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def start_ray(address: str | None = None, ray_init: dict | None = None, say: Callable[[str], None] = print,
              verbose: bool = False) -> None:
    """Start a local Ray instance (address None: loopback only, private files) or join the cluster at
    `address` (a bounded wait: preflight.wait_for_cluster first, then CONNECT_TIMEOUT_S for Ray itself)."""
    local = address is None
    if local:
        # before Ray is imported (a process that imported Ray already keeps what it read: checked below)
        os.environ.update(LOCAL_ENV)
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
            say(f"ray: RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: Ray's ports take requests without a token, "
                "so any user of this machine can run code as you through them")
    os.environ.update(QUIET_ENV)
    import ray

    if ray.is_initialized():
        return
    make_token_private(say)
    kwargs = dict(include_dashboard=False, **ray_init_options(verbose))
    if local:
        root = private_temp_dir()
        kwargs.update(dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", _temp_dir=str(root / "ray"))
    kwargs.update(ray_init or {})
    umask = os.umask(0o077)  # Ray's files, its token, and every process it starts (they inherit it)
    watchdog = None if local else _connect_watchdog(address, say)
    try:
        ray.init(address=address, **kwargs)
    finally:
        os.umask(umask)
        if watchdog is not None:
            watchdog.cancel()
    quiet_driver(verbose)
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


def _connect_watchdog(address: str, say: Callable[[str], None]):
    """Ray retries a cluster that does not answer as one forever, inside C++ that no signal interrupts:
    after CONNECT_TIMEOUT_S this says so in one line and ends the process (it started nothing)."""
    import threading

    def give_up():
        say(f"error: --address {address}: Ray did not connect within {CONNECT_TIMEOUT_S:g} s (is it a Ray "
            "cluster's head, and does it take this machine's token?)")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    timer.daemon = True
    timer.start()
    return timer


def deploy(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, local: bool = True,
           say: Callable[[str], None] = print, verbose: bool = False) -> str:
    """Start Serve's proxy on host:port and deploy the app on the Ray this process is connected to; return
    its URL once /healthz answers 200 (a local server) or the app runs (a cluster)."""
    from ray import serve

    from .app import build_app

    if options.allowed_hosts is None:
        options = dataclasses.replace(options, allowed_hosts=served_hosts(host))
    quiet_driver(verbose)  # after Serve's import, which sets its logger's level
    serve.start(http_options={"host": host, "port": port}, logging_config=serve_logging(verbose))
    say(f"deploying {options.replicas} model replica(s) (max batch {options.max_batch}, wait "
        f"{options.batch_wait_ms:g} ms); the first start exports the model, which takes minutes on a CPU")
    try:
        serve.run(build_app(options), name=APP_NAME, route_prefix="/", logging_config=serve_logging(verbose))
    except Exception as e:  # noqa: BLE001 - Serve reports a replica that failed to start as a RuntimeError
        raise CdxError(f"the app did not start: {failure_line(_deployment_messages() or str(e))}") from None
    if local:
        wait_until_healthy(host, port)
    return url_of(host, port)


def _deployment_messages() -> str:
    """What Serve says of the app's deployments that failed (a replica's traceback among it), else ''."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
        return "\n".join(str(d.message or "") for d in (app.deployments.values() if app else ())
                         if "HEALTHY" != str(getattr(d.status, "value", d.status)))
    except Exception:  # noqa: BLE001 - Serve's own message will do
        return ""


def wait_until_healthy(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Poll GET /healthz on the proxy (no HTTP proxy of the environment's) until it answers 200."""
    import urllib.error
    import urllib.request

    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(url_of(probe, port) + "healthz", timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(getattr(e, "reason", None) or e)
        time.sleep(0.2)
    raise CdxError(f"the app runs but {url_of(probe, port)}healthz did not answer 200 within {timeout_s:g} s "
                   f"({last})")


def start(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          ray_init: dict | None = None, say: Callable[[str], None] = print, verbose: bool = False) -> str:
    """Check the options (preflight.py), start (or join) Ray, start Serve's proxy on host:port and deploy the
    app; return its URL once it is ready."""
    preflight(options, host, port, address)
    start_ray(address, ray_init, say, verbose)
    return deploy(options, host, port, address is None, say, verbose)


def stop(local: bool) -> None:
    """Remove the app; a Ray instance this process started is shut down with it (a cluster is left running)."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
    finally:
        ray.shutdown()
