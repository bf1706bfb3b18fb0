"""How ``dataferry`` ends: one exit code per kind of failure, documented in docs/client.md and,
generated from the same enum, in ``dataferry --help``; and the failures only the command has."""

from __future__ import annotations

import enum

from dataferry_client import errors


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in the client: please report it
    USAGE = 2  # bad command line
    CONFIGURATION = 3  # no API URL, key or data URL; unreadable profile file; a redirect
    AUTHENTICATION = 4  # 401: wrong, disabled or deleted key
    PERMISSION = 5  # 403: the key lacks the permission
    NOT_FOUND = 6  # 404: unknown datasource, execution, snippet (or expired data)
    INVALID = 7  # 400, 409, 413, 415, 422, other 4xx: the server refused the request as given
    EXECUTION_FAILED = 8  # the execution failed or was cancelled
    TIMEOUT = 9  # --timeout passed before the execution ended
    RATE_LIMITED = 10  # still 429 after waiting out Retry-After (bounded)
    UNAVAILABLE = 11  # unreachable, 5xx, an answer not the API's, a transfer cut short
    INTERRUPTED = 130  # Ctrl-C


class UsageError(errors.DataferryError):
    """The command line cannot be carried out as given."""

    code = "usage"


class ConnectionTestFailed(errors.DataferryError):
    code = "connection_test_failed"


_EXIT_FOR: list[tuple[type[errors.DataferryError], ExitCode]] = [
    (UsageError, ExitCode.USAGE),
    (errors.NotJson, ExitCode.USAGE),
    (ConnectionTestFailed, ExitCode.EXECUTION_FAILED),
    (errors.ConfigurationError, ExitCode.CONFIGURATION),
    (errors.AuthenticationError, ExitCode.AUTHENTICATION),
    (errors.PermissionDenied, ExitCode.PERMISSION),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.RateLimited, ExitCode.RATE_LIMITED),
    (errors.ExecutionFailed, ExitCode.EXECUTION_FAILED),
    (errors.DataNotAvailable, ExitCode.EXECUTION_FAILED),
    (errors.QueryTimeout, ExitCode.TIMEOUT),
    (errors.ServerError, ExitCode.UNAVAILABLE),
    (errors.TransportError, ExitCode.UNAVAILABLE),
    (errors.IncompleteResult, ExitCode.UNAVAILABLE),
    (errors.UnexpectedAnswer, ExitCode.UNAVAILABLE),
    (errors.ApiError, ExitCode.INVALID),
]


def exit_code_for(error: errors.DataferryError) -> ExitCode:
    return next((code for cls, code in _EXIT_FOR if isinstance(error, cls)), ExitCode.INTERNAL)


def exit_code_help() -> str:
    """The ``--help`` epilog listing every exit code."""
    lines = [f"  {code.value:>3}  {code.name.lower().replace('_', ' ')}" for code in ExitCode]
    return "exit codes:\n" + "\n".join(lines)
