"""The keyring: every key that may still open a stored memory, and the current one that seals.

Sources (`MEMORY_KEYS`):
- `file:///abs/keyring.json`: local runs; created with one fresh key (and a warning) when missing.
- `secretsmanager://<secret-id>`: the same JSON document, held in a secret.
- `kms://<key-id-or-arn>`: envelope encryption. Data keys come from KMS GenerateDataKey and only
  their encrypted CiphertextBlob is kept, in one S3 object (`MEMORY_KEYRING_STORE`) that is
  replaced only by conditional writes; KMS decrypts them into memory when the keyring loads. Both
  calls carry an encryption context naming the stack and the purpose, which the IAM policy requires.
  The first data key is made only while Redis holds no memory: a missing document over existing
  memories is `KeyringMissing`, never a fresh key that would orphan them.

Document formats: `{"current": "<key id>", "keys": {"<key id>": "<base64 of 32 bytes>", ...}}`;
for kms:// the keys are base64 CiphertextBlobs, plus `current_since` (Unix seconds) and `retired`.
Nothing secret is ever logged: only key ids.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiinfra._native import EnvelopeCodec
from aiinfra.config import MemorySettings
from aiinfra.memory.envelope import KEY_LEN
from aiinfra.observability import logger

DATA_KEY_PURPOSE = "memory-data-key"
# Attempts at a conditional replace of the kms:// document before giving up to a busy writer.
_REPLACE_ATTEMPTS = 5


class KeyringError(Exception):
    """The keyring source is malformed or refuses us; the message names the source, never a key."""

    def __init__(self, message: str, setting: str = "MEMORY_KEYS") -> None:
        super().__init__(message)
        self.setting = setting


class KeyringMissing(KeyringError):
    """The kms:// keyring document is absent while Redis holds memories: nothing may be sealed anew."""


class RetirementRefused(Exception):
    """`retire_key` refused: the message says why (the current key, envelopes still sealed with it)."""


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


def encryption_context(stack_name: str) -> dict[str, str]:
    """What every GenerateDataKey and Decrypt of a memory data key carries (and IAM requires)."""
    return {"aiinfra:stack": stack_name, "aiinfra:purpose": DATA_KEY_PURPOSE}


def load_keyring(settings: MemorySettings, holds_memories: Callable[[], bool]) -> Keyring:
    """The keyring `settings.keys_uri` names; `holds_memories` is asked only before a kms://
    keyring would get its first key."""
    scheme, _, rest = settings.keys_uri.partition("://")
    if scheme == "file":
        return _load_file(Path(rest))
    if scheme == "secretsmanager":
        return _load_secret(rest)
    if scheme == "kms":
        return _load_kms(settings, holds_memories)
    raise KeyringError(f"{settings.keys_uri}: unknown keyring source")


def rotate_keyring(settings: MemorySettings) -> Keyring:
    """Adds a new current key to the source; instances pick it up when they next load the keyring."""
    uri = settings.keys_uri
    scheme, _, rest = uri.partition("://")
    if scheme == "kms":
        kms = _boto3_client("kms")

        def rotate(document: dict[str, Any]) -> dict[str, Any]:
            key_id = new_key_id()
            keys = {**document["keys"], key_id: _new_data_key(kms, settings)}
            return {**document, "current": key_id, "current_since": time.time(), "keys": keys}

        keyring = _decrypt(kms, settings, _replace(settings, rotate))
    else:
        keyring = load_keyring(settings, lambda: True).rotated()
        if scheme == "file":
            _write_file(Path(rest), keyring)
        else:
            _boto3_client("secretsmanager").put_secret_value(SecretId=rest, SecretString=keyring.to_json())
    logger().info("memory keyring rotated", extra={"keyring": uri, "current_key_id": keyring.current})
    return keyring


def retire_key(settings: MemorySettings, key_id: str, sealed_with: Callable[[str], int]) -> None:
    """Drops `key_id`'s data key from the kms:// document and lists it as retired; RetirementRefused
    while it is current, while an instance may still seal with it (rotated less than a reload
    interval ago), or while `sealed_with(key_id)` counts stored envelopes under it."""
    if not settings.keys_uri.startswith("kms://"):
        raise RetirementRefused("retire-key acts on kms:// keyrings only")

    def retire(document: dict[str, Any]) -> dict[str, Any]:
        if key_id in document["retired"]:
            raise RetirementRefused(f"key {key_id} is retired already")
        if key_id not in document["keys"]:
            raise RetirementRefused(f"key {key_id} is not in the keyring")
        if key_id == document["current"]:
            raise RetirementRefused(f"key {key_id} is the current key: rotate-key first")
        wait = document["current_since"] + settings.keyring_reload_seconds - time.time()
        if wait > 0:
            raise RetirementRefused(
                f"instances may still seal with key {key_id} until they reload the keyring: "
                f"retry in {math.ceil(wait)} s"
            )
        sealed = sealed_with(key_id)
        if sealed:
            raise RetirementRefused(
                f"{sealed} stored envelopes are still sealed with key {key_id}: "
                "run `aiinfra rewrap --all` first"
            )
        keys = {kept: blob for kept, blob in document["keys"].items() if kept != key_id}
        return {**document, "keys": keys, "retired": [*document["retired"], key_id]}

    _replace(settings, retire)
    logger().info("memory key retired", extra={"keyring": settings.keys_uri, "retired_key_id": key_id})


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


