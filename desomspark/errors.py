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


class DesomsparkError(Exception):
    """An error a user can act on (printed as one line by the command line)."""


class UserError(DesomsparkError, ValueError):
    """A bad argument, configuration or lake state that the user can fix.

    Also a ``ValueError``, so that code catching bad values keeps working.
    """
