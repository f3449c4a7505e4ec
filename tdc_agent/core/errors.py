"""User-facing errors.

Every problem a user can fix (bad config, missing data, wrong device, corrupt file) is raised as a
:class:`TDCError`. The CLI prints its message as one paragraph and exits with code 2; library users
catch it like any exception. Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations

from .redaction import redact


class TDCError(Exception):
    """An error the user can act on: the message names the field/file and the fix.

    Its text is scrubbed of credentials (:func:`~tdc_agent.core.redaction.redact`): a message may
    quote a server's reply or a URL, and library users print or log exceptions as they are.
    """

    exit_code = 2

    def __str__(self) -> str:
        return redact(super().__str__())


class UsageError(TDCError):
    """The data or an argument is outside what the method can work with (a refusal, nothing written)."""


class ResourceError(TDCError):
    """An input would take more memory or time than any real use needs (a size cap), or allocation failed."""


class ConfigError(TDCError):
    """A configuration value is invalid."""


class DataError(TDCError):
    """A dataset is missing or unreadable."""


class CheckpointError(TDCError):
    """A checkpoint or model file is missing, corrupt, or does not match the architecture."""


class DeviceError(TDCError):
    """The requested device is not available."""
