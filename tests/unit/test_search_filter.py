"""The Rust pre-filter (`_native.MetadataColumns`) against the reference evaluator, row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiinfra._native import MetadataColumns
from aiinfra.vectors.filter import FilterError, compile_filter
from aiinfra.vectors.segment import read_segment, write_segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.search import matches

KEYS = ["lang", "year", "flag"]
scalars = st.one_of(
    st.sampled_from(["en", "de", "fr"]),
    st.integers(2015, 2025),
    st.sampled_from([2020.0, 2020.5]),
    st.booleans(),
    st.none(),
)
rows = st.lists(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3), min_size=1, max_size=140)


def _field_condition() -> st.SearchStrategy[Any]:
    ops = st.one_of(
        st.fixed_dictionaries({"$eq": scalars}),
        st.fixed_dictionaries({"$ne": scalars}),
        st.fixed_dictionaries({"$in": st.lists(scalars, max_size=3)}),
        st.fixed_dictionaries({"$nin": st.lists(scalars, max_size=3)}),
        st.dictionaries(
            st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), st.integers(2014, 2026), min_size=1, max_size=2
        ),
    )
    return st.one_of(scalars, ops, st.fixed_dictionaries({"$not": ops}))


filters = st.recursive(
    st.dictionaries(st.sampled_from(KEYS), _field_condition(), max_size=2),
    lambda inner: st.one_of(
        st.dictionaries(
            st.sampled_from(["$and", "$or"]), st.lists(inner, min_size=1, max_size=3), min_size=1
        ),
        st.fixed_dictionaries({"$not": inner}),
    ),
    max_leaves=6,
)


def _segment(directory: Path, metadata: list[dict[str, Any]]) -> Any:
    n = len(metadata)
    ref = write_segment(
        directory,
        "s",
        dimension=2,
        metric="l2",
        ids=[str(i) for i in range(n)],
        vectors=np.zeros((n, 2), dtype=np.float32),
        metadata=metadata,
        kind="delta",
    )
    return read_segment(directory, ref, 2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=rows, condition=filters)
def test_bitmap_matches_reference(
    tmp_path_factory: pytest.TempPathFactory, metadata: list[dict[str, Any]], condition: dict[str, Any]
) -> None:
    segment = _segment(tmp_path_factory.mktemp("seg"), metadata)
    raw, count = segment.columns.select(compile_filter(condition))
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: len(metadata)]
    expected = [matches(condition, row) for row in metadata]
    assert bits.astype(bool).tolist() == expected
    assert count == sum(expected)
    assert len(raw) == (len(metadata) + 7) // 8


def test_bitmap_over_a_million_rows() -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    year = rng.integers(2000, 2025, n)
    lang = rng.choice(["en", "de", "fr"], n)
    codes = np.searchsorted(np.array(['"de"', '"en"', '"fr"']), np.char.add(np.char.add('"', lang), '"'))
    columns = MetadataColumns(
        n,
        [("year", year.astype("<f8").tobytes())],
        [("lang", ['"de"', '"en"', '"fr"'], codes.astype("<u4").tobytes())],
    )
    raw, count = columns.select(compile_filter({"lang": "en", "year": {"$gte": 2020}}))
    expected = (lang == "en") & (year >= 2020)
    assert count == int(expected.sum())
    assert np.array_equal(np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:n], expected)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"year": {"$gt": "2020"}}, "filter.year.$gt: expected a finite number"),
        ({"year": {"$regex": "x"}}, "filter.year.$regex: unknown operator"),
        ({"$or": []}, "filter.$or: expected a non-empty list of filters"),
        ({"tags": ["a"]}, "filter.tags: expected a string, number, boolean or null, got list"),
        ({"year": {"$in": 3}}, "filter.year.$in: expected a list"),
        ({"year": {"$gt": 1, "lang": "en"}}, "filter.year: mix of operators and plain fields"),
        ({"$where": "1"}, "filter.$where: unknown operator"),
        ([1], "filter: expected an object"),
    ],
)
def test_malformed_filters_name_the_part(condition: Any, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(condition)
    assert str(caught.value) == message
