"""schemathesis over every operation of an app's own OpenAPI document.

Driven through schemathesis' Python API (operation strategies under hypothesis): its pytest
plugin (`schemathesis.pytest.from_fixture`) reads `request.node._nodeid`, which pytest 9 lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings


def assert_conforms(
    schema: schemathesis.BaseSchema, *, max_examples: int = 40, excluded_checks: Sequence[Any] = ()
) -> int:
    """Runs every operation's generated cases through `call_and_validate`; returns the operation count."""
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=list(excluded_checks))

        check()
    return len(operations)
