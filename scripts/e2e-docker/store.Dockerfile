# CI stand-in for the mongo image of docker-compose-db.yml: nx-27017, a MongoDB
# wire-protocol server (SQLite inside) from PyPI, since no mongod can be had here.
# It has no authentication: the CI override points MONGO_URL at it without one.
ARG BASE_IMAGE
ARG UV_IMAGE
FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE}
ARG NX_VERSION
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
    && UV_PYTHON_DOWNLOADS=never uv venv --no-cache /opt/nx \
    && uv pip install --no-cache --python /opt/nx/bin/python "nx-27017==${NX_VERSION:?}" \
    && mkdir -p /data/db \
    && chown 1000:1000 /data/db
ENV PATH=/opt/nx/bin:$PATH
USER 1000
EXPOSE 27017
CMD ["nx-27017", "--db", "/data/db/jobs.db", "--host", "0.0.0.0", "-p", "27017", \
     "--pid-file", "/tmp/nx.pid", "--log-file", "/dev/stdout"]
