# cm-mqtt-bridge: a small non-root image; state (SQLite) lives in the /data volume.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CM_MQTT_BRIDGE__DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge /data

USER bridge
VOLUME ["/data"]
ENTRYPOINT ["cm-mqtt-bridge"]
CMD ["run"]
