"""The prefix cache of the worker emulator's model: KV blocks by hash, least recently used evicted first.

A block's hits count the requests that found it as part of their cached leading prefix. The first block of
a prefix is kept longest (it is touched last), since every request sharing the prefix needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

from schemas.workerproto import Block


class PrefixCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._hits: OrderedDict[str, int] = OrderedDict()  # block hash → hits; most recently used last

    def __len__(self) -> int:
        return len(self._hits)

    def recent_first(self) -> Iterator[str]:
        return reversed(self._hits)

    def serve(self, prefix: Sequence[str]) -> int:
        """A request with ``prefix`` takes a slot: its cached leading blocks count a hit each, then the
        whole prefix is cached. The number of leading blocks it found."""
        hit = 0
        for block in prefix:
            if block not in self._hits:
                break
            hit += 1
        for block in prefix[:hit]:
            self._hits[block] += 1
        self.touch(prefix)
        return hit

    def touch(self, prefix: Sequence[str]) -> None:
        """``prefix`` is in the cache now, its first block the most recent; the oldest blocks go."""
        for block in reversed(prefix):
            if block in self._hits:
                self._hits.move_to_end(block)
            else:
                self._hits[block] = 0
        while len(self._hits) > self.capacity:
            self._hits.popitem(last=False)

    def take_in(self, blocks: Sequence[Block]) -> None:
        """Blocks copied in from another worker, keeping the larger hit count of each."""
        for block in blocks:
            self._hits[block.block_hash] = max(block.hits, self._hits.get(block.block_hash, 0))
        self.touch([b.block_hash for b in blocks])

    def hottest(self, limit: int, block_bytes: float) -> list[Block]:
        """The ``limit`` blocks with the most hits, the most recent first among equals."""
        by_recency = list(self._hits.items())  # least recent first
        ranked = sorted(range(len(by_recency)), key=lambda i: (-by_recency[i][1], -i))
        return [
            Block(block_hash=by_recency[i][0], size_bytes=block_bytes, hits=by_recency[i][1])
            for i in ranked[:limit]
        ]
