"""The memory envelope format: its layout and sizes, and what can be read of an envelope without a key.

Layout, all integers big-endian (`aiinfra._native.EnvelopeCodec` reads and writes them):

    format u8 = 1 | version u64 | expires_at_ms u64 | key id length u8 | key id (ASCII)
    | nonce (12 random bytes) | AES-256-GCM ciphertext | tag (16)

Associated data = the header (format .. key id) followed by the full Redis key, so every byte is
authenticated and a value copied under another key or agent fails to open. The version sits at a
fixed offset (bytes 1..9) so a Lua script can compare it for If-Match without the key.
"""

from __future__ import annotations

import struct

from aiinfra._native import IntegrityError

__all__ = [
    "FORMAT",
    "MAX_OVERHEAD",
    "IntegrityError",
    "key_id_of",
    "version_bytes",
]

FORMAT = 1
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32
_FIXED = struct.Struct(">BQQB")
# The most an envelope adds to its plaintext: the header with a key id of 255 bytes, nonce, tag.
MAX_OVERHEAD = _FIXED.size + 255 + NONCE_LEN + TAG_LEN


def version_bytes(version: int) -> bytes:
    """The 8 bytes a stored envelope holds at offset 1: what If-Match scripts compare."""
    return version.to_bytes(8, "big")


def key_id_of(blob: bytes) -> str | None:
    """The key id an envelope names (unauthenticated: only to pick what to rewrap)."""
    if len(blob) < _FIXED.size or blob[0] != FORMAT:
        return None
    end = _FIXED.size + blob[_FIXED.size - 1]
    return blob[_FIXED.size : end].decode("ascii", "replace")
