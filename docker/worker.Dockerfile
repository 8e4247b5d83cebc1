# SIGMA annotation worker on a CUDA base: loads the annotator once (GPU when present), consumes Redis.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t sigma-worker .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# torch from PyPI ships its own CUDA runtime libraries; the base image supplies the driver interface.
RUN pip install torch
COPY pyproject.toml README.md ./
COPY sigma ./sigma
COPY api ./api
COPY workers ./workers
COPY configs ./configs
RUN pip install ".[serve,hf]" && useradd --create-home --uid 10001 sigma
USER sigma

ENV SIGMA_SERVE_CONFIG=/app/configs/serve.yaml
# The worker has no HTTP port: healthy = a fresh heartbeat for this host in Redis (written after setup).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-m", "sigma.workers.healthcheck"]
# SIGTERM: finish the batch, acknowledge, exit (give it stop_grace_period in compose).
CMD ["sigma", "worker"]
