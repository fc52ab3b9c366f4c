"""The one exception type users see: a message that names the problem and the fix."""


class DomixError(Exception):
    """A bad input or an unrecoverable state, explained in one line.

    The command line prints ``domix: error: <message>`` and exits with status 2,
    without a traceback. Library callers catch it like any exception.
    """
