"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class QccError(Exception):
    """A user-facing error: bad input, unsupported request, or a failed stage with a clear cause."""
