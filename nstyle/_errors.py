"""The one error type of nstyle's user-facing problems.

Every error a user can cause and fix (a missing image, a bad setting, weights that cannot be
had, a damaged checkpoint) is a :class:`UserError` or a subclass (``ImageError``,
``WeightsError``, ...), with a message of one line that names the problem and the fix. Library
callers may catch it; the command-line tools print it as ``prog: error: <message>`` and exit
with status 2 (:func:`nstyle.cli.errors.command`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what was asked for; the message is one line with the fix."""
