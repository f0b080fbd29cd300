"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class CdxError(Exception):
    """A user-facing failure: bad input, a missing or stale artifact, an unavailable backend."""


class InputError(CdxError):
    """A malformed or out-of-range input (file, value or option)."""


class StaleArtifactError(CdxError):
    """An artifact (export, engine, bundle) that does not match its manifest or its source."""


class CdxWarning(UserWarning):
    """A warning of cdx's own (an unknown word in a caption, ...): shown every time, not once per place."""


def warn(message: str, category: type[Warning] = CdxWarning) -> None:
    """warnings.warn, attributed to the first caller outside cdx's own source (the user's line that called the
    API), however deep inside cdx the warning arises; shown every time (the filters still apply), where
    Python's default shows a warning once per code location."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry={})  # a fresh registry: not once
