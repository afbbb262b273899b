#!/usr/bin/env bash
# The real command-line agents that `make test-clients` drives, installed
# from the npm registry at pinned versions into DIR (kept between runs: the
# two packages weigh about 800 MB).  Needs node and npm (.ci/run installs
# Debian's when they are missing).
set -euo pipefail
CLAUDE_CODE_VERSION=2.1.332   # @anthropic-ai/claude-code
CODEX_VERSION=0.171.0         # @openai/codex
dir=${1:?usage: install.sh DIR}
stamp="$dir/.installed-claude-code-$CLAUDE_CODE_VERSION-codex-$CODEX_VERSION"
if [ -e "$stamp" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "test-clients: npm is missing (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
rm -rf "$dir"
mkdir -p "$dir"
echo "test-clients: installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION and @openai/codex@$CODEX_VERSION into $dir"
npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION"
test -x "$dir/node_modules/.bin/claude" && test -x "$dir/node_modules/.bin/codex"
touch "$stamp"
