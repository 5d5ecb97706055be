#!/usr/bin/env bash
# Builds every micromesh image on a machine that can pull no image at all:
# no registry is reachable, the Docker Engine starts empty, so every image is
# made here from nothing. The container tests (tests/containers) run this
# once per test run; it rebuilds only what changed.
#
#   scripts/build-offline-images.sh            # build what changed, print sizes
#   scripts/build-offline-images.sh --force    # rebuild the app images even if unchanged
#
# Environment:
#   MESH_IMAGE_TAG      tag of the app images (default: dev)
#   MESH_DEBIAN_MIRROR  Debian mirror for the base images (default: the one
#                       apt on this machine already uses, read from
#                       /etc/apt/sources.list*)
#
# The learner path (scripts/build-images.sh) pulls public bases such as
# rust:*-slim and python:*-slim. Here:
#
# 1. Base images, made once and reused by tag: a Debian root filesystem from
#    `debootstrap --variant=minbase`, trimmed (no docs, man pages, locales or
#    apt lists), piped through `tar | docker import`. base-debian is glibc and
#    little else (the Java runtime's base), base-python adds python3,
#    base-python-grpc python3 and Debian's grpcio (the gRPC demo, lab 09),
#    base-jdk a headless JDK for the Java build stage. The tag is a hash of the recipe
#    (this script's base functions, the package list, the architecture), so a
#    changed recipe builds new bases and an unchanged one never runs debootstrap
#    again. Needs root (debootstrap does) only when a base is missing.
# 2. Static Rust binaries, built on the host for its own target triple with
#    glibc's static libc (`-C target-feature=+crt-static`), while the bases
#    build in the background.
# 3. App images, from the learner Dockerfiles themselves: the Python and Java
#    ones with `--build-arg` pointing at the bases above, the Rust ones from
#    each final stage of docker/rust.Dockerfile with `COPY --from=build /out/X`
#    read as `COPY X` from a small context holding the host-built binaries.
#    Each image carries a `micromesh.content-hash` label (a hash of its
#    Dockerfile, build args and input files); when an image with that label
#    exists, the build is skipped and the image only re-tagged.
#
# No `# syntax=` line anywhere: BuildKit would pull a frontend image for it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

TAG="${MESH_IMAGE_TAG:-dev}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$TARGET_DIR/offline-images"
SUITE=bookworm
FORCE=0
STARTED=$SECONDS

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-offline-images.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "build-offline-images.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# === Preflight: say what is missing and how to get it ===

command -v docker >/dev/null 2>&1 \
    || die "the 'docker' command is missing: install Docker Engine (Debian: apt-get install docker.io) and run again"
docker info >/dev/null 2>&1 \
    || die "the Docker Engine does not answer ('docker info' fails): start it (systemctl start docker) and run again"
for cmd in cargo rustc sha256sum readelf flock tar; do
    command -v "$cmd" >/dev/null 2>&1 || die "the '$cmd' command is missing; it is needed to build the images"
done

mkdir -p "$WORK/logs"
# Two test binaries may call this script at once; the second waits here and
# then finds everything built.
exec 9>"$WORK/.lock"
if ! flock -n 9; then
    echo "waiting for another build-offline-images.sh to finish..."
    flock 9
fi

HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
case "$HOST_TRIPLE" in
    x86_64-*) DEB_ARCH=amd64 ;;
    aarch64-*) DEB_ARCH=arm64 ;;
    *) die "no Debian architecture known for the host triple '$HOST_TRIPLE' (amd64 and arm64 are)" ;;
esac

# Background jobs and half-made root filesystems are cleaned up on any exit.
BASE_PIDS=()
cleanup() {
    local pid
    for pid in "${BASE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${BASE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -d "$WORK/rootfs" ]; then
        unmount_under "$WORK/rootfs"
        rm -rf --one-file-system "$WORK/rootfs"
    fi
}
trap cleanup EXIT

# debootstrap mounts /proc and /sys inside the new root while it installs; a
# failed run can leave them mounted. Unmount before deleting anything.
unmount_under() {
    local dir="$1" mnt
    command -v findmnt >/dev/null 2>&1 || return 0
    # grep finds nothing in the usual case; that is not an error.
    { findmnt -rn -o TARGET | grep -F "$dir/" || true; } | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
}

