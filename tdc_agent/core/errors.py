"""User-facing errors.

Every problem a user can fix (bad config, missing data, wrong device, corrupt file) is raised as a
:class:`TDCError`. The CLI prints its message as one paragraph and exits with code 2; library users
catch it like any exception. Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations


class TDCError(Exception):
    """An error the user can act on: the message names the field/file and the fix."""

    exit_code = 2


class ConfigError(TDCError):
    """A configuration value is invalid."""


class DataError(TDCError):
    """A dataset is missing or unreadable."""


class CheckpointError(TDCError):
    """A checkpoint or model file is missing, corrupt, or does not match the architecture."""


class DeviceError(TDCError):
    """The requested device is not available."""
