"""The one exception type the command line turns into a one-line message (exit code 2).

Anything a user can cause (a missing file, a bad flag, a damaged checkpoint, a diverged run)
raises ``UserError`` with a message that says what happened and what to do; the ``customnn``
command prints ``customnn: error: <message>`` on stderr and exits 2, never with a traceback.
"""


class UserError(Exception):
    """An error caused by input or environment, reported to the user in one line."""

    exit_code = 2
