"""The RESP2 request encoder and reply decoder (Rust) every command of the Redis client goes through."""

from __future__ import annotations

from typing import Any

import pytest
from aiinfra._native import RedisRedirect, decode_replies, encode_commands, key_slot
from aiinfra.memory.resp import RedisAddress, RedisError


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


REPLIES = (
    b"+OK\r\n"
    b"$12\r\nhello\r\nworld\r\n"
    b"$-1\r\n"
    b":-42\r\n"
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b"*3\r\n$1\r\na\r\n*-1\r\n*2\r\n:1\r\n$0\r\n\r\n"
    b"*0\r\n"
)
DECODED = [b"OK", b"hello\r\nworld", None, -42, "error", [b"a", None, [1, b""]], []]


def _plain(replies: list[Any]) -> list[Any]:
    return ["error" if isinstance(reply, RedisError) else reply for reply in replies]


def test_replies_decode_to_python_values_and_errors_in_place() -> None:
    replies = decode_replies(REPLIES, len(DECODED))
    assert replies is not None and _plain(replies) == DECODED
    assert str(replies[4]).startswith("WRONGTYPE ")


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_reply_cut_anywhere_is_incomplete_until_its_last_byte(kind: type) -> None:
    for cut in range(len(REPLIES)):
        assert decode_replies(kind(REPLIES[:cut]), len(DECODED)) is None, cut
    whole = decode_replies(kind(REPLIES), len(DECODED))
    assert whole is not None and _plain(whole) == DECODED


@pytest.mark.parametrize(
    "broken",
    [b"?what\r\n", b"$3\r\nabcd\r\n", b":12x\r\n", b"+OK\r\n+extra\r\n", b"\r\n"],
    ids=["unknown type", "bulk overruns its length", "not a number", "bytes beyond", "empty line"],
)
def test_anything_but_resp2_breaks_the_connection(broken: bytes) -> None:
    with pytest.raises(ConnectionError):
        decode_replies(broken, 1)


@pytest.mark.parametrize("kind", ["MOVED", "ASK"])
def test_a_cluster_redirect_anywhere_in_a_pipeline_raises_instead_of_answering(kind: str) -> None:
    # How a cluster node answers a MULTI/EXEC for a slot it does not serve: MULTI is queued, the
    # command redirected, EXEC aborted. No reply of it may pass for an answer.
    redirected = b"+OK\r\n-%s 3999 127.0.0.1:7001\r\n-EXECABORT Transaction discarded\r\n" % kind.encode()
    with pytest.raises(RedisRedirect, match=f"^{kind} 3999 127.0.0.1:7001$"):
        decode_replies(redirected, 3)
    other = decode_replies(b"-MOVEDX 1\r\n", 1)  # only the redirect replies raise
    assert other is not None and isinstance(other[0], RedisError) and not isinstance(other[0], RedisRedirect)


@pytest.mark.parametrize(
    "hostile",
    [
        b"*1\r\n" * 200_000 + b":1\r\n",
        b"*1\r\n" * 9 + b":1\r\n",
        b"$999999999999\r\n",
        b"$9223372036854775807\r\n",
        b"*4294967296\r\n",
        b"*2\r\n" + (b"*600000\r\n" + b":1\r\n" * 600_000) * 2,
        b"+" + b"x" * 100_000,
        b"$-2\r\n",
        b"+OK\n",
    ],
    ids=[
        "nested 200,000 deep",
        "nested 9 deep",
        "bulk of 1 TB",
        "bulk of 2**63 - 1",
        "array of 2**32",
        "1.2 million values",
        "an endless line",
        "negative length",
        "LF without CR",
    ],
)
def test_a_reply_past_the_parsers_bounds_breaks_the_connection_at_once(hostile: bytes) -> None:
    # At once: not None (wait for more), which would keep the caller until its timeout.
    with pytest.raises(ConnectionError):
        decode_replies(hostile, 1)
    with pytest.raises(ConnectionError):
        decode_replies(bytearray(hostile), 1)


def test_replies_within_the_bounds_decode() -> None:
    # As deep as a CLUSTER SLOTS reply nests (range, node, node metadata), and a million values.
    slots = b"*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*0\r\n"
    assert decode_replies(slots, 1) == [[[0, 16383, [b"127.0.0.1", 7000, b"id", []]]]]
    eight_deep: Any = 1
    for _ in range(8):
        eight_deep = [eight_deep]
    assert decode_replies(b"*1\r\n" * 8 + b":1\r\n", 1) == [eight_deep]
    many = b"*1000000\r\n" + b":7\r\n" * 1_000_000
    replies = decode_replies(many, 1)
    assert replies is not None and len(replies[0]) == 1_000_000 and set(replies[0]) == {7}


def test_cluster_nodes_lists_every_address_and_hostname() -> None:
    from aiinfra.memory.resp import _cluster_nodes

    listing = (
        b"07c3 10.0.0.1:6379@16379,node-a.cache myself,master - 0 0 1 connected 0-5460\n"
        b"67ed 10.0.0.2:6380@16380 master - 0 1426238316232 2 connected 5461-10922\n"
        b"2928 :6381@16381,,tls-port=0,shard-id=5 master,noaddr - 0 0 3 disconnected\n"
        b"e7d1 10.0.0.4:6379@16379,,shard-id=9 slave 07c3 0 1426238317741 1 connected\n"
    )
    assert _cluster_nodes(listing, "seed.example") == {
        ("10.0.0.1", 6379),
        ("node-a.cache", 6379),
        ("10.0.0.2", 6380),
        ("seed.example", 6381),
        ("10.0.0.4", 6379),
    }
