"""Keywords the Robot Framework peer needs that SeleniumLibrary lacks: the
sign-in code (RFC 6238, SHA-1, 6 digits, 30 s — as precert's `totp` step)
and a clock around the polling loop (written to a file for bench-wire)."""

import base64
import hashlib
import hmac
import struct
import time


class PortalClock:
    ROBOT_LIBRARY_SCOPE = "GLOBAL"

    def __init__(self):
        self._started = None

    def totp_code(self, seed):
        key = base64.b32decode(seed.upper() + "=" * (-len(seed) % 8))
        counter = struct.pack(">Q", int(time.time()) // 30)
        digest = hmac.new(key, counter, hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
        return "%06d" % (value % 1000000)

    def start_clock(self):
        self._started = time.monotonic()

    def stop_clock(self, path):
        elapsed = time.monotonic() - self._started
        with open(path, "w") as f:
            f.write("%.6f\n" % elapsed)
