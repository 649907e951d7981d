#!/usr/bin/env python3
"""Writes seed inputs that walk the fuzz targets through a full connection life cycle,
so the fuzzer starts from deep states. Run: python3 seeds/make_seeds.py (from vmm/fuzz)."""
import struct, os

here = os.path.dirname(os.path.abspath(__file__))

def hdr(src_port, dst_port, op, length=0, flags=0, buf_alloc=65536, fwd=0, src_cid=3, dst_cid=2):
    return struct.pack('<QQIIIHHIII', src_cid, dst_cid, src_port, dst_port, length, 1, op, flags, buf_alloc, fwd)

def pkt(h, payload=b''):
    return bytes([2]) + h + struct.pack('<H', len(payload)) + payload

def rx(n, size=4096):
    return bytes([3, n - 1]) + b''.join(struct.pack('<H', size) for _ in range(n))

HOST_PORT = 1 << 30
seed = bytes([1]) + rx(4) + bytes([4]) + struct.pack('<I', 0)          # host CONNECT 1024
seed += pkt(hdr(1024, HOST_PORT, 2))                                     # guest RESPONSE
seed += pkt(hdr(1024, HOST_PORT, 5, 16), b'0123456789abcdef')            # guest RW
seed += bytes([5, 0, 8]) + b'hostdata'                                   # host writes
seed += rx(2) + bytes([5, 1, 0])                                         # host reads
seed += pkt(hdr(1024, HOST_PORT, 6, fwd=8))                              # credit update
seed += pkt(hdr(1024, HOST_PORT, 4, flags=3))                            # shutdown both
open(os.path.join(here, 'vsock_tx', 'lifecycle'), 'wb').write(seed)

seed = bytes([0]) + rx(2) + pkt(hdr(7, 5000, 1))                          # guest REQUEST, no listener
seed += pkt(hdr(7, 5000, 5, 4), b'data') + pkt(hdr(7, 5000, 3))
open(os.path.join(here, 'vsock_tx', 'strays'), 'wb').write(seed)

# mmio: handshake with all queues of size 16, then kick each queue.
seed = bytes([3]) + struct.pack('<Q', (1 << 29)) + struct.pack('<HHH', 16, 16, 16)
seed += bytes([4, 0, 4, 1, 4, 2])
open(os.path.join(here, 'mmio_transport', 'handshake'), 'wb').write(seed)
