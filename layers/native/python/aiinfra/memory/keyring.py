"""The keyring: every key that may still open a stored memory, and the current one that seals.

Sources (`MEMORY_KEYS`):
- `file:///abs/keyring.json`: local runs; created with one fresh key (and a warning) when missing.
- `secretsmanager://<secret-id>`: the same JSON document, held in a secret.
- `kms://<key-id-or-arn>`: envelope encryption. Data keys come from KMS GenerateDataKey and only
  their encrypted CiphertextBlob is kept, in Redis under a reserved hash; KMS decrypts them into
  memory when the keyring loads.

Document format: `{"current": "<key id>", "keys": {"<key id>": "<base64 of 32 bytes>", ...}}`.
Nothing secret is ever logged: only key ids.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiinfra._native import EnvelopeCodec
from aiinfra.memory.envelope import KEY_LEN
from aiinfra.memory.resp import RedisClient, Script
from aiinfra.memory.schema import KMS_DATA_KEYS
from aiinfra.observability import logger


class KeyringError(Exception):
    """The keyring source is malformed or refuses us; the message names the source, never a key."""


@dataclass(frozen=True)
class Keyring:
    current: str
    keys: dict[str, bytes]

    def codec(self) -> EnvelopeCodec:
        return EnvelopeCodec(self.keys, self.current)

    def to_json(self) -> str:
        keys = {key_id: base64.b64encode(key).decode() for key_id, key in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> Keyring:
        try:
            document = json.loads(text)
            keys = {
                str(key_id): base64.b64decode(key, validate=True) for key_id, key in document["keys"].items()
            }
            current = str(document["current"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyringError(f"{source}: not a keyring document") from None
        if current not in keys or any(len(key) != KEY_LEN for key in keys.values()):
            raise KeyringError(f"{source}: current key missing, or a key is not {KEY_LEN} bytes")
        return cls(current, keys)

    def rotated(self) -> Keyring:
        """A new current key; the old ones stay to open what they sealed."""
        key_id = new_key_id()
        return Keyring(key_id, {**self.keys, key_id: secrets.token_bytes(KEY_LEN)})


def new_key_id() -> str:
    return time.strftime("k%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def load_keyring(uri: str, redis: RedisClient) -> Keyring:
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return _load_file(Path(rest))
    if scheme == "secretsmanager":
        return _load_secret(rest)
    if scheme == "kms":
        return _load_kms(rest, redis)
    raise KeyringError(f"{uri}: unknown keyring source")


def rotate_keyring(uri: str, redis: RedisClient) -> Keyring:
    """Adds a new current key to the source; instances pick it up when they next load the keyring."""
    scheme, _, rest = uri.partition("://")
    if scheme == "kms":
        _add_kms_data_key(rest, redis, make_current=True)
        return _load_kms(rest, redis)
    keyring = load_keyring(uri, redis).rotated()
    if scheme == "file":
        _write_file(Path(rest), keyring)
    else:
        _boto3_client("secretsmanager").put_secret_value(SecretId=rest, SecretString=keyring.to_json())
    logger().info("memory keyring rotated", extra={"keyring": uri, "current_key_id": keyring.current})
    return keyring


def _load_file(path: Path) -> Keyring:
    source = f"file://{path}"
    try:
        return _read_or_create(path, source)
    except OSError as error:  # unreadable file, unwritable directory: say which, never what it holds
        raise KeyringError(f"{source}: {error.strerror or error.__class__.__name__}") from None


def _read_or_create(path: Path, source: str) -> Keyring:
    try:
        return Keyring.from_json(path.read_text(), source)
    except FileNotFoundError:
        pass
    keyring = Keyring("", {}).rotated()
    try:
        _write_file(path, keyring, exclusive=True)
    except FileExistsError:
        return Keyring.from_json(path.read_text(), source)  # another process created it first
    logger().warning(
        "memory keyring created: fine for local runs, use kms:// or secretsmanager:// in AWS",
        extra={"keyring": source, "current_key_id": keyring.current},
    )
    return keyring


def _write_file(path: Path, keyring: Keyring, *, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(keyring.to_json())
    if exclusive:
        try:
            os.link(staging, path)  # fails if the file appeared meanwhile: never overwrite live keys
        finally:
            staging.unlink()
    else:
        staging.replace(path)


def _boto3_client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def _load_secret(secret_id: str) -> Keyring:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        text = _boto3_client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError) as error:
        raise KeyringError(f"secretsmanager://{secret_id}: {error.__class__.__name__}") from None
    return Keyring.from_json(text, f"secretsmanager://{secret_id}")


# Creates the first data key only if no instance did already: concurrent cold starts agree on one.
_ADD_DATA_KEY = Script(
    """
if ARGV[3] == '0' and redis.call('HEXISTS', KEYS[1], 'current') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'key:' .. ARGV[1], ARGV[2], 'current', ARGV[1])
return 1
"""
)


def _add_kms_data_key(kms_key_id: str, redis: RedisClient, *, make_current: bool) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        blob = _boto3_client("kms").generate_data_key(KeyId=kms_key_id, KeySpec="AES_256")["CiphertextBlob"]
    except (BotoCoreError, ClientError) as error:
        raise KeyringError(
            f"kms://{kms_key_id}: GenerateDataKey failed: {error.__class__.__name__}"
        ) from None
    redis.run(_ADD_DATA_KEY, [KMS_DATA_KEYS], [new_key_id(), blob, "1" if make_current else "0"])


def _load_kms(kms_key_id: str, redis: RedisClient) -> Keyring:
    from botocore.exceptions import BotoCoreError, ClientError

    stored: list[bytes] = redis.call("HGETALL", KMS_DATA_KEYS)
    if not stored:
        _add_kms_data_key(kms_key_id, redis, make_current=False)
        stored = redis.call("HGETALL", KMS_DATA_KEYS)
    fields = dict(zip(stored[::2], stored[1::2], strict=True))
    kms = _boto3_client("kms")
    keys: dict[str, bytes] = {}
    for field, blob in fields.items():
        if field.startswith(b"key:"):
            try:
                keys[field[4:].decode()] = kms.decrypt(CiphertextBlob=blob, KeyId=kms_key_id)["Plaintext"]
            except (BotoCoreError, ClientError) as error:
                raise KeyringError(
                    f"kms://{kms_key_id}: Decrypt failed: {error.__class__.__name__}"
                ) from None
    current = fields.get(b"current", b"").decode()
    if current not in keys:
        raise KeyringError(f"kms://{kms_key_id}: the data-key hash in Redis names no current key")
    return Keyring(current, keys)
