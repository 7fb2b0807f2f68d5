"""Duplicate keys: how many records of a batch job carry a key that another of its records carries.

Exact over the whole job, whichever worker read each record, in memory bounded by the keys
themselves: each scored chunk's keys become 64-bit hashes (pandas' SipHash with its fixed key, so
every process hashes alike), sent by hash range (one of BUCKETS) through a GroupByKey; each range's
hashes are counted once (numpy's unique), 8 bytes a key and 1/BUCKETS of the job's keys at a time.
Two different keys share a hash with a chance of about n^2 / 2^65 (3 in 100 million for a million
keys), which would count one duplicate too many. Only jobs whose keys come from the data need it:
position keys (file:index, file:line) are unique by construction.
"""

from typing import Iterable, Iterator, Sequence, Tuple

import apache_beam as beam
import numpy as np

from transforms.runtime.accounting import Accounting

BUCKETS = 16


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """The 64-bit hashes of keys, equal in every process (uint64, one per key)."""
    from pandas.util import hash_array

    if not len(keys):
        return np.zeros(0, np.uint64)
    return hash_array(np.asarray(list(keys), dtype=object), categorize=False)


def hashes_by_bucket(hashes: np.ndarray) -> Iterator[Tuple[int, bytes]]:
    """(bucket, the bucket's hashes as bytes) for each bucket that holds any of them."""
    buckets = (hashes % np.uint64(BUCKETS)).astype(np.int64)
    order = np.argsort(buckets, kind="stable")  # one sort, not a unique and a mask per bucket
    bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
    ordered = hashes[order]
    for bucket in range(BUCKETS):
        if bounds[bucket + 1] > bounds[bucket]:
            yield bucket, ordered[bounds[bucket]:bounds[bucket + 1]].tobytes()


def duplicates_among(parts: Iterable[bytes]) -> int:
    """How many hashes repeat one seen before them, over every part (records beyond the first
    of each key)."""
    hashes = np.concatenate([np.frombuffer(p, np.uint64) for p in parts] or [np.zeros(0, np.uint64)])
    return int(len(hashes) - len(np.unique(hashes)))


class KeyHashesFn(beam.DoFn):
    """ScoredChunk -> (bucket, hashes) for the keys of every record that reached scoring."""

    def process(self, chunk):
        yield from hashes_by_bucket(key_hashes(chunk.keys))


class CountDuplicatesFn(beam.DoFn):
    """(bucket, [hashes, ...]) -> the duplicate_keys counter."""

    def setup(self):
        self._accounting = Accounting()

    def process(self, bucket_parts):
        _, parts = bucket_parts
        self._accounting.duplicate_keys(duplicates_among(parts))
        return []


@beam.ptransform_fn
def CountDuplicateKeys(scored):
    """ScoredChunks -> nothing; counts duplicate keys (the counter duplicate_keys)."""
    return (scored
            | "KeyHashes" >> beam.ParDo(KeyHashesFn())
            | "ByHashRange" >> beam.GroupByKey()
            | "Count" >> beam.ParDo(CountDuplicatesFn()))
