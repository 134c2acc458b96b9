"""Mongo-style metadata filters, compiled to the postfix program `_native.MetadataColumns.select` runs.

`{"lang": "en", "year": {"$gte": 2020}}`: a bare value means `$eq`; several clauses are ANDed.
Operators: $eq $ne $in $nin $gt $gte $lt $lte, and $and $or $not. Numbers compare as numbers
(1 == 1.0, never equal to true); strings, booleans and null compare by equality only. An item
without the field never matches $eq/$in/$gt..., so it matches $ne/$nin/$not.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

Instruction = tuple[int, str, list[float], list[str]]

OP_NUM_IN, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_TOKEN_IN = 1, 2, 3, 4, 5, 6
OP_AND, OP_OR, OP_NOT, OP_ALL = 10, 11, 12, 13
RANGE_OPS = {"$gt": OP_GT, "$gte": OP_GTE, "$lt": OP_LT, "$lte": OP_LTE}
MAX_INSTRUCTIONS = 512
MAX_DEPTH = 16


class FilterError(ValueError):
    """The filter is malformed; the message says where."""


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def token(value: object) -> str:
    """The canonical token of a non-numeric scalar, shared by the column builder and the compiler."""
    return orjson.dumps(value).decode()


def _scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if is_number(value):
        if not math.isfinite(value):
            raise FilterError(f"{where}: numbers must be finite")
        return value
    raise FilterError(f"{where}: expected a string, number, boolean or null, got {type(value).__name__}")


def _equals_any(key: str, values: list[Any]) -> list[Instruction]:
    numbers = [float(v) for v in values if is_number(v)]
    tokens = [token(v) for v in values if not is_number(v)]
    program: list[Instruction] = []
    if numbers or not tokens:
        program.append((OP_NUM_IN, key, numbers, []))
    if tokens:
        program.append((OP_TOKEN_IN, key, [], tokens))
    if numbers and tokens:
        program.append((OP_OR, "", [], []))
    return program


def _join(parts: list[list[Instruction]], op: int) -> list[Instruction]:
    program = list(parts[0])
    for part in parts[1:]:
        program += [*part, (op, "", [], [])]
    return program


def _field(key: str, condition: Any, where: str, depth: int) -> list[Instruction]:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: nested deeper than {MAX_DEPTH}")
    is_operators = (
        isinstance(condition, dict) and condition and all(str(k).startswith("$") for k in condition)
    )
    if not is_operators:
        if isinstance(condition, dict) and condition:
            raise FilterError(f"{where}: mix of operators and plain fields")
        return _equals_any(key, [_scalar(condition, where)])
    parts: list[list[Instruction]] = []
    for op, operand in condition.items():
        at = f"{where}.{op}"
        if op == "$eq":
            parts.append(_equals_any(key, [_scalar(operand, at)]))
        elif op == "$ne":
            parts.append([*_equals_any(key, [_scalar(operand, at)]), (OP_NOT, "", [], [])])
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise FilterError(f"{at}: expected a list")
            values = [_scalar(v, f"{at}[{i}]") for i, v in enumerate(operand)]
            program = _equals_any(key, values)
            parts.append([*program, (OP_NOT, "", [], [])] if op == "$nin" else program)
        elif op in RANGE_OPS:
            if not is_number(operand) or not math.isfinite(operand):
                raise FilterError(f"{at}: expected a finite number")
            parts.append([(RANGE_OPS[op], key, [float(operand)], [])])
        elif op == "$not":
            if not isinstance(operand, dict) or not operand:
                raise FilterError(f"{at}: expected an object of operators")
            parts.append([*_field(key, operand, at, depth + 1), (OP_NOT, "", [], [])])
        else:
            raise FilterError(f"{at}: unknown operator")
    return _join(parts, OP_AND)


def _document(condition: Any, where: str, depth: int) -> list[Instruction]:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: nested deeper than {MAX_DEPTH}")
    if not isinstance(condition, dict):
        raise FilterError(f"{where}: expected an object")
    if not condition:
        return [(OP_ALL, "", [], [])]
    parts: list[list[Instruction]] = []
    for key, value in condition.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{at}: expected a non-empty list of filters")
            branches = [_document(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value)]
            parts.append(_join(branches, OP_AND if key == "$and" else OP_OR))
        elif key == "$not":
            parts.append([*_document(value, at, depth + 1), (OP_NOT, "", [], [])])
        elif key.startswith("$"):
            raise FilterError(f"{at}: unknown operator")
        elif not key:
            raise FilterError(f"{where}: empty field name")
        else:
            parts.append(_field(key, value, at, depth + 1))
    return _join(parts, OP_AND)


def compile_filter(condition: Any) -> list[Instruction]:
    """The postfix program for `condition`, or FilterError naming the malformed part."""
    program = _document(condition, "filter", 0)
    if len(program) > MAX_INSTRUCTIONS:
        raise FilterError(f"filter: more than {MAX_INSTRUCTIONS} operations")
    return program
