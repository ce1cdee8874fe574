"""Distributed setup: torchrun detection, process group, DDP or FSDP2 wrapping, rank-0 helpers.

Without torchrun (no RANK in the environment) this is one process on one device and nothing is
initialised. Under `torchrun` the backend is NCCL on GPUs and gloo on CPU. Multi-node runs use
torchrun's own rendezvous flags (see docs/train.md); nothing here is a launcher.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch

from protrans_cli.errors import UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False
    # The process group was started by setup(), not by the caller: only then does cleanup() end it.
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_info = DistInfo()
_groups_started = 0  # process groups setup() started in this process (_restart_store)


def setup(timeout: float | None = None) -> DistInfo:
    """Read torchrun's environment, pick the device, start the process group when needed, its
    collectives failing after `timeout` seconds of waiting (None: PyTorch's default, 10 minutes
    for NCCL, 30 for gloo)."""
    global _info, _groups_started
    from protrans_cli.io.files import stop_with_launcher

    stop_with_launcher()  # (torchrun SIGKILLed: the ranks checkpoint and stop, not train on as orphans)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if world_size > 1 and local_rank >= torch.cuda.device_count() and _nccl_here():
            # NCCL refuses two ranks on one GPU ("Duplicate GPU detected", invalid usage) once the
            # group starts: sharing them as gloo can (local_rank % count) gave that traceback
            raise UsageError(f"rank {rank} is process {local_rank + 1} on its node, which has "
                             f"{torch.cuda.device_count()} visible GPU(s): NCCL runs one process per GPU, so "
                             "start at most that many (torchrun --nproc-per-node)")
        device = torch.device("cuda", local_gpu(local_rank))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        if rank == 0:
            from protrans_cli.embedders import warn_unused_gpu

            warn_unused_gpu("hide it (CUDA_VISIBLE_DEVICES=)")
    initialised = started = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            if timeout is not None:
                kwargs["timeout"] = datetime.timedelta(seconds=timeout)
            from protrans_cli.io.files import signals_end_wait

            with signals_end_wait(f"rank {rank} was waiting for the other processes to join; nothing was "
                                  "trained or written"):
                try:
                    dist.init_process_group(backend=backend, **kwargs, **_restart_store(rank, world_size, timeout))
                except RuntimeError as exc:
                    raise _restart_failure(rank, exc) or exc
            started = True
            _groups_started += 1
        initialised = True
    _info = DistInfo(rank, world_size, local_rank, device, initialised, started)
    return _info


def _restarted() -> int:
    """torchrun's restart count of this worker group when the ranks share its rendezvous store
    (torch's default with the c10d rendezvous; 0 otherwise: nothing stale can be read)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return 0
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _restart_store(rank: int, world_size: int, timeout: float | None) -> dict:
    """init_process_group's store for a worker group that `torchrun --max-restarts` restarted on
    one node: the rendezvous store it shares with the launcher still holds the addresses the
    previous attempt's ranks published, which torch reads again under the same keys, so gloo
    connected to ports nobody listened on any more ("Connection refused", pytorch#135712) and
    the restart failed where it was meant to --resume. The attempt's own key prefix keeps them
    apart. On one node every rank has the same restart count; across nodes the counts differ
    (a node restarted for another's failure does not count it), so there torch's own keys stay
    and a failure says how to avoid it (_restart_failure)."""
    # A group started again in the same processes (a script under torchrun that calls train twice)
    # met the first group's addresses the same way: the how-manieth group it is keeps them apart,
    # a count every rank (of every node) shares.
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    restart = _restarted() if os.environ.get("GROUP_WORLD_SIZE", "1") == "1" else 0
    if not restart and not _groups_started:
        return {}
    import torch.distributed as dist

    wait = datetime.timedelta(seconds=timeout if timeout is not None else 1800)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=wait)
    prefix = f"protrans/restart_{restart}" + (f"/group_{_groups_started}" if _groups_started else "")
    return {"store": dist.PrefixStore(prefix, store), "rank": rank, "world_size": world_size}


