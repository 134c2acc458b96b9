"""Every setting, read from the environment in one place.

Each capability reads its own settings once, at init. A missing or malformed setting raises
`ConfigError` whose message is one line naming the setting, so a misconfigured function
fails its init with that line and nothing else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiinfra.vectors.limits import IndexLimits

EMBED_MODEL_IDS = ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8")
LAYER_MODEL_DIR = Path("/opt/model")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it in one line."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default)
    assert value is not None
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class EmbedSettings:
    model_dir: Path
    default_model: str
    threads: int
    model_store: str | None  # s3://bucket/prefix holding models the layer does not carry


def embed_settings() -> EmbedSettings:
    raw_dir = _env("MODEL_DIR")
    model_dir = Path(raw_dir) if raw_dir else LAYER_MODEL_DIR
    if not model_dir.is_absolute():
        raise ConfigError(f"MODEL_DIR={raw_dir!r} must be an absolute path")
    if not (model_dir / "tokenizer.json").is_file():
        raise ConfigError(f"MODEL_DIR={str(model_dir)!r} holds no built model (run `make build`)")
    return EmbedSettings(
        model_dir=model_dir,
        default_model=env_choice("EMBED_MODEL", EMBED_MODEL_IDS[0], EMBED_MODEL_IDS),
        threads=env_int("EMBED_THREADS", os.cpu_count() or 1, minimum=1),
        model_store=_model_store(),
    )


def _model_store() -> str | None:
    store = _env("MODEL_STORE")
    if store is not None and not (store.startswith("s3://") and len(store) > len("s3://")):
        raise ConfigError(f"MODEL_STORE={store!r} must be s3://bucket[/prefix]")
    return store


@dataclass(frozen=True)
class AuthSettings:
    mode: str
    agent_claim: str
    tenant_claim: str = "tenant"


def auth_settings() -> AuthSettings:
    return AuthSettings(
        mode=env_choice("AUTH_MODE", "jwt", ("jwt", "none")),
        agent_claim=_env("AUTH_AGENT_CLAIM", "agents") or "agents",
        tenant_claim=_env("AUTH_TENANT_CLAIM", "tenant") or "tenant",
    )


MEMORY_MAX_TTL_SECONDS = 30 * 24 * 3600
MEMORY_KEY_SCHEMES = ("file", "kms", "secretsmanager")


@dataclass(frozen=True)
class MemorySettings:
    redis_url: str
    keys_uri: str
    default_ttl: int
    max_value_bytes: int
    redis_timeout: float
    keyring_store: str | None = None  # s3://bucket/key of a kms:// keyring's wrapped data keys
    keyring_reload_seconds: float = 300.0
    stack_name: str = "aiinfra"  # in the KMS encryption context of the data keys
    # Per-agent quotas, checked in the write's own script; 0: none.
    max_memories_per_agent: int = 0
    max_bytes_per_agent: int = 0
    # How many memories with a text one agent may hold (recall scores them all); 0: no bound.
    max_recall_per_agent: int = 0
    # Load the recall model in the SnapStart warm-up (else on the first request with a text).
    recall_warm: bool = False


REDIS_URL_FORM = (
    "REDIS_URL is malformed: it must be redis[s]://[user[:password]@]host[:port][/db], "
    "with any / @ : % in the user or password percent-encoded"
)


def _check_redis_url(url: str) -> None:
    """A URL the Redis client reads as written. Its message never repeats any of it: it may hold
    a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(REDIS_URL_FORM) from None
    db = parts.path.removeprefix("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or (port is not None and port == 0)
        or not (db == "" or (db.isdigit() and db.isascii()))
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(REDIS_URL_FORM)


def _with_secret_password(url: str, secret_id: str) -> str:
    """`url` with the password REDIS_PASSWORD_SECRET holds (a Secrets Manager secret: JSON with
    `password`, or the bare password), read once during the init: the password is never in the
    function's configuration."""
    import json

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        text = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError) as error:
        raise ConfigError(f"REDIS_PASSWORD_SECRET could not be read: {error.__class__.__name__}") from None
    try:
        password = json.loads(text)["password"] if text.lstrip().startswith("{") else text
    except (ValueError, KeyError, TypeError):
        raise ConfigError("REDIS_PASSWORD_SECRET holds no password (JSON without `password`)") from None
    if not isinstance(password, str) or not password:
        raise ConfigError("REDIS_PASSWORD_SECRET holds no password (JSON without `password`)")
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


