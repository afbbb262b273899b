"""
The commented example configuration that ``--generate-config`` writes.
"""

EXAMPLE_CONFIG = """\
# llmgate configuration.  Precedence: command-line flag > environment
# variable > this file > built-in default.  A value written ${VAR} is read
# from the environment (${VAR:-fallback} gives a fallback).

server:
  host: "127.0.0.1"          # containers: "0.0.0.0"
  port: 3000
  # listen: "systemd:domain=INET:index=0"   # any Twisted endpoint; replaces host/port
  max_request_body: 20971520  # bytes; larger requests get 413
  shutdown_timeout: 30        # seconds to let calls in flight finish on SIGTERM

llm:
  base_url: "https://api.openai.com"   # vLLM, Ollama...: type openai, their URL
  type: "openai"                       # openai | anthropic
  api_key: "${LLM_API_KEY:-}"          # injected upstream; empty: clients send their own
  timeout: 60                          # seconds to wait for response headers
  idle_timeout: 300                    # seconds a stream (or its reader) may stall
  # auth_header: "api-key"             # Azure OpenAI and other conventions

middlewares:
  - type: "trace"
    enabled: true
    config:
      directory: "./traces"
      include_headers: true
      include_body: true
      max_body_size: 1048576
  - type: "printer"
    enabled: true
    config:
      log_requests: true
      log_responses: true
      log_body: false

session:
  enabled: true
  max_sessions: 10000
  session_ttl_seconds: 3600
  fuzzy_matching: true
  reset_phrases: ["start over", "new conversation", "new chat"]
  # request headers naming the client's own session, first present wins
  client_headers: ["x-llmgate-session-id", "x-claude-code-session-id", "session-id", "thread-id",
                   "x-session-affinity", "x-opencode-session"]

logging:
  level: "info"        # debug | info | warn | error | critical
  format: "text"       # text | json
  # file: "/var/log/llmgate/llmgate.log"
"""