def _restart_failure(rank: int, exc: BaseException):
    """The one line for a process group that a restarted worker could not join (None where this
    is not a torchrun restart with a shared store)."""
    if not _restarted():
        return None
    from protrans_cli.errors import RuntimeFailure

    return RuntimeFailure(f"rank {rank} could not join the others after torchrun's restart "
                          f"{_restarted()} ({str(exc).splitlines()[0][:200]}): with --max-restarts over several "
                          "nodes, PyTorch's rendezvous store shared with the ranks hands them the previous "
                          "attempt's addresses; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's "
                          "environment on every node")


def local_gpu(local_rank: int) -> int:
    """The GPU of process `local_rank` on its node (train's and embed's rule): more processes than
    visible GPUs share them, which gloo allows (NCCL does not: `setup` refuses it for train)."""
    return local_rank % torch.cuda.device_count()


def _nccl_here() -> bool:
    """Whether this process's group is (or, started by setup(), will be) NCCL's."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_backend() == "nccl"


def info() -> DistInfo:
    return _info


def print0(*args, sep: str = " ") -> None:
    """print on rank 0 only, to stderr (stdout is for data), as `console.info` says a line: silent
    under `protrans -q`, nowhere where there is no stderr, discarded from a terminal that hung up,
    and with the control characters of a name escaped as in every other message (a run directory's
    `\\x1b[31m`, printed as it was, coloured the rest of a terminal red and wrote the escape into a log)."""
    from protrans_cli import console

    if _info.is_main:
        console.info(sep.join(str(arg) for arg in args))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (a no-op in one process)."""
    if _info.initialised:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if _info.initialised:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj):
    if not _info.initialised:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def exchange(value, world_size: int, *, failed: bool = False, group=None) -> tuple[list, list[int]]:
    """Every rank's `value` (rank order) and the ranks that said they `failed`, in one
    all_gather_object that every rank takes part in, a failed one too: it raises its own error
    after, and the others can stop in one line rather than wait for it at a later collective."""
    import torch.distributed as tdist

    everyone: list = [None] * world_size
    tdist.all_gather_object(everyone, (value, failed), group=group)
    return [v for v, _ in everyone], [rank for rank, (_, f) in enumerate(everyone) if f]


