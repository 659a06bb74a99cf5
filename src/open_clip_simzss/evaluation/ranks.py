"""The processes of one evaluation: torchrun or SLURM ``srun`` start N copies of a command; each finds its rank
here and the integer results are summed across them (docs/evaluation.md, "Many GPUs").

The process group is set up with ``torch.distributed`` from the launcher's environment: ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` from torchrun, or ``SLURM_NTASKS``/``SLURM_PROCID``/``SLURM_LOCALID`` under ``srun`` (then
``MASTER_ADDR``/``MASTER_PORT`` must be exported, as the SLURM scripts do); NCCL (RCCL on AMD) for GPUs, gloo for
CPUs. Each GPU process takes the device of its local rank. These are the variables and backends OpenCLIP's
trainer uses, so one job script serves both.
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

# (world size, global rank, local rank) variables of each launcher, in the order they are looked for.
_LAUNCHERS = (("WORLD_SIZE", "RANK", "LOCAL_RANK"), ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"))


@dataclass(frozen=True)
class Ranks:
    """This process's place among the evaluation's processes."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module created the process group (and destroys it in close_ranks)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, shows progress and writes the results."""
        return self.rank == 0

    def mine(self, items):
        """Round-robin share of ``items`` (in order) for this rank."""
        return list(items)[self.rank::self.world_size]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all ranks (every rank gets it). Integer tensors sum exactly, in any order."""
        if not self.distributed:
            return tensor
        reduced = tensor.to(self._collective_device())
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (what rank 0 read from disk, decided once for all)."""
        if not self.distributed:
            return tensor
        return self.sum(tensor if self.is_main else torch.zeros_like(tensor))

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        # NCCL moves only GPU tensors; gloo only CPU ones
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def launcher_ranks(environ=os.environ) -> Optional[Tuple[int, int, int]]:
    """(world size, global rank, local rank) that a launcher (torchrun, srun) announces in the environment for a
    run of more than one process; None for a single process."""
    for world, rank, local in _LAUNCHERS:
        if environ.get(world, "").isdigit() and int(environ[world]) > 1:
            return int(environ[world]), int(environ.get(rank, 0)), int(environ.get(local, 0))
    return None


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group when the environment says this is one of several processes (torchrun, srun);
    otherwise the single-process ``Ranks``. ``device``: the device asked for (a GPU becomes this process's
    local-rank GPU)."""
    launched = launcher_ranks()
    if launched is None:
        return Ranks(0, 1, device)
    if dist.is_initialized():  # the caller set the group up (a notebook, a test, another launcher)
        return Ranks(dist.get_rank(), dist.get_world_size(), device)
    world_size, rank, local_rank = launched
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # env:// reads MASTER_ADDR and MASTER_PORT; torchrun also sets RANK and WORLD_SIZE, srun does not.
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            world_size=world_size, rank=rank)
    return Ranks(rank, world_size, device, owns_group=True)


def close_ranks(ranks: Ranks):
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()