# === 1. Base images from nothing ===

# Packages on top of minbase, per base image.
declare -A BASE_PACKAGES=(
    [debian]=""
    [python]="python3"
    [python-grpc]="python3 python3-grpcio"
    [jdk]="openjdk-17-jdk-headless"
)

# The Debian mirror apt already uses here: a stanza (deb822 .sources) or line
# (.list) of type deb for the suite we want. Mirrors serve every suite, so
# any plain Debian archive entry does if the exact suite is not listed.
debian_mirror() {
    if [ -n "${MESH_DEBIAN_MIRROR:-}" ]; then
        echo "$MESH_DEBIAN_MIRROR"
        return
    fi
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$SUITE" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled != "no")
                for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) emit(u[i], s[j])
            types = ""; enabled = ""; nu = 0; ns = 0
        }
        function emit(uri, st) {
            if (st == suite) exact = exact ? exact : uri
            else if (st !~ /-security$/ && uri ~ /\/debian\/?$/) loose = loose ? loose : uri
        }
        FNR == 1 { flush() }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^Types:/   { types = $0; sub(/^Types:[ \t]*/, "", types) }
        /^Enabled:/ { enabled = tolower($2) }
        /^URIs:/    { for (i = 2; i <= NF; i++) u[++nu] = $i }
        /^Suites:/  { for (i = 2; i <= NF; i++) s[++ns] = $i }
        /^deb[ \t]/ {
            # one-line format: deb [options] URI suite components...
            n = 2; if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
            emit($n, $(n + 1))
        }
        END { flush(); print (exact ? exact : loose) }
    ' "${files[@]}"
}

