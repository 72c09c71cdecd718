"""Where desomspark's own lines go.

Every module logs to ``logging.getLogger(__name__)``; nothing prints.  A
program that wants the lines (the command line, a training rank, a job
script) calls :func:`to_stdout` once: the ``desomspark`` logger then writes
bare messages to stdout, the operator's console and the scheduler's job log.
A library user configures logging as they like and sees nothing by default.
"""

from __future__ import annotations

import logging
import sys

#: the handler to_stdout installs, found again so that a second call changes the level, not the output
_HANDLER_NAME = "desomspark-stdout"


def to_stdout(level: int = logging.INFO) -> logging.Logger:
    """Send the package's lines at ``level`` and above to stdout, once per process."""
    logger = logging.getLogger("desomspark")
    logger.setLevel(level)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # not twice when the root logger has a handler too
    return logger
