"""The one exception type users see for bad input.

Every problem a user can fix (a missing path, a truncated checkpoint, a shape that does not match the
config, a sequence that is too long) is raised as `LWMError` with a one-line message that names the
problem and what to do. The CLI prints that line and exits with code 2; library users can catch it.
"""


class LWMError(Exception):
    """A user-fixable problem, described in one line."""
