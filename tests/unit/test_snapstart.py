"""SnapStart: environments restored from one snapshot never share a nonce nor a random sequence.

A snapshot is a copy of the initialised process; `os.fork()` after the before-snapshot hooks makes
two such copies, each of which then runs the after-restore hooks the way the runtime does.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import snapshot_restore_py
from aiinfra import snapstart
from aiinfra._native import EnvelopeCodec
from aiinfra.memory.envelope import NONCE_LEN

from tests.support.reference_codec import ReferenceCodec

KEYS = {"k1": bytes(range(32))}
NONCE_AT = struct.calcsize(">BQQB") + len("k1")


def _nonce(blob: bytes) -> str:
    return blob[NONCE_AT : NONCE_AT + NONCE_LEN].hex()


def _in_restored_copies(restore: bool, draw: Callable[[], dict[str, Any]], copies: int = 2) -> list[Any]:
    """What `draw` returns in each of `copies` forks of this process (after the hooks when `restore`)."""
    hooks = snapstart.SnapshotHooks()
    np.random.seed(7)  # the init drew from the global generator: its state is in the snapshot
    hooks.run_before_snapshot()
    results = []
    for _ in range(copies):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            if restore:
                hooks.run_after_restore()
            os.write(write, json.dumps(draw()).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            results.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    return results


def _draw() -> dict[str, Any]:
    native, reference = EnvelopeCodec(KEYS, "k1"), ReferenceCodec(KEYS, "k1")
    return {
        "native_nonce": _nonce(native.seal(b"mem:{a}:k", 1, 0, b"v")),
        "reference_nonce": _nonce(reference.seal(b"mem:{a}:k", 1, 0, b"v")),
        "random": random.getrandbits(64),
        "numpy": int(np.random.randint(0, 2**31)),
    }


def test_two_restored_environments_never_produce_the_same_nonce_or_random_sequence() -> None:
    first, second = _in_restored_copies(True, _draw)
    for field in ("native_nonce", "reference_nonce", "random", "numpy"):
        assert first[field] != second[field], field


def test_without_the_restore_hook_the_clones_repeat_each_others_random_sequence() -> None:
    # `random` re-seeds itself in a forked child, which a restored snapshot is not: NumPy shows the clone.
    first, second = _in_restored_copies(False, _draw)
    assert first["numpy"] == second["numpy"]
    assert first["native_nonce"] != second["native_nonce"]  # drawn from the OS, never cloned


def test_the_hooks_run_in_order_and_reach_the_runtime_once() -> None:
    calls: list[str] = []
    hooks = snapstart.SnapshotHooks()
    hooks.before_snapshot(lambda: calls.append("warm"))
    hooks.after_restore(lambda: calls.append("reopen"))
    hooks.after_restore(lambda: calls.append("recheck"))
    hooks.run_before_snapshot()
    hooks.run_after_restore()
    assert calls == ["warm", "reopen", "recheck"]
    snapstart.install()
    snapstart.install()
    registered = [entry[0] for entry in snapshot_restore_py.get_before_snapshot()]
    assert registered.count(snapstart.HOOKS.run_before_snapshot) == 1
    restored = [entry[0] for entry in snapshot_restore_py.get_after_restore()]
    assert restored.count(snapstart.HOOKS.run_after_restore) == 1
