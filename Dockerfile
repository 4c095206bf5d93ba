# The fnsession image: operator, gateway and CLI in one venv, run as a non-root user on a read-only
# root filesystem. Users with a registry: `docker build .` (uses python:3.11-slim). On machines with
# no Docker and no registry, `make images` builds this same file with buildah from a local base.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
# Dependencies first, read from pyproject.toml: this layer is reused until they change.
RUN /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt
COPY operator /src/operator
RUN /opt/venv/bin/pip install --quiet --no-deps /src \
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
