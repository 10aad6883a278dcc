# syntax=docker/dockerfile:1
# zipgate: the ZIP purification gateway, with the shipped models baked in.
#
# One file, two variants (BuildKit builds only the stages the chosen variant needs):
#   docker build -t zipgate:cpu .                                  # slim Python, torch CPU build
#   docker build -t zipgate:cuda --build-arg VARIANT=cuda .        # CUDA runtime, torch CUDA build
# Run:  docker run --rm -p 8080:8080 -e ZIPGATE_UPSTREAM_URL=http://vendor:9000 zipgate:cpu
# The builder stages hold pip and the network; the final stage only copies the finished
# virtualenv and the models, and runs as an unprivileged user.
#
# Reproducible builds: Python packages are pinned by constraints.txt (the versions the tests ran
# against; `python -m tools.runtime_constraints` rewrites it) and torch by TORCH_VERSION. The base
# images are tags here, which move: pin them by digest for a release build, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm      # prints "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<that digest> -t zipgate:cpu .
# (the same for CUDA_IMAGE). No digest is written here: none could be looked up where this file was
# written, and an invented one would fail the build (docs/deployment.md, "Reproducible images").

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# Keep equal to torch's line in constraints.txt (a test checks it).
ARG TORCH_VERSION=2.13.0

# ---- runtime bases: the builder and the final stage share one, so the virtualenv's interpreter
# path (/opt/venv/bin/python -> the base's python3) is valid in both.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# ---- torch, per variant (the largest layer; cached apart from the project's code)
FROM base-cpu AS torch-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"

FROM base-cuda AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"

# ---- the project and the models
# (DL3006: the FROM names one of this file's stages, torch-cpu or torch-cuda, not an image.)
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS builder
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
# -c: every dependency at the version in constraints.txt. torch's own dependencies came from the
# torch index above at that index's versions; pip replaces any that differ from the constraints.
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY models /opt/zipgate/models
COPY docker/healthcheck.py /opt/zipgate/healthcheck.py
# Files are root-owned and world-readable in the image whatever their mode in the build context.
RUN chmod -R a+rX,go-w /opt/zipgate

# ---- the final image (base-cpu or base-cuda: a stage of this file, see DL3006 above)
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="zipgate" \
      org.opencontainers.image.description="ZIP backdoor purification in front of a black-box image model" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.zipgate.variant="${VARIANT}"
RUN groupadd --system --gid 10001 zipgate \
    && useradd --system --uid 10001 --gid zipgate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin zipgate
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/zipgate /opt/zipgate
WORKDIR /opt/zipgate
# HOME and caches under /tmp: the root filesystem may be read-only (Kubernetes manifests mount
# an emptyDir there). The gateway listens on all interfaces inside the container. OpenMP threads
# wait without spinning: spinning ones collapse next to any other CPU load (docs/benchmarks.md).
ENV PATH=/opt/venv/bin:$PATH \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1 \
    ZIPGATE_HOST=0.0.0.0 \
    ZIPGATE_PORT=8080 \
    ZIPGATE_MODEL_PATH=/opt/zipgate/models/fmnist-ddpm
USER 10001:10001
EXPOSE 8080
# `zipgate serve` drains on SIGTERM (readiness 503, queued work finishes within
# ZIPGATE_DRAIN_TIMEOUT_S) and exits 0; give it that long and a batch more: docker stop -t 45, as
# compose's stop_grace_period (45s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/zipgate/healthcheck.py"]
ENTRYPOINT ["zipgate"]
CMD ["serve"]
