"""
llmgate: an event-driven LLM API gateway daemon on Twisted, Klein and treq.
"""

__version__ = "0.1.0"
