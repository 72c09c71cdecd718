"""The errors desomspark raises on purpose, and the one the command line turns into one line.

:class:`DesomsparkError` is the base of every error a user can act on: a bad
argument or configuration (:class:`UserError`), input that cannot be used
(``fitsio.Reject``, ``sections.SectionError``), a model registry that is
unreachable or lacks a version (``registry.RegistryError``), models that do
not belong together (``registry.ModelMismatch``).  The command line prints
these as ``desomspark COMMAND: message`` with no traceback; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class DesomsparkError(Exception):
    """An error a user can act on (printed as one line by the command line)."""


#: errors of the machine, not of the input: a full disk, a permission, a failing device
MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EROFS, errno.ENOMEM}
)


def is_machine_fault(exc: BaseException) -> bool:
    """True for an error of the machine (:data:`MACHINE_ERRNOS`) rather than of the data read."""
    return isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS


class MachineFault(DesomsparkError):
    """The machine failed while reading an input (disk full, permission, I/O error).

    Not the file's fault: the run stops before committing anything, and no reject is written,
    so that the same command run again (once the machine is fixed) reads the file.
    """


class UserError(DesomsparkError, ValueError):
    """A bad argument, configuration or lake state that the user can fix.

    Also a ``ValueError``, so that code catching bad values keeps working.
    """
