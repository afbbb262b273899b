"""
The ``llmgate`` twistd plugin and llmgate's own middleware types.

Kept free of imports from llmgate so that ``twistd --help`` and plugin scans
stay fast: each plugin names the module that does the work.
"""

from twisted.application.service import ServiceMaker

llmgate = ServiceMaker(
    "llmgate",
    "llmgate.tap",
    "An event-driven LLM API gateway: relay, trace, sessions, metrics.",
    "llmgate",
)
