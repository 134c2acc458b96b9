"""`AiinfraStore`: a LangGraph `BaseStore` over the aiinfra memory API (extra: aiinfra-client[langgraph]).

How namespaces map to memories: a namespace's first label is the agent id (`[A-Za-z0-9._-]{1,128}`);
the other labels and the item's key, joined by ".", are the memory's key. `("agent-7", "prefs", "ui")`
with key `"theme"` is memory `prefs.ui.theme` of agent `agent-7`; `("agent-7",)` with key `"theme"` is
memory `theme`. LangGraph already refuses "." in labels; this store also refuses it in keys (the split
back into namespace and key would be ambiguous), and refuses labels and keys outside
`[A-Za-z0-9_-]` and joined keys over 128 characters, each with an error naming the part.

The memory's value is `{"value": <the item's value>, "created_at": ..., "updated_at": ...}`; both
times are the last put's, as LangGraph's InMemoryStore keeps them. Memories under the agent that this
store did not write (another shape, or keys that do not split into labels) are not items: get answers
None for them and search skips them. list_namespaces reads keys only: every key of the agent that
splits into labels counts.

What a put indexes: the memory's `text`, which the service embeds and `recall` matches. A put's
`index=False` sends no text; `index=[paths]` makes the text from those fields of the item's value;
`index=None` (LangGraph's default) uses the store's `index={"fields": [...]}`, itself `["$"]` (the
whole value as JSON, LangGraph's default) when not given. Paths are LangGraph's (`"title"`,
`"meta.title"`, `"notes[*].body"`, `"{a,b}"`), read by its own `get_text_at_path`; every text they
yield joins into one, a line each, cut at the service's 8,192 characters. Fields that yield nothing
but whitespace put the memory without a text. The service embeds with its own model: the config's
`embed` is refused and its `dims` unused. A put always replaces the text: a new value gets the text of
its fields, or none.

`search` without a `query` lists the keys under the namespace prefix and applies `filter` here,
over the fetched values, in key order (`score` None). With a `query` it recalls within the agent:
the best `limit + offset` matches (at most 100, the most one recall answers), best first, `score` the
recall's cosine similarity; matches outside the namespace prefix, not this store's, or failing the
`filter` are dropped, and when that leaves too few, it recalls once more for the 100 best. Memories
put without a text are never found by a query.

Every memory expires: a put's `ttl` (minutes) or the store's `ttl={"default_ttl": ...}`, else the
service's default TTL; reads never extend it (`refresh_ttl` is ignored).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from aiinfra_client import memories
from aiinfra_client._core import Plan, Retry, run_plan, run_plan_async
from aiinfra_client.client import DEFAULT_TIMEOUT, AsyncClient, Client
from aiinfra_client.errors import NotFound

SEPARATOR = "."
MAX_KEY_CHARS = 128
MAX_BATCH = 1000  # keys per batch-get / batch-put, and per page of a listing
_AGENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PART = re.compile(r"[A-Za-z0-9_-]+")
WHOLE_VALUE = "$"  # LangGraph's path for the whole value, as JSON

# A field path as `get_text_at_path` takes it: the whole value's "$" as it is, any other tokenized.
FieldPath = str | list[str]


def memory_key(namespace: tuple[str, ...], key: str) -> tuple[str, str]:
    """The (agent id, memory key) an item is stored as."""
    if not namespace:
        raise InvalidNamespaceError("a namespace needs at least one label: the agent id")
    agent_id, *labels = namespace
    if not _AGENT.fullmatch(agent_id):
        raise InvalidNamespaceError(
            f"agent id {agent_id!r} (the namespace's first label) must match [A-Za-z0-9._-]{{1,128}}"
        )
    for part, what in [*((label, "namespace label") for label in labels), (key, "key")]:
        if not _PART.fullmatch(part):
            raise InvalidNamespaceError(
                f"{what} {part!r} must match [A-Za-z0-9_-]+: it becomes part of a memory key, "
                f"where {SEPARATOR!r} separates the labels"
            )
    joined = SEPARATOR.join([*labels, key])
    if len(joined) > MAX_KEY_CHARS:
        raise InvalidNamespaceError(
            f"namespace labels and key make the memory key {joined!r} of {len(joined)} characters, "
            f"over {MAX_KEY_CHARS}"
        )
    return agent_id, joined


def _item_path(agent_id: str, key: str) -> tuple[tuple[str, ...], str] | None:
    """The (namespace, key) of a memory key this store wrote, or None."""
    parts = key.split(SEPARATOR)
    if not all(_PART.fullmatch(part) for part in parts):
        return None
    return (agent_id, *parts[:-1]), parts[-1]


def _key_prefix(namespace: tuple[str, ...]) -> tuple[str, str]:
    """The agent id and the key prefix of every memory in `namespace` and the namespaces below it."""
    agent_id, key = memory_key(namespace, "_")
    return agent_id, key[:-1]


def _item(agent_id: str, memory: memories.Memory) -> Item | None:
    path, stored = _item_path(agent_id, memory.key), memory.value
    if path is None or not isinstance(stored, dict) or not isinstance(stored.get("value"), dict):
        return None
    try:
        created, updated = (datetime.fromisoformat(stored[name]) for name in ("created_at", "updated_at"))
    except (KeyError, TypeError, ValueError):
        return None
    return Item(namespace=path[0], key=path[1], value=stored["value"], created_at=created, updated_at=updated)


def _field_paths(fields: Iterable[str]) -> list[FieldPath]:
    return [field if field == WHOLE_VALUE else tokenize_path(field) for field in fields]


def _text(value: Mapping[str, Any], paths: list[FieldPath]) -> str | None:
    """The memory text of an item's value: what `paths` yield, a line each, or None when that is blank.
    Cut to the service's bound rather than refused: the model embeds only a text's first tokens anyway."""
    text = "\n".join(found for path in paths for found in get_text_at_path(value, path))
    text = text[: memories.MAX_TEXT_CHARS]
    return text if text.strip() else None


def _passes(item: Item, filter: Mapping[str, Any] | None) -> bool:
    return all(_compare(item.value.get(name), wanted) for name, wanted in (filter or {}).items())


def _chunks(items: list[Any], size: int = MAX_BATCH) -> Iterable[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _batch_puts(items: list[memories.MemoryItem]) -> Iterable[list[memories.MemoryItem]]:
    """`items` in batch puts the service takes: at most MAX_BATCH items, MAX_BATCH_TEXTS with a text."""
    batch: list[memories.MemoryItem] = []
    texts = 0
    for item in items:
        if len(batch) == MAX_BATCH or (texts == memories.MAX_BATCH_TEXTS and "text" in item):
            yield batch
            batch, texts = [], 0
        batch.append(item)
        texts += "text" in item
    if batch:
        yield batch


def _compare(value: Any, wanted: Any) -> bool:
    """LangGraph's filter semantics: `$eq $ne $gt $gte $lt $lte` operators, nested objects, exact lists."""
    if isinstance(wanted, dict):
        if any(name.startswith("$") for name in wanted):
            return all(_apply(value, operator, operand) for operator, operand in wanted.items())
        return isinstance(value, dict) and all(_compare(value.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(wanted)
            and all(_compare(v, w) for v, w in zip(value, wanted, strict=True))
        )
    return bool(value == wanted)


def _apply(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if operator not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"unsupported filter operator {operator!r}: use $eq $ne $gt $gte $lt $lte")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    number = float(operand)
    return {"$gt": value > number, "$gte": value >= number, "$lt": value < number, "$lte": value <= number}[
        operator
    ]


def _matches_condition(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    ends = (
        namespace[: len(path)]
        if condition.match_type == "prefix"
        else namespace[len(namespace) - len(path) :]
    )
    return all(wanted in ("*", label) for label, wanted in zip(ends, path, strict=True))


class AiinfraStore(BaseStore):
    """A LangGraph store whose items are encrypted aiinfra memories, one agent per namespace root.

    `index={"fields": [...]}` names the fields of a value that become its memory's text (default
    `["$"]`, the whole value; `[]`, no text unless a put names fields). `batch` and `abatch` run
    reads (get, search, list_namespaces) before the batch's writes, and the last put of a key in a
    batch wins, as LangGraph's InMemoryStore does.
    """

    supports_ttl = True

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None = None,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
    ) -> None:
        if index is not None and "embed" in index:
            raise ValueError(
                "the aiinfra memory service embeds texts with its own model: give index={'fields': [...]} "
                "without 'embed'"
            )
        self.index_config = index
        fields = (index or {}).get("fields")
        self._default_paths = _field_paths([WHOLE_VALUE] if fields is None else fields)
        self.ttl_config = ttl
        self.client = Client(base_url, token=token, timeout=timeout, retry=retry)
        self._new_async_client = functools.partial(
            AsyncClient, base_url, token=token, timeout=timeout, retry=retry
        )
        self._async_client: AsyncClient | None = None

    @property
    def async_client(self) -> AsyncClient:
        """Made on first use, inside the event loop that uses it."""
        if self._async_client is None:
            self._async_client = self._new_async_client()
        return self._async_client

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return run_plan(self._batch(ops), self.client)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await run_plan_async(self._batch(ops), self.async_client)

    def _batch(self, ops: Iterable[Op]) -> Plan[list[Result]]:
        ops = list(ops)
        for op in ops:
            validate_op_namespace(op)
        results: list[Result] = [None] * len(ops)
        gets: dict[str, dict[int, str]] = defaultdict(dict)  # agent -> op index -> memory key
        puts: dict[tuple[str, str], PutOp] = {}
        for i, op in enumerate(ops):
            if isinstance(op, GetOp):
                agent_id, key = memory_key(op.namespace, op.key)
                gets[agent_id][i] = key
            elif isinstance(op, SearchOp):
                results[i] = yield from self._search(op)
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(op)
            elif isinstance(op, PutOp):
                puts[memory_key(op.namespace, op.key)] = op
            else:
                raise TypeError(f"unknown store operation {type(op).__name__}")
        for agent_id, wanted in gets.items():
            found = yield from self._read(agent_id, sorted(set(wanted.values())))
            for i, key in wanted.items():
                results[i] = found.get(key)
        yield from self._write(puts)
        return results

    def _read(self, agent_id: str, keys: list[str]) -> Plan[dict[str, Item]]:
        found: dict[str, Item] = {}
        for chunk in _chunks(keys):
            read: memories.BatchRead = yield memories.batch_get(agent_id, chunk)
            for memory in read.items:
                if (item := _item(agent_id, memory)) is not None:
                    found[memory.key] = item
        return found

    def _write(self, puts: Mapping[tuple[str, str], PutOp]) -> Plan[None]:
        now = datetime.now(UTC).isoformat()
        writes: dict[str, list[memories.MemoryItem]] = defaultdict(list)
        for (agent_id, key), op in puts.items():
            if op.value is None:
                with contextlib.suppress(NotFound):  # deleting what is not there is done
                    yield memories.delete(agent_id, key)
                continue
            item: memories.MemoryItem = {
                "key": key,
                "value": {"value": dict(op.value), "created_at": now, "updated_at": now},
            }
            if op.ttl is not None:
                item["ttl"] = max(1, math.ceil(op.ttl * 60))
            if (text := self._put_text(op.value, op.index)) is not None:
                item["text"] = text
            writes[agent_id].append(item)
        for agent_id, items in writes.items():
            for batch in _batch_puts(items):
                yield memories.batch_put(agent_id, batch)

    def _put_text(self, value: Mapping[str, Any], index: Literal[False] | list[str] | None) -> str | None:
        if index is False:
            return None
        return _text(value, self._default_paths if index is None else _field_paths(index))

    def _keys(self, agent_id: str, prefix: str) -> Plan[list[str]]:
        keys: list[str] = []
        cursor: str | None = None
        while True:
            page: memories.KeyPage = yield memories.list_keys(
                agent_id, prefix=prefix, limit=MAX_BATCH, cursor=cursor
            )
            keys += page.keys
            if page.cursor is None:
                return keys
            cursor = page.cursor

    def _search(self, op: SearchOp) -> Plan[list[SearchItem]]:
        if not op.namespace_prefix:
            raise InvalidNamespaceError("search needs a namespace prefix that starts with the agent id")
        agent_id, prefix = _key_prefix(op.namespace_prefix)
        if op.query:  # LangGraph's stores take an empty query as none
            return (yield from self._recall(op, op.query, agent_id, prefix))
        keys = [key for key in (yield from self._keys(agent_id, prefix)) if _item_path(agent_id, key)]
        wanted = op.offset + op.limit
        found: list[SearchItem] = []
        for chunk in _chunks(keys):
            read = yield from self._read(agent_id, chunk)
            for item in (read[key] for key in chunk if key in read):
                if _passes(item, op.filter):
                    found.append(
                        SearchItem(item.namespace, item.key, item.value, item.created_at, item.updated_at)
                    )
            if len(found) >= wanted:
                break
        return found[op.offset : wanted]

    def _recall(self, op: SearchOp, query: str, agent_id: str, prefix: str) -> Plan[list[SearchItem]]:
        """The recalled items under `prefix` that pass the filter, best first."""
        wanted = op.offset + op.limit
        k = min(max(wanted, 1), memories.MAX_RECALL)
        while True:
            matches: list[memories.RecallMatch] = yield memories.recall(agent_id, query, k=k)
            found = [
                SearchItem(
                    item.namespace, item.key, item.value, item.created_at, item.updated_at, match.score
                )
                for match in matches
                if match.key.startswith(prefix)
                and (item := _item(agent_id, match)) is not None
                and _passes(item, op.filter)
            ]
            # Fewer matches than asked for: the agent has no more texts to find.
            if len(found) >= wanted or len(matches) < k or k == memories.MAX_RECALL:
                return found[op.offset : wanted]
            k = memories.MAX_RECALL

    def _list_namespaces(self, op: ListNamespacesOp) -> Plan[list[tuple[str, ...]]]:
        conditions = op.match_conditions or ()
        prefix = next((c.path for c in conditions if c.match_type == "prefix"), ())
        if not prefix or prefix[0] == "*":
            raise InvalidNamespaceError(
                "list_namespaces lists within one agent: give prefix=(agent_id, ...) with the agent id first"
            )
        fixed = prefix[: prefix.index("*")] if "*" in prefix else prefix  # the labels every match starts with
        agent_id, key_prefix = _key_prefix(tuple(fixed))
        namespaces: set[tuple[str, ...]] = set()
        for key in (yield from self._keys(agent_id, key_prefix)):
            path = _item_path(agent_id, key)
            if path is not None and all(_matches_condition(c, path[0]) for c in conditions):
                namespaces.add(path[0][: op.max_depth] if op.max_depth is not None else path[0])
        return sorted(namespaces)[op.offset : op.offset + op.limit]
