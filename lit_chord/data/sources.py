"""Loading a source data set, checking its columns, writing prepared files and counting what each filter dropped.

Why ``datasets`` reads every source, local files included: a hub name and a local copy of it (its parquet files,
or JSON Lines in the hub's columns) then come out with the same column types, which ``require_columns`` checks
by name before anything is computed, so a wrong source is one error naming the data set and the column rather
than a ``KeyError`` halfway through. Local files are read into memory through a temporary cache, so preparing
from a local copy leaves nothing in the Hugging Face cache. Outputs are JSON Lines written to a temporary file
and renamed, so an interrupted run never leaves half a file where a config expects a whole one.

A hub name that is neither in the cache nor reachable fails after one short request (as ``cli.py`` does for
models), not after ``datasets``' half a minute of retries.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import RepositoryNotFoundError

from lit_chord.errors import UserError
from lit_chord.hub import HUB_PROBE_TIMEOUT_S, is_repo_id

if TYPE_CHECKING:
    from datasets import Dataset

LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
DOWNLOAD_HINT = (
    "where the hub is reachable, save it with `datasets.load_dataset(...).to_parquet('x.parquet')` "
    "and pass the .parquet file instead"
)


def load_source(source: str, config: str | None = None, split: str = "train") -> Dataset:
    """A hub data set (its ``config`` and ``split``) or a local .parquet/.jsonl/.json file as a ``Dataset``."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    path = Path(source)
    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is not None:
        if not path.is_file():
            raise UserError(f"{source}: file not found")
        with tempfile.TemporaryDirectory() as cache:
            try:
                return datasets.load_dataset(
                    builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
            except (DatasetGenerationError, ValueError) as err:  # malformed JSON; a JSON column of mixed types
                raise UserError(f"{source}: cannot be read as {builder} ({first_line(err.__cause__ or err)})") from err
    if path.is_file():
        raise UserError(f"{source}: unsupported file type {path.suffix!r}; use .parquet, .jsonl or .json")
    if not path.is_dir() and not is_repo_id(source):
        raise UserError(f"{source}: not found (relative paths are resolved from {Path.cwd()}) and not a hub name")
    where = f"config {config!r}, split {split!r}" if config else f"split {split!r}"
    problem = None if path.is_dir() else hub_problem(source)
    if problem is not None:
        raise UserError(f"{source} ({where}) cannot be loaded: {problem}", hint=DOWNLOAD_HINT)
    try:
        return datasets.load_dataset(source, config, split=split)
    except (OSError, ValueError) as err:  # no route to the hub; no such data set, config or split
        raise UserError(f"{source} ({where}) cannot be loaded: {first_line(err)}", hint=DOWNLOAD_HINT) from err


def hub_problem(name: str) -> str | None:
    """Why the hub cannot provide the data set ``name`` now, or None if it may: cached, reachable, or offline mode
    (where ``datasets`` itself fails at once or reads its cache)."""
    if is_offline_mode() or isinstance(try_to_load_from_cache(name, "README.md", repo_type="dataset"), str):
        return None
    try:
        HfApi().dataset_info(name, timeout=HUB_PROBE_TIMEOUT_S)
    except RepositoryNotFoundError:
        return "the hub has no such data set (or it is private or gated: log in with `hf auth login`)"
    except Exception as err:  # no route, no DNS, a timeout, a 5xx: the download would fail the same way
        return f"the hub is unreachable ({type(err).__name__}: {first_line(err)})"
    return None


def column_type(feature: Any) -> str:
    """A ``datasets`` feature in words: "string", "int", "float", "bool", "list of string", "struct", ..."""
    from datasets import LargeList, List, Sequence, Value

    if isinstance(feature, Value):
        dtype = feature.dtype
        if dtype in ("string", "large_string"):
            return "string"
        if "int" in dtype:
            return "int"
        return "float" if "float" in dtype else dtype
    if isinstance(feature, (List, LargeList, Sequence)):
        return f"list of {column_type(feature.feature)}"
    if isinstance(feature, list) and feature:
        return f"list of {column_type(feature[0])}"
    return "struct" if isinstance(feature, dict) else type(feature).__name__


def require_columns(dataset: Dataset, source: str, expected: Mapping[str, tuple[str, ...]]) -> None:
    """Raise a ``UserError`` naming ``source`` and the column when one is missing or of another type.

    Args:
        expected: Column -> the types it may have, in ``column_type``'s words.
    """
    for name, types in expected.items():
        wanted = " or ".join(types)
        if name not in dataset.features:
            found = ", ".join(dataset.column_names) or "none"
            raise UserError(f"{source}: column {name!r} ({wanted}) is missing; its columns: {found}")
        actual = column_type(dataset.features[name])
        if actual not in types:
            raise UserError(f"{source}: column {name!r} is {actual}, expected {wanted}")


def first_column(dataset: Dataset, source: str, candidates: tuple[str, ...]) -> str:
    """The first of ``candidates`` that ``dataset`` has (benchmarks spell "problem" and "answer" differently)."""
    for name in candidates:
        if name in dataset.features:
            return name
    found = ", ".join(dataset.column_names) or "none"
    raise UserError(f"{source}: no column {' or '.join(map(repr, candidates))}; its columns: {found}")


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Write ``records`` as JSON Lines to ``path`` atomically (a temporary file, then a rename); the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            count = 0
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


class Report:
    """What a preparation read, dropped and kept: ``counts`` by key (for tests), ``str()`` as the printed summary."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lines: list[str] = []

    def heading(self, text: str) -> None:
        self.lines.append(text)

    def count(self, key: str, value: int, text: str, sign: str = "-") -> None:
        """Record ``value`` under ``key`` and print it as ``  - 1,234  text`` (``=`` for what is left)."""
        self.counts[key] = value
        self.lines.append(f"  {sign} {value:>9,}  {text}")

    def __str__(self) -> str:
        return "\n".join(self.lines)


def first_line(err: BaseException) -> str:
    return str(err).strip().split("\n", 1)[0]
