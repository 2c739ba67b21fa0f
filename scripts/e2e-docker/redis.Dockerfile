# CI stand-in for the redis image of docker-compose-db.yml: Debian's redis-server
# (with redis-cli), run like the official image: `redis-server ARGS...` in /data.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown 1000:1000 /data
WORKDIR /data
USER 1000
EXPOSE 6379
CMD ["redis-server"]
