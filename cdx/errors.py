"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class CdxError(Exception):
    """A user-facing failure: bad input, a missing or stale artifact, an unavailable backend."""


class InputError(CdxError):
    """A malformed or out-of-range input (file, value or option)."""


class StaleArtifactError(CdxError):
    """An artifact (export, engine, bundle) that does not match its manifest or its source."""
