#!/usr/bin/env bash
# Bulkhead's one setup command: installs the Debian packages, builds the guest kernel (cached
# outside the clone by content hash), the guest initramfs images and the binaries, installs them,
# and runs a first container (a busybox bundle through `bulkhead run`) to show it all works.
#
#   scripts/setup.sh [--no-demo]
#
# Installs:
#   /usr/local/bin/bulkhead, /usr/local/bin/bulkhead-vmm, /usr/local/bin/containerd-shim-bulkhead-v2
#     (containerd's runtime io.containerd.bulkhead.v2: `ctr run --runtime io.containerd.bulkhead.v2`)
#   /usr/local/share/bulkhead/{vmlinux,bzImage,agent-initramfs.cpio,test-initramfs.cpio}
#   /etc/bulkhead/config.toml: every setting, commented out with its default (only if absent)
#   runtime `bulkhead` in /etc/docker/daemon.json and /etc/containers/containers.conf (merged)
#   the nightly Rust toolchain (rustup) and cargo-fuzz, if missing: scripts/fuzz.sh needs them
# Caches: ${BULKHEAD_CACHE_DIR:-/var/cache/bulkhead} (guest kernel builds). Idempotent: a second
# run reuses the cached kernel and cargo's incremental build.
set -euo pipefail

die() { echo "setup: $*" >&2; exit 1; }
note() { echo "setup: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
share=/usr/local/share/bulkhead
bindir=/usr/local/bin
demo=1
for arg in "$@"; do
    case "$arg" in
        --no-demo) demo=0 ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done
[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and uses /dev/kvm)"

# ---- packages ----------------------------------------------------------------------------
# Kernel build deps come from the kernel build script itself so the two lists cannot drift.
kernel_deps=$(sed -n 's/^KERNEL_BUILD_DEPS="\(.*\)"$/\1/p' "$repo/kernel-config/build.sh")
[[ -n "$kernel_deps" ]] || die "cannot read KERNEL_BUILD_DEPS from kernel-config/build.sh"
packages="$kernel_deps python3 busybox-static libc6-dev pkg-config"
missing=()
for p in $packages; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    note "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed: ${missing[*]}"
fi
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"

# ---- fuzzing tools -------------------------------------------------------------------------
# scripts/fuzz.sh (which scripts/test.sh runs) builds with cargo-fuzz on the nightly toolchain.
toolchains=$(rustup toolchain list 2>/dev/null || true)
if ! grep -q '^nightly' <<<"$toolchains"; then
    command -v rustup >/dev/null \
        || die "the nightly toolchain (for scripts/fuzz.sh) is missing and there is no rustup to install it (https://rustup.rs)"
    note "installing the nightly toolchain (for scripts/fuzz.sh)"
    rustup toolchain install nightly --profile minimal \
        || die "cannot install the nightly toolchain (rustup toolchain install nightly --profile minimal: is static.rust-lang.org reachable?)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    note "installing cargo-fuzz (for scripts/fuzz.sh; a few minutes)"
    cargo install cargo-fuzz --locked \
        || die "cannot install cargo-fuzz (cargo install cargo-fuzz --locked: is crates.io reachable?)"
fi

# ---- guest kernel ------------------------------------------------------------------------
note "guest kernel (first build takes ~5 minutes on 2 cores, then it is cached)"
kdir=$("$repo/kernel-config/build.sh" | tail -n 1) || die "guest kernel build failed"
install -D -m 0644 "$kdir/vmlinux" "$share/vmlinux"
install -D -m 0644 "$kdir/bzImage" "$share/bzImage"

# ---- binaries and guest images, side by side ------------------------------------------------
# The guest images are built in the background while the host binaries build: their last step
# is one long single-threaded link (fat LTO, one codegen unit), which leaves a core idle. They
# use their own profile, so the two cargo runs do not wait on each other's build directory lock.
note "building binaries and guest initramfs images"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
images_log=$(mktemp /tmp/bulkhead-setup-images.XXXXXX)
(
    set -euo pipefail
    cpio=$("$repo/images/build-test-initramfs.sh" | tail -n 1)
    install -D -m 0644 "$cpio" "$share/test-initramfs.cpio"
    cpio=$("$repo/images/build-agent-initramfs.sh" | tail -n 1)
    install -D -m 0644 "$cpio" "$share/agent-initramfs.cpio"
) >"$images_log" 2>&1 &
images_pid=$!
images_done() { # waits for the image builds; their output on failure
    wait "$images_pid" && { rm -f "$images_log"; return 0; }
    cat "$images_log" >&2
    rm -f "$images_log"
    return 1
}
if ! cargo build --release --locked --manifest-path "$repo/Cargo.toml" -p bulkhead-vmm -p bulkhead \
    -p containerd-shim-bulkhead-v2; then
    images_done || true
    die "cargo build failed"
fi
install -m 0755 "$CARGO_TARGET_DIR/release/bulkhead-vmm" "$bindir/bulkhead-vmm"
install -m 0755 "$CARGO_TARGET_DIR/release/bulkhead" "$bindir/bulkhead"
install -m 0755 "$CARGO_TARGET_DIR/release/containerd-shim-bulkhead-v2" "$bindir/containerd-shim-bulkhead-v2"
"$repo/scripts/register-engines.sh" "$bindir/bulkhead" || { images_done || true; die "registering the runtime with Docker and podman failed"; }
images_done || die "guest initramfs build failed (test init and agent images)"

# ---- settings ----------------------------------------------------------------------------
if [[ ! -e /etc/bulkhead/config.toml ]]; then
    install -D -m 0644 "$repo/shim/config.toml" /etc/bulkhead/config.toml
    note "installed /etc/bulkhead/config.toml (every setting, commented out with its default)"
fi

note "installed: $bindir/bulkhead-vmm, $bindir/bulkhead, $bindir/containerd-shim-bulkhead-v2, $share/, /etc/bulkhead/config.toml"

# ---- first container ---------------------------------------------------------------------
if [[ $demo -eq 1 ]]; then
    note "running a first container: busybox through 'bulkhead run' (about 15-30 s on PVM-backed KVM, about a second on hardware KVM)"
    demo_dir=$(mktemp -d /tmp/bulkhead-demo.XXXXXX)
    trap 'rm -rf "$demo_dir"' EXIT
    "$repo/images/busybox-rootfs.sh" "$demo_dir/rootfs" || die "cannot make the demo's busybox root"
    (cd "$demo_dir" && bulkhead spec)
    python3 - "$demo_dir/config.json" <<'PY' || die "cannot write the demo bundle"
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c",
    'echo "  inside the container: kernel $(uname -r), $(nproc) vCPU(s),'
    ' $(awk \'/MemTotal/ {print int($2/1024)}\' /proc/meminfo) MiB of RAM,'
    ' CPU flag \"$(grep -o -m1 -w hypervisor /proc/cpuinfo)\""']
json.dump(spec, open(path, "w"), indent=2)
PY
    echo "  on the host:          kernel $(uname -r), $(nproc) CPU(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB of RAM"
    bulkhead run --bundle "$demo_dir" "bulkhead-demo-$$" \
        || die "the first container failed (see /var/log/bulkhead/bulkhead-demo-$$.console.log)"
    note "the container ran in its own micro-VM: its own kernel, vCPUs and memory"
fi