def memory_settings() -> MemorySettings:
    redis_url = _env("REDIS_URL", "redis://127.0.0.1:6379/0") or ""
    _check_redis_url(redis_url)
    password_secret = _env("REDIS_PASSWORD_SECRET")
    if password_secret is not None:
        redis_url = _with_secret_password(redis_url, password_secret)
    keys_uri = _env("MEMORY_KEYS")
    if keys_uri is None:
        raise ConfigError(
            "MEMORY_KEYS is not set (file:///abs/keyring.json, kms://<key-id>, secretsmanager://<id>)"
        )
    scheme, _, rest = keys_uri.partition("://")
    if scheme not in MEMORY_KEY_SCHEMES or not rest or (scheme == "file" and not rest.startswith("/")):
        raise ConfigError(
            f"MEMORY_KEYS={keys_uri!r} must be file:///abs/path.json, kms://<key-id> or secretsmanager://<id>"
        )
    keyring_store = _env("MEMORY_KEYRING_STORE")
    if scheme == "kms" and not _is_s3_object(keyring_store):
        raise ConfigError(
            f"MEMORY_KEYRING_STORE={keyring_store or ''!r} must be s3://bucket/key.json: "
            "kms:// keyrings keep their wrapped data keys there"
        )
    default_ttl = env_int("MEMORY_DEFAULT_TTL", 86400, minimum=1)
    if default_ttl > MEMORY_MAX_TTL_SECONDS:
        raise ConfigError(f"MEMORY_DEFAULT_TTL={default_ttl} must be <= {MEMORY_MAX_TTL_SECONDS} (30 days)")
    return MemorySettings(
        redis_url=redis_url,
        keys_uri=keys_uri,
        default_ttl=default_ttl,
        max_value_bytes=env_int("MEMORY_MAX_VALUE_BYTES", 256 * 1024, minimum=1),
        redis_timeout=env_float("MEMORY_REDIS_TIMEOUT", 2.0, minimum=0.01),
        keyring_store=keyring_store,
        keyring_reload_seconds=env_float("MEMORY_KEYRING_RELOAD_SECONDS", 300.0, minimum=1.0),
        stack_name=_env("AIINFRA_STACK", "aiinfra") or "aiinfra",
        max_memories_per_agent=env_int("MEMORY_MAX_PER_AGENT", 100_000),
        max_bytes_per_agent=env_int("MEMORY_MAX_BYTES_PER_AGENT", 256 * 1024 * 1024),
        max_recall_per_agent=env_int("MEMORY_MAX_RECALL_PER_AGENT", 10_000),
        recall_warm=env_choice("MEMORY_RECALL_WARM", "false", ("true", "false")) == "true",
    )


def _is_s3_object(uri: str | None) -> bool:
    """`s3://bucket/key`: a bucket and an object key, not a prefix."""
    if uri is None or not uri.startswith("s3://"):
        return False
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bool(bucket) and bool(key) and not key.endswith("/")


@dataclass(frozen=True)
class SearchSettings:
    index_store: str
    refresh_seconds: float
    limits: IndexLimits
    compaction_function: str | None  # the indexer; None: compactions run on a background thread
    # One shard function per slot (shard k -> slot k mod N); empty: shards are searched in-process.
    shard_functions: tuple[str, ...] = ()
    shard_deadline_seconds: float = 2.0


def search_settings() -> SearchSettings:
    store = _env("INDEX_STORE")
    if store is None:
        raise ConfigError("INDEX_STORE is not set (file:///absolute/dir or s3://bucket/prefix)")
    if not (store.startswith("file:///") or (store.startswith("s3://") and len(store) > len("s3://"))):
        raise ConfigError(f"INDEX_STORE={store!r} must be file:///absolute/dir or s3://bucket/prefix")
    defaults = IndexLimits()
    limits = IndexLimits(
        max_indexes=env_int("INDEX_MAX_PER_TENANT", defaults.max_indexes, minimum=1),
        max_rows=env_int("INDEX_MAX_ROWS_PER_SHARD", defaults.max_rows, minimum=1),
        max_deltas=env_int("INDEX_MAX_DELTAS_PER_SHARD", defaults.max_deltas, minimum=1),
        compact_after_deltas=env_int("INDEX_COMPACT_AFTER_DELTAS", defaults.compact_after_deltas, minimum=1),
        compact_after_rows=env_int("INDEX_COMPACT_AFTER_ROWS", defaults.compact_after_rows, minimum=1),
        lease_seconds=env_float("INDEX_COMPACTION_LEASE_SECONDS", defaults.lease_seconds, minimum=1.0),
    )
    return SearchSettings(
        index_store=store,
        refresh_seconds=env_float("INDEX_REFRESH_SECONDS", 5.0),
        limits=limits,
        compaction_function=_env("INDEX_COMPACTION_FUNCTION"),
        shard_functions=_shard_functions(),
        shard_deadline_seconds=env_float("INDEX_SHARD_DEADLINE_SECONDS", 2.0, minimum=0.01),
    )


SHARD_FUNCTION = re.compile(r"^(https?://[A-Za-z0-9.-]+(:\d+)?|[A-Za-z0-9:_.-]{1,140})$")


def _shard_functions() -> tuple[str, ...]:
    """INDEX_SHARD_FUNCTIONS: comma-separated function names, ARNs or http://host:port endpoints, one
    per slot; or one name with `{slot}` in it and INDEX_SHARD_SLOTS, the comma-separated slot labels
    it stands for (what the template writes for the functions it stamps out)."""
    raw = _env("INDEX_SHARD_FUNCTIONS")
    if raw is None:
        return ()
    slots = tuple(slot.strip() for slot in raw.split(","))
    if len(slots) == 1 and "{slot}" in raw:
        labels = (_env("INDEX_SHARD_SLOTS") or "").split(",")
        if not all(re.fullmatch(r"[A-Za-z0-9]+", label.strip()) for label in labels):
            raise ConfigError(
                f"INDEX_SHARD_SLOTS={_env('INDEX_SHARD_SLOTS') or ''!r} must be comma-separated slot labels "
                f"(e.g. 0,1,2): INDEX_SHARD_FUNCTIONS={raw!r} names {{slot}}"
            )
        slots = tuple(slots[0].replace("{slot}", label.strip()) for label in labels)
    if not all(SHARD_FUNCTION.fullmatch(slot) for slot in slots):
        raise ConfigError(
            f"INDEX_SHARD_FUNCTIONS={raw!r} must be comma-separated function names, ARNs or http://host:port"
        )
    return slots
