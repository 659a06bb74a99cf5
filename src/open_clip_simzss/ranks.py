"""The processes of one evaluation: torchrun or SLURM ``srun`` start N copies of a command; each finds its rank
here and the integer results are summed across them (docs/evaluation.md, "Many GPUs").

The process group is set up by OpenCLIP's own initialisation (``open_clip_train.distributed``, the one the
trainer uses): ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` from torchrun, or ``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID`` under ``srun`` (then ``MASTER_ADDR``/``MASTER_PORT`` must be exported, as the SLURM scripts
do); NCCL (RCCL on AMD) for GPUs, gloo for CPUs. Each GPU process takes the device of its local rank.
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group when the environment says this is one of several processes (torchrun, srun);
    otherwise the single-process ``Ranks``. ``device``: the device asked for (a GPU becomes this process's
    local-rank GPU)."""
    from open_clip_train.distributed import init_distributed_device_so, is_using_distributed

    if not is_using_distributed():
        return Ranks(0, 1, device)
    if dist.is_initialized():  # the caller set the group up (a notebook, a test, another launcher)
        return Ranks(dist.get_rank(), dist.get_world_size(), device)
    info = init_distributed_device_so(device=str(device))
    return Ranks(info["global_rank"], info["world_size"], torch.device(info["device"]), owns_group=True)


def close_ranks(ranks: Ranks):
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()