# Deletes what a runtime image never reads: documentation, man pages,
# translations, apt's package lists and downloaded .debs, logs, and the
# build machine's own hostname and resolver (Docker supplies both).
trim_rootfs() {
    local root="$1"
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian/* "$root"/usr/share/bug/* \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
        "$root"/var/log/* "$root"/etc/hostname "$root"/etc/resolv.conf
}

# Makes one base image: debootstrap, trim, import. Runs in the background.
make_base() {
    local name="$1" ref="$2" recipe="$3" mirror="$4"
    local root="$WORK/rootfs/$name" packages="${BASE_PACKAGES[$name]}"
    unmount_under "$root"
    rm -rf --one-file-system "$root"
    mkdir -p "$root"
    debootstrap --variant=minbase --arch="$DEB_ARCH" ${packages:+--include="${packages// /,}"} \
        "$SUITE" "$root" "$mirror"
    trim_rootfs "$root"
    tar -C "$root" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL micromesh.base-recipe=$recipe" \
        --change 'CMD ["/bin/bash"]' \
        - "$ref"
    rm -rf --one-file-system "$root"
}

# The recipe hash covers everything that shapes a base: suite, architecture,
# packages, and the text of the functions above.
base_ref() {
    local name="$1" recipe
    recipe="$(printf '%s\n' "$SUITE" "$DEB_ARCH" "$name" "${BASE_PACKAGES[$name]}" \
        "$(declare -f trim_rootfs make_base)" | sha256sum | cut -c1-12)"
    echo "micromesh/base-$name:$SUITE-$recipe"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

declare -A BASE_REF
missing=()
for name in debian python python-grpc jdk; do
    BASE_REF[$name]="$(base_ref "$name")"
    image_exists "${BASE_REF[$name]}" || missing+=("$name")
done

if [ ${#missing[@]} -eq 0 ]; then
    step "base images present: ${BASE_REF[debian]} ${BASE_REF[python]} ${BASE_REF[python-grpc]} ${BASE_REF[jdk]}"
else
    [ "$(id -u)" = 0 ] || die "base images missing (${missing[*]}); making them runs debootstrap, which needs root: run 'sudo $0' once, later runs reuse them"
    if ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 \
            || die "debootstrap is missing and there is no apt-get to install it: install debootstrap and run again"
        step "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
            || die "could not install debootstrap with apt-get"
    fi
    MIRROR="$(debian_mirror)"
    [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list*; set MESH_DEBIAN_MIRROR to one (a URL ending in /debian)"
    step "base images: debootstrap $SUITE/$DEB_ARCH from $MIRROR, in the background"
    for name in "${missing[@]}"; do
        recipe="${BASE_REF[$name]##*-}"
        log="$WORK/logs/base-$name.log"
        echo "    ${BASE_REF[$name]}  (log: ${log#"$ROOT"/})"
        (set -euo pipefail; make_base "$name" "${BASE_REF[$name]}" "$recipe" "$MIRROR") >"$log" 2>&1 &
        BASE_PIDS+=("$!")
    done
fi

# === 2. Static Rust binaries ===

# The Rust images are the final stages of docker/rust.Dockerfile that start
# FROM scratch; each is named after its package and binary (the Dockerfile
# test checks that).
mapfile -t RUST_IMAGES < <(sed -n 's/^FROM scratch AS \([a-z0-9-]*\).*/\1/p' docker/rust.Dockerfile)
[ ${#RUST_IMAGES[@]} -gt 0 ] || die "found no 'FROM scratch AS <name>' stage in docker/rust.Dockerfile"

step "static Rust binaries for $HOST_TRIPLE: ${RUST_IMAGES[*]}"
packages=()
for name in "${RUST_IMAGES[@]}"; do packages+=(-p "$name"); done
# --target makes RUSTFLAGS reach only the binaries, not build scripts and
# proc macros (which the compiler loads, so they must stay dynamic).
# The `dist` profile (Cargo.toml): release, whole-program LTO, stripped.
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --profile dist --target "$HOST_TRIPLE" "${packages[@]}"

CONTEXT="$WORK/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/bin" "$CONTEXT/data"
for name in "${RUST_IMAGES[@]}"; do
    bin="$TARGET_DIR/$HOST_TRIPLE/dist/$name"
    [ -x "$bin" ] || die "cargo built no binary $bin; is '$name' a [[bin]] of package '$name'?"
    # FROM scratch has no dynamic loader: a dynamic binary would fail there
    # with a baffling "no such file or directory".
    if readelf -lW "$bin" | grep -q 'program interpreter'; then
        die "$bin is dynamically linked; it cannot run FROM scratch (was RUSTFLAGS overridden?)"
    fi
    cp "$bin" "$CONTEXT/bin/$name"
done

# === Wait for the bases ===

if [ ${#BASE_PIDS[@]} -gt 0 ]; then
    step "waiting for the base images"
    failed=()
    for i in "${!BASE_PIDS[@]}"; do
        name="${missing[$i]}"
        if ! wait "${BASE_PIDS[$i]}"; then failed+=("$name"); fi
    done
    BASE_PIDS=()
    for name in "${failed[@]}"; do
        echo "--- last lines of target/offline-images/logs/base-$name.log" >&2
        tail -n 20 "$WORK/logs/base-$name.log" >&2
    done
    [ ${#failed[@]} -eq 0 ] || die "making base image(s) ${failed[*]} failed (logs above); fix and run again"
fi

# === 3. App images ===

# ensure_image REF HASH CONTEXT DOCKERFILE [docker build args...]
# Builds REF unless an image labelled with HASH exists already.
RESULTS=()
ensure_image() {
    local ref="$1" hash="$2" context="$3" dockerfile="$4" started=$SECONDS existing log
    shift 4
    existing=""
    [ "$FORCE" = 1 ] || existing="$(docker images -q --filter "label=micromesh.content-hash=$hash" | head -n 1)"
    if [ -n "$existing" ]; then
        docker tag "$existing" "$ref"
        RESULTS+=("$ref unchanged")
        echo "    $ref  unchanged (content hash ${hash:0:12})"
        return
    fi
    log="$WORK/logs/$(basename "${ref%%:*}").log"
    previous="$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)"
    if ! docker build --label "micromesh.content-hash=$hash" -t "$ref" -f "$dockerfile" "$@" "$context" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "docker build of $ref failed (log above, whole log in ${log#"$ROOT"/})"
    fi
    # The image the tag pointed at before is now untagged: remove it, or
    # every code change would leave one more behind (Docker refuses while a
    # container still uses it, which is fine).
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$ref")" ]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    RESULTS+=("$ref built")
    echo "    $ref  built in $((SECONDS - started))s"
}

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

step "app images (tag $TAG)"

# Rust: each final stage of docker/rust.Dockerfile, its `--from=build /out/`
# sources read from $CONTEXT instead.
for name in "${RUST_IMAGES[@]}"; do
    dockerfile="$CONTEXT/$name.Dockerfile"
    {
        echo "# Generated by scripts/build-offline-images.sh from stage '$name' of docker/rust.Dockerfile."
        awk -v name="$name" '
            /^FROM / { inside = ($0 ~ ("^FROM scratch AS " name "([ \t]|$)")) }
            inside
        ' docker/rust.Dockerfile | sed -E '/^COPY /{ s#--from=build ##; s# /out/# #g; }'
    } >"$dockerfile"
    ensure_image "micromesh/$name:$TAG" "$(hash_of "$dockerfile" "$CONTEXT/bin/$name")" "$CONTEXT" "$dockerfile"
done

# Python and Java: the learner Dockerfiles as they are, on the bases above.
# The context holds only the files they COPY, at their repository paths.
service_context() {
    local dir="$WORK/context-$1"
    shift
    rm -rf "$dir"
    for file in "$@"; do
        mkdir -p "$dir/$(dirname "$file")"
        cp "$file" "$dir/$file"
    done
    echo "$dir"
}

ctx="$(service_context helloworld-service services/helloworld-service/helloworld.py)"
ensure_image "micromesh/helloworld-service:$TAG" \
    "$(printf '%s\n' "${BASE_REF[python]}" | cat - docker/helloworld-service.Dockerfile services/helloworld-service/helloworld.py | sha256sum | cut -d' ' -f1)" \
    "$ctx" docker/helloworld-service.Dockerfile \
    --build-arg "PYTHON_IMAGE=${BASE_REF[python]}"

ctx="$(service_context hello-grpc services/hello-grpc/server.py services/hello-grpc/client.py)"
ensure_image "micromesh/hello-grpc:$TAG" \
    "$(printf '%s\n' "${BASE_REF[python-grpc]}" | cat - docker/hello-grpc.Dockerfile services/hello-grpc/server.py services/hello-grpc/client.py | sha256sum | cut -d' ' -f1)" \
    "$ctx" docker/hello-grpc.Dockerfile \
    --build-arg "PYTHON_IMAGE=${BASE_REF[python-grpc]}"

ctx="$(service_context sentiment-service services/sentiment-service/Sentiment.java)"
ensure_image "micromesh/sentiment-service:$TAG" \
    "$(printf '%s\n' "${BASE_REF[jdk]}" "${BASE_REF[debian]}" | cat - docker/sentiment-service.Dockerfile services/sentiment-service/Sentiment.java | sha256sum | cut -d' ' -f1)" \
    "$ctx" docker/sentiment-service.Dockerfile \
    --build-arg "JDK_IMAGE=${BASE_REF[jdk]}" --build-arg "RUNTIME_IMAGE=${BASE_REF[debian]}"

# The Java build stage is left behind as an untagged image of base-jdk's
# lineage (the classic builder keeps stages); drop ours, and only ours.
docker image prune -f --filter "label=micromesh.base-recipe" >/dev/null 2>&1 || true

# === 4. Summary ===

step "images ($((SECONDS - STARTED))s)"
printf '    %-44s %10s  %s\n' IMAGE SIZE STATUS
for entry in "${RESULTS[@]}" "${BASE_REF[debian]} base" "${BASE_REF[python]} base" "${BASE_REF[python-grpc]} base" "${BASE_REF[jdk]} base"; do
    ref="${entry% *}"
    size="$(docker image inspect -f '{{.Size}}' "$ref")"
    printf '    %-44s %7.1f MB  %s\n' "$ref" "$(awk -v b="$size" 'BEGIN { print b / 1000000 }')" "${entry##* }"
done
