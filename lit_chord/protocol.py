"""How each held-out set is scored: ``n`` samples per prompt and the ``k`` of pass@k, set by set.

Papers evaluate each benchmark its own way. CHORD reports AIME 2024 and 2025 as avg@32, AMC as avg@8 and MMLU-Pro
from one greedy answer, so one ``n`` for every set would either waste 32 samples on 12,032 MMLU-Pro questions or
leave AIME's 30 problems with a noisy estimate. ``val_num_samples`` (and ``val_pass_k``) are therefore a number for
every set or a mapping set name -> number. A set the mapping leaves out is scored greedily only (``n`` = 0); a name
that is not a held-out set is refused, since it is most likely a typo.

The metric names carry the numbers, ``val/<set>/avg@32`` and ``val/<set>/pass@32``, so a curve says which
estimate it is and two configs never log different quantities under one name.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_chord.errors import ConfigError

PerSet = int | dict[str, int]


@dataclass(frozen=True)
class SetProtocol:
    """One held-out set's sampling: ``num_samples`` answers at the validation temperature, pass@``pass_k``."""

    num_samples: int  # 0: greedy only
    pass_k: int  # 1 <= pass_k <= num_samples, or 0 without samples


def check_per_set(value: PerSet | None, name: str, minimum: int) -> None:
    """Refuse a count below ``minimum`` in ``value`` (a number or a mapping of numbers)."""
    for key, count in value.items() if isinstance(value, dict) else [("", value)]:
        if count is not None and count < minimum:
            where = f"{name}[{key!r}]" if key else name
            raise ValueError(f"{where} must be >= {minimum}, got {count}")


def protocols(num_samples: PerSet, pass_k: PerSet | None, set_names: list[str]) -> dict[str, SetProtocol]:
    """Each held-out set's ``SetProtocol`` from the callback's ``val_num_samples`` and ``val_pass_k``.

    Raises ``ConfigError`` for a mapping key that names no held-out set and for a ``k`` outside ``[1, n]``.
    """
    for value, field in ((num_samples, "val_num_samples"), (pass_k, "val_pass_k")):
        if isinstance(value, dict) and (unknown := sorted(set(value) - set(set_names))):
            raise ConfigError(
                f"RolloutCallback.{field} names {', '.join(map(repr, unknown))}, which is not a held-out set "
                f"(data.val_data has {', '.join(map(repr, set_names)) or 'none'})"
            )
    result = {}
    for name in set_names:
        n = num_samples.get(name, 0) if isinstance(num_samples, dict) else num_samples
        k = pass_k.get(name) if isinstance(pass_k, dict) else pass_k
        if n and k is not None and not 1 <= k <= n:
            raise ConfigError(f"RolloutCallback.val_pass_k for set {name!r} must lie in [1, {n}] (its n), got {k}")
        result[name] = SetProtocol(n, (k or n) if n else 0)
    return result