def _boto3_client(service: str, setting: str = "MEMORY_KEYS") -> Any:
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.client(service)
    except BotoCoreError as error:  # no region, a malformed endpoint: a misconfiguration
        raise KeyringError(f"no {service} client: {error.__class__.__name__}", setting) from None


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or error.__class__.__name__)


def _load_secret(secret_id: str) -> Keyring:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        text = _boto3_client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError) as error:
        raise KeyringError(f"secretsmanager://{secret_id}: {error.__class__.__name__}") from None
    return Keyring.from_json(text, f"secretsmanager://{secret_id}")


class _KeyringObject:
    """The kms:// keyring document in S3: created with If-None-Match, replaced with If-Match, so
    concurrent writers never lose each other's keys."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, _, self.key = uri.removeprefix("s3://").partition("/")
        self._s3 = _boto3_client("s3", "MEMORY_KEYRING_STORE")

    def _failed(self, action: str, error: Exception) -> KeyringError:
        return KeyringError(f"{self.uri}: {action} failed: {_error_code(error)}", "MEMORY_KEYRING_STORE")

    def read(self) -> tuple[dict[str, Any], str] | None:
        """The document and its ETag; None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=self.key)
            text = answer["Body"].read()
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404"):
                return None
            raise self._failed("GetObject", error) from None
        except BotoCoreError as error:
            raise self._failed("GetObject", error) from None
        return self._parsed(text), str(answer["ETag"])

    def write(self, document: dict[str, Any], etag: str | None) -> bool:
        """Creates (`etag` None) or replaces the document; False when another writer came first."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        body = json.dumps(document, indent=2).encode()
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **condition
            )
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                return False
            raise self._failed("PutObject", error) from None
        except BotoCoreError as error:
            raise self._failed("PutObject", error) from None
        return True

    def _parsed(self, text: bytes) -> dict[str, Any]:
        try:
            document = json.loads(text)
            keys, current, retired = document["keys"], document["current"], document["retired"]
            well_formed = (
                isinstance(keys, dict)
                and all(isinstance(blob, str) for blob in keys.values())
                and current in keys
                and isinstance(retired, list)
                and isinstance(document["current_since"], int | float)
            )
        except (ValueError, KeyError, TypeError):
            well_formed = False
        if not well_formed:
            raise KeyringError(f"{self.uri}: not a keyring document", "MEMORY_KEYRING_STORE")
        return dict(document)


def _new_data_key(kms: Any, settings: MemorySettings) -> str:
    """A fresh data key from KMS, as the base64 of its CiphertextBlob (the plaintext is dropped)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        blob = kms.generate_data_key(
            KeyId=settings.keys_uri.removeprefix("kms://"),
            KeySpec="AES_256",
            EncryptionContext=encryption_context(settings.stack_name),
        )["CiphertextBlob"]
    except (BotoCoreError, ClientError) as error:
        raise KeyringError(f"{settings.keys_uri}: GenerateDataKey failed: {_error_code(error)}") from None
    return base64.b64encode(blob).decode()


def _decrypt(kms: Any, settings: MemorySettings, document: dict[str, Any]) -> Keyring:
    from botocore.exceptions import BotoCoreError, ClientError

    keys: dict[str, bytes] = {}
    for key_id, blob in document["keys"].items():
        try:
            keys[key_id] = kms.decrypt(
                CiphertextBlob=base64.b64decode(blob),
                KeyId=settings.keys_uri.removeprefix("kms://"),
                EncryptionContext=encryption_context(settings.stack_name),
            )["Plaintext"]
        except (BotoCoreError, ClientError, ValueError) as error:
            raise KeyringError(f"{settings.keys_uri}: Decrypt failed: {_error_code(error)}") from None
    return Keyring(document["current"], keys)


def _load_kms(settings: MemorySettings, holds_memories: Callable[[], bool]) -> Keyring:
    assert settings.keyring_store is not None  # memory_settings requires it for kms://
    store, kms = _KeyringObject(settings.keyring_store), _boto3_client("kms")
    found = store.read()
    if found is None and holds_memories():
        # Memories are written only under a keyring, so another instance may have created it since.
        found = store.read()
        if found is None:
            raise KeyringMissing(
                f"{store.uri} is missing while Redis holds memories: no new key is made over them",
                "MEMORY_KEYRING_STORE",
            )
    if found is None:
        key_id = new_key_id()
        keys = {key_id: _new_data_key(kms, settings)}
        first = {"current": key_id, "current_since": time.time(), "keys": keys, "retired": []}
        if store.write(first, None):  # else another instance created it first: read theirs
            logger().info("memory keyring created", extra={"keyring": store.uri, "current_key_id": key_id})
        found = store.read()
        if found is None:
            raise KeyringMissing(f"{store.uri} vanished right after it was written", "MEMORY_KEYRING_STORE")
    return _decrypt(kms, settings, found[0])


def _replace(settings: MemorySettings, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Applies `change` to the kms:// document by read, change, conditional write; again when another
    writer came in between. Answers the document written."""
    assert settings.keyring_store is not None
    store = _KeyringObject(settings.keyring_store)
    for _ in range(_REPLACE_ATTEMPTS):
        found = store.read()
        if found is None:
            raise KeyringMissing(f"{store.uri} is missing: nothing to change", "MEMORY_KEYRING_STORE")
        document = change(found[0])
        if store.write(document, found[1]):
            return document
    raise KeyringError(f"{store.uri}: replaced by others on each of {_REPLACE_ATTEMPTS} attempts")
