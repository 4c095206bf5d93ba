# The fnsession image: operator, gateway and CLI in one venv, run as a non-root user on a read-only
# root filesystem. Users with a registry: `docker build .` (uses python:3.11-slim). On machines with
# no Docker and no registry, `make images` builds this same file with buildah from a local base.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for the gateway lane's scans (operator/fnsession/gateway/_lane.c), and Python's headers
# where the base lacks them (Debian's python3; python:3.11-slim has its own). Only this stage has them.
RUN python3 -c "import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
      && dev= || dev=python3-dev; \
    command -v gcc >/dev/null && [ -z "$dev" ] || { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev $dev >/dev/null \
      && rm -rf /var/lib/apt/lists/*; }
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
# Dependencies first, read from pyproject.toml: this layer is reused until they change.
RUN /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt
COPY setup.py /src/
COPY operator /src/operator
# the lane's C module must be in the image: a gateway without it is correct but slower
RUN /opt/venv/bin/pip install --quiet --no-deps /src \
 && /opt/venv/bin/python -c "import fnsession.gateway._lane" \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# A name for uid 65532: tools that look the user up (getpass, kopf's identity) must not fail.
RUN echo "fnsession:x:65532:65532:fnsession:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
 && echo "fnsession:x:65532:" >> /etc/group
USER 65532:65532
ENTRYPOINT ["fnsession"]
CMD ["--help"]
