"""The envelope: shared vectors in both directions, and every tampering refused by both codecs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiinfra._native import INDEX_ENCODING_MEMBER, EnvelopeCodec, Memory, decode_replies
from aiinfra.memory.envelope import NONCE_LEN, IntegrityError, key_id_of
from aiinfra.memory.schema import is_name

from tests.conftest import REPO_ROOT
from tests.support.reference_codec import ReferenceCodec

DOCUMENT = json.loads((REPO_ROOT / "tests" / "fixtures" / "envelope" / "vectors.json").read_text())
KEYS = {key_id: bytes.fromhex(key) for key_id, key in DOCUMENT["keys_hex"].items()}
VECTORS: list[dict[str, Any]] = DOCUMENT["vectors"]
CODECS = [EnvelopeCodec, ReferenceCodec]


def _codec(kind: type, current: str = "k1") -> Any:
    return kind(KEYS, current)


def test_vectors_come_from_both_sides() -> None:
    assert {vector["sealed_by"] for vector in VECTORS} == {"python", "rust"}


@pytest.mark.parametrize("kind", CODECS, ids=["rust", "python"])
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['sealed_by']}-{v['redis_key']}")
def test_every_vector_opens_with_both_codecs(kind: type, vector: dict[str, Any]) -> None:
    opened = _codec(kind).open(vector["redis_key"].encode(), bytes.fromhex(vector["envelope_hex"]))
    assert opened == (vector["version"], vector["expires_at_ms"], bytes.fromhex(vector["plaintext_hex"]))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['sealed_by']}-{v['redis_key']}")
def test_reference_reseal_reproduces_the_exact_bytes(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["envelope_hex"])
    key_id = key_id_of(blob)
    assert key_id is not None
    nonce_at = 18 + len(key_id)
    resealed = ReferenceCodec(KEYS, key_id).seal(
        vector["redis_key"].encode(),
        vector["version"],
        vector["expires_at_ms"],
        bytes.fromhex(vector["plaintext_hex"]),
        nonce=blob[nonce_at : nonce_at + NONCE_LEN],
    )
    assert resealed == blob


@pytest.mark.parametrize("opener", CODECS, ids=["rust", "python"])
@pytest.mark.parametrize("sealer", CODECS, ids=["rust", "python"])
def test_flipping_any_single_byte_is_refused(sealer: type, opener: type) -> None:
    redis_key = b"mem:{agent-1}:prefs"
    blob = _codec(sealer).seal(redis_key, 9, 1_800_000_000_000, b'{"a":[1,2,3]}')
    codec = _codec(opener)
    for position in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            forged = bytearray(blob)
            forged[position] ^= flip
            with pytest.raises(IntegrityError):
                codec.open(redis_key, bytes(forged))
    for cut in range(len(blob)):
        with pytest.raises(IntegrityError):
            codec.open(redis_key, blob[:cut])


@pytest.mark.parametrize("kind", CODECS, ids=["rust", "python"])
def test_a_value_moved_to_another_key_or_agent_is_refused(kind: type) -> None:
    codec = _codec(kind)
    blob = codec.seal(b"mem:{agent-1}:prefs", 1, 1_800_000_000_000, b"1")
    for elsewhere in (b"mem:{agent-1}:other", b"mem:{agent-2}:prefs", b"mem:{agent-1}:prefs "):
        with pytest.raises(IntegrityError):
            codec.open(elsewhere, blob)


@pytest.mark.parametrize("kind", CODECS, ids=["rust", "python"])
def test_old_keys_open_and_the_current_key_seals(kind: type) -> None:
    old = _codec(kind, "k1").seal(b"mem:{a}:x", 1, 2, b"[]")
    rotated = _codec(kind, "k2-rotated")
    assert rotated.open(b"mem:{a}:x", old) == (1, 2, b"[]")
    assert key_id_of(rotated.seal(b"mem:{a}:x", 1, 2, b"[]")) == "k2-rotated"
    with pytest.raises(IntegrityError, match="keyring"):
        kind({"k2-rotated": KEYS["k2-rotated"]}, "k2-rotated").open(b"mem:{a}:x", old)


@pytest.mark.parametrize("kind", CODECS, ids=["rust", "python"])
def test_batches_answer_in_order_and_refuse_a_forged_member(kind: type) -> None:
    codec = _codec(kind)
    keys = [f"k{i}" for i in range(50)]
    blobs: list[bytes | None] = list(
        codec.seal_many([(b"mem:{a}:k%d" % i, i, 1000 + i, b"%d" % i) for i in range(50)])
    )
    blobs[7] = None
    opened = codec.open_many(b"mem:{a}:", keys, blobs)
    assert opened[7] is None
    assert [memory for i, memory in enumerate(opened) if i != 7] == [
        Memory(f"k{i}", i, 1000 + i, b"%d" % i) for i in range(50) if i != 7
    ]
    blobs[3] = blobs[4]
    with pytest.raises(IntegrityError, match=r"mem:\{a\}:k3"):
        codec.open_many(b"mem:{a}:", keys, blobs)


def test_codec_refuses_bad_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        EnvelopeCodec({"k": b"short"}, "k")
    with pytest.raises(ValueError, match="not in the keyring"):
        EnvelopeCodec({"k": bytes(32)}, "other")
    with pytest.raises(ValueError, match="key id"):
        EnvelopeCodec({"bad id": bytes(32)}, "bad id")


def _batch_put_request(codec: Any, count: int, answer_replaced: bool = False) -> tuple[list[Any], list[int]]:
    """The commands of a batch-put request of `count` memories (memory i living i seconds after
    2000 ms), decoded (a request is RESP arrays too), and the versions the codec gave them."""
    items = [(f"k{i}", b'{"n": %d}' % i, i) for i in range(count)]
    prefix, index = b"mem:{a}:", b"idx:{a}"
    request, replies, memories = codec.seal_batch_put(prefix, index, 86_400_000, 2000, items, answer_replaced)
    assert [(m.key, m.expires_at_ms, m.value_json) for m in memories] == [
        (f"k{i}", 2000 + 1000 * i, b"") for i in range(count)
    ]
    commands = decode_replies(request, replies)
    assert commands is not None and decode_replies(request, replies + 1) is None  # exactly `replies` commands
    return commands, [memory.version for memory in memories]


@pytest.mark.parametrize(("sealer", "opener"), [(a, b) for a in CODECS for b in CODECS])
def test_a_batch_put_request_carries_sealed_values_the_other_codec_opens(sealer: type, opener: type) -> None:
    commands, versions = _batch_put_request(_codec(sealer), 20)
    assert commands[0] == [b"MULTI"] and commands[-1] == [b"EXEC"]
    names = [part for i in range(20) for part in (b"0", b"k%d" % i)]
    # The encoding member goes in first and out again: the index ends up holding the batch's keys.
    assert commands[-4] == [b"ZADD", b"idx:{a}", b"0", INDEX_ENCODING_MEMBER, *names]
    assert commands[-3] == [b"ZREM", b"idx:{a}", INDEX_ENCODING_MEMBER]
    assert commands[-2] == [b"PEXPIRE", b"idx:{a}", b"86400000"]
    assert len(set(versions)) == 20 and 0 not in versions
    for i, command in enumerate(commands[1:-4]):
        key, expires = b"mem:{a}:k%d" % i, 2000 + 1000 * i
        assert command[0] == b"SET" and command[1] == key and command[3:] == [b"PXAT", b"%d" % expires]
        assert _codec(opener).open(key, command[2]) == (versions[i], expires, b'{"n": %d}' % i)
    # Every value gets a nonce of its own: no two sealed copies of one plaintext are alike.
    again, _ = _batch_put_request(_codec(sealer), 20)
    assert all(a[2] != b[2] for a, b in zip(commands[1:-4], again[1:-4], strict=True))


@pytest.mark.parametrize("sealer", CODECS)
def test_a_put_of_one_leaves_the_index_encoding_to_redis(sealer: type) -> None:
    commands, _ = _batch_put_request(_codec(sealer), 1, answer_replaced=True)
    assert [command[0] for command in commands] == [b"MULTI", b"SET", b"ZADD", b"PEXPIRE", b"EXEC"]
    assert commands[2] == [b"ZADD", b"idx:{a}", b"0", b"k0"]


def test_the_index_encoding_member_is_no_memory_key_and_too_long_for_a_listpack() -> None:
    assert not is_name(INDEX_ENCODING_MEMBER.decode())
    assert len(INDEX_ENCODING_MEMBER) > 64  # Redis's default zset-max-listpack-value


@pytest.mark.parametrize(("sealer", "opener"), [(a, b) for a in CODECS for b in CODECS])
def test_a_sealed_command_carries_a_value_the_other_codec_opens(sealer: type, opener: type) -> None:
    key = b"mem:{a}:plan"
    head, tail = ["EVALSHA", "f" * 40, 2, key, b"idx:{a}"], [5000, "match", bytes(8), "plan", -1]
    request, version = _codec(sealer).seal_command(head, key, 5000, b'{"step": 2}', tail)
    [command] = decode_replies(request, 1) or []
    assert command[:5] == [b"EVALSHA", b"f" * 40, b"2", key, b"idx:{a}"]
    assert command[6:] == [b"5000", b"match", bytes(8), b"plan", b"-1"]
    assert _codec(opener).open(key, command[5]) == (version, 5000, b'{"step": 2}')
    _, another = _codec(sealer).seal_command(head, key, 5000, b'{"step": 2}', tail)
    assert version != another and 0 not in (version, another)


@pytest.mark.parametrize("answer_replaced", [False, True])
def test_both_codecs_write_the_same_batch_put_request_but_for_the_sealed_values(
    answer_replaced: bool,
) -> None:
    def without_values(commands: list[Any]) -> list[Any]:
        return [command[:2] + command[3:] if command[0] == b"SET" else command for command in commands]

    (native, _), (reference, _) = (_batch_put_request(_codec(codec), 5, answer_replaced) for codec in CODECS)
    assert without_values(native) == without_values(reference)
    tail = [b"PXAT", b"2000", b"GET"] if answer_replaced else [b"PXAT", b"2000"]
    assert without_values(native)[1][2:] == tail
    assert [len(c[2]) for c in native[1:-4]] == [len(c[2]) for c in reference[1:-4]]


def test_a_memory_equals_only_a_memory_with_the_same_fields() -> None:
    memory = Memory("plan", 7, 2000, b'{"step": 1}')
    assert memory == Memory("plan", 7, 2000, b'{"step": 1}')
    for other in (
        Memory("plan2", 7, 2000, b'{"step": 1}'),
        Memory("plan", 8, 2000, b'{"step": 1}'),
        Memory("plan", 7, 2001, b'{"step": 1}'),
        Memory("plan", 7, 2000, b'{"step": 2}'),
        ("plan", 7, 2000, b'{"step": 1}'),
    ):
        assert memory != other
    assert Memory("plan", 7, 2000).value_json == b""
    assert repr(memory) == "Memory(key='plan', version=7, expires_at_ms=2000, value_json=b'{\"step\": 1}')"
