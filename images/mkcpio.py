#!/usr/bin/env python3
"""Pack host files into a deterministic, uncompressed newc cpio archive (a Linux initramfs).

Usage: mkcpio.py OUT.cpio SRC:DEST[:MODE] ...

- Every DEST is an absolute path in the archive; missing parent directories are added (0755).
- `/dev` (0755) and `/dev/console` (character device 5:1, 0600) are always present, so the
  kernel can give the initramfs's init its console before anything is mounted.
- MODE is octal permission bits (e.g. 0755). Without it a file gets 0755 if its owner may
  execute it on the host, else 0644, so the result does not depend on the host's umask.
- Owners are 0:0, inode numbers count up from 1 in path order, and every mtime is
  $SOURCE_DATE_EPOCH (default 0): the same inputs always give the same bytes.
- Uncompressed on purpose: unpacking gzip cost ~31 s in emulated guest kernel mode on PVM hosts.

The layout follows the kernel's "newc" format (Documentation/driver-api/early-userspace/
buffer-format.rst): a 110-byte ASCII header, the NUL-terminated name, padding to 4 bytes,
the data, padding to 4 bytes; the archive ends with an entry named TRAILER!!!.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
COPY_CHUNK = 1 << 20


class UsageError(Exception):
    """A bad argument or input file; reported as one line."""


@dataclass(frozen=True)
class Entry:
    """One archive member. `src` is set for regular files only."""

    path: str  # archive path without the leading slash, e.g. "dev/console"
    mode: int  # full st_mode: type and permission bits
    src: str | None = None
    rdev: tuple[int, int] = (0, 0)


def parse_spec(spec: str) -> Entry:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"bad spec {spec!r}: want SRC:DEST[:MODE]")
    src, dest = parts[0], parts[1]
    pure = PurePosixPath(dest)
    if not pure.is_absolute() or ".." in pure.parts or dest.endswith("/") or str(pure) == "/":
        raise UsageError(f"bad destination {dest!r}: want an absolute file path without '..'")
    try:
        st = os.stat(src)
    except OSError as e:
        raise UsageError(f"{src}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{src}: not a regular file")
    if len(parts) == 3:
        try:
            perm = int(parts[2], 8)
        except ValueError:
            raise UsageError(f"bad mode {parts[2]!r} in {spec!r}: want octal") from None
        if perm < 0 or perm > 0o7777:
            raise UsageError(f"bad mode {parts[2]!r} in {spec!r}")
    else:
        perm = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    return Entry(path=str(pure).lstrip("/"), mode=stat.S_IFREG | perm, src=src)


def with_parents(files: list[Entry]) -> list[Entry]:
    """Adds /dev, /dev/console and every missing parent directory; sorts parents first."""
    entries: dict[str, Entry] = {
        "dev": Entry("dev", stat.S_IFDIR | 0o755),
        "dev/console": Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    }
    for f in files:
        if f.path in entries:
            raise UsageError(f"/{f.path} given twice or clashes with a built-in entry")
        entries[f.path] = f
    for f in files:
        for parent in PurePosixPath(f.path).parents:
            p = str(parent)
            if p == ".":
                continue
            existing = entries.get(p)
            if existing is None:
                entries[p] = Entry(p, stat.S_IFDIR | 0o755)
            elif not stat.S_ISDIR(existing.mode):
                raise UsageError(f"/{p} is a file but /{f.path} needs it as a directory")
    # Sorting by path components puts every directory right before its contents.
    return sorted(entries.values(), key=lambda e: PurePosixPath(e.path).parts)


def header(ino: int, entry: Entry, size: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
    head = MAGIC + b"".join(b"%08X" % v for v in fields) + name
    return head + pad(len(head))


def pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def trailer_bytes() -> bytes:
    """The end marker: ino 0, mode 0, nlink 1, like the kernel's usr/gen_init_cpio writes it."""
    name = TRAILER.encode() + b"\0"
    fields = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0)
    head = MAGIC + b"".join(b"%08X" % v for v in fields) + name
    return head + pad(len(head))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: mkcpio.py OUT.cpio SRC:DEST[:MODE] ...", file=sys.stderr)
        return 2
    out_path = argv[1]
    try:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
        entries = with_parents([parse_spec(s) for s in argv[2:]])
        tmp = f"{out_path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "wb") as out:
                for ino, entry in enumerate(entries, start=1):
                    size = os.stat(entry.src).st_size if entry.src else 0
                    out.write(header(ino, entry, size, mtime))
                    if entry.src:
                        copy_file(entry.src, size, out)
                out.write(trailer_bytes())
            os.replace(tmp, out_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (UsageError, OSError, ValueError) as e:
        print(f"mkcpio: {e}", file=sys.stderr)
        return 1
    return 0


def copy_file(src: str, size: int, out) -> None:
    copied = 0
    with open(src, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            out.write(chunk)
            copied += len(chunk)
    if copied != size:
        raise UsageError(f"{src}: changed while being packed")
    out.write(pad(size))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
