"""Deterministic candidate stream: stratified round-robin across strata (AOIs or scenes), by block.

Each stratum is a list of blocks (adjacent patches fetched by one request; a single patch where
the source does not fetch blocks), already shuffled from the seed by its source. :func:`interleave`
takes one block from each stratum in turn (strata order itself shuffled from the seed), so any
prefix of the stream is balanced across AOIs/scenes; :func:`flatten_blocks` then lists the
candidates block after block. Shard ``k`` = candidates ``[k*S, (k+1)*S)``.
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


def group_blocks(cells: Sequence[tuple[float, float]], origin: tuple[float, float], cell: float,
                 shape: tuple[int, int]) -> list[tuple[str, list[tuple[float, float, bool]]]]:
    """Cells (upper-left corners ``(x, y)``, metres, on a north-up grid of ``cell`` metres through
    ``origin``) grouped into blocks of ``shape`` = (rows, cols) cells anchored at ``origin``.

    Returns ``[(block key "row,col", [(x, y, inside), ...]), ...]``: blocks in row-major order, each
    with ALL its rows x cols cells in row-major order; a block cell missing from ``cells`` comes back
    with ``inside`` False (so every block fills the same number of rows)."""
    rows, cols = shape
    ox, oy = origin
    index = {(round((oy - y) / cell), round((x - ox) / cell)): (x, y) for x, y in cells}
    out = []
    for by, bx in sorted({(m // rows, k // cols) for m, k in index}):
        members = []
        for m in range(by * rows, (by + 1) * rows):
            for k in range(bx * cols, (bx + 1) * cols):
                x, y = index.get((m, k), (ox + k * cell, oy - m * cell))
                members.append((x, y, (m, k) in index))
        out.append((f"{by},{bx}", members))
    return out


def flatten_blocks(strata: Sequence[Sequence[Sequence[T]]], seed: int) -> list[T]:
    """The candidate stream: blocks interleaved across strata (:func:`interleave`), block by block."""
    return [item for block in interleave(strata, seed) for item in block]


def shard_slices(n_candidates: int, shard_patches: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of every shard of the candidate stream."""
    return [(s, min(s + shard_patches, n_candidates)) for s in range(0, n_candidates, shard_patches)]
