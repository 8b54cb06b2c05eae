# Sightline worker image: `sightline start` registers with the LiveKit server named by
# LIVEKIT_URL and serves jobs dispatched to SIGHTLINE_AGENT_NAME. Keys come from the environment
# (or LiveKit Cloud secrets), never from the image.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIGHTLINE_DATA_DIR=/data

WORKDIR /app
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY agent agent
COPY vision vision
COPY memory memory
COPY tools tools
RUN pip install --no-deps --no-build-isolation .

RUN useradd --create-home --uid 10001 sightline && mkdir -p /data && chown sightline /data
USER sightline

# livekit-agents' health endpoint (SIGHTLINE_HEALTH_PORT)
EXPOSE 8081
CMD ["sightline", "start"]
