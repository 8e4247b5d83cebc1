# SIGMA annotation API: validates uploads, queues jobs on Redis, never runs a model (CPU-only image).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t sigma-api .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# The package depends on torch; the API never uses it, so the small CPU build is enough.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch
COPY pyproject.toml README.md ./
COPY sigma ./sigma
COPY api ./api
COPY workers ./workers
COPY configs ./configs
RUN pip install ".[serve]" && useradd --create-home --uid 10001 sigma
USER sigma

ENV SIGMA_SERVE_CONFIG=/app/configs/serve.yaml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["sigma", "serve", "api", "--host", "0.0.0.0", "--port", "8000"]
