#!/usr/bin/env bash
# Builds every micromesh image from the Dockerfiles in docker/, the way a
# workshop attendee does: Docker pulls the public base images (rust:*-slim,
# python:*-slim, eclipse-temurin, debian:*-slim), for amd64 or arm64, whichever
# this machine is.
#
#   scripts/build-images.sh                       # all seven images
#   scripts/build-images.sh mesh-proxy guestbook-ui
#   TAG=v1 scripts/build-images.sh                # micromesh/<name>:v1 (default: dev)
#
# The four Rust images are stages of one Dockerfile that compiles the whole
# workspace in a single builder stage; Docker caches that stage, so the first
# image pays for the compile and the other three reuse it. A first build takes
# several minutes (see docker/README.md); after that, only what changed.
#
# On a machine that cannot pull images (no registry), use
# scripts/build-offline-images.sh instead: same images, bases made locally.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${TAG:-dev}"

# image name -> Dockerfile (and, for the Rust images, the stage to build)
declare -A DOCKERFILE=(
    [mesh-control]=docker/rust.Dockerfile
    [mesh-proxy]=docker/rust.Dockerfile
    [guestbook-ui]=docker/rust.Dockerfile
    [guestbook-service]=docker/rust.Dockerfile
    [helloworld-service]=docker/helloworld-service.Dockerfile
    [sentiment-service]=docker/sentiment-service.Dockerfile
    [hello-grpc]=docker/hello-grpc.Dockerfile
)
ALL=(mesh-control mesh-proxy guestbook-ui guestbook-service helloworld-service sentiment-service hello-grpc)

die() { echo "build-images.sh: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 \
    || die "the 'docker' command is missing: install Docker (https://docs.docker.com/get-docker/) and run again"
docker info >/dev/null 2>&1 \
    || die "the Docker Engine does not answer ('docker info' fails): start Docker and run again"

images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL[@]}")
for name in "${images[@]}"; do
    [ -n "${DOCKERFILE[$name]:-}" ] || die "no image called '$name'; the images are: ${ALL[*]}"
done

started=$SECONDS
declare -A TOOK
i=0
for name in "${images[@]}"; do
    i=$((i + 1))
    ref="micromesh/$name:$TAG"
    dockerfile="${DOCKERFILE[$name]}"
    echo
    echo "==> [$i/${#images[@]}] $ref  ($dockerfile)"
    t0=$SECONDS
    # Every final stage is named after its image, so --target picks it in
    # the shared Rust Dockerfile and is harmless in the single-image ones.
    docker build -f "$dockerfile" --target "$name" -t "$ref" . \
        || die "building $ref failed (output above); fix it and run again, finished images are cached"
    TOOK[$name]=$((SECONDS - t0))
done

echo
echo "==> built ${#images[@]} image(s) in $((SECONDS - started))s"
printf '%-44s %10s %8s\n' IMAGE SIZE TIME
for name in "${images[@]}"; do
    ref="micromesh/$name:$TAG"
    size="$(docker image inspect -f '{{.Size}}' "$ref")"
    printf '%-44s %7.1f MB %7ss\n' "$ref" "$(awk -v b="$size" 'BEGIN { print b / 1000000 }')" "${TOOK[$name]}"
done
