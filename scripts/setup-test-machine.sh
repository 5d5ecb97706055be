#!/usr/bin/env bash
# Installs what the test suite needs and a fresh machine may lack.
#
# On Debian/Ubuntu as root (CI, the project's machines) it installs the
# missing packages with apt-get and pip. Anywhere else it names what is
# missing and how to get it, and fails: a missing prerequisite must never
# turn into a silently skipped test.
set -euo pipefail

# command -> Debian package that provides it
declare -A APT=(
    [python3]=python3
    [java]=default-jdk-headless
    [javac]=default-jdk-headless
    [docker]=docker.io
    [debootstrap]=debootstrap
    [promtool]=prometheus
    # A real Prometheus scrapes a running mesh (mesh/control/tests/prometheus.rs).
    [prometheus]=prometheus
    # The dashboard's browser test (mesh/control/tests/browser.rs).
    [chromium]=chromium
    [chromedriver]=chromium-driver
    # The cluster scripts' lint (tests/k8s/tests/scripts.rs).
    [shellcheck]=shellcheck
)
# python module -> pip package
declare -A PIP=(
    [yaml]=pyyaml
    [jsonschema]=jsonschema
    # Strict offline validation of the rendered k8s/ overlays (tests/k8s).
    [kubernetes_validate]=kubernetes-validate
    # The gRPC demo (services/hello-grpc) and lab 09.
    [grpc]=grpcio
)

missing_apt=()
for cmd in "${!APT[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing_apt+=("${APT[$cmd]}")
done

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

if [ ${#missing_apt[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    pkgs=($(printf '%s\n' "${missing_apt[@]}" | sort -u))
    if can_apt; then
        echo "==> apt-get install ${pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    else
        echo "The test suite needs these packages (Debian/Ubuntu names): ${pkgs[*]}" >&2
        echo "Install them (e.g. 'sudo apt-get install ${pkgs[*]}') and run again." >&2
        exit 1
    fi
fi

missing_pip=()
for module in "${!PIP[@]}"; do
    python3 -c "import $module" >/dev/null 2>&1 || missing_pip+=("${PIP[$module]}")
done
if [ ${#missing_pip[@]} -gt 0 ]; then
    echo "==> pip install ${missing_pip[*]}"
    python3 -m pip install --quiet "${missing_pip[@]}" \
        || python3 -m pip install --quiet --break-system-packages "${missing_pip[@]}" \
        || { echo "Could not pip-install ${missing_pip[*]}: install them and run again." >&2; exit 1; }
fi

if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
    echo "warning: docker is installed but its engine does not answer ('docker info' fails);" >&2
    echo "         the container tests will fail until it runs ('sudo systemctl start docker')." >&2
fi
# kubectl renders the k8s/ overlays (`kubectl kustomize`, tests/k8s). It is
# not in Debian's current apt; it is a single static binary from upstream.
if ! command -v kubectl >/dev/null 2>&1; then
    echo "The test suite needs kubectl (it renders k8s/ with 'kubectl kustomize')." >&2
    echo "It is not in Debian's apt; install the static binary from upstream, e.g.:" >&2
    echo "  curl -LO \"https://dl.k8s.io/release/\$(curl -Ls https://dl.k8s.io/release/stable.txt)/bin/linux/amd64/kubectl\"" >&2
    echo "  sudo install -m 0755 kubectl /usr/local/bin/kubectl" >&2
    echo "(see https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/), then run again." >&2
    exit 1
fi
echo "==> test prerequisites present"
