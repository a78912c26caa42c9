"""One way for every command to fail on a user's mistake: one line, exit status 2.

    @command("nstyle-apply")
    def main(argv=None) -> int: ...                 # returns the exit status

    @command("nstyle-train", exits=True)
    def task(cfg): ...                              # a Hydra task: leaves through sys.exit

A :class:`nstyle.UserError` (every library error a user can fix is one) becomes
``prog: error: <first line of the message>`` on stderr and exit status 2; Ctrl-C becomes
``prog: interrupted`` and status 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from nstyle._errors import UserError

__all__ = ["UserError", "command", "fail", "message"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable)


def message(e: BaseException) -> str:
    """The first non-empty line of ``e``'s message (its type's name if it has none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def fail(prog: str, msg: str) -> NoReturn:
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def command(prog: str, *, exits: bool = False) -> Callable[[F], F]:
    """Decorate an entry point so user errors and Ctrl-C end it as described above: it returns
    the exit status (a console script's ``main``), or with ``exits`` raises ``SystemExit``
    (a Hydra task, whose return value Hydra keeps)."""

    def leave(code: int):
        if exits:
            sys.exit(code)
        return code

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                print(f"{prog}: error: {message(e)}", file=sys.stderr, flush=True)
                return leave(EXIT_USAGE)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                return leave(EXIT_INTERRUPTED)

        return wrapper  # type: ignore[return-value]

    return decorate
