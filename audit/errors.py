"""The one exception type users see.

An `AuditError` is a wrong argument or an unusable input as a whole (a missing column, a
folder that does not exist). Its message says what was found and what to do. Problems with
single rows are *not* exceptions: they become rows of `errors/<stage>-*.parquet`.
"""


class AuditError(Exception):
    """A problem the user can fix; the message names the file, the row and the fix."""


class MissingWeightsError(AuditError):
    """Real model weights were asked for but are not on this machine."""
