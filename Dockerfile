FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=masscer.settings \
    DJANGO_DEBUG=0 \
    MASSCER_VAR_DIR=/data
WORKDIR /app
COPY requirements.txt .
# Wheels only, as `make run` installs them: nothing compiles in the image.
RUN pip install --no-cache-dir --only-binary=:all: -r requirements.txt
# .dockerignore keeps the tests, the benchmarks, the fake model server and local state out.
COPY . .
# The hashed, compressed static files WhiteNoise serves. The settings need a secret key to load:
# this one lives for this command only and signs nothing; its var folder is thrown away.
RUN DJANGO_SECRET_KEY=collectstatic-at-build-time-only MASSCER_VAR_DIR=/tmp/build-var \
        python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-var \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin masscer \
    && mkdir -p /data && chown masscer /data
# The code stays root's and read-only to the processes; they write only to /data (uploads,
# the generated secret key, beat's schedule), a volume in docker-compose.yml.
USER masscer
EXPOSE 8000
ENTRYPOINT ["sh", "/app/scripts/docker-entrypoint.sh"]
CMD ["gunicorn", "masscer.wsgi", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--workers", "2", \
     "--threads", "4"]
