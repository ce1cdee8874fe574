"""embed under torchrun: each rank embeds a balanced share of every window into its own file
(OUTPUT.shard-RRR-of-NNN), and once all are done rank 0 merges the shards into the one output.

    dist = _setup_distributed()              # joins torchrun's group (gloo), or (0, 1) alone
    _same_on_every_rank(options, output, scan, failure, dist.group)
    ...                                      # the pipeline (embed.py) writes this rank's shard
    _finish_ranks(summary, output, options, writer_kw, dist)

The data never moves between ranks: the group carries the barriers, a check that every node
runs the same command on the same input, what each rank said of building its model (embed.py's
_build_on_every_rank) and the summed counts. Which proteins a rank embeds is embed.py's
shard_units.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protrans_cli.errors import PeerStopped, RuntimeFailure, again_with_resume
from protrans_cli.errors import first_line as errors_first_line
from protrans_cli.io import disk
from protrans_cli.io.h5 import EmbeddingsWriter, partial_path

if TYPE_CHECKING:
    from protrans_cli.embed import EmbedOptions, EmbedSummary, InputScan


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False
    group: object = None  # the group of the barriers and exchanges (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def sum_counts(self, *counts: int) -> list[int]:
        """Totals over all ranks (also the barrier before rank 0 merges the shards)."""
        import torch
        import torch.distributed as dist

        # On the group's own device: a caller's torchrun script that set up NCCL before calling
        # embed() (the group is reused) refused a CPU tensor after all the embedding work
        device = "cpu"
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        totals = torch.tensor(counts, dtype=torch.int64, device=device)
        dist.all_reduce(totals, group=self.group)
        return totals.cpu().tolist()

    def close(self) -> None:
        if self.initialised_here:
            from protrans_cli.training.dist import destroy_process_group

            destroy_process_group()


def _torchrun_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them in the environment; (0, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else (0, 1)


def interrupted_output(output) -> Path:
    """Where an interrupted run leaves its work: OUTPUT.partial, or under torchrun this rank's
    OUTPUT.shard-RRR-of-NNN.partial (the ranks merge into OUTPUT only at the end)."""
    from protrans_cli.io.h5 import partial_path

    rank, world = _torchrun_rank()
    return partial_path(shard_path(output, rank, world) if world > 1 else output)


def _setup_distributed() -> _Dist:
    """torchrun sets RANK/WORLD_SIZE: join the group (gloo for the barriers, the data never moves)."""
    from protrans_cli.io.files import signals_end_wait, stop_with_launcher

    stop_with_launcher()  # (torchrun SIGKILLed: the ranks keep their work and stop, not embed on as orphans)
    rank, world = _torchrun_rank()
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():  # the caller's group, and its timeouts
        _select_callers_gpu(local)
        return _Dist(rank, world, local, False)
    try:
        # Joining waits for every rank: one that stopped before it (an error on one node alone)
        # was waited for 24 hours, the timeout the barriers need.
        # (a group started before in this process, train's or embed's, left its addresses in
        # torchrun's store under torch's keys: this one joins under keys of its own)
        from protrans_cli.training import dist as groups

        with signals_end_wait(f"rank {rank} was waiting for the other processes to join; nothing was "
                              "computed or written"):
            dist.init_process_group("gloo", timeout=JOIN_TIMEOUT,
                                    **groups._restart_store(rank, world, JOIN_TIMEOUT.total_seconds()))
        groups._groups_started += 1
    except dist.DistError as exc:
        seconds = JOIN_TIMEOUT.total_seconds()
        waited = f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"
        raise RuntimeFailure(f"rank {rank}: the other ranks did not join within {waited} (one stopped "
                             f"before starting, its error in its node's log, or was not started): "
                             f"{errors_first_line(exc)}") from None
    # Ranks finish at different times (or load the model at different speeds) and wait for each
    # other at the barriers: a generous timeout there.
    return _Dist(rank, world, local, True, dist.new_group(timeout=datetime.timedelta(hours=24)))


JOIN_TIMEOUT = datetime.timedelta(minutes=30)


def _select_callers_gpu(local: int) -> None:
    """A caller's NCCL group exchanges objects (the start check, what the model build said) on
    torch.cuda.current_device(): this rank's GPU is made current before the first exchange, as
    train's setup does. It was chosen only once the ranks had compared their settings (and not
    at all with --device cpu or an embedder given in memory): a script that bound its group with
    init_process_group(device_id=...) without torch.cuda.set_device ran every rank's first
    exchange on cuda:0. The GPU the group is bound to, else cuda:LOCAL_RANK (shared as
    _embed_ranked shares them)."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() != "nccl" or not torch.cuda.is_available():
        return
    from protrans_cli.training.dist import local_gpu

    bound = getattr(dist.group.WORLD, "bound_device_id", None)
    torch.cuda.set_device(bound if bound is not None else local_gpu(local))


# Settings that change only the speed, not what the file holds: a node may have its own.
_PER_NODE_OPTIONS = ("threads", "command_line", "device", "max_tokens", "max_batch_size", "sdpa_kernels",
                     "compile", "cpu_fallback")


def _same_on_every_rank(options: EmbedOptions, output, scan: InputScan | None, failure, group=None) -> None:
    """Every rank shares out the proteins by the same input and writes the same kinds: a node
    started with another FASTA or without --per-residue gave a finished file lacking proteins or
    kinds (exit 0); one whose FASTA was missing left the others waiting at the first barrier."""
    from dataclasses import asdict

    from protrans_cli.training.dist import same_on_every_rank

    values = {key: value for key, value in asdict(options).items() if key not in _PER_NODE_OPTIONS}
    values["output"] = str(output)
    if scan is not None:
        # (the digest too: two FASTAs of one size and length, or one sorted otherwise, share out
        # their proteins otherwise)
        values["input (records, residues, longest)"] = (scan.num_records, scan.num_residues, scan.longest)
        values["input's ids and sequences (digest)"] = scan.digest
    same_on_every_rank(values, failure=failure, group=group,
                       remedy="Start every node with the same command, on the same FASTA, with the output "
                              "on a file system every node sees.")


