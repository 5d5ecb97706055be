# helloworld-service image: the Python greeting service (standard library only,
# so the image is the interpreter plus one file).
#
#     docker build -f docker/helloworld-service.Dockerfile -t micromesh/helloworld-service:dev .
#
# Learners get the public python:*-slim base (amd64 and arm64). The offline
# path (scripts/build-offline-images.sh) builds this same file with
# `--build-arg PYTHON_IMAGE=micromesh/base-python:<tag>`, a Debian root
# filesystem it made with debootstrap, because nothing can be pulled there.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE} AS helloworld-service
COPY services/helloworld-service/helloworld.py /app/helloworld.py
# Unbuffered, so log lines reach `docker logs` as they happen; no .pyc files
# written, since /app is not writable by the service's user anyway.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# An unprivileged user by number (it needs no /etc/passwd entry); the same
# number in every micromesh image.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python3", "/app/helloworld.py"]
