#!/usr/bin/env bash
# Makes a minimal busybox root filesystem in DIR from Debian's busybox-static: /bin/busybox with
# a link per applet, /etc/passwd with root, and empty tmp, proc, sys and dev. Used for the setup's
# first container and the benchmarks' bundles and images (nothing can be pulled on these hosts).
#
#   images/busybox-rootfs.sh DIR
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
[[ -x /bin/busybox ]] || { echo "busybox-rootfs.sh: install busybox-static" >&2; exit 1; }
mkdir -p "$dir"/{bin,etc,tmp,proc,sys,dev}
cp /bin/busybox "$dir/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$dir/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/etc/passwd"
