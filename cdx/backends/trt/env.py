"""Is TensorRT usable here? `import tensorrt` happens only inside these functions."""
from __future__ import annotations

from ...errors import CdxError

NOT_INSTALLED = "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and driver)"


def _import():
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer cannot load
        return None
    return tensorrt


def tensorrt_version() -> str | None:
    trt = _import()
    return None if trt is None else trt.__version__


def available() -> tuple[bool, str]:
    """(True, what) when TensorRT 10+ and a CUDA GPU are usable, else (False, one-line reason)."""
    trt = _import()
    if trt is None:
        return False, NOT_INSTALLED
    if int(trt.__version__.split(".")[0]) < 10:
        return False, f"TensorRT {trt.__version__} is too old: cdx needs TensorRT 10 (pip install -U tensorrt)"
    import torch

    if not torch.cuda.is_available():
        return False, "TensorRT needs a CUDA GPU, and none is visible (check the NVIDIA driver)"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def require_tensorrt():
    """The `tensorrt` module, or a CdxError whose one-line message says what is missing."""
    ok, reason = available()
    if not ok:
        raise CdxError(reason)
    return _import()


def current_gpu(device: int | None = None) -> tuple[str, str]:
    """(name, compute capability "major.minor") of the CUDA device engines are built for or run on."""
    import torch

    if not torch.cuda.is_available():
        raise CdxError("TensorRT needs a CUDA GPU, and none is visible (check the NVIDIA driver)")
    idx = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(idx)
    return torch.cuda.get_device_name(idx), f"{major}.{minor}"
