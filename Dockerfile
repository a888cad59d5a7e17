# syntax=docker/dockerfile:1
# RouteT2I gateway and cloud worker image. The steps mirror .ci/run / the Makefile: a virtualenv,
# torch first, then the project (`pip install .`).
#
#   GPU hosts (default):  docker build -t routet2i .
#   CPU only:             docker build --build-arg VARIANT=cpu -t routet2i:cpu .
#   another CUDA build:   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t routet2i .
#
# Run the gateway:  docker run -p 8000:8000 -e ROUTET2I_EDGE_MODEL=... routet2i
# Run the worker:   docker run --gpus all routet2i routet2i worker --model ... --host 0.0.0.0 --port 8001
ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- bases: the same Python in build and runtime
FROM ${CUDA_IMAGE} AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM ${CPU_IMAGE} AS base-cpu

FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- build: venv, torch first, then the project
FROM base AS build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Empty: the CPU wheel index for VARIANT=cpu, the CUDA 12.8 index for VARIANT=cuda.
ARG TORCH_INDEX_URL=
RUN python3 -m venv /opt/venv && pip install --upgrade pip
RUN index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$([ "$VARIANT" = cpu ] && echo cpu || echo cu128)}" \
 && pip install "torch==${TORCH_VERSION}" --index-url "$index" --extra-index-url https://pypi.org/simple
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router_model ./router_model
COPY backends ./backends
COPY gateway ./gateway
COPY demo ./demo
# `fast`: orjson for the image bodies in and out, sniffio so httpcore does not retry a failed import per request
RUN pip install ".[fast]" && python -c "import gateway.app, router_model.model, backends.edge, orjson, sniffio"

# ---------------------------------------------------------------- runtime: the venv only, a non-root user
FROM base AS runtime
RUN groupadd --system --gid 10001 routet2i \
 && useradd --system --uid 10001 --gid routet2i --home-dir /home/routet2i --create-home routet2i \
 && mkdir -p /data /tmp/prometheus && chown routet2i:routet2i /data /tmp/prometheus
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/routet2i
ENV HF_HOME=/data/huggingface \
    ROUTET2I_STATE_FILE=/data/routet2i_state.json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    WORKERS=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
# One process per worker; the app factory reads ROUTET2I_* (and ROUTET2I_CONFIG). With WORKERS > 1 or
# several replicas, set ROUTET2I_REDIS_URL so they share one budget.
# The multiprocess metrics directory is emptied first: a previous run's files would be added to this run's.
CMD ["sh", "-c", "rm -f \"$PROMETHEUS_MULTIPROC_DIR\"/*.db; exec uvicorn gateway.app:app_from_env --factory --host 0.0.0.0 --port 8000 --workers \"$WORKERS\""]
