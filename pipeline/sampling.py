"""Deterministic candidate stream: stratified round-robin across strata (AOIs or scenes).

Each stratum is already shuffled from the seed by its source; :func:`interleave` takes one
candidate from each stratum in turn (strata order itself shuffled from the seed), so any prefix
of the stream is balanced across AOIs/scenes. Shard ``k`` = candidates ``[k*S, (k+1)*S)``.
"""
from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


def interleave(strata: Sequence[Sequence[T]], seed: int) -> list[T]:
    """Round-robin over strata (order shuffled by ``seed``) until all are exhausted."""
    order = list(range(len(strata)))
    random.Random(f"strata:{seed}").shuffle(order)
    out: list[T] = []
    depth = max((len(s) for s in strata), default=0)
    for i in range(depth):
        for k in order:
            if i < len(strata[k]):
                out.append(strata[k][i])
    return out


def shard_slices(n_candidates: int, shard_patches: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of every shard of the candidate stream."""
    return [(s, min(s + shard_patches, n_candidates)) for s in range(0, n_candidates, shard_patches)]
