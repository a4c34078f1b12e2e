"""Length buckets: where a batch of rows of unequal length is cut into forward passes."""

from agentark_utils.batching import length_buckets


def padded_tokens(lengths, buckets):
    return sum(sum(1 for b in buckets if b == bucket) * max(n for n, b in zip(lengths, buckets) if b == bucket)
               for bucket in set(buckets))


def test_length_buckets_cut_the_padding_of_skewed_lengths():
    lengths = [200, 60, 190, 64, 62, 210, 61, 63]  # two clusters: one forward pads all to 210
    buckets = length_buckets(lengths, bucket_cost_tokens=64)
    assert sorted(set(buckets)) == [0, 1]
    assert {n for n, b in zip(lengths, buckets) if b == 0} == {200, 190, 210}  # bucket 0: the longest rows
    assert padded_tokens(lengths, buckets) == 3 * 210 + 5 * 64 < len(lengths) * 210
    # the cuts are optimal: no partition of the sorted rows into contiguous buckets costs less
    ranked = sorted(lengths, reverse=True)
    def cost(cuts):
        edges = [0, *cuts, len(ranked)]
        return sum((b - a) * ranked[a] + 64 for a, b in zip(edges, edges[1:]))
    best = min(cost([i for i in range(1, len(ranked)) if mask >> i & 1]) for mask in range(2 ** len(ranked)))
    assert padded_tokens(lengths, buckets) + 64 * len(set(buckets)) == best
    # a forward that costs more than all the padding it would save: one bucket, as before
    assert set(length_buckets(lengths, bucket_cost_tokens=10_000)) == {0}
    assert length_buckets([], 64) == []
