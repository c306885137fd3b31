"""Splitting work across processes: ``torchrun`` ranks, or ``--shard I/N`` from any scheduler.

One implementation for the library analysis (:mod:`m2e_core.library`) and the feature extraction
of ``training/``. A work item belongs to exactly one of ``N`` shards, chosen by a stable hash of
its name (not by its position in a list), so every process computes the same split on its own,
with no coordination, and adding files to a folder does not move the others between shards.

Where the rank comes from:

- ``torchrun`` (one process per GPU, multi-node through its own rendezvous) sets ``RANK``,
  ``WORLD_SIZE`` and ``LOCAL_RANK``: :meth:`DistributedContext.from_environment`.
- Any other scheduler (a job array, ``xargs``, several machines started by hand) passes
  ``--shard I/N``: :meth:`DistributedContext.from_shard`.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["DistributedContext", "shard_file", "shard_files"]

_SHARD_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``) or ``--shard``.

    ``local_rank`` is the process's index on its own machine (``LOCAL_RANK``; it picks the GPU);
    ``torchrun`` says whether the ranks were started by ``torchrun``, whose processes can meet
    in a barrier (processes started with ``--shard`` never wait for each other).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    torchrun: bool = False

    @classmethod
    def from_environment(cls) -> DistributedContext:
        try:
            rank = int(os.environ.get("RANK", "0"))
            world = int(os.environ.get("WORLD_SIZE", "1"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as error:
            raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK are not integers ({error})") from error
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"invalid RANK={rank} / WORLD_SIZE={world}")
        if local_rank < 0:
            raise ConfigError(f"invalid LOCAL_RANK={local_rank}")
        return cls(rank, world, local_rank, torchrun=world > 1)

    @classmethod
    def from_shard(cls, spec: str) -> DistributedContext:
        """Parse ``"I/N"`` (shard ``I`` of ``N``, counted from 0), as given to ``--shard``.

        Examples
        --------
        >>> DistributedContext.from_shard("1/4")
        DistributedContext(rank=1, world_size=4, local_rank=0, torchrun=False)
        """
        match = _SHARD_SPEC.match(str(spec))
        if match is None:
            raise ConfigError(f"--shard takes I/N (shard I of N, counted from 0), e.g. 0/4; got {spec!r}")
        rank, world = int(match.group(1)), int(match.group(2))
        if world < 1 or rank >= world:
            raise ConfigError(f"--shard {spec}: I must be in 0..N-1 and N >= 1")
        return cls(rank, world)

    @classmethod
    def resolve(cls, shard: str | None = None) -> DistributedContext:
        """``--shard`` when given, else the ``torchrun`` environment; refuses both at once."""
        environment = cls.from_environment()
        if shard is None:
            return environment
        if environment.distributed:
            raise ConfigError(
                f"--shard {shard} was given inside torchrun (WORLD_SIZE={environment.world_size}): "
                "use one or the other, torchrun's ranks already split the work"
            )
        return cls.from_shard(shard)

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

    def connect(self, *, timeout_s: float | None = None) -> None:
        """Join the ``torchrun`` process group now (gloo), so a failed rendezvous shows at once.

        ``timeout_s`` bounds how long a later :meth:`barrier` waits for the slowest rank (ranks
        of a library run may finish hours apart). A no-op in a single process or under ``--shard``.
        """
        if not (self.distributed and self.torchrun):
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
            dist.init_process_group(backend="gloo", **kwargs)

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

    def shard_file(self, path: str | os.PathLike[str]) -> Path:
        """Where this rank writes what would go to ``path`` unsharded (``path`` itself in one process)."""
        return shard_file(path, self.rank, self.world_size)


def shard_file(path: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """``results.jsonl`` -> ``results.jsonl.shard-1-of-4`` (``path`` unchanged when ``world_size`` is 1)."""
    path = Path(path)
    if world_size <= 1:
        return path
    return path.with_name(f"{path.name}.shard-{rank}-of-{world_size}")


def shard_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every shard file of ``path`` present on disk (any world size), sorted by name."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.shard-\d+-of-\d+$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_file())
