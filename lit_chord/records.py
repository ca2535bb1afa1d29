"""Reading data files into records, with errors that say where and what is wrong.

JSON and JSON Lines are parsed here rather than by ``datasets``, whose errors name neither the line nor the cause
(a malformed ``.json`` raises ``DatasetGenerationError``, an empty file ``StopIteration``); parquet files and hub
data sets go through ``datasets.load_dataset``. Every record comes with its location (``file:line`` or
``source: record i``) so that the datamodule's field checks can name it.
"""

from __future__ import annotations

import json
from pathlib import Path

from lit_chord.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, the record and what was expected.

    A ``UserError``, so the command line prints it as one line; a ``ValueError`` as it always was.
    """


def load_records(source: str) -> list[dict]:
    """Read a JSON/JSONL/parquet file or a ``datasets`` hub name (``name`` or ``name:split``) into dicts."""
    return [record for _, record in located_records(source)]


def located_records(source: str) -> list[tuple[str, dict]]:
    """Records with where each came from (``file:line`` for JSON Lines, ``source: record i`` otherwise).

    JSON and JSON Lines are parsed here rather than by ``datasets``, whose errors name neither line nor cause (a
    malformed ``.json`` raises ``DatasetGenerationError``, an empty file ``StopIteration``).
    """
    path = Path(source)
    if path.suffix in (".json", ".jsonl"):
        located = _read_json(path)
    else:
        if path.exists() and path.suffix != ".parquet":
            raise DataError(f"{source}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
        if path.suffix == ".parquet" and not path.exists():
            raise DataError(f"{source}: file not found")
        import datasets

        name, _, split = source.partition(":")
        if path.suffix == ".parquet":
            dataset = datasets.load_dataset("parquet", data_files=source, split="train")
        else:
            dataset = datasets.load_dataset(name, split=split or "train")
        located = [(f"{source}: record {i}", r) for i, r in enumerate(dataset.to_list(), start=1)]
    if not located:
        raise DataError(f"{source}: no records")
    return located


def json_type(value) -> str:
    """A value's type in JSON's words, for error messages: "null", "a string", "an array", ..."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names[list] = "an array"
    return names.get(type(value), "an object" if isinstance(value, dict) else f"a {type(value).__name__}")


def _read_json(path: Path) -> list[tuple[str, dict]]:
    """JSON Lines (one object per line, blank lines skipped); a ``.json`` file may instead hold one array of
    objects (or one object)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start})") from err
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and other separators verbatim
    content = [line for line in lines if line.strip()]
    if path.suffix == ".json" and content and not _is_json_object(content[0]):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from err
        if isinstance(document, dict):
            return [(str(path), document)]
        if not isinstance(document, list):
            raise DataError(f"{path}: expected a JSON array of objects (or JSON Lines), got {json_type(document)}")
        for index, record in enumerate(document, start=1):
            if not isinstance(record, dict):
                raise DataError(f"{path}: record {index}: expected a JSON object, got {json_type(record)}")
        return [(f"{path}: record {i}", r) for i, r in enumerate(document, start=1)]
    located = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {json_type(record)}")
        located.append((f"{path}:{number}", record))
    return located


def text_field_problem(record: dict, key: str) -> str | None:
    """Why ``record[key]`` is not a usable string or number, or None if it is."""
    if key not in record:
        return "missing"
    value = record[key]
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"is {json_type(value)}"
    return None if str(value).strip() else "is empty"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