def shard_path(output, rank: int, world_size: int) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.shard-{rank:03d}-of-{world_size:03d}")


def _finish_ranks(summary: EmbedSummary, output, options, writer_kw: dict, dist, cut_before=frozenset()) -> None:
    """Under torchrun, once every rank has written its shard: the counts summed, rank 0 merging
    the shards into the output while the others wait for it. `cut_before`: the proteins an
    earlier run stored truncated (not this run's, in its summary)."""
    try:
        summary.num_embedded, summary.num_residues, summary.num_reused = dist.sum_counts(
            summary.num_embedded, summary.num_residues, summary.num_reused)
    except RuntimeError as exc:  # a rank that stopped (killed, out of memory): gloo's traceback before
        raise PeerStopped(f"another process of this torchrun run stopped before the end ({errors_first_line(exc)}); "
                          f"what this one computed is in {interrupted_output(output)}: {again_with_resume()} "
                          "to finish") from None
    # The other ranks wait while rank 0 merges: one that left at once tore its process group
    # down, and an abort there (gloo) made torchrun stop rank 0 in the middle of the merge.
    # (rank 0: the merge's own error, or its finished file, is what counts, not the others' exit;
    # a stop too: rank 0 interrupted mid-merge left at once, and each waiting rank said that the
    # merging process had stopped, in gloo's words, beside rank 0's own line)
    if dist.is_main:
        try:
            summary.failed, truncated = _merge_shards(output, options, writer_kw, dist.world_size)
            # every rank's, as the merged file lists them (this rank's alone named a few of them)
            summary.truncated = [ident for ident in truncated if ident not in cut_before]
        except BaseException:
            with contextlib.suppress(RuntimeError):
                dist.barrier()
            raise
        with contextlib.suppress(RuntimeError):
            dist.barrier()
    else:
        summary.output = None  # rank 0 reports
        # This rank's work is done: a signal from here on (a scheduler's SIGTERM or a Ctrl-C to every
        # rank while rank 0 merges) stops nothing here, and rank 0's line says how the run ended. Each
        # waiting rank said "protrans: error: terminated" beside rank 0's "nothing was lost", and its
        # exit 143 made torchrun call the run failed (and stop rank 0 wherever it was).
        from protrans_cli.embed import final_output_hook

        share_done = final_output_hook()  # (the CLI's: embed is its whole command)
        if share_done is not None:
            share_done(quiet=True)
        try:
            dist.barrier()
        except RuntimeError as exc:  # rank 0 stopped while merging: gloo's traceback before
            raise PeerStopped(f"the process merging the shards (rank 0) stopped ({errors_first_line(exc)}); "
                              f"every protein is computed: {again_with_resume()} to merge them") from None


def _shard_files(output) -> list[str]:
    """The shard files an interrupted torchrun run left for `output`, in rank order."""
    import glob

    return sorted(glob.glob(glob.escape(str(output)) + ".shard-*.partial"))


def _merge_shards(output: Path, options: EmbedOptions, writer_kw: dict, world_size: int) -> tuple[dict, list]:
    """Rank 0: fold every rank's shard into the one output, then remove the shards. Stopped
    (Ctrl-C, SIGTERM, SIGHUP), the work is in OUTPUT.partial, which the interrupt names as `kept`.
    Returns the failed proteins and the truncated ones the shards brought in."""
    from protrans_cli.embed import final_output_hook

    shards = _shard_files(output)
    try:
        with EmbeddingsWriter(output, resume=options.resume, **writer_kw) as merged:
            merged.on_final = final_output_hook()
            before = set(merged.truncated)  # (an earlier run's, in the output resumed)
            _absorb_shards(merged, shards)
            failed = dict(merged.failed)
            truncated = [ident for ident in merged.truncated if ident not in before]
    except KeyboardInterrupt as exc:
        exc.kept = partial_path(output)  # (not this rank's shard: interrupted_output)
        if not exc.kept.exists() and shards:  # (stopped before the merge wrote its file: a bare "terminated")
            exc.kept_in = f"the shard files {output}.shard-*-of-{world_size:03d}.partial"
        raise
    return failed, truncated


def _absorb_shards(writer: EmbeddingsWriter, shards) -> None:
    """Copy the ranks' shard files into `writer`'s file, flush it, then remove the shards (a run
    killed in between finds the shards again and copies them over what it had copied)."""
    from protrans_cli.io.h5 import remove_ledger, untrusted_digests, untrusted_path

    for shard in shards:
        # (a copy HDF5 meets the full disk in was a traceback and a segmentation fault; the shards
        # stay until the whole merge is flushed, so --resume merges them again)
        writer.ensure_room(os.path.getsize(shard), what=f"the proteins of {Path(shard).name}")
        writer.copy_from(shard, own=True)  # (embed's own shard: its datasets hold their values)
    writer.flush(failures=True)  # (the shards go next)
    # A shard's list of proteins a failed write may have lost goes on in the merged file's:
    # removed with the shard, they counted as done there at the next --resume.
    untrusted = b"".join(untrusted_digests(shard).tobytes() for shard in shards)
    if untrusted:
        with open(untrusted_path(writer.partial), "ab") as fh:
            fh.write(untrusted)
            fh.flush()
            disk.sync(fh.fileno(), untrusted_path(writer.partial))
    for shard in shards:
        remove_ledger(shard)  # (first: a kill in between leaves no ledger without its file)
        os.unlink(shard)
