# The wallet as one image: the Procfile's command, run by a user that is not root.
# docs/deploy.md says how to build, run and deploy it (Fly builds it from fly.toml).

# The venv is built in a stage of its own: the image keeps the venv, not pip's work.
FROM python:3.11-slim AS venv
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wallet \
    && mkdir /data && chown wallet:wallet /data
COPY --from=venv /venv /venv
WORKDIR /app
COPY . .
# The books live on a volume mounted at /data (SQLite); with DATABASE_URL set they are in PostgreSQL.
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    DATABASE_PATH=/data/wallet.db
VOLUME /data
USER wallet
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/healthz\", timeout=4)"]
CMD ["gunicorn", "app:create_app()"]
