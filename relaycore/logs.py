"""Log lines: one per event, stderr, each naming the process that wrote it.

`relaycore[supervisor]` or `relaycore[worker 1 g2]` (slot 1 of generation 2), so that
an operator reading a journal knows which process spoke.
"""

import json
import logging
import sys
import time

_FORMAT = "%(asctime)s relaycore[%(role)s] %(levelname)s %(message)s"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": getattr(record, "role", "main"),
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _RoleFilter(logging.Filter):
    role = "main"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


_role_filter = _RoleFilter()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_role_filter)
    root = logging.getLogger("relaycore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def set_role(role: str) -> None:
    """Name the current process in every line it logs from now on (after a fork)."""
    _role_filter.role = role
