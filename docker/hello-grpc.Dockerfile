# hello-grpc image: lab 09's gRPC demo, the server and the client in one image
# (Python and grpcio; the two files and the grpcio package are all it needs).
#
#     docker build -f docker/hello-grpc.Dockerfile -t micromesh/hello-grpc:dev .
#
# The server is the default command; the client's Deployment runs
# `python3 /app/client.py --serve` (k8s/grpc-demo), an idle instance that
# `kubectl exec` runs the calls in, as `meshctl exec` does locally.
#
# Learners get the public python:*-slim base and grpcio from PyPI (wheels for
# amd64 and arm64). The offline path (scripts/build-offline-images.sh) builds
# this same file with `--build-arg PYTHON_IMAGE=micromesh/base-python-grpc:<tag>`,
# a Debian root filesystem it made with debootstrap that already holds
# Debian's python3-grpcio, because nothing can be pulled there: the RUN line
# then finds grpc importable and installs nothing.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE} AS hello-grpc
# Pinned, so two builds of this file get the same grpcio.
ARG GRPCIO_VERSION=1.85.4
RUN python3 -c 'import grpc' 2>/dev/null \
    || python3 -m pip install --no-cache-dir "grpcio==${GRPCIO_VERSION}"
COPY services/hello-grpc/server.py /app/server.py
COPY services/hello-grpc/client.py /app/client.py
# Unbuffered, so log lines reach `kubectl logs` as they happen; no .pyc files
# written, since /app is not writable by the service's user anyway.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# An unprivileged user by number (it needs no /etc/passwd entry); the same
# number in every micromesh image.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python3", "/app/server.py"]
