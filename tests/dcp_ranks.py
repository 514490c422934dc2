"""Run under torchrun by tests/test_dcp_distributed.py: save or load a DCP checkpoint from every process.

``save DIR VERSION``: the demo model of VERSION (seed 0), row-sharded as DTensors over the
processes (``Shard(0)`` where the rows divide evenly, replicated otherwise), plus ``epoch``.

``load VERSION OUT DIR...``: for each DIR, a model of VERSION (seed 1, so nothing is left from
it by accident) sharded the same way, filled with ``torch.distributed.checkpoint.load``; process
0 saves the full tensors of every DIR in one file, OUT, as ``{DIR: state_dict}``.
"""

from __future__ import annotations

import gc
import sys
import warnings

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ckpt_path.demo.models import make_model


def sharded(state_dict: dict[str, torch.Tensor], mesh: DeviceMesh, world: int) -> dict[str, torch.Tensor]:
    """Shard every tensor whose rows divide among the processes; keep the others whole (replicated)."""
    return {
        key: distribute_tensor(value, mesh, [Shard(0)]) if value.dim() and value.shape[0] % world == 0 else value
        for key, value in state_dict.items()
    }


def main() -> None:
    """Save or load, as the arguments say."""
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    action, *args = sys.argv[1:]
    if action == "save":
        directory, version = args
        state_dict = sharded(make_model(version, 0).state_dict(), mesh, world)
        dcp_save({"state_dict": state_dict, "epoch": 3}, checkpoint_id=directory)
    else:
        version, out, *directories = args
        found = {}
        for directory in directories:
            state_dict = sharded(make_model(version, 1).state_dict(), mesh, world)
            dcp_load({"state_dict": state_dict}, checkpoint_id=directory)
            found[directory] = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state_dict.items()}
        if rank == 0:
            torch.save(found, out)
    dist.barrier()  # leave together: a process that tears gloo down while the other still works can abort
    dist.destroy_process_group()
    gc.collect()  # gloo's threads end now, not while the interpreter shuts down (which can abort)


if __name__ == "__main__":
    main()
