# predictd: DICOM receiver, classifier and SR sender in one image.
#   docker build -t predictd .
#   docker run -p 127.0.0.1:11112:11112 -p 127.0.0.1:9112:9112 -v predictd:/var/lib/predictd predictd
# deploy/compose.yaml runs it beside PostgreSQL and an Orthanc PACS.
# The torch wheels from PyPI carry CUDA (several GB): the image runs on a GPU host (docker run --gpus all) and on CPU.
FROM python:3.11-slim-bookworm

# No .pyc files in the image, stderr unbuffered (JSON log lines appear at once), quiet pip.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/predictd/.venv/bin:$PATH

# The unprivileged user the daemon runs as (DICOM on 11112 needs no capability), and its state folder.
RUN groupadd --system --gid 10001 predictd \
 && useradd --system --uid 10001 --gid predictd --home-dir /var/lib/predictd --shell /usr/sbin/nologin predictd \
 && install -d -o predictd -g predictd -m 0700 /var/lib/predictd

# A virtual environment, as deploy/predictd.service expects it (/opt/predictd/.venv).
RUN python -m venv /opt/predictd/.venv

# torch and torchvision first, pinned by constraints.txt: the largest layer, reused while predictd's code changes.
COPY constraints.txt /opt/predictd/src/constraints.txt
RUN pip install --no-cache-dir -c /opt/predictd/src/constraints.txt torch torchvision

# predictd with its runtime dependencies only (no [test] extra), every version pinned by constraints.txt.
# Only what the package needs is copied: the four package folders (the shipped models are package data of models/).
COPY pyproject.toml README.md /opt/predictd/src/
COPY daemon /opt/predictd/src/daemon
COPY models /opt/predictd/src/models
COPY reporting /opt/predictd/src/reporting
COPY migrations /opt/predictd/src/migrations
RUN pip install --no-cache-dir -c /opt/predictd/src/constraints.txt /opt/predictd/src \
 && rm -rf /opt/predictd/src

# The configuration (receive on 0.0.0.0:11112, HTTP on 0.0.0.0:9112, state under /var/lib/predictd) and the
# entrypoint (db upgrade, models install, exec serve). Both readable by everyone, writable by root only.
COPY deploy/predictd.container.toml /etc/predictd/predictd.toml
COPY deploy/container-entrypoint.sh /usr/local/bin/predictd-entrypoint
RUN chmod 0644 /etc/predictd/predictd.toml && chmod 0755 /usr/local/bin/predictd-entrypoint

# Spool, SQLite database, models and outbox live here: keep it across container restarts.
VOLUME ["/var/lib/predictd"]

# DICOM (C-STORE from the PACS and modalities) and HTTP (/healthz, /readyz, /metrics).
EXPOSE 11112 9112

USER predictd
WORKDIR /var/lib/predictd

# Healthy when /readyz answers 200: database at the schema head, receiver listening, models loaded, spool above its
# free-space watermark. urllib raises on 503 or no answer (no curl in the slim image); the port follows
# PREDICTD_HTTP__PORT when it is set. start-period covers the migration and the model load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('PREDICTD_HTTP__PORT', '9112'); urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]

# SIGTERM (docker stop) reaches `predictd serve` directly: the entrypoint execs it. Allow it time to finish a stage
# (docker stop -t 60; compose.yaml sets stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/predictd-entrypoint"]