def same_on_every_rank(values: dict, *, failure: BaseException | None = None, remedy: str, group=None) -> None:
    """Under torchrun: every rank's `values` (its settings as it was started) must equal rank 0's.
    Nodes started with different flags (another --global-batch-size, --num-steps, --seed, FASTA,
    or a run directory one node sees empty) trained silently on mixed batches, wrote half a
    file, or hung in a collective that only some ranks reached. One exchange, every rank in it;
    `failure`: this rank's own error before the exchange (raised after it, the others stopping
    in one line instead of waiting for it); `group`: the group to exchange in (None: the default).
    A no-op without a process group."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() < 2:
        if failure is not None:
            raise failure
        return
    everyone, failed = exchange(values, tdist.get_world_size(), failed=failure is not None, group=group)
    if failure is not None:
        raise failure
    if failed:
        from protrans_cli.errors import PeerStopped

        raise PeerStopped(f"rank(s) {', '.join(map(str, failed))} stopped before starting (their error is "
                          "in their node's log): no rank runs")
    first = everyone[0]
    differences = []
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(first) | set(theirs), key=str):
            if first.get(key) != theirs.get(key):
                differences.append(f"{key} {theirs.get(key)!r} on rank {rank}, {first.get(key)!r} on rank 0")
    if differences:
        shown = "; ".join(differences[:3]) + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
        raise UsageError(f"the ranks were not started alike: {shown}. {remedy}")


# What gloo and NCCL say when a collective's peer process is gone (it failed, or was killed)
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "remote worker crash", "broken pipe",
              "remote process exited", "communicator was aborted")


def peer_gone(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank's process stopped."""
    import torch.distributed as tdist

    if isinstance(exc, getattr(tdist, "DistNetworkError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc).lower() for words in _PEER_GONE)


@contextlib.contextmanager
def peers_stopping(what: str):
    """Under torchrun, a rank that failed on its own (a bad line in its share of the corpus, out of
    memory) said so in one line and left; the others then failed in their next collective with
    gloo's traceback ("Connection closed by peer ... GLHF"), forty lines after, and burying, the
    real error. Here they say so in one line (exit 1); --debug shows the collective's error."""
    try:
        yield
    except RuntimeError as exc:
        if not (_info.initialised and _info.world_size > 1 and peer_gone(exc)):
            raise
        from protrans_cli.errors import PeerStopped

        raise PeerStopped(f"rank {_info.rank}: another process of this torchrun run stopped (its error is "
                          f"above, or in its node's log); {what}") from exc


def cleanup() -> None:
    global _info
    # A group the caller started (a script under torchrun that calls train, then its own
    # all_reduce) is the caller's to end: destroyed here, its next collective failed.
    if _info.started_here:
        destroy_process_group()
    _info = DistInfo()


def destroy_process_group() -> None:
    """End the process group this process started. First a moment without the interpreter lock:
    a gloo worker thread still finishing a collective (the last all_gather_object of a save)
    needs that lock to let its work go, while destroy_process_group holds it and waits for the
    worker: a finished run's rank hung there for good (seen once in 25 two-rank runs)."""
    import gc
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        gc.collect()  # works whose last reference is a Python object: freed now, not in the destructor
        time.sleep(0.1)  # (sleep releases the lock)
        dist.destroy_process_group()


def choose_strategy(requested: str, num_params: int, world_size: int, fsdp_min_params: int) -> str:
    """'none' in one process; else DDP up to fsdp_min_params parameters, FSDP2 above."""
    if requested in ("ddp", "fsdp") and world_size == 1:
        return "none"
    if requested == "auto":
        if world_size == 1:
            return "none"
        return "fsdp" if num_params >= fsdp_min_params else "ddp"
    return requested


def wrap(module: torch.nn.Module, strategy: str, dist_info: DistInfo, *,
         find_unused_parameters: bool = False, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """DDP or FSDP2 around the module (the loss module holding the model); as is for 'none'.

    find_unused_parameters: DDP must be told when some parameters get no gradient (ALBERT's
    sentence-order head trained without --sop), or its second step fails ("Expected to have finished
    reduction in the prior iteration").
    param_dtype: FSDP on a GPU gathers the parameters in this dtype (the run's autocast dtype;
    None: float32, for --precision fp32), the gradients reduced in float32."""
    if strategy == "none":
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if dist_info.device.type == "cuda" and param_dtype is not None:
            # (always bfloat16 before: --precision fp32 computed in bf16, and a V100 or T4, whose
            # autocast is fp16, gathered bf16 it only emulates)
            mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp is not None else {}
        from protrans_cli.training.recompute import layer_lists

        # Shard every transformer block on its own (the blocks activation checkpointing
        # recomputes), then the root. A list of one block stays with the root: ALBERT's
        # shared layer group runs once per layer, and one shard unit gathered twelve times a
        # pass saves nothing.
        for layers in layer_lists(module):
            if len(layers) > 1:
                for block in layers:
                    fully_shard(block, **kwargs)
        fully_shard(module, **kwargs)
        # T5's first block returns its relative position bias as a slice (a view), and every
        # block passes it on; the blocks add it to their scores out of place, so PyTorch's warning
        # about in-place ops on a view (twice a block a step, also under -q) does not apply here
        # (tests/test_train_dist.py: FSDP's T5 losses equal one process's).
        import warnings

        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPT5Block\) returned a view tensor")
        return module
    raise UsageError(f"unknown strategy {strategy!r}")
