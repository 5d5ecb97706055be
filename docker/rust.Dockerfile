# micromesh's Rust images: mesh-control, mesh-proxy (sidecar and gateway),
# guestbook-ui and guestbook-service.
#
# One builder stage compiles every Rust binary of the workspace at once (a
# first build compiles the dependencies once, not four times); each image is
# a final stage that holds one static binary FROM scratch: no shell, no libc
# to patch, a few megabytes. Build one with
#
#     docker build -f docker/rust.Dockerfile --target mesh-proxy -t micromesh/mesh-proxy:dev .
#
# or all of them with scripts/build-images.sh. The build context is the
# repository root (see /.dockerignore).
#
# The offline path (scripts/build-offline-images.sh, for machines that cannot
# pull rust:*) compiles the same static binaries on the host and reuses each
# final stage below verbatim, reading `COPY --from=build /out/X` as `COPY X`
# from a small local context. So every final stage takes its files from /out/.
# tests/containers/tests/dockerfiles.rs checks the COPY sources and binary
# names here against the workspace.

ARG RUST_IMAGE=rust:1-slim-bookworm

# === build: every Rust binary, once ===
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Every workspace member must be present, or cargo refuses to load the
# workspace; sources only, so a docs edit does not invalidate this layer.
COPY Cargo.toml Cargo.lock ./
COPY mesh mesh
COPY services services
COPY tests tests
COPY bench bench
# Static glibc (`+crt-static`) for the host's own target triple, so the same
# file builds amd64 and arm64 images. The triple must be explicit: with
# --target, RUSTFLAGS reach only the binaries, not build scripts and proc
# macros, which must stay dynamic. The `dist` profile (Cargo.toml) is
# release with whole-program LTO and stripped symbols: half the size.
# Cargo.lock pins every dependency; no --locked, so a lock file a commit
# left one entry behind costs a resolve instead of a failed build.
RUN set -eux; \
    triple="$(rustc -vV | sed -n 's/^host: //p')"; \
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --profile dist --target "$triple" \
            -p mesh-control -p mesh-proxy -p guestbook-ui -p guestbook-service; \
    mkdir -p /out/bin /out/data; \
    for bin in mesh-control mesh-proxy guestbook-ui guestbook-service; do \
        cp "target/$triple/dist/$bin" /out/bin/; \
    done

# Every final image runs as an unprivileged user. scratch has no
# /etc/passwd, so the user is a number; 10001 is outside the range any base
# image assigns, so it never maps onto a real account by accident.
# NO_COLOR: logs go to `docker logs` and kubectl, not a terminal, so the mesh
# binaries leave out ANSI colour codes (the services check for a terminal).

# === mesh-control: the control plane (istiod's place) ===
FROM scratch AS mesh-control
COPY --from=build /out/bin/mesh-control /usr/local/bin/mesh-control
# Applied config survives a restart: keep /var/lib/mesh on a volume for that.
COPY --from=build --chown=10001:10001 /out/data /var/lib/mesh
ENV MESH_CONTROL_LISTEN=0.0.0.0:15010 \
    MESH_SECURE_LISTEN=0.0.0.0:15012 \
    MESH_STATE_DIR=/var/lib/mesh \
    NO_COLOR=1
USER 10001:10001
EXPOSE 15010 15012
ENTRYPOINT ["/usr/local/bin/mesh-control"]

# === mesh-proxy: every pod's sidecar, and the ingress gateway ===
# MESH_MODE=sidecar|gateway picks the role. A sidecar runs in its app's network
# namespace (`--network container:<app>`), the way a pod's containers share one.
FROM scratch AS mesh-proxy
COPY --from=build /out/bin/mesh-proxy /usr/local/bin/mesh-proxy
# The admin port (/ready, /stats/prometheus, /config_dump) must be reachable
# from outside the container, like Envoy's in a pod.
ENV MESH_ADMIN_ADDR=0.0.0.0:15000 \
    NO_COLOR=1
USER 10001:10001
EXPOSE 15000 15006 8080
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]

# === guestbook-ui: the page ===
FROM scratch AS guestbook-ui
COPY --from=build /out/bin/guestbook-ui /usr/local/bin/guestbook-ui
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guestbook-ui"]

# === guestbook-service: messages in SQLite ===
FROM scratch AS guestbook-service
COPY --from=build /out/bin/guestbook-service /usr/local/bin/guestbook-service
# scratch has no writable directory, not even /tmp: /data, owned by the
# service's user, holds the database and SQLite's temporary files.
COPY --from=build --chown=10001:10001 /out/data /data
ENV DATABASE_PATH=/data/guestbook.db \
    SQLITE_TMPDIR=/data
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/guestbook-service"]
