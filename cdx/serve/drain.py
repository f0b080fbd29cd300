"""How an ingress stops taking requests without dropping the ones it took (no Ray here).

`cdx serve` drains on SIGINT or SIGTERM: it closes the gate of every ingress (`Ingress.drain`), which from
then on answers each new HTTP request with 503 and Retry-After, waits until the requests the gate let in
have all been answered (`Ingress.in_flight` reaches 0), and only then shuts Serve and Ray down.

`GateMiddleware` is a plain ASGI middleware (no body buffering: the ingress still reads a body as it
streams, to refuse an over-long one early). Everything here runs on the ingress replica's event loop, so
the counter needs no lock."""
from __future__ import annotations

from typing import Awaitable, Callable

DRAIN_RETRY_AFTER_S = 5  # what a request refused while the server stops is told: retry (another replica, later)


class Gate:
    """Counts the HTTP requests in flight; once closed, lets no new one in."""

    def __init__(self):
        self.closed = False
        self.in_flight = 0

    def close(self) -> int:
        """Take no new request from now on; the number still in flight."""
        self.closed = True
        return self.in_flight

    def open(self) -> None:
        self.closed = False


class GateMiddleware:
    """ASGI: an HTTP request passes while the gate `gate_of()` gives is open (and is counted until its answer
    is sent); while it is closed, `refuse()` (an ASGI response) answers it instead. Other scopes (lifespan),
    and requests while there is no gate yet, pass untouched.

    The gate is looked up per request (the ingress replica's own, `Ingress.gate`), not held here: Serve
    copies a deployment class's module globals (cloudpickle), so a module-level gate would not be the one
    its methods close."""

    def __init__(self, app, gate_of: Callable[[], Gate | None], refuse: Callable[[], Callable[..., Awaitable[None]]]):
        self.app, self.gate_of, self.refuse = app, gate_of, refuse

    async def __call__(self, scope, receive, send):
        gate = self.gate_of() if scope.get("type") == "http" else None
        if gate is None:
            await self.app(scope, receive, send)
            return
        if gate.closed:
            await self.refuse()(scope, receive, send)
            return
        gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.in_flight -= 1
