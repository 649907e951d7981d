#!/usr/bin/env bash
# Packs host files into an UNCOMPRESSED newc cpio for the guest kernel's initramfs.
#
#   images/mkinitramfs.sh OUT.cpio SRC:DEST[:MODE] ...
#
# Parent directories, /dev and /dev/console (char 5:1) are added; owners are 0:0, inode numbers
# and mtimes ($SOURCE_DATE_EPOCH, default 0) are fixed, so equal inputs give identical bytes.
# Uncompressed because unpacking gzip took ~31 s in emulated guest kernel mode on PVM hosts.
# No root needed: the device node is written into the archive, not onto the host.
# Needs: python3 (>= 3.8).
set -euo pipefail

die() { echo "mkinitramfs: $*" >&2; exit 1; }

[[ $# -ge 2 ]] || die "usage: $0 OUT.cpio SRC:DEST[:MODE] ..."
command -v python3 >/dev/null || die "python3 not found"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/mkcpio.py" "$@"
