# dialguard: the FastAGI service in a container (README.md, "Install").
#
#   docker build -t dialguard .
#   docker run -v ./my.toml:/etc/dialguard/dialguard.toml:ro \
#              -e DIALGUARD_REDIS_URL=redis://redis:6379/0 dialguard
#
# BASE: any Debian-like image whose `python3` is 3.11 or newer with its venv module
# (python:3.12-slim by default; the project's own test builds on a debootstrapped Debian
# bookworm with python3 and python3-venv: tests/docker/run.py). Both stages use it, so the
# virtualenv copied from the first runs on the same Python in the second.
# WHEELS: empty (the default) builds the wheel and takes its dependencies from PyPI; a
# directory of the build context holding the dialguard wheel and every dependency as a
# wheel installs from there alone, with no network (`make test-docker` does this).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ARG WHEELS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# .dockerignore lets in only what the package is built from (and build/wheels).
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/dialguard; \
    if [ -n "$WHEELS" ]; then \
        /opt/dialguard/bin/pip install --no-index --find-links "/src/$WHEELS" dialguard; \
    else \
        /opt/dialguard/bin/pip wheel --no-deps --wheel-dir /tmp/wheel /src; \
        /opt/dialguard/bin/pip install /tmp/wheel/dialguard-*.whl; \
    fi; \
    /opt/dialguard/bin/pip uninstall --yes --quiet pip setuptools; \
    /opt/dialguard/bin/dialguard --help >/dev/null

FROM ${BASE}
# A fixed uid/gid, so that a volume or a bind mount can be owned by it on the host.
ARG UID=10001
RUN set -eu; \
    groupadd --system --gid "$UID" dialguard; \
    useradd --system --uid "$UID" --gid dialguard --home-dir /var/lib/dialguard \
            --no-create-home --shell /usr/sbin/nologin dialguard; \
    mkdir -p /var/lib/dialguard/audit; \
    chown -R dialguard:dialguard /var/lib/dialguard
COPY --from=build /opt/dialguard /opt/dialguard
# The container's configuration: config/dialguard.toml listening on 0.0.0.0 inside (the
# host publishes the ports, on 127.0.0.1 in docker-compose.yml) with the journal on the
# volume. Mount your own file over /etc/dialguard/dialguard.toml (or point
# DIALGUARD_CONFIG elsewhere); the policy it names is relative to it.
COPY contrib/docker/dialguard.toml /etc/dialguard/dialguard.toml
COPY config/policy/ /etc/dialguard/policy/
ENV PATH=/opt/dialguard/bin:$PATH \
    DIALGUARD_CONFIG=/etc/dialguard/dialguard.toml \
    DIALGUARD_REDIS_URL=redis://redis:6379/0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The audit journal (the system of record) and serve.pid.
VOLUME ["/var/lib/dialguard"]
USER dialguard:dialguard
WORKDIR /var/lib/dialguard
# FastAGI, health and metrics, the HTTP API.
EXPOSE 4573 9573 8575
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9573/healthz', timeout=2)"]
ENTRYPOINT ["dialguard"]
CMD ["serve"]
