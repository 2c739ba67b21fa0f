# CI stand-in for ghcr.io/astral-sh/uv:<version> (no registry is reachable in CI):
# the static uv and uvx binaries of PyPI's musllinux uv wheel, at the same paths.
# Context: a directory holding those two files (scripts/e2e-docker.sh makes it).
FROM scratch
COPY uv uvx /
