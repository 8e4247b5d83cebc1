# SIGMA annotation API: validates uploads, queues jobs on Redis, never runs a model (CPU-only image).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t sigma-api .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sigma ./sigma
COPY api ./api
COPY workers ./workers
COPY configs ./configs
# The API never imports torch (tests/test_packaging.py keeps that true), so the image has none: the package
# goes in without its dependencies, then every dependency and the `serve` extra except torch.
RUN pip install --no-deps . \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join([d for d in p['dependencies'] if not d.startswith('torch')] + p['optional-dependencies']['serve']))" \
       > /tmp/api-requirements.txt \
    && pip install -r /tmp/api-requirements.txt && useradd --create-home --uid 10001 sigma
USER sigma

ENV SIGMA_SERVE_CONFIG=/app/configs/serve.yaml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["sigma", "serve", "api", "--host", "0.0.0.0", "--port", "8000"]
