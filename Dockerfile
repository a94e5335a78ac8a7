# syntax=docker/dockerfile:1
# One image for every service; the command picks the process:
#   python -m services.job_service            gRPC JobService, WebhookService, NotificationService
#                                             on 50051 (WorkerService, JobReaderService: 50054 in k8s)
#   python -m services.job_service migrate    Alembic migrations, then exit (the migration Job)
#   python -m services.notifier               gRPC NotifierService on 50052
#   python -m services.media_worker           JetStream consumer; gRPC health on 50053
#   python -m services.webhooks               webhook sender (JetStream consumer); gRPC health on 50055
# Build: docker build -t media-pipeline:dev .
# Pin the base by digest in production (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the project and its wheels -------------------------------
FROM ${PYTHON_IMAGE} AS build
# The compiled dependencies must arrive as wheels: neither stage has a compiler.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=grpcio,protobuf,psycopg2-binary,av,pillow
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies change less often than code: build them first so the layer is cached.
COPY pyproject.toml README.md ./
COPY gen ./gen
# Everything that runs: the four services, mediactl and their shared code. The dev-only devstack/,
# tests/ and bench/ are not even in the build context (.dockerignore).
COPY services ./services
# A regular (non-editable) install: the final stage needs /opt/venv only, not /src.
# pip compiles .pyc files here, because the root filesystem is read-only at run time.
RUN pip install . && python -m compileall -q /opt/venv

# --- runtime: the venv on a slim Python, as an unprivileged user ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp
RUN groupadd --system --gid 10001 media \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin media
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/venv
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 8086 9100
CMD ["python", "-m", "services.job_service"]
