# llmgate container image.  The steps are the same commands CI runs
# (pip install of the package, then the Twisted plugin cache generation).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLM_BASE_URL=https://api.openai.com \
    LLM_TYPE=openai

# CA certificates for verifying upstream TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/llmgate --create-home llmgate

WORKDIR /opt/llmgate
COPY setup.cfg pyproject.toml README.md ./
COPY llmgate ./llmgate
COPY twisted ./twisted
COPY etc ./etc

# Install, then write Twisted's plugin cache while site-packages is writable.
RUN pip install --no-cache-dir . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && mkdir -p /etc/llmgate /var/lib/llmgate/traces \
    && cp etc/gateway.yaml /etc/llmgate/gateway.yaml \
    && chown -R llmgate /var/lib/llmgate

USER llmgate
WORKDIR /var/lib/llmgate
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=2).status == 200 else 1)"

# Listen on every interface inside the container; configure with LLM_* or
# mount a config file over /etc/llmgate/gateway.yaml.
CMD ["twistd", "--nodaemon", "--pidfile=", "llmgate", "--config", "/etc/llmgate/gateway.yaml", "--host", "0.0.0.0"]
