"""SnapStart runtime hooks: warm up before the snapshot, make every restored copy its own after it.

With SnapStart, Lambda runs the init once, snapshots the memory, and resumes many execution
environments from that one snapshot: anything warmed before it is free afterwards, and anything
that must differ between environments (random state, open connections, what was read from S3)
has to be renewed after each restore. Capabilities register their part through `before_snapshot`
(warm the ONNX session, load the indexes) and `after_restore` (re-open Redis connections, re-check
index manifests); every restore also re-seeds Python's and NumPy's global random generators.
`install()` hands both runners to the runtime (`snapshot_restore_py`); the runtime calls them only
when the function runs with SnapStart, so they cost nothing elsewhere.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable

Hook = Callable[[], object]


def reseed() -> None:
    """New seeds from the OS for the generators a snapshot would otherwise clone."""
    random.seed(os.urandom(32))
    numpy = sys.modules.get("numpy")  # only when loaded: the memory function never imports NumPy
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))


class SnapshotHooks:
    """What runs before the snapshot and after each restore, in registration order."""

    def __init__(self) -> None:
        self._before: list[Hook] = []
        self._after: list[Hook] = []

    def before_snapshot(self, hook: Hook) -> Hook:
        """Runs `hook` once before the snapshot is taken (after the init)."""
        self._before.append(hook)
        return hook

    def after_restore(self, hook: Hook) -> Hook:
        """Runs `hook` in every environment restored from the snapshot, before its first request."""
        self._after.append(hook)
        return hook

    def run_before_snapshot(self) -> None:
        for hook in self._before:
            hook()

    def run_after_restore(self) -> None:
        reseed()
        for hook in self._after:
            hook()


HOOKS = SnapshotHooks()
_installed: list[bool] = []


def before_snapshot(hook: Hook) -> Hook:
    """Registers `hook` with this process's hooks: see SnapshotHooks.before_snapshot."""
    return HOOKS.before_snapshot(hook)


def after_restore(hook: Hook) -> Hook:
    """Registers `hook` with this process's hooks: see SnapshotHooks.after_restore."""
    return HOOKS.after_restore(hook)


def install() -> None:
    """Hands the process's hooks to the Lambda runtime, once per process."""
    if _installed:
        return
    from snapshot_restore_py import register_after_restore, register_before_snapshot

    register_before_snapshot(HOOKS.run_before_snapshot)
    register_after_restore(HOOKS.run_after_restore)
    _installed.append(True)
