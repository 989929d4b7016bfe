# A Redis image for tests/docker/run.py where no image registry is reachable: Debian's
# redis-server on the test's own base. (docker-compose.yml uses the official image.)
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
