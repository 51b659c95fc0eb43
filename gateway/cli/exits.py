"""The command line's exit statuses and its one way of failing.

Every command fails the same way: ``error: CODE: message`` on stderr (the code of the
:class:`~gateway.errors.GatewayError`, never a traceback) and exit status 2 for a usage or I/O
error.

Usage::

    @main.command()
    @exit_on_error()  # any GatewayError or OSError inside becomes "error: CODE: ..." and exit 2
    def upgrade(config: Path) -> None: ...

    with exit_on_error(refused=EXIT_INVALID):  # a refused package exits 1, a bad call still 2
        signed = sign_package(data, key)

    fail(UsageError("name delivery ids or pass --all-failed"))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from gateway.errors import GatewayError, UsageError

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "exit_on_error", "fail"]

#: success; for ``verify``, ``validate`` and ``audit verify``: valid
EXIT_OK = 0
#: the input was checked and refused: an invalid package, a broken audit log
EXIT_INVALID = 1
#: the command was called wrongly, or a file or database could not be read
EXIT_USAGE = 2


def fail(error: GatewayError, status: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: CODE: message`` on stderr and exit with ``status``."""
    click.echo(f"error: {error.code}: {error.message}", err=True)
    raise SystemExit(status)


@contextmanager
def exit_on_error(*, refused: int = EXIT_USAGE) -> Iterator[None]:
    """Turn an error raised inside into :func:`fail`; a context manager or a decorator.

    A :class:`~gateway.errors.UsageError` and an :class:`OSError` (named with its file) exit
    :data:`EXIT_USAGE`; any other :class:`~gateway.errors.GatewayError` exits ``refused``
    (:data:`EXIT_USAGE` unless the command tells a refused input from a bad call).
    """
    try:
        yield
    except UsageError as exc:
        fail(exc, EXIT_USAGE)
    except GatewayError as exc:
        fail(exc, refused)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        fail(UsageError(f"{exc.strerror or exc}{where}"), EXIT_USAGE)
