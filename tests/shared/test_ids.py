"""Resource ids: Cluvio's shape, and every character of it drawn at random."""

from __future__ import annotations

from collections import Counter

from shared.ids import is_resource_id, new_resource_id

DRAWN = 3000


def test_ids_have_cluvios_shape_and_never_repeat() -> None:
    drawn = [new_resource_id() for _ in range(DRAWN)]
    assert all(is_resource_id(each) for each in drawn)
    assert len(set(drawn)) == DRAWN


def test_every_position_takes_every_character_about_evenly() -> None:
    """A position left fixed, or drawn from part of the alphabet (a base-36 spelling of too
    small a number leaves its leading digits at "a"), fails here: each of the 36 characters
    is expected DRAWN / 36 ≈ 83 times at each position; the bounds are over 6 standard
    deviations away."""
    drawn = [new_resource_id().replace("-", "") for _ in range(DRAWN)]
    for position in range(12):
        counts = Counter(each[position] for each in drawn)
        assert len(counts) == 36, (position, counts)
        assert min(counts.values()) >= 30, (position, counts)
        assert max(counts.values()) <= 140, (position, counts)
