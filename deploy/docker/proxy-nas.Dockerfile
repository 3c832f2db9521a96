# syntax=docker/dockerfile:1.7
# The proxy NAS service (LCPAQ's low-cost proxy search of quantization
# hyperparameters): the gRPC front that admits searches and queues their
# trials, which need torch and optuna. bitmesh with the [ml,jobs] extras,
# every version pinned by requirements.lock. It runs no GPU work itself: build
# with CPU-only torch wheels for a smaller image,
#
#   docker build -f deploy/docker/proxy-nas.Dockerfile -t bitmesh/proxy-nas:0.1.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# (the lock's torch==2.14.1 then matches 2.14.1+cpu); without the argument it
# gets PyPI's CUDA build like the ML image.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# A folder or URL of wheels to install from instead of the package index
# (scripts/images.sh serves the lock's wheels on loopback).
ARG PIP_FIND_LINKS=
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY bitmesh ./bitmesh
COPY proxy_nas_svc ./proxy_nas_svc
COPY trainer_svc ./trainer_svc
RUN pip install --constraint requirements.lock \
      ${PIP_FIND_LINKS:+--no-index --find-links "$PIP_FIND_LINKS"} \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[ml,jobs]" \
 && pip check

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 bitmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/bitmesh --create-home \
      --shell /usr/sbin/nologin bitmesh \
 && mkdir -p /var/lib/bitmesh/artifacts \
 && chown -R 10001:10001 /var/lib/bitmesh
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/bitmesh/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/bitmesh \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    BITMESH_HOST=0.0.0.0 \
    BITMESH_ARTIFACT_ROOT=/var/lib/bitmesh/artifacts
USER 10001:10001
WORKDIR /home/bitmesh
EXPOSE 50054
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "/opt/bitmesh/healthcheck.py"]
CMD ["python", "-m", "proxy_nas_svc"]
