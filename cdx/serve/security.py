"""What keeps a cdx server to the clients it means to serve.

- HTTP (the ingress calls these; no Ray here): a POST must say `Content-Type: application/json`, so that a
  web page cannot send one as a CORS "simple request" (text/plain, form data) from a visitor's browser, and
  the Host header must name this server (the names `served_hosts` gives), so that a page on another site
  cannot reach a local server through a name it rebinds to 127.0.0.1.
- Ray Serve's replicas (`loopback_replica_grpc`, called in each replica before Serve starts its
  inter-deployment gRPC server): that server binds every interface ("[::]:0" in Ray Serve's replica.py, no
  option for it); on a node whose Ray address is loopback it binds that address instead.
"""
from __future__ import annotations

import ipaddress
import logging
import socket

log = logging.getLogger("cdx.serve")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ANY = "*"


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, ::ffff:127.x.y.z or localhost."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    ip = _ip(host)
    if ip is None:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def is_wildcard(host: str) -> bool:
    """0.0.0.0, :: or empty: every address of the machine."""
    ip = _ip(host) if host else None
    return not host or (ip is not None and ip.is_unspecified)


def _name(host: str) -> str:
    """A host as the Host header carries it: lower case, no trailing dot, an IPv6 address in brackets."""
    host = host.strip().lower().rstrip(".")
    ip = _ip(host)
    if ip is not None:
        return f"[{ip}]" if ip.version == 6 else str(ip)
    return host


def served_hosts(host: str) -> tuple[str, ...]:
    """The names a server listening on `host` (--host) answers to in the Host header: every name when it
    listens on every address (0.0.0.0, ::); the loopback names (and `host`) when on loopback; else `host`
    and this machine's name."""
    if is_wildcard(host):
        return (ANY,)
    names = [_name(host)]
    names += LOOPBACK_NAMES if is_loopback(host) else [_name(socket.gethostname())]
    return tuple(dict.fromkeys(names))


def host_of(header: str | None) -> str | None:
    """The name in a Host header ('127.0.0.1:8000', '[::1]:8000', 'Example.com.'), without the port; None
    for a malformed one."""
    if not header:
        return None
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1:] and not (header[end + 1] == ":" and header[end + 2:].isdigit())):
            return None
        ip = _ip(header[:end + 1])
        return f"[{ip}]" if ip is not None and ip.version == 6 else None
    name, sep, port = header.rpartition(":")
    if not sep:
        name = header
    elif not port.isdigit() or not name:
        return None
    if ":" in name or any(c.isspace() or c in "/\\@" for c in name):
        return None
    return _name(name)


def host_error(header: str | None, allowed) -> str | None:
    """None when the Host header names one of `allowed` (ANY: every name), else the one-line reason."""
    if allowed is None or ANY in allowed:
        return None
    name = host_of(header)
    if name is not None and name in {_name(a) for a in allowed}:
        return None
    shown = "no Host header" if header is None else f"Host {header[:100]!r}"
    return (f"{shown}: this server answers to {', '.join(allowed)} only (a page on another site cannot use "
            "it); listen on 0.0.0.0 or set allowed_hosts to serve other names")


def content_type_error(header: str | None, path: str) -> str | None:
    """None for `application/json` (with at most a charset parameter, UTF-8), else the one-line reason."""
    if header is None:
        return f"no Content-Type: {path} takes a JSON body with Content-Type: application/json"
    media, *params = [p.strip() for p in header.split(";")]
    if media.lower() != "application/json":
        return f"Content-Type {header[:100]!r}: {path} takes application/json only"
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() != "charset":
            return f"Content-Type {header[:100]!r}: the only parameter application/json takes here is charset"
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"Content-Type {header[:100]!r}: the body must be UTF-8 JSON"
    return None


def loopback_replica_grpc() -> bool:
    """In a Serve replica, before Serve starts its inter-deployment gRPC server: make it bind the node's
    loopback address instead of every interface, when the node's Ray address is loopback (a local
    `cdx serve`; Serve's routers dial node address:port, so nothing else changes). True when it is bound so.
    On a cluster node (a routable Ray address) Ray's own binding stays."""
    import ray

    try:
        node_ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - not in a Ray worker: nothing to bind
        return False
    if not is_loopback(node_ip):
        return False
    try:
        from ray.serve._private import replica
    except ImportError:
        replica = None
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None:  # Serve's internals changed: say so (tests/test_serve.py checks the sockets)
        log.warning("cannot bind Serve's replica gRPC server to %s: this Ray version has no "
                    "ray.serve._private.replica.add_port_to_grpc_server; it may listen on every interface", node_ip)
        return False
    if getattr(add_port, "cdx_loopback", False):
        return True
    ip = _ip(node_ip)
    host = "[::1]" if ip is not None and ip.version == 6 and ip.ipv4_mapped is None else "127.0.0.1"

    def loopback_add_port(server, address: str):
        head, sep, port = address.rpartition(":")
        if sep and is_wildcard(head.strip("[]")):
            address = f"{host}:{port}"
        return add_port(server, address)

    loopback_add_port.cdx_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback_add_port
    return True
