# cm-mqtt-bridge: a small non-root image; state (SQLite) lives in the /data volume.
#   docker build -t cm-mqtt-bridge .
# Two stages: the build stage installs the dependencies from requirements.lock (exact versions,
# every file checked against its hash; all of them ship wheels, so no compiler is needed) in a
# layer of their own, then the package itself without dependencies; the runtime stage copies
# only that virtualenv. A source change therefore reuses the cached dependency layer.

FROM python:3.13-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --isolated --only-binary=:all: \
        --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.13-slim-trixie
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cm-mqtt-bridge" \
    org.opencontainers.image.description="CrossModel wallet balance and spend on MQTT and Home Assistant, with alerts" \
    org.opencontainers.image.source="https://github.com/crossmodel/cm-mqtt-bridge" \
    org.opencontainers.image.url="https://github.com/crossmodel/cm-mqtt-bridge" \
    org.opencontainers.image.documentation="https://github.com/crossmodel/cm-mqtt-bridge#docker-compose" \
    org.opencontainers.image.licenses="MIT" \
    org.opencontainers.image.version="${VERSION}" \
    org.opencontainers.image.revision="${REVISION}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CM_MQTT_BRIDGE__DATA_DIR=/data \
    CM_MQTT_BRIDGE__HEALTH__ENABLED=true \
    CM_MQTT_BRIDGE__HEALTH__HOST=0.0.0.0

# A fixed numeric uid/gid (10001): USER can then name it numerically, and a key file mounted
# from the host (Docker secret) can be given to exactly this owner (chown 10001).
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin bridge \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# /healthz (JSON) and /metrics (Prometheus) when health is enabled (on in this image).
EXPOSE 8099
# Asks the running bridge itself (GET /healthz on CM_MQTT_BRIDGE__HEALTH__PORT, default 8099):
# healthy = connected to the broker and a recent successful poll, not just "process alive".
HEALTHCHECK --interval=60s --timeout=10s --start-period=120s --retries=3 \
    CMD ["cm-mqtt-bridge", "healthcheck"]
ENTRYPOINT ["cm-mqtt-bridge"]
CMD ["run"]
