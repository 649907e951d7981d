#!/usr/bin/env bash
# Builds Bulkhead's guest kernel from Debian's linux-source-6.1 and caches it by content.
#
#   kernel-config/build.sh [--force] [--print-dir] [--verbose]
#
# Cache: ${BULKHEAD_CACHE_DIR:-/var/cache/bulkhead}/kernel/<hash>/ with
#   vmlinux     stripped ELF (PVH note kept: QEMU -kernel and ELF loaders boot it directly)
#   bzImage     LZ4-compressed (the decompressor runs in emulated guest kernel mode on PVM)
#   config      the final .config
#   System.map  symbols of the unstripped vmlinux (to read oopses and emulation failures)
# where <hash> is sha256 over bulkhead.config, patches/*.patch, this script and the
# linux-source-6.1 package version. A cache hit returns at once. The last line of stdout
# is always the cache directory; progress goes to stderr, the full log to build.log.
#
#   --print-dir  print the directory that would be used and build nothing
#   --force      rebuild even if the cache directory is complete
#   --verbose    on failure, also show the end of the build log (default when CI=true)
#
# Steps: extract the tarball in a scratch dir under the cache dir, apply patches/ with
# patch -p1, make tinyconfig, merge bulkhead.config (merge_config.sh -m + olddefconfig),
# check that every option line of the fragment took effect, make vmlinux bzImage, install
# the results by renaming a finished directory, delete the scratch dir.
set -euo pipefail

# Debian 12 packages this script needs (the project's setup script installs them).
KERNEL_BUILD_DEPS="linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev lz4 xz-utils binutils util-linux"

SOURCE_PACKAGE=linux-source-6.1
SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
ARCH=x86_64
export ARCH

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/bulkhead.config"
patch_dir="$here/patches"
cache_root="${BULKHEAD_CACHE_DIR:-/var/cache/bulkhead}/kernel"

die() { echo "kernel-config/build.sh: $*" >&2; exit 1; }
note() { echo "kernel-config/build.sh: $*" >&2; }

force=0 print_dir=0 verbose=0
[[ "${CI:-}" == "true" ]] && verbose=1
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-dir) print_dir=1 ;;
        --verbose) verbose=1 ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

[[ -f "$fragment" ]] || die "missing $fragment"
shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob

src_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null) \
    || die "package $SOURCE_PACKAGE is not installed (apt-get install $KERNEL_BUILD_DEPS)"
[[ -n "$src_version" ]] || die "package $SOURCE_PACKAGE is not installed"

cache_key() {
    {
        echo "source $SOURCE_PACKAGE $src_version"
        for f in "$fragment" "${patches[@]}" "${BASH_SOURCE[0]}"; do
            printf '%s %s\n' "$(basename "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        done
    } | sha256sum | cut -c1-16
}
hash=$(cache_key)
dir="$cache_root/$hash"

if [[ $print_dir -eq 1 ]]; then
    echo "$dir"
    exit 0
fi
complete() { [[ -s "$1/vmlinux" && -s "$1/bzImage" && -s "$1/config" && -s "$1/System.map" ]]; }
if [[ $force -eq 0 ]] && complete "$dir"; then
    echo "$dir"
    exit 0
fi

# ---- slow path: build --------------------------------------------------------------------
for cmd in tar xz make gcc ld flex bison bc lz4 patch strip readelf flock perl; do
    command -v "$cmd" >/dev/null || die "missing command '$cmd' (apt-get install $KERNEL_BUILD_DEPS)"
done
[[ -r "$SOURCE_TARBALL" ]] || die "missing $SOURCE_TARBALL (apt-get install $SOURCE_PACKAGE)"
[[ -r /usr/include/gelf.h ]] || die "missing libelf headers (apt-get install libelf-dev)"
mkdir -p "$cache_root" || die "cannot create $cache_root"

