# liqmap Discord bot. Build: docker build -t liqmap .   Run: see docker-compose.yml and docs/deploy.md.
# Stage 1 builds the wheel (the same artifact CI installs and tests); stage 2 installs only that.

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --disable-pip-version-check build
COPY pyproject.toml README.md ./
COPY analysis ./analysis
COPY bot ./bot
COPY templates ./templates
RUN python -m build --wheel --outdir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIQMAP_DATA_DIR=/data \
    LIQMAP_CACHE_DIR=/data/cache \
    MPLCONFIGDIR=/data/cache/matplotlib
# A dedicated unprivileged user; /data (the SQLite database, the heartbeat, the market-data cache) is
# the only writable place it needs. A named volume mounted there starts with this ownership.
RUN groupadd --system --gid 10001 liqmap \
 && useradd --system --uid 10001 --gid liqmap --home-dir /data --no-create-home --shell /usr/sbin/nologin liqmap \
 && mkdir -p /data/cache \
 && chown -R liqmap:liqmap /data
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir --disable-pip-version-check "$(ls /tmp/dist/liqmap-*.whl)[postgres,redis]" \
 && rm -rf /tmp/dist \
 && liqmap --version
USER liqmap:liqmap
WORKDIR /data
VOLUME ["/data"]
# Healthy while the dispatcher keeps rewriting /data/heartbeat.json (`liqmap health`, exit 0 or 1).
# The dispatcher starts once Discord's gateway is READY, hence the start period.
HEALTHCHECK --interval=60s --timeout=15s --start-period=180s --retries=3 CMD ["liqmap", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["liqmap"]
CMD ["bot"]
