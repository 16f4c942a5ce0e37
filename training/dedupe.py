"""Near-duplicate detection across an agent's material: normalised text, MinHash and LSH bands.

Each completion becomes a set of features (the words and word pairs of its normalised
question and answer). MinHash turns a set into `NUM_PERM` numbers whose pairwise agreement
estimates the Jaccard similarity of two sets; LSH cuts the signature into `BANDS` bands of
`ROWS` numbers and calls two completions candidates when any band is equal. Candidates are
then checked with the exact Jaccard similarity against `JACCARD_THRESHOLD`.

With 20 bands of 5 rows, a pair at similarity 0.8 becomes a candidate with probability
1 - (1 - 0.8**5)**20 ≈ 0.9996 and a pair at 0.3 with ≈ 0.05, so nearly every true pair is
checked while most unrelated ones never are. The `NUM_PERM` hash functions are the 4-byte
words of one SHAKE-128 output per feature (independent hashes, computed in C), so a run is
deterministic and gives the same groups on every machine.
"""
from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

JACCARD_THRESHOLD = 0.8
NUM_PERM = 100
BANDS = 20
ROWS = NUM_PERM // BANDS
# A bucket of many identical signatures (say 1,000 copies of one pair) would give half a
# million candidate pairs; comparing each member with its WINDOW predecessors keeps the
# work linear and still links the whole bucket through the chain.
WINDOW = 32
SALT = b"masscer-minhash-1:"

_MAX_HASH = (1 << 32) - 1
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_words(text: str) -> list[str]:
    """Words of the text, compared without case, accents' compatibility forms or punctuation."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def features(question: str, answer: str) -> frozenset[str]:
    """Words and adjacent word pairs of question and answer (pairs keep some word order)."""
    found: set[str] = set()
    for part, text in (("q", question), ("a", answer)):
        words = normalise_words(text)
        found.update(f"{part}:{word}" for word in words)
        found.update(f"{part}:{first} {second}" for first, second in zip(words, words[1:], strict=False))
    return frozenset(found)


@lru_cache(maxsize=1 << 16)
def _hashes(feature: str) -> tuple[int, ...]:
    """NUM_PERM independent 32-bit hashes of one feature (cached: words recur across texts)."""
    values = array("I", hashlib.shake_128(SALT + feature.encode("utf-8")).digest(4 * NUM_PERM))
    if sys.byteorder == "big":
        values.byteswap()  # read the bytes little-endian everywhere
    return tuple(values)


def signature(items: Iterable[str]) -> tuple[int, ...]:
    """MinHash signature: for each hash function, the smallest value over the set."""
    rows = [_hashes(item) for item in items]
    if not rows:
        return (_MAX_HASH,) * NUM_PERM
    return tuple(map(min, zip(*rows, strict=True)))


def band_keys(sig: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    return [(band, sig[band * ROWS : (band + 1) * ROWS]) for band in range(BANDS)]


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass
class LSHIndex:
    """Buckets of ids by band; yields candidate pairs (smaller id first)."""

    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, item_id: int, sig: tuple[int, ...]) -> None:
        for key in band_keys(sig):
            self.buckets[key].append(item_id)

    def candidate_pairs(self) -> Iterator[tuple[int, int]]:
        """Pairs (smaller id first) sharing a band; a bucket seen in another band is skipped."""
        seen: set[tuple[int, ...]] = set()
        for members in self.buckets.values():
            if len(members) < 2:
                continue
            key = tuple(members)
            if key in seen:  # identical items share every band: one pass over them is enough
                continue
            seen.add(key)
            for i in range(1, len(members)):
                for j in range(max(0, i - WINDOW), i):
                    a, b = members[j], members[i]
                    if a != b:
                        yield (min(a, b), max(a, b))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> Iterator[list[int]]:
        by_root: dict[int, list[int]] = defaultdict(list)
        for item in self.parent:
            by_root[self.find(item)].append(item)
        for members in by_root.values():
            if len(members) > 1:
                yield sorted(members)


def near_duplicate_groups(
    texts: Iterable[tuple[int, str, str]], *, threshold: float = JACCARD_THRESHOLD
) -> list[list[int]]:
    """Groups (sorted ids, at least two) of near-duplicate (id, question, answer) items.

    Two items are linked when the Jaccard similarity of their features is at least
    `threshold`; groups are the connected components of those links.
    """
    index = LSHIndex()
    # The texts are kept (they are smaller than feature sets); features are rebuilt only
    # for the items that turn up in a candidate pair.
    kept: dict[int, tuple[str, str]] = {}
    for item_id, question, answer in texts:
        kept[item_id] = (question, answer)
        index.add(item_id, signature(features(question, answer)))
    cache: dict[int, frozenset[str]] = {}

    def features_of(item_id: int) -> frozenset[str]:
        if item_id not in cache:
            cache[item_id] = features(*kept[item_id])
        return cache[item_id]

    links = _UnionFind()
    checked: set[tuple[int, int]] = set()
    for a, b in index.candidate_pairs():
        if (a, b) in checked or links.find(a) == links.find(b):
            continue  # already linked through others: the groups would not change
        checked.add((a, b))
        if jaccard(features_of(a), features_of(b)) >= threshold:
            links.union(a, b)
    return sorted(links.groups())
