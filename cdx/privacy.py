"""The usage telemetry of the runtimes cdx runs on, off unless the user asks for it (CDX_TELEMETRY=1).

ONNX Runtime (1.2x and later, on Linux and macOS) writes a device id and an event database under
~/.cache/Microsoft/DeveloperTools and uploads usage events; ORT_DISABLE_TELEMETRY=1, read when onnxruntime is
imported, stops all of it (`onnxruntime.disable_telemetry_events()` is the older, Windows-only switch).
OpenVINO sends a usage event from `import openvino` (openvino/tools/ovc/__init__.py) and NNCF from its own
import, both through the `openvino_telemetry` package, which writes a client id and a usage counter into
~/intel. Its documented opt-out (`opt_in_out --opt_out`) writes a consent file into ~/intel itself; both
OpenVINO and NNCF fall back to a stub of their own when the package cannot be imported, so cdx makes it
unimportable in its process (sys.modules[name] = None) before OpenVINO is imported.
"""
from __future__ import annotations

import os
import sys

OPT_IN = "CDX_TELEMETRY"


def telemetry_wanted() -> bool:
    return os.environ.get(OPT_IN, "").strip().lower() not in ("", "0", "false", "no")


def telemetry_off() -> None:
    """Turn the runtimes' telemetry off for this process, before they are imported (idempotent). Where the user
    set CDX_TELEMETRY=1, or set ORT_DISABLE_TELEMETRY themselves, their choice stands."""
    if telemetry_wanted():
        return
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "openvino_telemetry" not in sys.modules and "openvino" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # import -> ModuleNotFoundError -> OpenVINO's and NNCF's stubs


def onnxruntime_imported(ort) -> None:
    """After `import onnxruntime`: its runtime switch too (the Windows ETW provider ignores the variable)."""
    if not telemetry_wanted():
        disable = getattr(ort, "disable_telemetry_events", None)
        if disable is not None:
            disable()
