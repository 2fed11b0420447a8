# cachet-server image. Build: docker build -t cachet .   Run: docker run -e CACHET_REDIS_URL=redis://redis:6379/0 -p 50051:50051 -p 9464:9464 cachet
# The image never starts an embedded Redis: CACHET_REDIS_URL must be set (the server refuses
# to start without redis-server installed, which this image deliberately lacks).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY clients/python clients/python
COPY server server
RUN python -m venv /opt/cachet \
 && /opt/cachet/bin/pip install --no-cache-dir -c constraints.txt ./clients/python . \
 && /opt/cachet/bin/python -c "import cachet_server.app"

FROM python:3.11-slim-bookworm
COPY --from=build /opt/cachet /opt/cachet
RUN useradd --system --uid 10001 --no-create-home cachet
USER 10001
ENV PATH=/opt/cachet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CACHET_LISTEN=[::]:50051 \
    CACHET_METRICS__LISTEN=0.0.0.0:9464 \
    CACHET_LOG_FORMAT=json
# 50051: gRPC; 9464: Prometheus /metrics
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachet-server"]
