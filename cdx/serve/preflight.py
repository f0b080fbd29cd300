"""What `cdx serve` checks before it starts or joins Ray (no Ray here): a bad option is one `InputError` line
(the command line's `error: ...`, exit 2) and no Ray process is started.

- `--port` in 1..65535 and, for a local instance, free on `--host`; `--host` an address of this machine;
- the model: `--checkpoint` / `--engine-dir` readable as a bundle or an export (its manifest alone), and for
  a local instance the backend usable here;
- `--address`: something listens there, waited for at most `CONNECT_TIMEOUT_S` (Ray itself would retry
  forever)."""
from __future__ import annotations

import errno
import socket
import time

from ..errors import InputError
from .options import ServeOptions

CONNECT_TIMEOUT_S = 20.0  # how long `--address` may take to answer (a head node that is still starting)


def check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"--port {port}: expected 1..65535")


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port something already listens on or a host that is not an address of this
    machine (Serve's proxy would only log either, in its own process, and never serve)."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {host}: not an address of this machine ({getattr(e, 'strerror', None) or e}); "
                         "use 127.0.0.1 (this machine only), 0.0.0.0 (every address) or one of its "
                         "addresses") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's server does (TIME_WAIT is fine)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"--port {port}: {host}:{port} is in use (something listens there); choose "
                                 "another --port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"--host {host}: not an address of this machine ({e.strerror}); use "
                                 "127.0.0.1 (this machine only), 0.0.0.0 (every address) or one of its "
                                 "addresses") from None
            raise InputError(f"{host}:{port}: cannot listen there ({e.strerror}); choose another --port "
                             "or --host") from None


def check_model(options: ServeOptions, local: bool) -> None:
    """The model the replicas will load is there (its manifest; nothing is loaded) and, for a local
    instance, its backend can run here."""
    from ..api import config_of

    config_of(options.checkpoint, options.engine_dir)  # CdxError naming the path: not a bundle, no export...
    if local:
        from pathlib import Path

        from ..backends import registry
        from ..defaults import default_checkpoint

        if options.device is not None:
            from ..devices import check_device

            check_device(options.device)
        ckpt, eng = (Path(p) if p is not None else None for p in (options.checkpoint, options.engine_dir))
        if ckpt is None and eng is None:
            ckpt = default_checkpoint()  # as Pipeline.load does
        registry.resolve_backend(options.backend, registry.BackendRequest(ckpt, eng, options.device))


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a `--address` HOST:PORT; None for what Ray resolves itself ('auto', a ray:// URL)."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--address {address}: expected HOST:PORT of a Ray cluster's head (its GCS, e.g. "
                         "10.0.0.5:6379), or auto")
    return host, int(port)


def wait_for_cluster(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Return once something accepts connections at `address`; after `timeout_s` of refusals, one line."""
    endpoint = cluster_endpoint(address)
    if endpoint is None:
        return
    deadline, why = time.monotonic() + timeout_s, ""
    while True:
        try:
            with socket.create_connection(endpoint, timeout=max(0.5, min(3.0, deadline - time.monotonic()))):
                return
        except socket.gaierror as e:
            raise InputError(f"--address {address}: unknown host ({e.strerror})") from None
        except OSError as e:
            why = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise InputError(f"--address {address}: no Ray cluster answers there ({why}) after {timeout_s:g} s; "
                             "start one (ray start --head) or leave --address out for a local instance")
        time.sleep(0.5)


def preflight(options: ServeOptions, host: str, port: int, address: str | None) -> None:
    """Every check above: the cheap ones (port, host, the address's form) first, then the model, then the
    wait for the cluster."""
    if address is None:
        check_port_free(host, port)
    else:
        check_port(port)
        cluster_endpoint(address)
    check_model(options, local=address is None)
    if address is not None:
        wait_for_cluster(address)
