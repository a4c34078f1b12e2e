"""Rows of unequal length in forward passes: which rows share one (length buckets).

A batch pads every row to its longest, and the padding costs as much compute as real tokens. Cutting
a batch of skewed lengths into buckets of similar length removes most of it, at the fixed cost of
one more forward pass per bucket. The PRM's training batches (`prm.StepBatchCollator`) and the hf
engine's prefill (`backends.prefill`) both cut where that saves more than it costs.
"""

from __future__ import annotations


def length_buckets(lengths: list[int], bucket_cost_tokens: int) -> list[int]:
    """Each row's bucket: rows sorted by length, cut where that minimises the tokens processed.

    A bucket costs (its rows x its longest row) padded tokens plus `bucket_cost_tokens`, the fixed
    cost of one more forward pass; the cuts minimise the total (dynamic programming over the sorted
    rows). Bucket 0 holds the longest rows.
    """
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])
    # best[end]: the least cost of the `end` longest rows; start[end]: where their last bucket begins
    best, start = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for first in range(end):
            cost = best[first] + (end - first) * lengths[order[first]] + bucket_cost_tokens
            if cost < best[end]:
                best[end], start[end] = cost, first
    bounds, end = [], len(order)
    while end > 0:
        bounds.append((start[end], end))
        end = start[end]
    bucket_of = [0] * len(lengths)
    for bucket, (first, end) in enumerate(reversed(bounds)):
        for rank in range(first, end):
            bucket_of[order[rank]] = bucket
    return bucket_of
