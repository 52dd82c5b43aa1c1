"""Beam edges of the compiler: the job graph and runner selection (the only package importing apache_beam)."""

import logging


class _DropApitoolsNotice(logging.Filter):
    """Beam logs a GCP-client notice on import that says nothing about this job; keep the terminal clean."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_DropApitoolsNotice())
