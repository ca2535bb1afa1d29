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

CHAT_ROLES = ("system", "user", "assistant", "tool")
# The folders the paper's recipes read under data/, and the subcommand of ``python -m lit_chord.data`` that writes
# each ({name}: the missing file's stem, one benchmark per file).
PREPARED_BY = {"openr1": "openr1", "toolace": "toolace", "eval": "bench {name}"}


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
            raise DataError(f"{source}: file not found", hint=preparation_hint(path))
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


def preparation_hint(path: str | Path) -> str | None:
    """For a missing file of the paper's prepared data (``data/openr1/``, ``data/toolace/``, ``data/eval/``), the
    command that prepares it; None for any other path."""
    folder = Path(path).parent
    if folder.parent.name != "data" or folder.name not in PREPARED_BY:
        return None
    command = PREPARED_BY[folder.name].format(name=Path(path).stem)
    return f'prepare it with `python -m lit_chord.data {command} --out {folder}` (README, "Reproducing the paper")'


def json_type(value) -> str:
    """A value's type in JSON's words, for error messages: "null", "a string", "an array", ..."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names[list] = "an array"
    return names.get(type(value), "an object" if isinstance(value, dict) else f"a {type(value).__name__}")


def _read_json(path: Path) -> list[tuple[str, dict]]:
    """JSON Lines (one object per line, blank lines skipped); a ``.json`` file may instead hold one array of
    objects (or one object)."""
    if not path.exists():
        raise DataError(f"{path}: file not found", hint=preparation_hint(path))
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


def chat_messages(messages: object, field: str, where: str) -> list[dict]:
    """``messages`` checked to be a non-empty list of ``{"role", "content"}`` chat turns with known roles and string
    contents; the error names ``where`` (file:line), the field and the turn."""
    if not isinstance(messages, list):
        hint = " (JSON-encoded? store the list itself)" if isinstance(messages, str) else ""
        raise DataError(
            f"{where}: field {field!r} must be a list of {{'role': ..., 'content': ...}} objects, "
            f"got {json_type(messages)}{hint}"
        )
    for number, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise DataError(f"{where}: message {number}: expected an object, got {json_type(m)}")
        if m.get("role") not in CHAT_ROLES:
            role = "'role' missing" if "role" not in m else f"unknown chat role {m['role']!r}"
            raise DataError(f"{where}: message {number}: {role}; expected one of {', '.join(CHAT_ROLES)}")
        if not isinstance(m.get("content"), str):
            got = "missing" if "content" not in m else f"must be a string, got {json_type(m['content'])}"
            raise DataError(f"{where}: message {number}: 'content' {got}")
    if not messages:
        raise DataError(f"{where}: field {field!r} is empty")
    return messages