# One build per hash at a time; a second caller waits and then finds the cache filled.
exec 9>"$cache_root/.$hash.lock" || die "cannot open lock file in $cache_root"
flock 9 || die "cannot lock $cache_root/.$hash.lock"
if [[ $force -eq 0 ]] && complete "$dir"; then
    echo "$dir"
    exit 0
fi

scratch=$(mktemp -d "$cache_root/.build-$hash.XXXXXX") || die "cannot create a scratch dir in $cache_root"
log="$scratch/build.log"
failed_log="$cache_root/$hash.failed.log"
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && -f "$log" ]]; then
        cp -f "$log" "$failed_log" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

fail_build() {
    if [[ $verbose -eq 1 ]]; then
        tail -n 40 "$log" >&2 || true
    fi
    die "$1 (log: $failed_log)"
}

note "building $SOURCE_PACKAGE $src_version into $dir (log: $failed_log on failure)"
tree="$scratch/src"
mkdir -p "$tree"
tar -xf "$SOURCE_TARBALL" -C "$tree" --strip-components=1 >>"$log" 2>&1 \
    || fail_build "cannot extract $SOURCE_TARBALL"

for p in "${patches[@]}"; do
    patch -d "$tree" -p1 --forward --batch <"$p" >>"$log" 2>&1 \
        || fail_build "patch $(basename "$p") does not apply to $SOURCE_PACKAGE $src_version"
done

# Reproducible version banner.
export KBUILD_BUILD_USER=bulkhead KBUILD_BUILD_HOST=bulkhead
export KBUILD_BUILD_TIMESTAMP="$SOURCE_PACKAGE $src_version"

make -C "$tree" tinyconfig >>"$log" 2>&1 || fail_build "make tinyconfig failed"
(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$fragment") >>"$log" 2>&1 \
    || fail_build "merge_config.sh failed"
make -C "$tree" olddefconfig >>"$log" 2>&1 || fail_build "make olddefconfig failed"

# Every option line of the fragment must have stuck: a line that did not names a missing
# dependency or a renamed option.
not_stuck=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF -- "$line" "$tree/.config" || not_stuck+=("${line%%=*} (want ${line#*=})")
            ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            grep -q "^$opt=" "$tree/.config" && not_stuck+=("$opt (want not set)")
            ;;
    esac
done <"$fragment"
if [[ ${#not_stuck[@]} -gt 0 ]]; then
    for o in "${not_stuck[@]}"; do
        echo "kernel-config/build.sh: option did not stick: $o" >&2
    done
    cp -f "$tree/.config" "$cache_root/$hash.failed.config" 2>/dev/null || true
    die "${#not_stuck[@]} option(s) of bulkhead.config did not stick (result: $cache_root/$hash.failed.config)"
fi

jobs=$(nproc 2>/dev/null || echo 2)
note "compiling with make -j$jobs vmlinux bzImage (minutes)"
make -C "$tree" -j"$jobs" vmlinux bzImage >>"$log" 2>&1 || fail_build "kernel build failed"

out="$scratch/out"
mkdir -p "$out"
strip -o "$out/vmlinux" "$tree/vmlinux" || fail_build "strip vmlinux failed"
readelf -n "$out/vmlinux" 2>/dev/null | grep -q "Xen" \
    || fail_build "stripped vmlinux lost its PVH (Xen ELF) note"
cp "$tree/arch/x86/boot/bzImage" "$out/bzImage" || fail_build "bzImage missing"
cp "$tree/.config" "$out/config"
cp "$tree/System.map" "$out/System.map"
cp "$log" "$out/build.log"

# Install atomically: the finished directory replaces any previous one by rename.
if [[ -e "$dir" ]]; then
    mv -T "$dir" "$scratch/old" || die "cannot move old $dir aside"
fi
mv -T "$out" "$dir" || die "cannot install $dir"
rm -f "$failed_log" "$cache_root/$hash.failed.config"
note "done: vmlinux $(stat -c %s "$dir/vmlinux") bytes, bzImage $(stat -c %s "$dir/bzImage") bytes"
echo "$dir"
