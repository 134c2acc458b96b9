"""The memory envelope in plain Python (`cryptography` AES-GCM): the test oracle the native
`aiinfra._native.EnvelopeCodec` is checked against, byte for byte (tests/fixtures/envelope).

It lives with the tests because the Lambda layer leaves `cryptography` out; the header layout is
written out here from the format's description in `aiinfra.memory.envelope`, not imported.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

from aiinfra._native import INDEX_ENCODING_MEMBER, IntegrityError, Memory, encode_commands
from aiinfra.memory.envelope import FORMAT, KEY_LEN, NONCE_LEN, TAG_LEN
from aiinfra.memory.resp import Arg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# format u8 | version u64 | expires_at_ms u64 | key id length u8, big-endian; the key id follows.
_HEADER = struct.Struct(">BQQB")


def new_versions(count: int) -> list[int]:
    """`count` random 64-bit versions from one OS call; never 0 (0 is no version)."""
    return [version or 1 for version in struct.unpack(f">{count}Q", os.urandom(8 * count))]


class ReferenceCodec:
    """The envelope in plain Python: the specification the native codec is checked against."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current key {current!r} is not in the keyring")
        if any(len(key) != KEY_LEN for key in keys.values()):
            raise ValueError(f"every key must be {KEY_LEN} bytes")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current_key_id = current

    def seal(
        self,
        redis_key: bytes,
        version: int,
        expires_at_ms: int,
        plaintext: bytes,
        nonce: bytes | None = None,
    ) -> bytes:
        """`nonce` is for test vectors only; a real write always draws a fresh random one."""
        key_id = self.current_key_id.encode("ascii")
        header = _HEADER.pack(FORMAT, version, expires_at_ms, len(key_id)) + key_id
        nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
        sealed = self._ciphers[self.current_key_id].encrypt(nonce, plaintext, header + redis_key)
        return header + nonce + sealed

    def open(self, redis_key: bytes, blob: bytes) -> tuple[int, int, bytes]:
        if len(blob) < _HEADER.size or blob[0] != FORMAT:
            raise IntegrityError("not an envelope of format 1")
        _, version, expires_at_ms, key_id_len = _HEADER.unpack_from(blob)
        header_len = _HEADER.size + key_id_len
        if len(blob) < header_len + NONCE_LEN + TAG_LEN:
            raise IntegrityError("envelope is truncated")
        cipher = self._ciphers.get(blob[_HEADER.size : header_len].decode("ascii", "replace"))
        if cipher is None:
            raise IntegrityError("sealed with a key the keyring does not hold")
        nonce = blob[header_len : header_len + NONCE_LEN]
        try:
            plaintext = cipher.decrypt(nonce, blob[header_len + NONCE_LEN :], blob[:header_len] + redis_key)
        except InvalidTag:
            raise IntegrityError("authentication failed") from None
        return version, expires_at_ms, plaintext

    def seal_many(self, items: list[tuple[bytes, int, int, bytes]]) -> list[bytes]:
        return [self.seal(*item) for item in items]

    def seal_command(
        self,
        head: Sequence[Arg],
        redis_key: bytes,
        expires_at_ms: int,
        plaintext: bytes,
        tail: Sequence[Arg],
    ) -> tuple[bytes, int]:
        """One command's RESP bytes: `head`, a new envelope of `plaintext` for `redis_key` (fresh
        version and nonce), then `tail`; and the new version."""
        [version] = new_versions(1)
        sealed = self.seal(redis_key, version, expires_at_ms, plaintext)
        return encode_commands([[*head, sealed, *tail]]), version

    def seal_batch_put(
        self,
        prefix: bytes,
        index_key: bytes,
        index_ttl_ms: int,
        now_ms: int,
        items: list[tuple[str, bytes, int]],
        answer_replaced: bool = False,
    ) -> tuple[bytes, int, list[Memory]]:
        """The RESP bytes of an atomic batch put of `(key, value_json, ttl_seconds)` items: `MULTI`,
        `SET <prefix><key> <sealed> PXAT <expires_at_ms>` per memory (ending in `GET` with
        `answer_replaced`: the SET then answers the value it replaced), `ZADD <index_key> 0 <key>
        ...`, `PEXPIRE <index_key> <index_ttl_ms>`, `EXEC`, and for more than one memory the
        `INDEX_ENCODING_MEMBER` added first to the index and removed after; how many replies it
        gets; and the memories as written (expiring `ttl` seconds after `now_ms`, each a new version)."""
        keys = [key for key, _, _ in items]
        expiries = [now_ms + ttl * 1000 for _, _, ttl in items]
        versions = new_versions(len(items))
        redis_keys = [prefix + key.encode() for key in keys]
        values = [value for _, value, _ in items]
        sealed = self.seal_many(list(zip(redis_keys, versions, expiries, values, strict=True)))
        answer: list[Arg] = ["GET"] if answer_replaced else []
        sets: list[list[Arg]] = [
            ["SET", redis_key, blob, "PXAT", expires, *answer]
            for redis_key, blob, expires in zip(redis_keys, sealed, expiries, strict=True)
        ]
        many = len(keys) > 1
        members: list[Arg] = [INDEX_ENCODING_MEMBER, *keys] if many else [*keys]
        index: list[list[Arg]] = [["ZADD", index_key, *[part for name in members for part in ("0", name)]]]
        if many:
            index.append(["ZREM", index_key, INDEX_ENCODING_MEMBER])
        commands: list[list[Arg]] = [["MULTI"], *sets, *index, ["PEXPIRE", index_key, index_ttl_ms], ["EXEC"]]
        memories = [Memory(*memory) for memory in zip(keys, versions, expiries, strict=True)]
        return encode_commands(commands), len(commands), memories

    def open_many(self, prefix: bytes, keys: list[str], blobs: list[bytes | None]) -> list[Memory | None]:
        """The memories stored under `<prefix><key>` for `keys`, opened from `blobs` (None = absent,
        answered as None); IntegrityError naming the Redis key of any that fails to open."""
        opened: list[Memory | None] = []
        for key, blob in zip(keys, blobs, strict=True):
            redis_key = prefix + key.encode()
            try:
                opened.append(None if blob is None else Memory(key, *self.open(redis_key, blob)))
            except IntegrityError as error:
                raise IntegrityError(f"{redis_key.decode(errors='replace')}: {error}") from None
        return opened
