"""Schedules as pure functions of training progress (0 at the first step, 1 at the last)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# The seed's default (0-0.3 explore: 0; 0.3-0.6 transition: 0.15; 0.6-1.0 stable: 1.0),
# and the 20% / 60% boundaries its 3060 recipe reports working well.
PET_DEFAULT = ((0.3, 0.6), (0.0, 0.15, 1.0))
PET_SEED_20_60 = ((0.2, 0.6), (0.0, 0.15, 1.0))


def lambda_pet(
    progress: float, boundaries: Sequence[float] = PET_DEFAULT[0], values: Sequence[float] = PET_DEFAULT[1]
) -> float:
    """Piecewise-constant weight: values[i] on [boundaries[i-1], boundaries[i]); the last from the last boundary on."""
    if len(values) != len(boundaries) + 1:
        raise ValueError("values needs exactly one entry more than boundaries")
    return float(values[bisect.bisect_right(list(boundaries), progress)])


def head_trainable(progress: float, freeze_at: float) -> bool:
    """The safety head learns until `freeze_at` of training, then is frozen to protect it."""
    return progress < freeze_at
