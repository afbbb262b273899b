"""
The commented example configuration that ``--generate-config`` writes.

Every value in it is read from the configuration classes' own defaults, so
the example and the built-in defaults cannot drift apart: a generated file
and no file at all configure the same gateway (a test holds this).
"""

from __future__ import annotations

import json
import string
from typing import Any

from llmgate import config

_TEMPLATE = """\
# llmgate configuration.  Precedence: command-line flag > environment
# variable > this file > built-in default.  A value written ${{VAR}} is read
# from the environment (${{VAR:-fallback}} gives a fallback).  Every value
# below is the built-in default; docs/configuration.md describes each key.

server:
  host: {server.host!y}          # containers: "0.0.0.0"
  port: {server.port!y}
  # listen: "systemd:domain=INET:index=0"   # any Twisted endpoint; replaces host/port
  max_request_body: {server.max_request_body!y}  # bytes; larger requests get 413
  shutdown_timeout: {server.shutdown_timeout!y}        # seconds to let calls in flight finish on SIGTERM
  max_concurrent: {server.max_concurrent!y}        # calls in progress at most; beyond, 503 (0: no limit)
  request_timeout: {server.request_timeout!y}        # seconds a client has to send its whole request

llm:
  # The upstream: LLM_TYPE and LLM_BASE_URL set these too.  Without
  # base_url, the type's own API is used ({openai_url} or
  # {anthropic_url}); vLLM, Ollama...: type openai, their URL.
  # base_url: {openai_url!y}
  # type: {llm.type!y}                 # openai | anthropic
  api_key: "${{LLM_API_KEY:-}}"          # injected upstream; empty: clients send their own
  timeout: {llm.timeout!y}                          # seconds to wait for response headers
  idle_timeout: {llm.idle_timeout!y}                    # seconds a stream (or its reader) may stall
  # auth_header: "api-key"             # Azure OpenAI and other conventions

# Several providers, instead of llm: (docs/routing.md):
# upstreams:
#   openai:    {{type: openai,    api_key: "${{OPENAI_API_KEY:-}}"}}
#   anthropic: {{type: anthropic, api_key: "${{ANTHROPIC_API_KEY:-}}"}}
# routes:
#   - {{path: "/v1/messages", upstream: anthropic}}
#   - {{model: "claude-*", upstream: anthropic}}
#   - {{upstream: [openai, anthropic]}}   # the default; failover in order

# None by default.  Uncomment to write traces and print calls:
middlewares: []
#  - type: "trace"
#    enabled: true
#    config:
#      directory: "./traces"
#      include_headers: true
#      include_body: true
#      max_body_size: 1048576
#  - type: "printer"
#    enabled: true
#    config:
#      log_requests: true
#      log_responses: true
#      log_body: false

session:
  enabled: {session.enabled!y}
  max_sessions: {session.max_sessions!y}
  session_ttl_seconds: {session.session_ttl_seconds!y}
  fuzzy_matching: {session.fuzzy_matching!y}
  reset_phrases: {session.reset_phrases!y}
  # request headers naming the client's own session; the first present decides
  client_headers: {session.client_headers!y}
  store:
    type: {session.store.type!y}       # memory | redis (several workers need redis)
    # url: {session.store.url!y}

# auth:                  # client tokens: then clients must present one
#   tokens_file: "/etc/llmgate/client_tokens"
#   admin_tokens_file: "/etc/llmgate/admin_tokens"   # none: /config and /metrics answer loopback only

logging:
  level: {logging.level!y}        # debug | info | warn | error | critical
  format: {logging.format!y}       # text | json
  # file: "/var/log/llmgate/llmgate.log"
"""


class _YAMLFormatter(string.Formatter):
    """
    ``!y`` renders a value as a YAML scalar or flow list (JSON is YAML).
    """

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion != "y":
            return super().convert_field(value, conversion)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, tuple):
            value = list(value)
        return json.dumps(value)


def example_config() -> str:
    """
    The example file, filled from the built-in defaults.
    """
    defaults = config.GatewayConfig()
    return _YAMLFormatter().format(
        _TEMPLATE,
        server=defaults.server,
        llm=defaults.llm,
        session=defaults.session,
        logging=defaults.logging,
        openai_url=config.DEFAULT_BASE_URLS["openai"],
        anthropic_url=config.DEFAULT_BASE_URLS["anthropic"],
    )


EXAMPLE_CONFIG = example_config()
