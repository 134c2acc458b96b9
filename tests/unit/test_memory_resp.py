"""The RESP2 request encoder (Rust) the Redis client sends every command through."""

from __future__ import annotations

import pytest
from aiinfra._native import encode_commands, key_slot
from aiinfra.memory.resp import RedisAddress


def test_commands_encode_as_resp2_arrays_of_bulk_strings() -> None:
    encoded = encode_commands(
        [["SET", b"mem:{a}:k", b"\x00\r\n\xff", "PXAT", 1_800_000_000_000], ["GET", "é"]]
    )
    assert encoded == (
        b"*5\r\n$3\r\nSET\r\n$9\r\nmem:{a}:k\r\n$4\r\n\x00\r\n\xff\r\n$4\r\nPXAT\r\n$13\r\n1800000000000\r\n"
        b"*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert encode_commands([["INCRBY", "n", -5]]) == b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n-5\r\n"
    assert encode_commands([]) == b""


def test_only_bytes_text_and_integers_are_arguments() -> None:
    with pytest.raises(TypeError):
        encode_commands([["SET", "k", 1.5]])  # type: ignore[list-item]


def test_default_redis_url_parts() -> None:
    address = RedisAddress.from_url("redis://localhost")
    assert (address.port, address.db, address.tls, address.password) == (6379, 0, False, None)
    with pytest.raises(ValueError):
        RedisAddress.from_url("http://localhost")


def test_key_slot_follows_the_redis_cluster_spec() -> None:
    assert key_slot(b"123456789") == 12739  # the CRC16/XMODEM check value, as in the cluster spec
    assert key_slot(b"mem:{agent-1}:plan") == key_slot(b"idx:{agent-1}") == key_slot(b"agent-1")
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")  # an empty first tag hashes the whole key
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert all(0 <= key_slot(f"k{i}".encode()) < 16384 for i in range(1000))
