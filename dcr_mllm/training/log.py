"""The one logger training speaks through: status lines on stdout, warnings on stderr.

The handler looks up ``sys.stdout``/``sys.stderr`` when each record arrives, so a redirected or
captured stream gets the lines; the logger does not propagate, so an application that configures
the root logger (``dcr-mllm``'s CLI does) does not print them twice.
"""

from __future__ import annotations

import logging
import sys


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _Format(logging.Formatter):
    """Status lines as they are; warnings with their level and logger, as the CLI writes others."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname} {record.name}: {message}"


logger = logging.getLogger("dcr_mllm.training")
_handler = _ConsoleHandler()
_handler.setFormatter(_Format())
logger.addHandler(_handler)
logger.setLevel(logging.INFO)
logger.propagate = False
