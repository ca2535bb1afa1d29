"""Whether a hub name can be had now, cheaply: the local cache, or one short request to the hub.

Why: ``from_pretrained`` and ``load_dataset`` retry a missing or misspelled name for minutes before they fail, and
offline they fail with a message that names neither the config key nor the way out. The command lines (``cli``,
``python -m lit_chord.data``) ask here first, so a typo fails in seconds.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

HUB_PROBE_TIMEOUT_S = 3.0  # one request, no retries: an answer takes well under a second when the hub is there


def dataset_problem(name: str) -> str | None:
    """Why ``datasets.load_dataset(name)`` would fail now, or None if it can work: neither cache has it, and the hub
    cannot provide it (offline mode, no answer, no such data set)."""
    import datasets.config

    if dataset_cached(name):
        return None
    problem = "offline mode is on (HF_HUB_OFFLINE)" if datasets.config.HF_HUB_OFFLINE else hub_problem(name, "dataset")
    if problem is None:
        return None
    where = f"relative to {Path.cwd()}"
    return f"{name!r} is not a local file or folder ({where}), not in the Hugging Face cache, and {problem}"


def dataset_cached(name: str) -> bool:
    """Whether a version of the hub data set ``name`` is cached: its files in the hub cache, or the tables ``datasets``
    prepared from them in its own cache (which ``load_dataset`` falls back to offline)."""
    import datasets.config
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="dataset") / "snapshots"
    namespace, _, dataset = name.rpartition("/")
    prepared = "___".join([*filter(None, [namespace]), camelcase_to_snakecase(dataset)])
    return any(snapshots.glob("*/*")) or (Path(datasets.config.HF_DATASETS_CACHE) / prepared).is_dir()


def pretrained_problem(name: str, filenames: tuple[str, ...]) -> str | None:
    """Why ``from_pretrained(name)`` would fail, or None if it can work: a folder without the files, or a hub name
    that neither the local cache nor the hub can provide now."""
    if Path(name).is_dir():
        if any((Path(name) / filename).is_file() for filename in filenames):
            return None
        return f"folder {name!r} has no {' or '.join(filenames)}; it is not a model saved with save_pretrained"
    if any(isinstance(try_to_load_from_cache(name, filename), str) for filename in filenames):
        return None
    problem = hub_problem(name)
    if problem is None:
        return None
    return (
        f"{name!r} is not a local folder (relative to {Path.cwd()}) and not in the Hugging Face cache, "
        f"and {problem}: download it first or pass a local path"
    )


def is_repo_id(name: str) -> bool:
    """Whether ``name`` could be a hub repository ("org/name"); "data/demo/model" or "./model" cannot."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_problem(name: str, repo_type: str = "model") -> str | None:
    """Why the hub cannot provide the model (or ``repo_type`` "dataset") ``name`` now, or None if it can: one short
    request, no retries."""
    if is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE)"
    try:
        HfApi().repo_info(name, repo_type=repo_type, timeout=HUB_PROBE_TIMEOUT_S)
    except RepositoryNotFoundError:
        return f"the hub has no such {repo_type} (or it is private or gated: log in with `hf auth login`)"
    except Exception as err:  # no route, no DNS, a timeout, a 5xx: the download would fail the same way
        first_line = str(err).strip().split("\n", 1)[0]
        return f"the hub is unreachable ({type(err).__name__}: {first_line})"
    return None
