"""What `cdx serve` prints (no Ray here): by default one line per event of its own (started, ready, a
replica lost or back, stopping, stopped) and nothing of Ray's; `--verbose` adds Ray's and Serve's own
output (the replicas' logs, access logs, Ray's warnings), without colour codes.

The quiet default: the processes' output stays in Ray's log files (under the temp folder `cdx serve`
prints) instead of being forwarded to this terminal (`ray.init(log_to_driver=False)`), this process's
`ray` loggers show errors only, Serve logs no access lines, and gRPC's fork notice is off at its source."""
from __future__ import annotations

import logging
import re

# read by Ray and gRPC in every process of a local instance (they inherit this process's environment)
QUIET_ENV = {
    "RAY_COLOR_PREFIX": "0",  # no ANSI colour around the "(ServeReplica:... pid=...)" prefixes
    "GRPC_ENABLE_FORK_SUPPORT": "0",  # no "Other threads are currently calling into gRPC, skipping fork()"
}


def ray_init_options(verbose: bool) -> dict:
    """`ray.init` keywords: the workers' output forwarded here only when verbose."""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}


def serve_logging(verbose: bool) -> dict:
    """Serve's `logging_config` for its controller, proxy and the app's replicas."""
    return {"log_level": "INFO" if verbose else "WARNING", "enable_access_log": verbose}


def quiet_driver(verbose: bool) -> None:
    """This process's Ray loggers ('Started Serve in namespace...', the token notice) at errors only, and
    the job's error messages that Ray's driver prints from a thread of its own whatever `log_to_driver`
    says ('Task ServeController.graceful_shutdown failed...' as Serve stops) left to Ray's log files: the
    replicas' failures are `cdx serve`'s own lines (lifecycle.py)."""
    if verbose:
        return
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from ray._private import worker
    except ImportError:
        return
    shown = getattr(worker, "print_to_stdstream", None)
    if shown is None or getattr(shown, "cdx_quiet", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") != "raylet":  # the error listener's messages (workers' output is not forwarded)
            shown(data, *args, **kwargs)

    print_to_stdstream.cdx_quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception))(?:\(\w*\))?: (\S.*)$")
_OURS = ("CdxError", "InputError", "StaleArtifactError")


def failure_line(text: str) -> str:
    """The cause of a failed deployment in one line. Serve's message quotes each failed replica's traceback;
    the cause is its last `SomeError: message` line that is not one of Ray's wrappers (cdx's own errors
    by their message alone)."""
    found = [m for m in map(_EXCEPTION_LINE.match, str(text).splitlines())
             if m and not m.group(1).startswith(("Ray", "Actor"))]
    if not found:
        return " ".join(str(text).split())[:400]
    name, message = found[-1].groups()
    message = " ".join(message.split())[:400]
    return message if name in _OURS else f"{name}: {message}"
