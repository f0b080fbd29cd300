"""`cdx serve` from start to exit: the options checked before Ray starts (preflight.py), Ray and the app
started (local.py), one line once /healthz answers, then serving until SIGINT or SIGTERM, a drain, and
Serve and Ray shut down with no process of theirs left behind.

Signals: SIGINT and SIGTERM both stop the server. The handlers are (re)installed after `ray.init`, which
replaces SIGTERM's with its own (`sys.exit`) and whose C++ core worker adds a stack dump on SIGTERM, and
SIGINT's is set explicitly, because `cdx serve &` in a non-interactive shell starts with SIGINT ignored.
While starting, a signal interrupts the start; while serving it starts the drain:

1. every ingress replica's gate closes (drain.py): a new request gets 503 with Retry-After;
2. the requests it took are answered (at most `drain_timeout_s`; a second signal stops waiting);
3. Serve and Ray shut down, and any process this one started that is still there after that (Ray's agents
   outlive a raylet that stops) is ended, TERM then KILL."""
from __future__ import annotations

import signal
import time
from typing import Callable

from .local import APP_NAME, deploy, start_ray, url_of  # noqa: F401 - url_of: for callers
from .options import ServeOptions
from .preflight import preflight

DRAIN_TIMEOUT_S = 120.0  # the longest a stop waits for the requests in flight
WATCH_EVERY_S = 2.0  # how often the model replicas' state is read while serving


class StopSignals:
    """SIGINT and SIGTERM ask the server to stop: while it starts (`interrupting`) they interrupt the start
    (KeyboardInterrupt); while it serves or stops they set `requested`; a second one sets `hurry`."""

    def __init__(self):
        self.requested = self.hurry = False
        self.interrupting = True
        self.name = ""

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (cdx embedded): the caller stops it
                return

    def _handle(self, signum, frame):
        if self.requested:
            self.hurry = True
            return
        self.requested, self.name = True, signal.Signals(signum).name
        if self.interrupting:
            raise KeyboardInterrupt


class ProcessTree:
    """The processes below this one (Ray's GCS, raylet, agents, workers), noted while they are there, so
    that any still running after Ray's shutdown can be ended: a raylet's agents outlive it (seen after a
    SIGTERM), re-parented where the tree no longer shows them."""

    def __init__(self):
        self.procs: dict[int, object] = {}

    def note(self) -> None:
        import psutil

        try:
            for p in psutil.Process().children(recursive=True):
                self.procs.setdefault(p.pid, p)
        except psutil.Error:
            pass

    def end_leftovers(self, grace_s: float = 5.0) -> int:
        """End what is left of the noted processes after `grace_s` (TERM, then KILL 3 s later); how many
        had to be."""
        left = _wait_gone(self.procs.values(), grace_s)
        for how in ("terminate", "kill"):
            for p in _wait_gone(left, 0 if how == "terminate" else 3.0):
                try:
                    getattr(p, how)()
                except Exception:  # noqa: BLE001 - gone meanwhile (psutil.NoSuchProcess) or not ours
                    pass
        return len(left)


def _wait_gone(procs, timeout_s: float) -> list:
    """The processes of `procs` still running (zombies are not) after waiting up to `timeout_s` for them."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in procs if _running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def serve_forever(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  say: Callable[[str], None] = print, verbose: bool = False,
                  drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """`cdx serve`: check, start, say `cdx serve: ready at URL`, serve until SIGINT or SIGTERM, drain, stop.
    A bad option or a failed start raises CdxError (one line) with nothing left running."""
    signals = StopSignals()
    signals.install()
    local = address is None
    preflight(options, host, port, address)  # InputError: nothing started
    tree, left = ProcessTree(), None
    try:
        start_ray(address, say=say, verbose=verbose)
        signals.install()  # after ray.init, which replaced SIGTERM's handler (and its C++ core worker's dump)
        url = deploy(options, host, port, local, say, verbose)
        signals.install()
        signals.interrupting = False
        if not signals.requested:
            say(f"cdx serve: ready at {url}")
            _watch(signals, say, options.replicas, tree)
        left = _drain(signals, drain_timeout_s, say)
    except KeyboardInterrupt:
        if not signals.requested:
            raise
        say(f"cdx serve: {signals.name} while starting: stopping")
    finally:
        signals.interrupting = False  # a signal now must not cut the shutdown short
        tree.note()
        _shutdown(local, say)
        ended = tree.end_leftovers()
        if ended:
            say(f"cdx serve: ended {ended} process(es) Ray left behind")
    say("cdx serve: stopped" + (f" ({left} request(s) unanswered)" if left else ""))


def _watch(signals: StopSignals, say: Callable[[str], None], replicas: int, tree: ProcessTree) -> None:
    """Until a stop is asked for: one line whenever the number of running model replicas changes."""
    last, due = (replicas, ""), time.monotonic() + WATCH_EVERY_S
    while not signals.requested:
        time.sleep(0.2)
        if time.monotonic() < due:
            continue
        due = time.monotonic() + WATCH_EVERY_S
        state = _model_state()
        if state[0] != last[0] or (state[0] < replicas and state[1] != last[1]):
            say(f"cdx serve: {state[0]} of {replicas} model replica(s) running" + (f" ({state[1]})" if state[1]
                                                                                   else ""))
        last = state
        tree.note()


def _model_state() -> tuple[int, str]:
    """(running model replicas, a one-line note when the deployment is not healthy)."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
        dep = app.deployments.get("Model") if app else None
    except Exception as e:  # noqa: BLE001 - the controller went away: say so, keep serving what can be
        return 0, f"Serve's controller does not answer: {type(e).__name__}"
    if dep is None:
        return 0, "the model deployment is gone"
    running = (dep.replica_states or {}).get("RUNNING", 0)
    status = str(getattr(dep.status, "value", dep.status))
    message = " ".join(str(dep.message or "").split())[:200]
    return running, "" if status == "HEALTHY" else f"{status}: {message}" if message else status


def _drain(signals: StopSignals, timeout_s: float, say: Callable[[str], None]) -> int:
    """Close the ingress's gate and wait for the requests it took; how many were still unanswered."""
    from ray import serve

    try:
        ingress = serve.get_deployment_handle("Ingress", app_name=APP_NAME)
        n = ingress.drain.remote().result(timeout_s=15)
    except Exception as e:  # noqa: BLE001 - the ingress is gone: nothing to wait for
        say(f"cdx serve: {signals.name}: stopping (the ingress did not answer: {type(e).__name__})")
        return 0
    say(f"cdx serve: {signals.name}: stopping; new requests get 503, {n} in flight")
    deadline = time.monotonic() + timeout_s
    while n:
        if signals.hurry or time.monotonic() >= deadline:
            say(f"cdx serve: stopping without waiting for {n} request(s) in flight")
            return n
        time.sleep(0.2)
        try:
            n = ingress.in_flight.remote().result(timeout_s=15)
        except Exception:  # noqa: BLE001 - the ingress went away meanwhile
            return n
    return 0


def _shutdown(local: bool, say: Callable[[str], None]) -> None:
    """Remove the app (a local instance: all of Serve) and disconnect from Ray (a local instance: stop it)."""
    import sys

    if "ray" not in sys.modules:
        return
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            serve.shutdown() if local else serve.delete(APP_NAME)
    except Exception as e:  # noqa: BLE001 - Ray goes down below anyway
        say(f"cdx serve: Serve did not shut down cleanly ({type(e).__name__}); stopping Ray")
    try:
        ray.shutdown()
    except Exception as e:  # noqa: BLE001
        say(f"cdx serve: Ray did not shut down cleanly ({type(e).__name__})")
