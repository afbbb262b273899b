"""
Log output for the daemon: level and format from the configuration, through
``twisted.logger`` so every event keeps its fields (the JSON format writes
them all).
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)

from llmgate.config import LoggingConfig

_QUIET_NAMESPACES = ("twisted.web.client", "twisted.internet.tcp")


def level_named(name: str) -> LogLevel:
    return LogLevel.levelWithName(name)


def make_observer(config: LoggingConfig, stream: IO[str] | None = None) -> ILogObserver:
    """
    An observer writing to ``logging.file`` (or ``stream``, or stdout) in the
    configured format, dropping events below the configured level.
    """
    if stream is None:
        if config.file:
            stream = open(config.file, "a", encoding="utf-8", buffering=1)
        else:
            stream = sys.stdout
    if config.format == "json":
        observer = jsonFileLogObserver(stream)
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level_named(config.level))
    for namespace in _QUIET_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return FilteringLogObserver(observer, [predicate])


__all__ = ["make_observer", "level_named", "formatEvent"]
