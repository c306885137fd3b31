"""Splitting work across processes: ``torchrun`` ranks, or ``--shard I/N`` from any scheduler.

One implementation for the library analysis (:mod:`m2e_core.cli`) and the feature extraction of
``training/``. A work item belongs to exactly one of ``N`` shards, chosen by a stable hash of its
name (not by its position in a list), so every process computes the same split on its own, with
no coordination, and adding files to a folder does not move the others between shards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["DistributedContext"]


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> DistributedContext:
        try:
            rank = int(os.environ.get("RANK", "0"))
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError as error:
            raise ConfigError(f"RANK / WORLD_SIZE are not integers ({error})") from error
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"invalid RANK={rank} / WORLD_SIZE={world}")
        return cls(rank, world)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, name: str) -> bool:
        """Whether this rank handles ``name`` (a stable hash modulo the world size: disjoint across ranks)."""
        digest = hashlib.sha256(name.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.world_size == self.rank

    def shard(self, items: Sequence[Any], *, key: Callable[[Any], str] = str) -> list[Any]:
        """This rank's share of ``items`` (by :meth:`owns` of ``key(item)``)."""
        return [item for item in items if self.owns(key(item))]

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo works on CPU and GPU hosts alike; only a barrier goes through it.
            dist.init_process_group(backend="gloo")
        dist.barrier()

    def shutdown(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
