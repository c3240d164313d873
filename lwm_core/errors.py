"""The one exception type users see for bad input.

Every problem a user can fix (a missing path, a truncated checkpoint, a shape that does not match the
config, a sequence that is too long) is raised as `LWMError` with a one-line message that names the
problem and what to do. The CLI prints that line and exits with code 2; library users can catch it.
"""


class LWMError(Exception):
    """A user-fixable problem, described in one line."""


def raise_if(bad, message: str, *values) -> None:
    """Raise `LWMError(message.format(*values))` when `bad` holds.

    Eagerly that is an ordinary check. Inside `jax.jit` (where `bad` is traced) the check runs when
    the computation does, through a host callback: the error then reaches the caller as a
    `jax.errors.JaxRuntimeError` whose text carries the LWMError line (`from_runtime_error` gets it
    back). Either way nothing is silently clipped or overwritten.
    """
    import jax

    if not any(isinstance(x, jax.core.Tracer) for x in (bad, *values)):
        if bool(bad):
            raise LWMError(message.format(*values))
        return

    def check(bad, *values):
        if bool(bad):
            raise LWMError(message.format(*(v.item() if hasattr(v, "item") else v for v in values)))

    jax.debug.callback(check, bad, *values)


def from_runtime_error(exc: BaseException) -> LWMError | None:
    """The LWMError raised by a `raise_if` check inside jit, recovered from the runtime error that
    carried it out of the computation; None when `exc` is something else."""
    import re

    found = re.findall(r"LWMError: ([^\n]+)", str(exc))
    return LWMError(found[-1]) if found else None
