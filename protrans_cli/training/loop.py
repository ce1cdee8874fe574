"""The training loop, top to bottom in run order: config -> distributed -> model -> data -> optimizer -> loop.

One process (a laptop smoke test):
    protrans train --family bert --preset tiny --corpus corpus.txt.gz -o runs/bert --num-steps 200
One node, 8 GPUs:
    torchrun --nproc-per-node 8 -m protrans_cli train --config prot_bert.toml -o runs/prot_bert
Python:
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train
    result = train(TrainConfig(family="bert", corpus=["corpus.txt"], output_dir="runs/x", num_steps=50))

A step takes `global_batch_size` proteins: each of the `world_size` ranks runs
`grad_accum` micro-batches of `micro_batch_size`. The loss of a step is the sum over every
predicted token of every micro-batch and rank divided by their total count (counted before the
forward passes and summed over ranks), so the gradient does not depend on how the batch is split.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from protrans_cli import console
from protrans_cli.attention import sdpa_kernels
from protrans_cli.errors import (STOP_SIGNALS, WARNING_SIGNALS, InputError, ModelError, ProtransError, RuntimeFailure,
                                 UsageError, a_or_an, described, expect_options, first_line, gpu_out_of_memory, option,
                                 resume_option)
from protrans_cli.io.files import file_locking
from protrans_cli.models import packing
from protrans_cli.threads import torch_threads
from protrans_cli.training import checkpoint as ckpt
from protrans_cli.training import dist
from protrans_cli.training import recompute
from protrans_cli.training.rundir import _RUN_FILES, find_checkpoint, refuse_what_the_run_dir_holds
from protrans_cli.training.config import (DEFAULT_FAMILY, DEFAULT_PRESET, RESOLVED, TrainConfig, check_skip_data,
                                          grad_accum_steps, resolve_precision)
from protrans_cli.training.data import (Clusters, CorpusStream, StreamState, TokenLayout, changed_corpus_files,
                                        check_corpus, check_validation_corpus, corpus_fingerprint, corpus_overlaps,
                                        count_proteins, evaluation_step_size, next_phase_state, position_in_corpus,
                                        step_batches)
from protrans_cli.training.metrics import (Accumulator, append_metrics, open_tensorboard, open_wandb, plot_metrics,
                                           read_metrics, require_tensorboard, require_wandb, truncate_metrics)
from protrans_cli.training.objectives import OBJECTIVE_REVISION, make_objective, objective_changes
from protrans_cli.training.optim import LossScale, LRLambda, build_optimizer, build_scheduler


@dataclass
class TrainResult:
    run_dir: Path
    step: int                     # optimizer steps done
    completed: bool               # False when stopped early by stop_after or time_limit
    # per logged step, in order (None: every fp16 step of the interval overflowed and was skipped)
    losses: list[float | None] = field(default_factory=list)
    last_checkpoint: Path | None = None
    lr_suggestion: float | None = None
    # why a run that is not complete stopped: "stop_after", "time_limit", or a scheduler's warning
    # signal's name ("SIGUSR1", "SIGUSR2"; errors.WARNING_SIGNALS; "warning": another rank's), another
    # signal raises instead
    stopped_by: str | None = None
    # --keep-best: the checkpoint with the lowest eval loss so far, and that loss
    best_checkpoint: Path | None = None
    best_eval_loss: float | None = None

    def note_best(self, best: dict | None) -> None:
        """best_checkpoint and best_eval_loss from --keep-best's {"step", "eval_loss"} (None: none yet)."""
        if best is not None:
            self.best_checkpoint = ckpt.checkpoint_dir(self.run_dir, best["step"])
            self.best_eval_loss = best["eval_loss"]


class LossModule(torch.nn.Module):
    """The model plus its objective as one module, so DDP/FSDP see the whole loss computation
    in one forward (ELECTRA calls its generator and discriminator separately)."""

    def __init__(self, model, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch):
        return self.objective.loss(self.model, batch)


@dataclass
class _Run:
    """Everything built once before the loop."""

    config: TrainConfig
    info: dist.DistInfo
    family: object
    tokenizer: object
    model: torch.nn.Module        # the bare pretraining model (what gets saved)
    wrapped: torch.nn.Module      # LossModule, possibly inside DDP or sharded by FSDP
    strategy: str
    objective: object
    layout: TokenLayout
    run_dir: Path
    autocast: object
    corpus_id: list = field(default_factory=list)  # corpus_fingerprint, saved in every checkpoint
    loss_scale: LossScale | None = None  # fp16 autocast only
    compiled: bool = False        # what compile (None: auto) meant on this machine
    compile_mode: str = "default"  # what compile_mode means here (reduce-overhead: on CUDA only)
    # The settings as given that `config` holds resolved (precision auto, warmup None): saved
    # so, with what they meant under "resolved", so that the file is a template that decides anew
    given: dict = field(default_factory=dict)

    def save_config(self, path=None) -> tuple[TrainConfig, dict]:
        """(the config to save, as given; what its automatic settings meant): written to `path`
        when one is given."""
        as_given = dataclasses.replace(self.config, **self.given)
        resolved = {"precision": self.config.precision, "warmup_steps": self.config.resolved_warmup_steps,
                    "compile": self.compiled, "objective_revision": OBJECTIVE_REVISION,
                    # where the corpus files are, whatever the working directory of a resume
                    "corpus": [os.path.abspath(p) if p != "-" else p for p in self.config.corpus],
                    "val_corpus": [os.path.abspath(p) for p in self.config.val_corpus or []]}
        if self.config.init_from:
            # what --init-from named, wherever the run is read: a local directory by its absolute
            # path and weights fingerprint (`models/x`, as given, meant nothing elsewhere)
            from protrans_cli.embed import model_attr
            from protrans_cli.models import weights_fingerprint

            resolved["init_from"] = model_attr(self.config.init_from)
            if os.path.isdir(resolved["init_from"]) and (weights := weights_fingerprint(resolved["init_from"])):
                resolved["init_from_weights_fingerprint"] = weights
        if path is not None:
            as_given.save(path, resolved=resolved)
        return as_given, resolved


class StopRequest:
    """Ctrl-C, SIGTERM (a scheduler's pre-emption, torchrun stopping its ranks) or SIGHUP (the
    terminal hung up: a dropped ssh connection; torchrun passes its own on to the ranks) during
    training: finish the step under way, save a checkpoint there, then stop as the signal would
    have, so that `--resume` loses nothing. A second Ctrl-C stops at once (the warning offers
    it, except after a hang-up, which left no terminal to press it on). SIGUSR1 and SIGUSR2, a
    scheduler's warning that the job's time is nearly up (Slurm's `--signal=USR1@120`), whose
    default action killed the run on the spot: the same stop, but planned, as --time-limit's
    (`warned`: the run returns, exit 0). Active in the main thread only."""

    def __init__(self):
        self.signum: int | None = None
        self.finishing = False  # every step is done: the final model is being written
        # what the exit says of a signal the run did not stop for (__exit__)
        self.late_detail = "the signal came as the run ended, its work saved"
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (*STOP_SIGNALS, *WARNING_SIGNALS):
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN:  # ignored by the caller (nohup, a script's `&`): it stays so
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return self

    @property
    def warned(self) -> bool:
        """Whether the stop asked for is a scheduler's warning (a planned stop, not a failure)."""
        return self.signum in WARNING_SIGNALS

    def __exit__(self, exc_type, *exc):
        # (a warning once the run ended or stopped: its work is saved, nothing to say or fail for)
        if exc_type is None and self.signum is not None and self._previous and not self.warned:
            # A signal the run did not stop for (it came while the final model was written, or
            # after): the run ended with its work saved, and the exit still says that a signal
            # stopped it. (One after "done" was printed exited 0, the signal swallowed: seen in
            # the torchrun kill stress.)
            self.raise_now(detail=self.late_detail)
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if dist.info().is_main:
                # (a SIGTERM's warning spoke of Ctrl-C "again", which nobody had pressed; after a
                # hang-up there is no terminal to press it on: the log says why the run stopped)
                again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C"
                hung_up = signum == getattr(signal, "SIGHUP", None)
                console.warn("the run has done its steps: stopping once its final model is written"
                             if self.finishing else
                             f"{signal.Signals(signum).name}, the scheduler's warning that the job's time is nearly "
                             "up: stopping after this step to save a checkpoint" if signum in WARNING_SIGNALS else
                             "the terminal hung up: stopping after this step to save a checkpoint" if hung_up else
                             "stopping after this step to save a checkpoint "
                             f"({again} stops at once, losing the steps since the last one)")
        elif signum == signal.SIGINT:
            # A second Ctrl-C. (torchrun answers Ctrl-C by sending SIGTERM to its ranks, which
            # are then already stopping: that one is not taken as a second request.)
            self.raise_now(signum, frame)

    def raise_now(self, signum=None, frame=None, detail: str | None = None):
        """Stop as the signal would have without us: the previous handler (the CLI's maps SIGTERM
        to exit 143, SIGHUP to 129), else KeyboardInterrupt. `detail` (what was kept, how to go on) travels on
        the exception as `protrans_detail`: the CLI's one error line says it, also under -q."""
        signum = signum or self.signum or signal.SIGINT
        previous = self._previous.get(signum)
        self.restore()
        try:
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            if detail and dist.info().is_main:
                exc.protrans_detail = detail
            raise


@torch_threads()  # puts the caller's torch thread count back
def train(config: TrainConfig, *, resume=None, family=None, saved_as: dict | None = None,
          accept_corpus_change: bool = False, skip_data: int = 0) -> TrainResult:
    """Train (or resume: `resume=True` for the run's latest checkpoint, or a checkpoint path).
    `saved_as`: settings to write into train_config.json instead of the config's (the CLI's
    corpus paths as the run recorded them, where this invocation found the files elsewhere).
    `accept_corpus_change`: resume although a corpus file changed since the checkpoint (a
    damaged shard replaced by a whole copy), with a warning. `skip_data`: with `resume`, pass
    over the data of that many steps before the first one trained (the batches around a loss
    spike, as PaLM did): the step count stays the checkpoint's, the data position moves on."""
    expect_options(config, TrainConfig, "config")
    if not (resume is None or isinstance(resume, (bool, str, os.PathLike))):  # (resume=1: a TypeError from os.path)
        raise UsageError(f"resume is True (the run's latest checkpoint), a checkpoint's path, or None (a new run), "
                         f"got {type(resume).__name__} {resume!r:.40}")
    check_skip_data(skip_data, resume)
    family = given_family(family)
    # (a bad PROTRANS_FILE_LOCKING before the process group: a usage error never waits for peers, and a
    # rank started alone said it only after the rendezvous timed out; run_lock reads it again)
    file_locking()
    info = dist.setup(timeout=config.duration("dist_timeout"))
    try:
        # (gradients on whatever the caller set: torch.set_grad_enabled(False) in an inference notebook)
        with torch.enable_grad(), ckpt.callers_rng(), contextlib.ExitStack() as held:
            failure = None
            try:
                made_here = held.enter_context(ckpt.run_lock(config.output_dir, active=info.is_main))
                # A fresh run that made its directory and fails before its first checkpoint (a bad
                # corpus line met at step 500, a truncated gzip shard, a diverged loss) takes its
                # half-made directory with it; never a --resume run's, nor one that was there before.
                held.enter_context(_discarded_on_failure(config.output_dir, made_here and not resume))
                # the settings first: a bad value on a directory holding a run was met as "already
                # holds a run, add --resume", and only --resume showed the real error
                config.validate(info.world_size)
                if config.untrained and resume:
                    # (nothing to continue: it trains no step, and its run keeps no checkpoint)
                    raise UsageError(f"{option('--num-steps', 'num_steps')} 0 writes the model as initialised, "
                                     f"without a checkpoint: {resume_option()} cannot go with it (give "
                                     f"{option('--num-steps', 'num_steps')} N to train)")
                refuse_what_the_run_dir_holds(config.output_dir, resume, main=info.is_main)
                if resume:
                    where = _check_resume_settings(config, resume, family, info)
                    # (before any model is built, as the settings are; read again from its state below)
                    if where is not None and (step := ckpt.checkpoint_step(where)) is not None:
                        if resume is not True:
                            _refuse_later_checkpoints(config.output_dir, step)
                        _refuse_stop_before(config, where, step, config.total_steps)
                    if where is not None and not accept_corpus_change:
                        _refuse_changed_corpus(config, where)  # (before check_corpus meets the file)
            except (ProtransError, OSError) as exc:  # (rank 0's lock too: another run holds the directory)
                failure = exc
            # Under torchrun, nodes started alike (and seeing the same run directory) or not at all;
            # a rank that failed above raises its error here, and the others stop too rather than
            # wait for it at their first collective.
            # (one process compares nothing: its settings, corpus files read included, are not made)
            settings = _rank_settings(config, resume, skip_data) if info.world_size > 1 else {}
            dist.same_on_every_rank(settings, failure=failure,
                                    remedy="Start every node with the same command, with the run "
                                           "directory on a file system every node sees.")
            if resume is True and not ckpt.list_checkpoints(config.output_dir) and skip_data:
                # (a pass over the data after a checkpoint: without one there is nothing it goes past)
                raise UsageError(f"{config.output_dir}: no checkpoint yet, so {option('--skip-data', 'skip_data')} "
                                 "has no data position to move on from; start the run without it")
            if resume is True and not ckpt.list_checkpoints(config.output_dir):
                # A job script that always passes --resume (a requeued job) must start the
                # first time, and again after a kill before the first save.
                if info.is_main:
                    console.warn(f"{config.output_dir}: no checkpoint yet, so {resume_option()} starts the run "
                                 "from step 0")
                resume = None
            with dist.peers_stopping("this one stopped too"):
                run = build_run(config, info, family, resume=resume)
                run.given.update(saved_as or {})
                if run.config.untrained:
                    return _write_untrained(run)
                with StopRequest() as stop:
                    return _loop(run, resume, stop, accept_corpus_change=accept_corpus_change, skip_data=skip_data)
    finally:
        dist.cleanup()


def continue_advice() -> str:
    """What a stopped run is told to do next: at the command line "continue with the same command
    and --resume", to a library call "continue by calling train again with resume=True" (it was
    told the command's words, `errors.option`)."""
    return option("continue with the same command and --resume", "continue by calling train again with resume=True")


def given_family(family):
    """train's and find_lr's `family`: a Family object (one not registered), or a registered
    family's name, which `family="esm"` reads as (it was an AttributeError, "'str' object has no
    attribute 'objective'", once the run was being built); anything else a UsageError."""
    from protrans_cli.models import get_family
    from protrans_cli.models.base import Family

    if family is None or isinstance(family, Family):
        return family
    if isinstance(family, str):
        return get_family(family)
    raise UsageError(f"family must be a family's name or a Family, got {type(family).__name__} {family!r:.60}")


def _check_resume_settings(config: TrainConfig, resume, family, info) -> Path | None:
    """A resume with another preset, family or setting, refused before any model is built:
    `--resume --preset prot_t5_xl` on a tiny run built 2.8 billion parameters (a minute and 11 GB
    on a CPU) to be told no. The checkpoint's own check (_read_checkpoint, after its sums) stays;
    a run started --init-from is left to it (its family comes from the weights). Returns the
    checkpoint resumed from (None: none yet)."""
    try:
        where = find_checkpoint(config.output_dir if resume is True else resume)
    except InputError:  # (none yet: --resume starts the run; a wrong path is said where it is read)
        return None
    if config.init_from:
        return where
    checked = dataclasses.replace(config, family=config.family or DEFAULT_FAMILY,
                                  preset=config.preset or DEFAULT_PRESET)
    if family is None:
        from protrans_cli.models import get_family

        family = get_family(checked.family)
    run_dir = Path(config.output_dir)
    if (resume is not True and (run_dir / ckpt.CONFIG_FILE).is_file()
            and where.resolve().parent != (run_dir / "checkpoints").resolve()):
        # --resume-from another run's checkpoint with -o naming a directory that holds a run of
        # its own: a T5 checkpoint continued in a BERT run's directory left BERT's and T5's
        # checkpoints side by side, metrics.jsonl with lines of both, and train_config.json
        # overwritten. (A checkpoint of this run copied back from elsewhere has its settings.)
        ckpt.resumed_config(checked, run_dir, family=family, device=info.device.type, refusal=lambda shown: (
            f"{run_dir} holds another run than {where}'s ({shown}): "
            + option("--resume-from a checkpoint of another run continues it in a new directory (give -o one that "
                     "holds no run)", "resuming from a checkpoint of another run (resume=PATH) continues it in a "
                     "new directory (give an output_dir that holds no run)")))
    ckpt.resumed_config(checked, where, family=family, device=info.device.type)
    # --num-steps (or a phase's steps) below what the checkpoint has run: refused here too, as the
    # other settings are (it was met after the model was built: a minute for a ProtT5-XL preset)
    step = ckpt.checkpoint_step(where)
    if step is not None and (data_phase := ckpt.saved_data_phase(where, step)) is not None:
        ckpt.check_phase_position(where, checked.resolved_phases(), step, data_phase)
    return where


def _rank_settings(config: TrainConfig, resume, skip_data: int = 0) -> dict:
    """What every rank of a torchrun job must agree on: the settings that shape the batches, the
    model and the schedule (not -j or --num-workers), the corpus files by size and content (each
    node may hold its own copy: not by path), and the checkpoint a resume starts from as this
    rank sees it."""
    values = {key: value for key, value in dataclasses.asdict(config).items()
              if key not in ("threads", "num_workers", "corpus", "val_corpus")}
    for key in ("corpus", "val_corpus"):
        prints = []
        for path in getattr(config, key) or []:
            try:
                prints.append(corpus_fingerprint([path])[0])
            except InputError:  # (this rank's own check names the file)
                prints.append(None)
        values[f"{key} (file sizes)"] = [p and p["size"] for p in prints]
        # Node-local copies of one size but other content (another prep of the same proteins,
        # a corpus rewritten in place on one node) trained each node on its own batches.
        values[f"{key} (sha256 of each file's first and last 64 KiB)"] = [p and p["ends_sha256"][:12] for p in prints]
    if resume is True:
        found = ckpt.list_checkpoints(config.output_dir)
        values["resume from"] = found[-1].name if found else None
    else:
        values["resume from"] = str(resume) if resume else None
    values["skip data (steps)"] = skip_data  # (each rank passes over the data alike)
    return values


@contextlib.contextmanager
def _discarded_on_failure(run_dir, active: bool):
    """On any failure (an error, a second Ctrl-C) of a run with nothing to keep: its files
    deleted, and its directory with them (run_lock removes the folders it made once they are
    empty). A stop that saved a checkpoint keeps everything. `active` on rank 0 only: the other
    ranks write nothing in the run directory."""
    try:
        yield
    except BaseException:
        if active and ckpt.discard_unfinished_run(run_dir, _RUN_FILES):
            console.info(f"train: removed what this run wrote in {run_dir}: it stopped before its first checkpoint")
        raise


def build_run(config: TrainConfig, info: dist.DistInfo, family=None, resume=None, *, evaluates: bool = True) -> _Run:
    config.validate(info.world_size, evaluates=evaluates)
    if config.tensorboard and evaluates:  # (not for --find-lr, which logs no metrics)
        require_tensorboard()
    if config.wandb and evaluates:
        require_wandb()
    if not config.init_from:
        # The family, its preset and the objective are settings, checked before the corpus is read:
        # `--family bertt` with a corpus too small for one batch (or a missing shard) was said as the
        # corpus's error, exit 1, and the typo showed only once the corpus was fixed.
        config = dataclasses.replace(config, family=config.family or DEFAULT_FAMILY,
                                     preset=config.preset or DEFAULT_PRESET)
        if family is None:
            from protrans_cli.models import get_family

            family = get_family(config.family)
        family.preset_config(config.preset)
        objective_name = _check_objective(config, family)
    # Before any model is built: a missing shard, a FASTA file as corpus or an unusable
    # validation corpus fails now, not at the first step or after the last one. (num_steps 0
    # reads neither.)
    if not config.untrained:
        _check_corpora(config, info, evaluates)
    if config.threads:
        torch.set_num_threads(config.threads)
    # The same seed on every rank: identical initial weights (DDP also broadcasts them).
    torch.manual_seed(config.seed)
    if config.init_from:
        family, tokenizer, model = _initial_model(config, resume)  # the objective checked there
        config = dataclasses.replace(config, family=family.name)
        objective_name = config.objective or family.objective
    else:
        tokenizer = family.build_tokenizer()
        model = _pretraining_model(config, family, tokenizer)
    # saved as resolved (train_config.json said "objective": null for the family's default)
    config = dataclasses.replace(config, objective=objective_name)
    _refuse_beyond_positions(config, model)
    if info.world_size > 1:
        # From here on each rank draws its own dropout masks.
        torch.manual_seed(config.seed + info.rank)
    if info.is_main:
        _warn_unused_settings(config, objective_name)
    layout = TokenLayout.from_tokenizer(tokenizer, family.prepare)
    layout.use_pair = config.sop
    if config.init_from and (problem := _ids_beyond_vocabulary(layout, objective_name, tokenizer, model)):
        raise ModelError(f"--init-from {config.init_from}: {problem}")
    objective = make_objective(objective_name, layout, config)
    if config.packing:
        _use_packing(family, model, objective, objective_name, config, info)
    recomputed = recompute.checkpoint_blocks(model) if config.activation_checkpointing else 0
    num_params = sum(p.numel() for p in model.parameters())
    strategy = dist.choose_strategy(config.strategy, num_params, info.world_size, config.fsdp_min_params)
    if config.strategy in ("ddp", "fsdp") and strategy == "none":
        console.warn(f"strategy {config.strategy} ignored: one process (start with torchrun for several)")
    run_dir = Path(config.output_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if evaluates and config.eval_every and not config.val_corpus:
            console.warn(f"--eval-every {config.eval_every} without --val-corpus: no evaluation")
        if config.sdpa_kernels != "auto" and info.device.type != "cuda":  # (as embed says it)
            console.warn(f"--sdpa-kernels {config.sdpa_kernels} ignored on {info.device.type}: it chooses among a "
                         "CUDA GPU's attention kernels")
    precision = resolve_precision(config.precision, info.device)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(info.device.type, dtype=half)) if half is not None else contextlib.nullcontext
    if config.precision == "auto" and precision == "fp16":
        dist.print0("train: this GPU computes bfloat16 only by emulation: float16 autocast with loss scaling "
                    "instead (--precision bf16 or fp32 to choose)")
    # The run's config holds what auto meant here (saved under "resolved", the setting as given):
    # bf16 on an A100, fp16 on a T4; a run moved between them switched precision on resume
    # without a word.
    given = {"precision": config.precision, "warmup_steps": config.warmup_steps}
    config = dataclasses.replace(config, precision=precision)
    # compile stays as given (None: auto) in the saved config: a run started from that config on
    # another machine decides again, with the compile check, instead of compiling unchecked.
    compiled = recompute.resolve_compile(config.compile, family.name, info.device, warn=info.is_main)
    compile_mode = _resolve_compile_mode(config, compiled, info)
    what = f"{family.name} from {config.init_from}" if config.init_from else f"{family.name}/{config.preset}"
    dist.print0(f"train: {what}, {num_params / 1e6:.2f}M parameters, "
                f"objective {objective.name}, {info.world_size} process(es) on {info.device.type}, "
                f"strategy {strategy}, "
                + {"bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}.get(precision, "fp32")
                + (f", attention kernels {config.sdpa_kernels}" if info.device.type == "cuda" else "")
                + (f", activation checkpointing of {recomputed} blocks" if recomputed else "")
                + (", blocks compiled with torch.compile"
                   + (" (static shapes)" if config.static_shapes else "")
                   + (f" in mode {compile_mode}" if compile_mode != "default" else "")
                   + " (the first steps wait for it)" if compiled else ""))
    return _Run(config, info, family, tokenizer, model, None, strategy, objective, objective.layout,
                run_dir, autocast, loss_scale=LossScale() if precision == "fp16" else None, compiled=compiled,
                compile_mode=compile_mode, given=given)


def _resolve_compile_mode(config: TrainConfig, compiled: bool, info) -> str:
    """What --compile-mode means on this device: reduce-overhead (CUDA graphs) on a CUDA GPU only,
    the default mode elsewhere; a mode without compiled blocks means nothing (each said once)."""
    mode = config.compile_mode
    if mode == "default":
        return mode
    if not compiled:
        if info.is_main:
            console.warn(f"--compile-mode {mode} ignored: the blocks are not compiled (--compile compiles them)")
        return "default"
    if mode == "reduce-overhead" and info.device.type != "cuda":
        if info.is_main:
            console.warn(f"--compile-mode reduce-overhead (CUDA graphs) ignored on {info.device.type}: the "
                         "blocks compile in the default mode")
        return "default"
    return mode


def phase_collate(run: _Run, phase):
    """The objective's collate for a stream of `phase`: with --static-shapes, that of a copy of
    the objective which packs every micro-batch into the phase's one shape."""
    if not run.config.static_shapes:
        return run.objective.collate
    shape = run.config.packed_shape(phase, run.layout.num_special, run.info.world_size)
    objective = copy.copy(run.objective)
    objective.packed_shape = shape
    return objective.collate


def _cudagraph_step(run: _Run) -> None:
    """A new step for CUDA graphs (--compile-mode reduce-overhead) before each micro-batch's
    forward pass: the graphs' outputs of the last one are not read again, so their memory may
    be reused (cudagraph trees cannot tell where a training loop's iterations begin)."""
    if run.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


# Settings that only some objectives read (a value set for another one is said to be unused).
_OBJECTIVE_SETTINGS = {"mask_prob": {"mlm", "electra", "t5"}, "noise_density": {"t5_span"},
                       "mean_span_length": {"t5_span"}, "plm_prob": {"plm"}, "electra_disc_weight": {"electra"},
                       "segment_length": {"clm"}}


def _check_corpora(config: TrainConfig, info: dist.DistInfo, evaluates: bool) -> None:
    """The corpus, and the validation corpus where the run evaluates, checked as build_run's
    first reading of them: refused when unusable, warned of (rank 0) when a file holds no
    protein or the two overlap."""
    phases = config.resolved_phases()
    largest = max(range(len(phases)), key=lambda i: phases[i].global_batch_size)
    empty = check_corpus(config.corpus, phases[largest].global_batch_size,
                         batch_text=(f" of phase {largest + 1}, {phases[largest].max_length}:"
                                     f"{phases[largest].num_steps}" if len(phases) > 1 else ""),
                         clusters=config.sample_clusters)
    if info.is_main:
        if empty:
            console.warn(f"corpus {'file' if len(empty) == 1 else 'files'} {', '.join(empty[:3])}"
                         f"{', ...' if len(empty) > 3 else ''} {'holds' if len(empty) == 1 else 'hold'} no protein "
                         f"(an empty file, a copy that failed?): trained from the other "
                         f"{console.counted(len(config.corpus) - len(empty), 'file')}")
        for problem in corpus_overlaps(config.corpus, config.val_corpus if evaluates else ()):
            console.warn(problem)
    if evaluates and config.val_corpus:
        batch = max(p.micro_batch_size for p in phases)
        check_validation_corpus(config.val_corpus, batch * info.world_size,
                                batch_text=f"micro batch size {batch} x {info.world_size} process(es)",
                                evaluated=config.num_eval_batches * max(p.global_batch_size for p in phases),
                                clusters=config.sample_clusters)


def _refuse_beyond_positions(config: TrainConfig, model) -> None:
    """A UsageError where the longest phase's rows, or their padding, are wider than the
    model's position table."""
    phases = config.resolved_phases()
    longest = max(p.max_length for p in phases)
    limit = _position_limit(model)
    if limit is not None and longest > limit:
        # (named as given: "--max-length 100000" for a --phase 100000:... the user never typed)
        where = (f"--max-length {longest}" if not config.phases else
                 f"--phase {next(i for i, p in enumerate(phases, 1) if p.max_length == longest)}'s length {longest}")
        # (--init-from's positions are its weights': --set max_position_embeddings is refused there)
        remedy = (f"lower it (the positions are those of --init-from {config.init_from}'s weights, which --set "
                  "cannot resize)" if config.init_from else "lower it, or raise max_position_embeddings with --set")
        raise UsageError(f"{where} (tokens, special tokens included) is beyond the model's {limit} positions: {remedy}")
    # A padded micro-batch is as wide as its longest row rounded up to pad_multiple (a packed
    # row's padding tail, fewer than pad_multiple tokens, is numbered from 0): wider than a
    # learned position table, the first step failed with a traceback.
    m = config.pad_multiple
    width = m - 1 if config.packing else max(m, -(-longest // m) * m)
    if limit is not None and width > limit:
        raise UsageError(f"--pad-multiple {m} (pad_multiple) pads rows of --max-length {longest} to {width} "
                         f"tokens, beyond the model's {limit} positions: lower --pad-multiple or --max-length")


def _warn_unused_settings(config: TrainConfig, objective_name: str) -> None:
    """A warning for each objective setting (_OBJECTIVE_SETTINGS) given away from its default
    that the run's objective does not read."""
    for name, users in _OBJECTIVE_SETTINGS.items():
        value, default = getattr(config, name), TrainConfig.__dataclass_fields__[name].default
        if value != default and objective_name not in users:
            console.warn(f"{name} = {value} is a setting of the {' and '.join(sorted(users))} objective(s): "
                         f"the {objective_name} objective does not use it")


def _pretraining_model(config: TrainConfig, family, tokenizer):
    """The preset's model with --set / model_overrides applied; a value the model cannot take
    (a head count that does not divide the width, a dropout above 1, a vocabulary smaller than
    the tokenizer's) is a usage error naming the setting, not a traceback at the first step."""
    # (float32 whatever torch's default dtype: a caller's set_default_dtype(torch.float64) wrote a
    # float64 model that the run reported as fp32; --init-from loads float32 too)
    if not config.model_overrides:
        return family.pretraining_model(family.build_config(config.preset, tokenizer)).float()
    shown = ", ".join(f"{k}={v}" for k, v in config.model_overrides.items())
    try:
        model_config = family.build_config(config.preset, tokenizer, **config.model_overrides)
        if getattr(model_config, "vocab_size", len(tokenizer)) < len(tokenizer):
            raise ValueError(f"vocab_size {model_config.vocab_size} is below the tokenizer's {len(tokenizer)} tokens")
        if problem := _heads_problem(model_config) or family.shape_problem(model_config):
            raise ValueError(problem)
        return family.pretraining_model(model_config).float()
    except ModelError as exc:
        raise UsageError(f"--set / model_overrides ({shown}): {exc.message}") from None
    except KeyError as exc:  # transformers' ACT2FN[...]: an activation it does not know
        raise UsageError(f"--set / model_overrides ({shown}): unknown name {exc.args[0]!r} (an activation "
                         "function or another choice the model does not have)") from None
    except (ValueError, TypeError, RuntimeError, IndexError, AssertionError) as exc:
        raise UsageError(f"--set / model_overrides ({shown}): {first_line(exc)}") from None


def _heads_problem(model_config) -> str | None:
    """Heads that do not divide the width, for the configs whose head size is hidden_size / heads
    (T5's d_kv and Transformer-XL's and XLNet's d_head are sizes of their own). BERT, RoBERTa and
    ESM refuse such a config themselves; ALBERT and ELECTRA built the model and failed at the
    first step with a matrix-shape traceback."""
    heads = getattr(model_config, "num_attention_heads", None)
    if not heads or hasattr(model_config, "d_kv") or hasattr(model_config, "d_head"):
        return None
    if model_config.hidden_size % heads:
        return (f"hidden_size {model_config.hidden_size} is not a multiple of num_attention_heads {heads}")
    return None


def _ids_beyond_vocabulary(layout: TokenLayout, objective_name: str, tokenizer, model) -> str | None:
    """Why the ids an objective writes (its mask token or sentinels, padding, special tokens,
    residues) would not all be rows of the model's embedding table, or None. A tokenizer whose
    vocabulary lacks a mask token gets one added by its class (BertTokenizer's `[MASK]`,
    AlbertTokenizer's), with the next free id: one past the model's vocabulary, met as an
    IndexError traceback at the first step."""
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab_size:
        return None
    named = [("its mask token", [layout.mask_id] if objective_name in ("mlm", "electra", "t5") else []),
             ("its sentinel tokens", layout.sentinel_ids if objective_name == "t5_span" else []),
             ("its padding token", [layout.pad_id]),
             ("its special tokens", [*layout.prefix, *layout.suffix]
              + ([*layout.pair_prefix, *layout.pair_middle, *layout.pair_suffix] if layout.use_pair else [])),
             ("its residue tokens", layout.residue_ids.tolist())]
    for what, ids in named:
        beyond = [int(i) for i in ids if i is not None and int(i) >= vocab_size]
        if beyond:
            token = tokenizer.convert_ids_to_tokens(beyond[0])
            return (f"{what} ({token!r}, id {beyond[0]}) {'is' if what.endswith('token') else 'are'} beyond the "
                    f"model's vocabulary of {vocab_size} entries: the tokenizer's vocabulary lacks it (its class "
                    f"added it past the end) or belongs to another model; the {objective_name} objective needs "
                    "a token the model knows")
    return None


def _position_limit(model) -> int | None:
    """Tokens a model with a learned position table takes (BERT, ALBERT, ELECTRA, RoBERTa: the
    table's rows after RoBERTa's padding offset); None for relative or rotary positions."""
    limits = []
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            offset = table.padding_idx + 1 if table.padding_idx is not None else 0
            limits.append(table.num_embeddings - offset)
    return min(limits) if limits else None


def wrap_model(run: _Run) -> None:
    """The model on its device, compiled if asked, inside the objective's loss module, wrapped
    for the strategy (`run.wrapped`): what a training run and the lr range test both step."""
    run.model.to(run.info.device)
    if run.compiled:
        # each transformer block, every one the objective runs (ELECTRA's generator's and
        # discriminator's alike: the objective calls the two one by one, never the pair's forward)
        recompute.compile_blocks(run.model, dynamic=not run.config.static_shapes, mode=run.compile_mode)
    loss_module = LossModule(run.model, run.objective)
    # DDP is told of parameters the objective never uses (ALBERT's sentence-order head without
    # --sop), or its second step fails
    unused = unused_parameters(loss_module, run) if run.strategy == "ddp" else []
    if unused:
        console.debug(f"parameters without gradient (DDP told to expect them): {', '.join(unused[:5])}...")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.config.precision)  # (resolved in build_run)
    run.wrapped = dist.wrap(loss_module, run.strategy, run.info, find_unused_parameters=bool(unused),
                            param_dtype=half)


def _check_objective(config: TrainConfig, family) -> str:
    """The objective's name, or a usage error when it (or --sop) does not fit the family;
    checked before any model is built or loaded."""
    objective_name = config.objective or family.objective
    compatible = {"t5": {"t5", "t5_span"}, "t5_span": {"t5", "t5_span"}}.get(family.objective, {family.objective})
    if objective_name not in compatible:
        raise UsageError(f"objective {objective_name} does not fit the {family.name} family "
                         f"(use {' or '.join(sorted(compatible))})")
    if config.sop and objective_name != "mlm":
        raise UsageError(f"sop (sentence-order prediction) goes with the mlm objective, not {objective_name}")
    if config.sop and not family.sentence_order:
        from protrans_cli.models import FAMILIES

        heads = ", ".join(f.name for f in FAMILIES.values() if f.sentence_order)
        raise UsageError(f"--sop needs a model with a sentence-order head ({heads}), not the {family.name} family")
    return objective_name


def _use_packing(family, model, objective, objective_name: str, config: TrainConfig, info) -> None:
    """--packing: check that it trains this model exactly as padded batches would, then switch
    the model's attention and the objective's collation to packed rows."""
    if objective_name not in packing.PACKABLE_OBJECTIVES:
        raise UsageError(f"--packing goes with the masked-LM objectives ({', '.join(packing.PACKABLE_OBJECTIVES)}), "
                         f"not {objective_name}")
    if config.sop:
        raise UsageError("--packing cannot go with --sop (sentence order needs one protein per row)")
    problem = family.packing_problem(model.config, training=True)
    if problem:
        raise UsageError(f"--packing: {problem}")
    objective.packed_position_offset = family.packed_position_offset(model.config)
    packing.use_packed_attention(model)
    # (said "one varlen attention kernel" where the kernel exists, though it takes half precision
    # without attention dropout only: fp32 runs and the tiny/small/base presets' dropout 0.1 ran
    # the padded fallback, slower, without a word)
    dropout = getattr(model.config, "attention_probs_dropout_prob", None) or 0
    padded = "attention through a padded SDPA call"
    if not packing.varlen_available(info.device):
        kernel = f"{padded} (no fused varlen kernel on this device or PyTorch)"
    elif resolve_precision(config.precision, info.device) == "fp32":
        kernel = f"{padded}: the fused varlen kernel takes bf16/fp16 only (--precision fp32)"
    elif dropout:
        kernel = (f"{padded}: the fused varlen kernel takes no attention dropout (attention_probs_dropout_prob "
                  f"{dropout}; --set attention_probs_dropout_prob=0 for it)")
    else:
        kernel = "one varlen attention kernel"
    dist.print0(f"train: packing micro-batches into one row each; {kernel}")


def _weights_changed(family, saved, changed) -> str | None:
    """How the pretraining model of config `changed` differs in its weights' names or shapes
    from that of `saved` (both built on the meta device: no memory, no time); None if alike."""
    import torch

    try:
        with torch.device("meta"):
            before = {k: tuple(v.shape) for k, v in family.pretraining_model(saved).state_dict().items()}
            after = {k: tuple(v.shape) for k, v in family.pretraining_model(changed).state_dict().items()}
    except Exception:  # noqa: BLE001 - what cannot be built is said by the loading that follows
        return None
    if gone := sorted(set(before) - set(after)):
        return f"{len(gone)} of its tensors would be left out, e.g. {gone[0]}"
    if new := sorted(set(after) - set(before)):
        return f"{len(new)} tensors would start from random, e.g. {new[0]}"
    if reshaped := sorted(k for k in before if before[k] != after[k]):
        return f"{reshaped[0]} would be {after[reshaped[0]]} instead of {before[reshaped[0]]}"
    return None


# Above this share of missing weights, --init-from is refused rather than half random.
_MAX_MISSING_SHARE = 0.1


def _names_a_shape(exc: BaseException) -> bool:
    """Whether a weights-loading RuntimeError is about tensor shapes (torch's and transformers'
    "size mismatch for ...: copying a param with shape ..."), not a damaged file."""
    text = str(exc).lower()
    return "size mismatch" in text or "shape" in text


def _initial_model(config: TrainConfig, resume):
    """--init-from: (family, tokenizer, pretraining model) of an existing model, loaded through
    from_pretrained in float32. On --resume the architecture and tokenizer come from the run's
    checkpoint instead (its weights are loaded in _loop), so the original model is not needed again."""
    from protrans_cli.models import (_check_tokenizer, _quiet_transformers, _tokenizer_json_problem, missing_weights,
                                     open_config, weight_errors, weights_problem)
    from protrans_cli.io.files import utf8_path_problem, utf8_text

    if resume:
        source = open_config(str(find_checkpoint(config.output_dir if resume is True else resume)))
    else:
        source = open_config(config.init_from, flag="--init-from")
    family, hf_config = source.family, source.config
    if source.is_dir and (problem := utf8_path_problem(source.target)) is not None:
        raise ModelError(f"--init-from {utf8_text(str(source.target))}: cannot load the tokenizer: {problem}")
    if config.family and config.family != family.name:
        # (the family may be a config file's, a run's train_config.json: "--family bert" named a
        # flag the user had not given)
        raise UsageError(f"--family {config.family} (family) does not go with --init-from {config.init_from}: "
                         f"that is {'an' if family.name[0] in 'aeiou' else 'a'} {family.name} model")
    _check_objective(config, family)
    saved_vocab = getattr(hf_config, "vocab_size", None)
    saved_config = copy.deepcopy(hf_config) if config.model_overrides and not resume else None
    for key, value in config.model_overrides.items():
        if not hasattr(hf_config, key):
            raise UsageError(f"--set {key}: the {family.name} config of {source.name} has no field {key!r}")
        try:  # a text for a number: exit 2 naming --set, as without --init-from
            value = family.typed_override(key, getattr(hf_config, key), value)
        except ModelError as exc:
            raise UsageError(f"--set {key}: {exc.message}") from None
        try:
            setattr(hf_config, key, value)
        except Exception as exc:  # noqa: BLE001 - as build_config: huggingface_hub's strict validation (ESM)
            detail = " ".join(str(exc).split())
            raise UsageError(f"--set {key}: invalid {family.name} config value {value!r} ({detail})") from None
    if config.model_overrides and (problem := _heads_problem(hf_config) or family.shape_problem(hf_config)):
        raise UsageError(f"--set / model_overrides with --init-from {source.name}: {problem}")
    # The weights keep their shapes: --set can change settings such as dropout, not sizes (a
    # size was met as "cannot load the weights" or a tokenizer said to be another model's).
    resized = f"--set / model_overrides ({', '.join(f'{k}={v}' for k, v in config.model_overrides.items())})"
    try:
        with _quiet_transformers():  # as embed: no loading bars or load reports
            tokenizer = family.load_tokenizer(source.target, config=source.config, **source.hub_kwargs)
            if resume:
                return family, tokenizer, family.pretraining_model_like(source.target, hf_config, **source.hub_kwargs)
            if "vocab_size" in config.model_overrides and hf_config.vocab_size != saved_vocab:
                raise UsageError(f"{resized}: the weights of {source.name} have {saved_vocab} "
                                 "vocabulary rows; with --init-from, --set can change settings such as dropout, "
                                 "not sizes")
            if saved_config is not None and (change := _weights_changed(family, saved_config, hf_config)):
                # A depth keeps every shape: num_hidden_layers=1 dropped the checkpoint's other
                # layers without a word, =3 added random ones ("usually a pretraining head").
                raise UsageError(f"{resized}: the model would not hold the weights of {source.name} ({change}); "
                                 "with --init-from, --set can change settings such as dropout, not sizes")
            # the same guard as embed: a directory without its tokenizer would train on [UNK] rows
            _check_tokenizer(f"--init-from {source.name}", family, tokenizer, source.is_dir,
                             getattr(hf_config, "vocab_size", None), directory=source.target if source.is_dir else None)
            model, info = family.load_pretraining_model(source.target, config=hf_config, dtype=torch.float32,
                                                        output_loading_info=True, **source.hub_kwargs)
    except weight_errors() as exc:
        if config.model_overrides and isinstance(exc, RuntimeError) and _names_a_shape(exc):
            # (a shape that does not fit, which --set can cause; a weights file cut short (torch's
            # "PytorchStreamReader failed reading zip archive", a RuntimeError too), or a pickle
            # refused, is the file's problem whatever --set gave: --set dropout was blamed)
            raise UsageError(f"{resized}: the weights of {source.name} do not have that model's shapes; with "
                             "--init-from, --set can change settings such as dropout, not sizes") from None
        raise ModelError(f"--init-from {source.name}: cannot load the weights: {weights_problem(exc)}") from None
    except (OSError, ValueError, KeyError, AttributeError, IndexError) as exc:  # (KeyError: a damaged tokenizer.json)
        if source.is_dir and (problem := _tokenizer_json_problem(source.target)):
            # (a tokenizer.json cut short was "cannot load it as a bert pretraining model: Expecting
            # value: line 7 column 12 (char 100)", naming no file; embed names it so)
            raise ModelError(f"--init-from {source.name}: cannot load the tokenizer: {problem}") from None
        # (as embed: one line naming the folder without weights, not transformers' own wording, which
        # named the pair's directory for an ELECTRA generator's missing file)
        if source.is_dir and (lacking := missing_weights(source.target)):
            raise ModelError(f"--init-from {source.name}: {lacking}") from None
        detail = first_line(exc) if isinstance(exc, (OSError, ValueError)) else described(exc)
        raise ModelError(f"--init-from {source.name}: cannot load it as {a_or_an(family.name)} pretraining model: "
                         f"{detail}") from None
    sizes = {k: v.numel() for k, v in model.state_dict().items()}
    missing = [k for k in info.get("missing_keys", []) if k in sizes]
    share = sum(sizes[k] for k in missing) / max(sum(sizes.values()), 1)
    if share > _MAX_MISSING_SHARE:
        raise ModelError(f"--init-from {source.name}: the checkpoint holds only {1 - share:.0%} of the weights of "
                         f"{a_or_an(family.name)} pretraining model (none for e.g. {sorted(missing)[0]}); an encoder-only "
                         "checkpoint cannot continue pretraining, use the full one")
    if missing:
        console.warn(f"--init-from {source.name}: {len(missing)} tensors are not in the checkpoint and start "
                     f"from random (e.g. {sorted(missing)[0]}; usually a pretraining head)")
    return family, tokenizer, model


def _read_checkpoint(run: _Run, resume, accept_corpus_change: bool):
    """The checkpoint a resume starts from, checked against its sums, the run's settings, the
    corpus and the run's later checkpoints: (its path, its training state), with the checkpoint's
    settings in run.config and its weights loaded (before the model is wrapped)."""
    config, info = run.config, run.info
    phases = config.resolved_phases()
    where = find_checkpoint(run.run_dir if resume is True else resume)
    # Rank 0 reads the checkpoint once against its SHA256SUMS; every rank stops on its verdict.
    problem = dist.broadcast_object(ckpt.check_sums(where) if info.is_main else None)
    if problem:
        raise InputError(problem)
    # The settings first: another preset or family is named as such (exit 2), not met as
    # weights that do not fit.
    config = run.config = ckpt.resumed_config(config, where, family=run.family, device=info.device.type)
    run.given = ckpt.given_settings(where, run.given)
    ckpt.load_weights(where, run.model)  # (another family's weights named as such first)
    if not config.init_from:
        ckpt.check_vocabulary(where, run.tokenizer)
    state = ckpt.load_training_state(where, len(phases))
    if info.is_main:
        # (config.objective is resolved: the family's default where none was given)
        changes = objective_changes(ckpt.saved_objective_revision(where), config.objective, config.sop)
        if changes:
            console.warn(f"{where.name} was written by an earlier protrans, whose objective differed: "
                         f"{'; '.join(changes)}. The steps after {state.get('step')} train with today's, so the "
                         "run differs from an uninterrupted one (see CHANGELOG.md)")
    corpus_changes = changed_corpus_files(state.get("corpus"), config.corpus, run.corpus_id)
    changed = _changes_text(corpus_changes)
    if changed and accept_corpus_change and info.is_main:
        accepted = option("--accept-corpus-change", "accept_corpus_change=True")  # (as the reader gave it)
        data = StreamState.from_dict(state["data_state"])
        found = position_in_corpus(config.corpus, data,
                                   Clusters(config.seed, data.epoch) if config.sample_clusters else None)
        unit = "cluster" if config.sample_clusters else "protein"
        position = f"{unit} {data.buffer_start + 1:,} of epoch {data.epoch + 1}"
        at = data.at if data.at is not None and data.at.proteins <= data.buffer_start else None
        if found is None:
            # (shrunk: the stream finds no protein at the position and ends the epoch there;
            # "resumed at its data position" named a place that is no longer in the corpus)
            console.warn(f"the corpus changed since {where} was saved ({changed}): it now ends before the "
                         f"run's data position ({position}); resumed from the beginning of epoch "
                         f"{data.epoch + 2} ({accepted})")
        elif at is not None and all(index < at.file for index, _ in corpus_changes):
            # The position is kept in the file it falls in (as a byte, else a line): what changed
            # before that file moves it nowhere.
            console.warn(f"the corpus changed since {where} was saved ({changed}), before the run's data "
                         f"position: resumed there ({position}: line {found[1]:,} of {found[0]}), reading on as "
                         "the uninterrupted run would; the next epoch reads the corpus as it is now "
                         f"({accepted})")
        else:
            console.warn(f"the corpus changed since {where} was saved ({changed}): resumed at its data "
                         f"position anyway ({accepted}), {position}: line {found[1]:,} of "
                         f"{found[0]} now; the batches from there on may differ from an uninterrupted run's")
    elif changed and not accept_corpus_change:
        # The saved data position counts proteins of the corpus as it was: applied to
        # another one, the run would go on silently with other batches. (A shard found
        # damaged mid-run and replaced by a whole copy is the case for the switch: its
        # proteins before the position are the same.)
        raise _corpus_change_refusal(config, where, corpus_changes)
    # --resume-from an earlier checkpoint: the later ones belong to the run being abandoned.
    # Left in place, --keep-last pruned the new checkpoints (by step number) in their favour
    # and a later --resume continued the abandoned run.
    _refuse_later_checkpoints(run.run_dir, state["step"])
    ckpt.check_phase_position(where, phases, state["step"], state["data_phase"])
    dist.print0(f"train: resuming from {where} (step {state['step']})")
    return where, state


def _changes_text(corpus_changes) -> str | None:
    """changed_corpus_files' first change, and how many files more, as a refusal names them."""
    if not corpus_changes:
        return None
    more = f"; {len(corpus_changes) - 1} other file(s) too" if len(corpus_changes) > 1 else ""
    return corpus_changes[0][1] + more


def _corpus_change_refusal(config: TrainConfig, where: Path, corpus_changes) -> InputError:
    """The refusal of a resume whose corpus changed since checkpoint `where` (changed_corpus_files'
    `corpus_changes`, not empty)."""
    # Two ways on: the run's own corpus (a relative path found from another directory names
    # another file; --accept-corpus-change there trained on it), or the change accepted.
    read = _recorded_corpus(where, corpus_changes[0][0])
    read = f" (it read {read})" if read and read != os.path.abspath(config.corpus[corpus_changes[0][0]]) else ""
    return InputError(f"the corpus changed since {where} was saved ({_changes_text(corpus_changes)}): its data "
                      f"position no longer applies; restore the corpus or give the run's own with "
                      f"{option('--corpus PATH', 'corpus=[PATH]')}{read}, or where the change is meant (a "
                      f"damaged shard replaced by a whole copy) add "
                      f"{option('--accept-corpus-change', 'accept_corpus_change=True')}, or start a new run "
                      f"with {option('--init-from that checkpoint', 'init_from=that checkpoint')}")


def _refuse_changed_corpus(config: TrainConfig, where: Path) -> None:
    """_read_checkpoint's corpus-change refusal, met before the corpus is checked: the run's relative
    `c.txt` finding another, shorter c.txt from this directory was refused "c.txt: the corpus holds 1
    protein(s), fewer than one global batch (4)", naming neither file nor the way on. (The training
    state mapped, not read: its optimizer state is read once, by the resume.)"""
    try:
        saved = torch.load(where / ckpt.STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        corpus_changes = changed_corpus_files(saved.get("corpus"), config.corpus)
    except Exception:  # noqa: BLE001 - a damaged state, a missing shard: said where they are read
        return
    if corpus_changes:
        raise _corpus_change_refusal(config, where, corpus_changes)


def _recorded_corpus(where: Path, index: int) -> str | None:
    """The absolute path of corpus file `index` that the run recorded in checkpoint `where`
    (its config's "resolved"), None where it recorded none."""
    try:
        paths = json.loads((where / ckpt.CONFIG_FILE).read_text(encoding="utf-8")).get(RESOLVED, {}).get("corpus")
        return paths[index] if isinstance(paths, list) and isinstance(paths[index], str) else None
    except (OSError, ValueError, AttributeError, IndexError):
        return None


def _refuse_stop_before(config: TrainConfig, where, step: int, total_steps: int) -> None:
    """UsageError for a --stop-after at or before `step`, the checkpoint's, of a run not complete."""
    if config.stop_after is not None and config.stop_after <= step < total_steps:
        # it trained one step, saved nothing and said to resume: the same step again each time
        raise UsageError(f"--stop-after {config.stop_after} (stop_after) is not after {where}'s step {step}: "
                         "nothing to train; give a later step, or none to train to the end (a config file's "
                         "stop_after, e.g. a run's train_config.json of an earlier version: remove it)")


def _refuse_later_checkpoints(run_dir, step: int) -> None:
    """UsageError where the run directory holds checkpoints after `step`, the one resumed from."""
    later = [p.name for p in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_step(p) > step]
    if later:
        raise UsageError(f"{Path(run_dir) / 'checkpoints'} holds checkpoints after step {step} "
                         f"({', '.join(later)}): they belong to the run continued from there; move or "
                         "delete them to resume from this one")


def _restore_training_state(run: _Run, optimizer, scheduler, where, state: dict) -> tuple[int, int, StreamState]:
    """The optimizer, scheduler, RNG and fp16 loss scale of a checkpoint, once the model is
    wrapped: (its step, its data phase, its data position)."""
    info = run.info
    with ckpt.restoring(where, "optimizer"):
        if run.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(run.wrapped, optimizer, options=StateDictOptions(full_state_dict=True),
                                     optim_state_dict=_by_parameter_name(state["optimizer"], run.wrapped,
                                                                         optimizer))
        else:
            optimizer.load_state_dict(state["optimizer"])
            ckpt.check_optimizer_state(where, optimizer)
    with ckpt.restoring(where, "scheduler"):
        # The schedule's position comes from the checkpoint, its shape (total steps, warmup) from
        # this run: load_state_dict restores the saved lambda's fields too, and a run resumed
        # for more steps then never decayed again. Same shape: the very lr the checkpoint holds.
        shape = dict(scheduler.lr_lambdas[0].__dict__)
        scheduler.load_state_dict(state["scheduler"])
        if not ckpt.is_count(scheduler.last_epoch):
            raise ValueError(f"last_epoch is {scheduler.last_epoch!r}, not a step")
        saved_shape = dict(scheduler.lr_lambdas[0].__dict__)
        saved_fields = (state["scheduler"].get("lr_lambdas") or [None])[0]
        if isinstance(saved_fields, dict) and "decay_steps" not in saved_fields:
            saved_shape["decay_steps"] = None  # (saved before it existed: the decay ended at the last step)
        for fn in scheduler.lr_lambdas:
            fn.__dict__.update(shape)
        if info.is_main:
            _warn_if_lr_rises(where, saved_shape, scheduler.lr_lambdas[0], scheduler.last_epoch,
                              scheduler.base_lrs[0])
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    saved = state["rng"]
    with ckpt.restoring(where, "rng"):
        ckpt.set_rng_state(saved[min(info.rank, len(saved) - 1)], info.device)
        if info.rank >= len(saved):
            # A checkpoint of fewer processes (a job requeued on more GPUs): this rank had no
            # generator of its own, and taking the last rank's gave two ranks one stream, the same
            # dropout masks for the rest of the run (saved so in every later checkpoint). Its own
            # stream instead, fixed by the seed, the rank and the step (a re-resume draws the same).
            # (a Python int before the shift: numpy 1.x promoted uint64 >> int to float64, "ufunc
            # 'right_shift' not supported", and the resume failed as an unreadable checkpoint)
            torch.manual_seed(int(np.random.SeedSequence([run.config.seed, info.rank, state["step"]])
                                  .generate_state(1, np.uint64)[0]) >> 1)
    if run.loss_scale is not None and state.get("loss_scale"):
        with ckpt.restoring(where, "loss_scale"):
            run.loss_scale.load_state_dict(state["loss_scale"])
    written_by = state.get("world_size", len(saved))
    if written_by != info.world_size:
        added = info.world_size - len(saved)
        dist.print0(f"train: {where.name} was written by {written_by} process(es), resumed by {info.world_size}: "
                    "the same global batches from the saved data position"
                    + ("" if added < 1 else f"; rank {len(saved)} draws dropout of its own" if added == 1 else
                       f"; ranks {len(saved)}-{info.world_size - 1} draw dropout of their own"))
    with ckpt.restoring(where, "data_state"):
        return state["step"], state["data_phase"], StreamState.from_dict(state["data_state"])


def _warn_if_lr_rises(where, saved_shape: dict, fn: LRLambda, step: int, peak: float) -> None:
    """A run resumed for more steps decays over its new length: where its checkpoint had already
    decayed, the learning rate goes back up at once (a completed 30-step linear run lengthened to
    40: from 5.3e-05 at step 30 to 1.4e-04 at step 31), which a loss curve shows as a bump. Said,
    not refused: a longer decay is what lengthening a run means."""
    try:
        before = LRLambda(**{key: saved_shape[key] for key in ("schedule", "warmup_steps", "total_steps",
                                                                 "min_ratio")},
                          decay_fraction=saved_shape.get("decay_fraction", 0.2),
                          decay_steps=saved_shape.get("decay_steps"))
        last, was, now = peak * before(step - 1), peak * before(step), peak * fn(step)
    except (KeyError, TypeError, UsageError):  # (a checkpoint whose schedule was saved otherwise)
        return
    # (a rise from the last step that the old schedule did not have: not a warmup going on)
    if step >= 1 and now > last * (1 + 1e-6) and now > was * (1 + 1e-6):
        console.warn(f"the schedule now spans {fn.total_steps} steps ({where.name}'s run had {before.total_steps}): "
                     f"the learning rate goes back up from {last:.3g} at step {step} to {now:.3g} at step {step + 1} "
                     f"({fn.schedule} decay over the longer run)")


def _loop(run: _Run, resume, stop: StopRequest | None = None, *, accept_corpus_change: bool = False,
          skip_data: int = 0) -> TrainResult:
    config, info = run.config, run.info
    phases = config.resolved_phases()
    total_steps = config.total_steps

    # --- resume: weights before wrapping, optimizer state after --------------------------
    state = where = None
    run.corpus_id = corpus_fingerprint(config.corpus)
    if info.is_main:
        for path in ckpt.remove_stale_temporaries(run.run_dir):
            console.warn(f"removed {path}: a save that was killed before it completed")
    if resume:
        where, state = _read_checkpoint(run, resume, accept_corpus_change)
        config = run.config

    wrap_model(run)
    optimizer = build_optimizer(run.wrapped, config)
    if info.is_main and config.warmup_steps is not None and config.warmup_steps >= total_steps:
        console.warn(f"--warmup-steps {config.warmup_steps} is not below the run's {total_steps} steps: the "
                     f"learning rate only ramps up, to {total_steps / max(1, config.warmup_steps):.0%} of "
                     f"--lr {config.lr:g}, and never decays")
    if info.is_main and config.decay_steps is not None and config.decay_steps > total_steps:
        # (taken, as a lengthened run's: a slower decay, which has not reached its floor at the end)
        floor = LRLambda(config.schedule, config.resolved_warmup_steps, total_steps, config.min_lr_ratio,
                         decay_steps=config.decay_steps)(total_steps - 1)
        console.warn(f"--decay-steps {config.decay_steps} is after the run's {total_steps} steps: its last step "
                     f"trains at {floor:.3g} x --lr {config.lr:g}, above the floor (--min-lr-ratio "
                     f"{config.min_lr_ratio:g}), which the {config.schedule} decay reaches at step {config.decay_steps}")
    if config.warmup_steps is None:
        # Recorded as resolved: a run resumed for more steps keeps its warmup (a tenth of the
        # first run), rather than ramping up again to a tenth of the longer one.
        config = run.config = dataclasses.replace(config, warmup_steps=config.resolved_warmup_steps)
    scheduler = build_scheduler(optimizer, config, total_steps)
    step, data_phase, data_state = 0, 0, StreamState()
    if state is not None:
        step, data_phase, data_state = _restore_training_state(run, optimizer, scheduler, where, state)
        _refuse_stop_before(config, where, step, total_steps)
    if info.is_main and config.stop_after is not None and config.stop_after >= total_steps > step:
        # (it ran to the end without a word: a time-limited job's arithmetic gone wrong, say)
        console.warn(f"--stop-after {config.stop_after} is not before the run's last step ({total_steps}): "
                     "it trains to the end")

    metrics_path = run.run_dir / "metrics.jsonl"
    board = wandb_log = None
    if info.is_main:
        _, resolved = run.save_config(run.run_dir / ckpt.CONFIG_FILE)
        ckpt.record_complete(run.run_dir, None)  # (until this invocation's last step: a lengthened run is not)
        truncate_metrics(metrics_path, step)
        board = open_tensorboard(run.run_dir, step, config.tensorboard)
        if board is not None:
            dist.print0(f"train: TensorBoard scalars in {board.folder} (tensorboard --logdir {run.run_dir})")
        # (the settings as the run resolved them, a plain dict: W&B's config of the run)
        wandb_log = open_wandb(run.run_dir, step, config, {**dataclasses.asdict(config), **resolved}, metrics_path)
        if wandb_log is not None:
            dist.print0(f"train: logging to W&B project {wandb_log.project}, run {wandb_log.name} (id "
                        f"{wandb_log.id}; files in {wandb_log.folder})")
    exit_code = 1
    try:
        result = _train_steps(run, optimizer, scheduler, stop, phases, total_steps, step, data_phase, data_state,
                              state, metrics_path, board, wandb_log, skip_data=int(skip_data))
        if result.last_checkpoint is None and where is not None:
            # (a resumed run that saved none: `train(config, resume=True)` on a complete run
            # said last_checkpoint=None beside the checkpoint it had resumed from)
            result.last_checkpoint = Path(where)
        exit_code = 0
        return result
    except KeyboardInterrupt as exc:  # (Ctrl-C, or the CLI's SIGTERM and SIGHUP: the exit status it gives them)
        exit_code = 128 + int(getattr(exc, "signum", signal.SIGINT))
        raise
    except ProtransError:
        # (a diverged step, a corpus error met mid-run, a checkpoint that cannot be written) The
        # curve up to the failure, as a stopped or completed run draws it: a diverged run's is
        # what tells a better --lr, and it had metrics.jsonl alone.
        if info.is_main and metrics_path.is_file() and metrics_path.stat().st_size:
            with contextlib.suppress(Exception):  # (a full disk: the run's own error is the one to say)
                plot_metrics(metrics_path, run.run_dir / "loss_curve.png")
        raise
    finally:
        if board is not None:
            board.close()
        if wandb_log is not None:  # (the W&B run marked failed with the exit status, or finished)
            wandb_log.finish(exit_code)


@dataclass
class _LoopState:
    """What `_train_steps` carries from step to step besides the step and the data position: the
    result so far, the metrics interval under way, the run's counts, --keep-best's best, and where
    the lines go."""

    result: TrainResult
    # --skip-nonfinite: the steps skipped so far for a gradient that was not finite (the whole
    # run's: a checkpoint keeps the count), --skip-data's passes over the data so far, and the
    # "processes" of each invocation (first step, world size, strategy, precision) for the card
    history: dict
    metrics_path: Path
    bar: object                   # the progress bar (rank 0's; None on the others)
    board: object                 # TensorBoard's writer, or None
    wandb_log: object             # W&B's run, or None
    # The real tokens trained (metrics.jsonl's count) up to the last metrics line, the whole run's:
    # a checkpoint keeps them with the interval under way, so that its card, the final card and
    # complete.json count the steps after a run's last line too (rank 0's; the others' are unused)
    logged_tokens: int
    log: Accumulator              # the metrics interval under way
    t_log: float                  # when it began (perf_counter)
    began: float                  # (this process's part, for the summary)
    first_step: int
    paused: float = 0.0           # seconds of checkpoint saves since the last line
    run_tokens: float = 0         # (this process's part, for the summary)
    final_eval: float | None = None
    # --keep-best: {"step", "eval_loss"} of the best checkpoint so far, as the checkpoint resumed
    # from recorded it (and its record rewritten so: a run resumed without --keep-best drops it)
    best: dict | None = None
    last_eval: str = ""           # the progress line's mention of the latest evaluation
    deadline: object = None       # --time-limit's timelimit.Deadline


def _train_steps(run: _Run, optimizer, scheduler, stop, phases, total_steps: int, step: int, data_phase: int,
                 data_state, state, metrics_path: Path, board, wandb_log=None, *, skip_data: int = 0) -> TrainResult:
    """The steps of `_loop` from its start (or checkpoint) to the end of the run or a stop;
    `skip_data`: the steps' worth of data passed over first (train's)."""
    config, info = run.config, run.info
    loop = _start_steps(run, state, step, total_steps, metrics_path, board, wandb_log)

    phase_start = 0
    for phase_index, phase in enumerate(phases):
        phase_end = phase_start + phase.num_steps
        if step >= phase_end:
            phase_start = phase_end
            continue
        if phase_index != data_phase:
            # A new phase continues the stream at the next buffer of the previous phase.
            data_state = next_phase_state(data_state, config.corpus, phases[data_phase].global_batch_size,
                                          config.bucket_batches, clusters=config.sample_clusters)
            data_phase = phase_index
        stream = _phase_stream(run, loop, phases, phase_index, max(phase_start, step) + 1, phase_end, data_state)
        if skip_data:
            _pass_over_data(stream, skip_data, step, loop.history["skipped_data"])
            data_state, skip_data = stream.state, 0
        batches = step_batches(stream, config.num_workers)
        while step < phase_end:
            try:
                batch = next(batches)
            except InputError as exc:  # a bad line or a damaged shard met mid-run: where to go on from
                raise _met_in_training(exc, config, step + 1) from None
            data_state = batch.state_after
            lr_used = optimizer.param_groups[0]["lr"]
            stats, stop_now, time_stop, warned_any = _run_step(run, loop, optimizer, batch.micro_batches, stop,
                                                               phase_index, step, total_steps)
            with warnings.catch_warnings():  # a skipped fp16 step moves the schedule on too
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                scheduler.step()
            step += 1
            loop.log.add(stats)
            if loop.bar is not None:
                loop.bar.update(1)
            last = step == total_steps or step == config.stop_after
            # Every eval_every steps, and once at the end; an evaluation step writes a line too.
            want_eval = bool(config.val_corpus) and (step == total_steps
                                                     or bool(config.eval_every) and step % config.eval_every == 0)
            eval_loss = math.nan  # (this step's, when it evaluates)
            # A stop (--stop-after, a signal) writes no line of its own: its checkpoint keeps the
            # interval's sums, and the resumed run writes the line the uninterrupted one writes.
            if step % config.log_every == 0 or step == total_steps or want_eval:
                record = _metrics_record(run, loop, step, phase_index, data_state, lr_used)
                if want_eval:  # (before the line is written: it carries the eval loss)
                    eval_loss = _evaluate_for_line(run, loop, phase, record, step, total_steps)
                _write_metrics_line(run, loop, record)
            # One process stops after the step under way; several after the step whose exchange
            # told them all.
            signalled_here = not info.initialised and stop is not None and stop.signum is not None
            stop_now = stop_now or signalled_here
            time_stop = time_stop or (signalled_here and stop.warned)  # (a warning is a planned stop)
            if step % config.save_every == 0 or last or stop_now:
                _checkpoint(run, loop, optimizer, scheduler, step, total_steps, data_phase, data_state, eval_loss,
                            last=last)
            if stop_now and not last:
                return _stopped(run, loop, stop, step, total_steps, time_stop=time_stop, warned_any=warned_any)
            if config.stop_after is not None and step >= config.stop_after:
                break
        phase_start = phase_end
        if config.stop_after is not None and step >= config.stop_after and step < total_steps:
            return _stopped_after(run, loop, stop, step)

    return _finish(run, loop, stop, step, data_state, skip_data=skip_data)


def _start_steps(run: _Run, state, step: int, total_steps: int, metrics_path: Path, board, wandb_log) -> _LoopState:
    """The loop's state at `step`: a new run's, or the one the checkpoint `state` kept (the
    metrics interval under way, the counts, --keep-best's best); the progress bar and
    --time-limit's deadline started."""
    info = run.info
    result = TrainResult(run.run_dir, step, False)
    history = {"nonfinite_steps": int(state.get("nonfinite_steps", 0)) if state is not None else 0,
               "skipped_data": list(state.get("skipped_data", [])) if state is not None else []}
    # each invocation's process setting, this one's added (a checkpoint of a version that did not
    # record them: this invocation's alone, its card's line as it was)
    history["processes"] = list(state.get("processes", [])) if state is not None else []
    history["processes"].append({"first_step": step + 1, "world_size": info.world_size, "strategy": run.strategy,
                                 "precision": run.config.precision})
    bar = console.progress(total=total_steps, initial=step, desc="train", unit="step") if info.is_main else None
    logged_tokens = _tokens_logged_before(state, metrics_path) if info.is_main else 0
    loop = _LoopState(result=result, history=history, metrics_path=metrics_path, bar=bar, board=board,
                      wandb_log=wandb_log, logged_tokens=logged_tokens, log=Accumulator(), t_log=time.perf_counter(),
                      began=time.perf_counter(), first_step=step)
    if state is not None and state.get("log") and info.is_main:
        # the steps since the last metrics line before the checkpoint: the next line averages
        # them too, as the uninterrupted run's does; with their training time, or its tokens/s
        # divided their tokens by the time since resuming
        loop.log.load(state["log"])
        loop.t_log -= state["log"].get("seconds", 0.0)
        # (trained before the checkpoint: in the next line, not in this process's summary rate)
        loop.run_tokens -= state["log"]["tokens"]
    loop.best = _resumed_best(run, state, step)
    result.note_best(loop.best)
    if info.is_main:
        # (a new run too: a record left by an earlier run in the directory named its checkpoint)
        ckpt.record_best(run.run_dir, loop.best)
    loop.deadline = _deadline(run)
    return loop


def _resumed_best(run: _Run, state, step: int) -> dict | None:
    """--keep-best's best checkpoint as the checkpoint resumed from (`state`, at `step`) recorded
    it; None for a new run, without --keep-best, or, with a warning, where it cannot stay the best."""
    best = state.get("best") if state is not None and run.config.keep_best else None
    if best is None:
        return None
    problem = _best_problem(run, best)
    if problem is None:
        return best
    if run.info.is_main:
        console.warn(f"--keep-best: the best checkpoint as of step {step} (step {best['step']}, eval loss "
                     f"{best['eval_loss']:.4f}) {problem}: the best is tracked from step {step} on")
    return None


def _best_problem(run: _Run, best: dict) -> str | None:
    """Why a resumed run's recorded best checkpoint cannot stay its best (the end of "the best
    checkpoint ... <problem>"), or None."""
    config = run.config
    if not (ckpt.checkpoint_dir(run.run_dir, best["step"]) / ckpt.STATE_FILE).is_file():
        # (a checkpoint copied into another run with -o, the best one deleted by hand): kept, it
        # was recorded and reported as a folder that is not there, and no later checkpoint that
        # was not better than it took its place
        return f"is not in {run.run_dir / 'checkpoints'}"
    if not ckpt.same_validation(best.get("val_corpus"), config.val_corpus):
        # (resumed with another --val-corpus: its eval losses are not comparable with the best's, and
        # a checkpoint no better than the old best would never have been kept, nor one worse pruned)
        return f"was evaluated on another validation corpus ({', '.join(best['val_corpus'])})"
    if best.get("num_eval_batches", config.num_eval_batches) != config.num_eval_batches:
        # (num_eval_batches may change on --resume: the evaluations then take other proteins, whose
        # eval losses do not compare with the best's either)
        return (f"was evaluated on {best['num_eval_batches']} evaluation batch(es), "
                f"this run evaluates {config.num_eval_batches}")
    return None


def _phase_stream(run: _Run, loop: _LoopState, phases, phase_index: int, first: int, phase_end: int,
                  data_state) -> CorpusStream:
    """This rank's stream of the phase's batches from `data_state` (steps `first`-`phase_end`
    to train), announced; --time-limit's step time rescaled to the phase."""
    config, info, phase = run.config, run.info, phases[phase_index]
    accum = grad_accum_steps(phase.global_batch_size, phase.micro_batch_size, info.world_size)
    if loop.deadline is not None and phase_index:
        # (the steps measured were the previous phase's: scaled by the tokens a step takes)
        before = phases[phase_index - 1]
        loop.deadline.rescale(phase.global_batch_size * phase.max_length
                              / (before.global_batch_size * before.max_length))
    sizing = config.stream_sizing(phase)
    stream = CorpusStream(config.corpus, run.layout, max_length=phase.max_length,
                          global_batch_size=phase.global_batch_size,
                          micro_batch_size=phase.micro_batch_size, rank=info.rank,
                          world_size=info.world_size, seed=config.seed,
                          bucket_batches=config.bucket_batches, collate=phase_collate(run, phase),
                          state=data_state, sample_clusters=config.sample_clusters, **sizing)
    dist.print0(f"train: phase {phase_index + 1}/{len(phases)}: max length {phase.max_length}, "
                f"steps {first}-{phase_end}, global batch {phase.global_batch_size} = "
                f"{phase.micro_batch_size} x {info.world_size} process(es) x {accum} accumulation"
                + (f"; micro-batches cut by tokens, up to {sizing['micro_batch_tokens']} each"
                   if "micro_batch_tokens" in sizing else "")
                # (the clusters and members are not counted: a second pass over a UniRef-sized corpus)
                + ("; one member of every cluster an epoch (--sample-clusters), a batch of clusters"
                   if config.sample_clusters else ""))
    return stream


def _run_step(run: _Run, loop: _LoopState, optimizer, micro_batches, stop, phase_index: int, step: int,
              total_steps: int) -> tuple[dict, bool, bool, bool]:
    """train_step for the step after `step`, told of the stops asked for here; its failures said
    as the user's errors. Returns its statistics and whether any rank asked to stop, whether that
    was a planned stop, and whether any rank had a scheduler's warning."""
    config, info = run.config, run.info
    time_up = loop.deadline is not None and _out_of_time(loop.deadline, config, step + 1, total_steps)
    # A scheduler's warning (SIGUSR1) is a planned stop, as --time-limit's: exchanged as one,
    # so that a SIGTERM on any rank still stops every rank as a signal.
    warned = stop is not None and stop.warned
    history = loop.history
    try:
        stats = train_step(run, optimizer, micro_batches,
                           stop_requested=stop is not None and stop.signum is not None and not warned,
                           time_up=time_up, warned=warned,
                           skip_nonfinite=history["nonfinite_steps"] < config.skip_nonfinite)
    except NonFiniteGradient as exc:
        raise _diverged(config, step + 1, exc.loss, exc.fp16, skipped=history["nonfinite_steps"]) from None
    except RuntimeError as exc:  # (torch's own exception, for a caller that catches it: what to change added)
        if gpu_out_of_memory(exc):
            exc.protrans_detail = _less_memory(config, phase_index, step + 1, info.world_size, run.strategy)
        raise
    if (bad_loss := stats.pop("nonfinite", None)) is not None:
        # (every rank alike: the gradient norm is of the gradients DDP averaged or FSDP's
        # reduced norm, so a NaN on one rank is every rank's)
        history["nonfinite_steps"] += 1
        if info.is_main:
            console.warn(f"step {step + 1}: the gradient is not finite (loss {bad_loss:.4g}): the step was "
                         f"skipped, not applied ({history['nonfinite_steps']} of "
                         f"{option('--skip-nonfinite', 'skip_nonfinite')} {config.skip_nonfinite})")
    stop_now = stats.pop("stop")  # asked on any rank before this step's exchange
    # a planned stop (--time-limit's or a warning, on this rank or another), no rank
    # having had a signal; and whether any rank had a warning
    time_stop, warned_any = stats.pop("time_up"), stats.pop("warned")
    return stats, stop_now, time_stop, warned_any


def _metrics_record(run: _Run, loop: _LoopState, step: int, phase_index: int, data_state, lr_used: float) -> dict:
    """The metrics line of the interval that ends at `step` (its statistics reduced over ranks),
    its tokens counted."""
    reduced = loop.log.reduce()
    now = time.perf_counter()
    tokens = reduced.pop("tokens")
    loop.run_tokens += tokens
    loop.logged_tokens += int(round(tokens))
    # tokens/s of the training steps alone: evaluations and checkpoint saves excluded
    seconds = max(now - loop.t_log - loop.paused, 1e-9)
    # epoch: the pass over the corpus the step's batch came from, counted from 1 (a
    # step count says nothing of it: 20,000 steps of 32 were 128 passes over 5,000
    # proteins, and neither a line nor the summary said so)
    record = {"step": step, "phase": phase_index + 1, "epoch": data_state.epoch + 1,
              "loss": reduced.pop("loss"), "lr": lr_used,
              **reduced, "tokens": int(tokens), "tokens_per_s": tokens / seconds}
    if run.loss_scale is not None:
        record["loss_scale"] = run.loss_scale.scale
    return record


def _evaluate_for_line(run: _Run, loop: _LoopState, phase, record: dict, step: int, total_steps: int) -> float:
    """The eval loss at `step` (NaN: none), put in the metrics line `record` where finite."""
    evaluating = time.perf_counter()
    eval_loss = evaluate(run, phase)
    if loop.deadline is not None:
        loop.deadline.evaluated(time.perf_counter() - evaluating)
    if math.isfinite(eval_loss):
        record["eval_loss"] = eval_loss
        loop.last_eval = f", eval loss {eval_loss:.4f} at step {step}"
        if step == total_steps:
            loop.final_eval = eval_loss
    return eval_loss


def _write_metrics_line(run: _Run, loop: _LoopState, record: dict) -> None:
    """`record` written (metrics.jsonl, TensorBoard, W&B, the progress line); the next interval begun."""
    loop.t_log, loop.paused = time.perf_counter(), 0.0
    loop.result.losses.append(record["loss"])
    if run.info.is_main:
        append_metrics(loop.metrics_path, record)
        if loop.board is not None:
            loop.board.add(record)
        if loop.wandb_log is not None:
            loop.wandb_log.add(record)
        # (no loss: every fp16 step of the interval overflowed and was skipped)
        shown = "-" if record["loss"] is None else f"{record['loss']:.4f}"
        # (on a terminal the bar's, in a log the progress line's: console.progress)
        loop.bar.set_postfix_str(f"loss {shown}, lr {record['lr']:.2e}, "
                                 f"{record['tokens_per_s']:.0f} tokens/s{loop.last_eval}", refresh=False)


def _checkpoint(run: _Run, loop: _LoopState, optimizer, scheduler, step: int, total_steps: int, data_phase: int,
                data_state, eval_loss: float, *, last: bool) -> None:
    """The checkpoint at `step` saved (`eval_loss`: its evaluation's, NaN for none), --keep-best's
    best updated first; its time kept out of the interval's tokens/s and told to the deadline."""
    config, info, deadline = run.config, run.info, loop.deadline
    # --keep-best's candidates: the checkpoints of --save-every and of the last step, each
    # evaluated (config.validate); a stop's elsewhere is not one, so that a resumed run
    # keeps the uninterrupted run's best. Ties keep the earlier (NaN: no eval loss).
    if (config.keep_best and (step % config.save_every == 0 or step == total_steps)
            and math.isfinite(eval_loss) and (loop.best is None or eval_loss < loop.best["eval_loss"])):
        loop.best = {"step": step, "eval_loss": eval_loss,  # (and what it was evaluated on)
                     "val_corpus": [os.path.abspath(p) for p in config.val_corpus],
                     "num_eval_batches": config.num_eval_batches}
        loop.result.note_best(loop.best)
    saving = time.perf_counter()
    loop.result.last_checkpoint = _save(run, optimizer, scheduler, step, data_phase, data_state, loop.log,
                                        seconds=saving - loop.t_log - loop.paused, best=loop.best,
                                        history=loop.history, tokens=loop.logged_tokens)
    if deadline is not None and info.is_main and not last:
        # Under --time-limit the curve is drawn with each checkpoint, inside the time
        # the deadline measures for a save: drawn after the stop's checkpoint (the
        # first matplotlib import, seconds on a loaded machine), it came on top of
        # the exit's reserve and the process ended past its limit.
        plot_metrics(loop.metrics_path, run.run_dir / "loss_curve.png")
    loop.paused += time.perf_counter() - saving
    if deadline is not None:
        deadline.saved(time.perf_counter() - saving)


def _stopped(run: _Run, loop: _LoopState, stop, step: int, total_steps: int, *, time_stop: bool,
             warned_any: bool) -> TrainResult:
    """A run stopped before its last step, its checkpoint saved: the result of a planned stop
    (--time-limit, a scheduler's warning signal); a signal's stop raises as the signal would."""
    result = loop.result
    if loop.bar is not None:
        loop.bar.close()
    if run.info.is_main and loop.deadline is None:  # a stopped run has its loss curve so far too
        plot_metrics(loop.metrics_path, run.run_dir / "loss_curve.png")  # (a deadline's: drawn with its checkpoint)
    if time_stop and (stop is None or stop.signum is None or stop.warned):
        # --time-limit or a scheduler's warning (on this rank or another: the step's
        # exchange told them all; a rank without a deadline learnt of a warning)
        result.step = step
        # (a rank with --time-limit that learnt of another rank's warning: the warning's)
        result.stopped_by = (signal.Signals(stop.signum).name if stop is not None and stop.warned
                             else "warning" if warned_any or loop.deadline is None else "time_limit")
        if stop is not None:  # (a signal from here on: StopRequest.__exit__)
            by = (option("--time-limit", "time_limit") if result.stopped_by == "time_limit"
                  else "a scheduler's warning signal")
            stop.late_detail = (f"the signal came as {by} stopped the run at step {step}; checkpoint "
                                f"{result.last_checkpoint}; {continue_advice()}")
        return result
    stop.raise_now(detail=f"train stopped at step {step}/{total_steps}; checkpoint "
                          f"{result.last_checkpoint}; {continue_advice()}")


def _stopped_after(run: _Run, loop: _LoopState, stop, step: int) -> TrainResult:
    """The result of a run that --stop-after ended at `step`, before its last step."""
    result = loop.result
    if loop.bar is not None:
        loop.bar.close()
    if run.info.is_main:
        plot_metrics(loop.metrics_path, run.run_dir / "loss_curve.png")
    result.step, result.stopped_by = step, "stop_after"
    if stop is not None:  # (a signal from here on: StopRequest.__exit__)
        stop.late_detail = (f"the signal came as {option('--stop-after', 'stop_after')} ended the run at step "
                            f"{step}; checkpoint {result.last_checkpoint}; {continue_advice()}")
    return result


def _finish(run: _Run, loop: _LoopState, stop, step: int, data_state, *, skip_data: int) -> TrainResult:
    """The end of a complete run: the final model, its card and curve, the record that the run is
    complete, and the summary line. `skip_data`: --skip-data's steps not passed over (no step was left)."""
    config, info, result, best = run.config, run.info, loop.result, loop.best
    if loop.bar is not None:
        loop.bar.close()
    if skip_data and info.is_main:  # (a complete run resumed: no step left to pass over the data of)
        console.warn(f"{option('--skip-data', 'skip_data')} {skip_data} ignored: the run has no step left after "
                     f"step {step} (lengthen it with {option('--num-steps', 'num_steps')} or a phase's steps to "
                     "train past the data)")
    if loop.final_eval is not None and info.is_main:
        console.info(f"train: eval loss {loop.final_eval:.4f}")
    if stop is not None:
        stop.finishing = True
    if info.is_main:
        # (a run killed between its last checkpoint's rename and the pruning after it resumes
        # here, with no save left to prune: the checkpoints kept are --keep-last all the same)
        ckpt.prune_checkpoints(run.run_dir, config.keep_last, keep_step=best and best["step"])
        final = _full_model(run)
        ckpt.export_model(run.run_dir, family=run.family, model=final, tokenizer=run.tokenizer,
                          card=_card(run, final, step, tokens=loop.logged_tokens, history=loop.history))
        plot_metrics(loop.metrics_path, run.run_dir / "loss_curve.png")
        # (the last step always writes a line: logged_tokens is the whole run's; last: a job
        # script's sign that nothing is left to do)
        ckpt.record_complete(run.run_dir, step, tokens=loop.logged_tokens)
    else:
        _full_model(run)  # FSDP gathers collectively: every rank takes part
    dist.barrier()
    result.step = step
    result.completed = True
    dist.print0(_summary(run, loop, step, data_state))
    if stop is not None:
        # A signal while the final model was written, or from here on: the run is complete, and
        # the exit says so (StopRequest.__exit__ acts on it as this returns).
        stop.late_detail = f"the run is complete ({step} steps; model in {run.run_dir})"
    return result


def _write_untrained(run: _Run) -> TrainResult:
    """num_steps 0: the model as the family's model class initialised it under the run's seed
    (build_run), written as a complete run's final model (weights, config, tokenizer, model card
    that says it is untrained) with train_config.json and complete.json (step 0): a
    random-initialisation baseline of the architecture that every -m takes. No step, so no
    metrics.jsonl, loss curve or checkpoint; no corpus is read."""
    info = run.info
    if info.is_main:
        # (every rank built the same weights from the same seed, on the CPU: rank 0 writes them)
        run.save_config(run.run_dir / ckpt.CONFIG_FILE)
        ckpt.export_model(run.run_dir, family=run.family, model=run.model, tokenizer=run.tokenizer,
                          card=_card(run, run.model, 0, tokens=0))
        ckpt.record_complete(run.run_dir, 0, tokens=0)
    dist.barrier()
    dist.print0(f"train: done, 0 steps: the model as initialised (seed {run.config.seed}), untrained, in "
                f"{run.run_dir}: a random-initialisation baseline")
    return TrainResult(run.run_dir, step=0, completed=True)


def _summary(run: _Run, loop: _LoopState, step: int, data_state) -> str:
    """One summary line: the last line of a log, where a user looked for the loss, the time and the
    files (it said only the steps and the folder; the rest was in metrics.jsonl)."""
    result, best, final_eval, first_step = loop.result, loop.best, loop.final_eval, loop.first_step
    elapsed = time.perf_counter() - loop.began
    last_loss = next((loss for loss in reversed(result.losses) if loss is not None), None)
    return (f"train: done, {console.counted(step, 'step')}; model in {run.run_dir}"
            + (f" ({console.counted(step - first_step, 'step')} in {_duration(elapsed)}, "
               f"{loop.run_tokens / max(elapsed, 1e-9):,.0f} "
               "tokens/s" + (f", last train loss {last_loss:.4f}" if last_loss is not None else "")
               + (f", eval loss {final_eval:.4f}" if final_eval is not None else "")
               + (f", in epoch {data_state.epoch + 1} of the corpus" if data_state.epoch else "")
               + "; metrics.jsonl and loss_curve.png in it)" if step > first_step else "")
            + (f"; best eval loss {best['eval_loss']:.4f} at step {best['step']}: {result.best_checkpoint}"
               if best else ""))


def _deadline(run: _Run):
    """The run's --time-limit as a timelimit.Deadline (None without one)."""
    if run.config.time_limit is None:
        return None
    from protrans_cli.training.timelimit import AUTO_MARGIN, Deadline, checkpoint_bytes, is_auto

    limit = run.config.duration("time_limit")
    if is_auto(run.config.time_limit):
        if limit is None:
            dist.print0("train: --time-limit auto: the Slurm job has no time limit; the run is not stopped for one")
            return None
        dist.print0(f"train: --time-limit auto: the Slurm job ends at {_clock_time(limit + AUTO_MARGIN)}; the run "
                    f"stops in time to have saved its checkpoint {AUTO_MARGIN:.0f} s before")
    params = sum(p.numel() for p in run.model.parameters())
    return Deadline(limit, checkpoint_bytes=checkpoint_bytes(params, run.config.optimizer))


def _clock_time(since_start: float) -> str:
    """The local time `since_start` seconds after this process started (process_age)."""
    from protrans_cli.training.timelimit import process_age

    at = time.time() - process_age() + since_start
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _out_of_time(deadline, config: TrainConfig, step: int, total_steps: int) -> bool:
    """Whether `step` (about to run) must be the run's last of this invocation under --time-limit:
    never the run's last step or --stop-after's (the run stops there anyway)."""
    if step >= total_steps or (config.stop_after is not None and step >= config.stop_after):
        return False
    # the evaluations after this step and after the next (both with --eval-every 1, or one step
    # before the last at an evaluation step): each takes its time
    evaluates = int(bool(config.val_corpus)) * (
        int(bool(config.eval_every) and step % config.eval_every == 0)
        + int(step + 1 == total_steps or bool(config.eval_every) and (step + 1) % config.eval_every == 0))
    # (before an evaluation is measured: as many passes as a step's, forward only, about a third of one each)
    guess = deadline.step_seconds * max(1, config.num_eval_batches) / 3
    return deadline.stop_after_next(saves_after=step % config.save_every == 0, evaluates=evaluates, eval_guess=guess,
                                    exports=step + 1 == total_steps)


def train_step(run: _Run, optimizer, micro_batches, stop_requested: bool = False, time_up: bool = False,
               warned: bool = False, skip_nonfinite: bool = False) -> dict:
    """One optimizer step over this rank's micro-batches; returns summed statistics, under
    "stop" whether any rank was asked to stop (a signal, `stop_requested`; --time-limit,
    `time_up`; a scheduler's warning signal, `warned`: told to all ranks within the step's one
    exchange, so that they all stop after the same step), under "time_up" whether that was a
    planned stop, --time-limit's or a warning's, alone (no rank had a signal: a signal on one
    rank stops every rank as a signal, none of them as the time limit), and under "warned"
    whether any rank had a warning. `skip_nonfinite`: a gradient that is not finite (not a
    float16 overflow, which the loss scale skips) is not applied and the step returns its loss
    under "nonfinite" rather than raising NonFiniteGradient (--skip-nonfinite)."""
    config, info = run.config, run.info
    device = info.device
    # Counted on the host before the transfer: no device synchronisation inside the step.
    tokens = sum(int((b["input_ids"] != run.layout.pad_id).sum()) for b in micro_batches)
    micro_batches = [_to_device(b, device) for b in micro_batches]
    # Predicted tokens of the whole step on every rank (the loss denominator), and whether any
    # rank was asked to stop, in the step's one exchange.
    total_predicted, signalled, out_of_time, warned = _shared_counts(micro_batches, info, stop_requested, time_up,
                                                                     warned)
    stop = signalled or out_of_time or warned
    time_up = (out_of_time or warned) and not signalled
    # DDP and FSDP average gradients over ranks; undo that so the result is sum / total_predicted.
    scale = info.world_size / max(total_predicted, 1.0)
    loss_scale = run.loss_scale.scale if run.loss_scale is not None else 1.0
    run.wrapped.train()
    names: list[str] = []
    parts: list[torch.Tensor] = []  # loss sum, then (numerator, denominator) per metric
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        with _no_sync(run, sync), sdpa_kernels(device, config.sdpa_kernels):
            _cudagraph_step(run)
            with run.autocast():
                sum_loss, _, metrics = run.wrapped(batch)
            (sum_loss * (scale * loss_scale)).backward()
        values = [sum_loss.detach().double()]
        for name, (num, den) in metrics.items():
            values += [torch.as_tensor(num, device=device).double(), torch.as_tensor(den, device=device).double()]
        step_values = torch.stack(values)
        parts.append(step_values)
        names = list(metrics)
    if run.loss_scale is not None:
        run.loss_scale.unscale_(run.wrapped.parameters())
    max_norm = config.grad_clip if config.grad_clip and config.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.wrapped.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    # One synchronisation per step: the statistics and the gradient norm together, before the
    # update so that a non-finite gradient never reaches the weights.
    host = torch.cat([torch.stack(parts).sum(0), grad_norm.detach().double().reshape(1).to(device)]).tolist()
    finite = math.isfinite(host[-1])
    # (a step with nothing to predict says nothing of the scale: its gradient is zero)
    if run.loss_scale is not None and total_predicted and not run.loss_scale.update(finite):
        # float16 overflowed: the step is skipped (its statistics too), the scale halved
        optimizer.zero_grad(set_to_none=True)
        if run.loss_scale.diverged:
            raise NonFiniteGradient(host[0] / max(total_predicted / info.world_size, 1.0), fp16=True)
        share = 1.0 / info.world_size  # (summed over ranks: one skipped step)
        return {"loss": (0.0, 0.0), "tokens": tokens, "stop": stop, "time_up": time_up, "warned": warned,
                "skipped_steps": (share, share)}
    if not finite and skip_nonfinite:
        # as a float16 overflow: nothing applied, the statistics (a NaN loss) left out of the line
        optimizer.zero_grad(set_to_none=True)
        share = 1.0 / info.world_size
        return {"loss": (0.0, 0.0), "tokens": tokens, "stop": stop, "time_up": time_up, "warned": warned,
                "skipped_steps": (share, share), "nonfinite": host[0] / max(total_predicted / info.world_size, 1.0)}
    if not finite:
        raise NonFiniteGradient(host[0] / max(total_predicted / info.world_size, 1.0))
    if total_predicted:
        optimizer.step()
    # else no rank predicted a token (short proteins, a small batch): the gradient is zero, and a
    # step would still decay the weights and move them by the optimizer's momentum
    optimizer.zero_grad(set_to_none=True)
    stats = {"loss": (host[0], total_predicted / info.world_size), "tokens": tokens, "stop": stop, "time_up": time_up,
             "warned": warned}
    if total_predicted:
        stats["grad_norm"] = host[-1]
    if run.loss_scale is not None or config.skip_nonfinite:
        stats["skipped_steps"] = (0.0, 1.0 / info.world_size)  # (summed over ranks: the fraction of steps)
    for k, name in enumerate(names):
        stats[name] = (host[1 + 2 * k], host[2 + 2 * k])
    return stats


class NonFiniteGradient(Exception):
    """A step whose gradient norm is NaN or infinite (under fp16, still at a loss scale below 1):
    nothing of it reached the weights."""

    def __init__(self, loss: float, fp16: bool = False):
        super().__init__(f"non-finite gradient (loss {loss})")
        self.loss = loss
        self.fp16 = fp16


def _met_in_training(exc: InputError, config: TrainConfig, step: int) -> InputError:
    """A corpus error met at `step` (a truncated gzip shard, a bad line), with where to go on from:
    it said only the file's problem, and a run of hours left the user to find its checkpoints."""
    from protrans_cli.training.checkpoint import list_checkpoints

    kept = list_checkpoints(config.output_dir)
    advice = (f"the last checkpoint is {kept[-1].name}: repair the file, then {resume_option()} "
              f"({option('--accept-corpus-change', 'accept_corpus_change=True')} if its size or contents changed)"
              if kept else "no checkpoint was written yet")
    return InputError(f"{exc.message} (met reading step {step}'s batch; {advice})", path=exc.path,
                      record=exc.record, line=exc.line)


def _diverged(config: TrainConfig, step: int, loss: float, fp16: bool = False, skipped: int = 0) -> RuntimeFailure:
    """The one line for a step whose gradient is not finite: which step, its loss, and where to go
    on from: the last checkpoint past this step's batch (--skip-data, which keeps the optimizer
    state and the schedule), --skip-nonfinite, or a new run with a lower --lr (the run's settings
    cannot change under --resume). `skipped`: the steps --skip-nonfinite skipped before this one."""
    from protrans_cli.training.checkpoint import checkpoint_step, list_checkpoints

    kept = list_checkpoints(config.output_dir)
    # (in the reader's words, `option`: a library caller was told --init-from, --lr and --precision)
    lr = option("--lr", "lr")
    limit = option("--skip-nonfinite", "skip_nonfinite")
    # --skip-data: the batches from the checkpoint's step to this one, this one's included
    past = step - (checkpoint_step(kept[-1]) or 0) if kept else 0
    resume = option(f"--resume --skip-data {past}", f"resume=True, skip_data={past}")
    # (float16's overflows are skipped by the loss scale: --skip-nonfinite counts the other steps)
    skip = "" if fp16 else (f", or {limit} N skips such steps" if not config.skip_nonfinite
                            else f", or a higher {limit} skips more such steps")
    advice = (f"continue from the last checkpoint, {kept[-1]}, past this step's batch with {resume} (or more: "
              f"PaLM skipped 200-500 batches around a spike){skip}, or start a new run from it with "
              f"{option('--init-from', 'init_from')} and a lower {lr}" if kept
              else f"no checkpoint was written yet: lower {lr} or lengthen {option('--warmup-steps', 'warmup_steps')}"
                   + skip)
    if fp16:  # skipped steps down to a loss scale below 1: float16 itself overflows (T5 is known to)
        fp32 = option("--precision fp32", "precision='fp32'")
        advice += ("; the steps before it were skipped as float16 overflows, down to a loss scale below 1: float16 "
                   f"may overflow in this model's activations: {fp32} (or bf16 on a GPU that has it)")
    beyond = (f" ({console.counted(skipped, 'such step')} skipped before it, as many as {limit} "
              f"{config.skip_nonfinite} allows)" if config.skip_nonfinite and not fp16 else "")
    return RuntimeFailure(f"step {step}: the gradient is not finite (loss {loss:.4g}), so the step was not "
                          f"applied and the run stopped{beyond}; {advice}, or check the corpus")


def _pass_over_data(stream, steps: int, step: int, record: list) -> None:
    """--skip-data: `stream` moved past the data of the next `steps` steps, untrained (the step
    count stays), the pass appended to `record` (kept in the run's later checkpoints)."""
    # (epochs counted by the next batch's: a pass that ended on an epoch's last batch is at that
    # epoch's end, whose state still has its number, and it said nothing of the epoch passed)
    before = stream.epoch_ahead()
    stream.state = stream.passed_over(steps)
    record.append({"after_step": step, "steps": steps, "proteins": steps * stream.global_batch_size})
    epochs = stream.epoch_ahead() - before
    dist.print0(f"train: {option('--skip-data', 'skip_data')} {steps}: passed over the data of "
                f"{console.counted(steps, 'step')} ({steps * stream.global_batch_size:,} proteins, not trained) "
                f"after step {step}: step {step + 1} trains the batch that step {step + steps + 1} would have"
                + (f" (the data position moved on by {console.counted(epochs, 'epoch')})" if epochs else ""))


def _less_memory(config: TrainConfig, phase_index: int, step: int, world_size: int, strategy: str) -> str:
    """What to change when `step` ran out of GPU memory, for the CLI's one line (torch's message says
    what it tried to allocate, not which setting to lower): a smaller micro-batch that still divides
    the global batch (the same steps, by more accumulation), activation checkpointing, FSDP for DDP's
    processes, and what a --resume continues from (each may change on it; the maximum length may not)."""
    from protrans_cli.training.checkpoint import list_checkpoints

    phases = config.resolved_phases()
    phase = phases[phase_index]
    given = config.phases[phase_index].micro_batch_size if config.phases else None
    # (--micro-batch-size is every phase's without a MICRO of its own: --resume refuses one that does
    # not divide each one's share of its global batch, a phase already done included)
    sharing = [phase] if given is not None else [
        p for i, p in enumerate(phases) if not config.phases or config.phases[i].micro_batch_size is None]
    share = math.gcd(*(p.global_batch_size // world_size for p in sharing))
    smaller = max((d for d in range(1, phase.micro_batch_size) if share % d == 0), default=None)
    phased = option("--phase", "phases")
    what = (f"the phase's micro-batch size (MICRO of {phased} {config.phases[phase_index].spec(phase)})"
            if given is not None else option("--micro-batch-size", "micro_batch_size"))
    changes = [f"lower {what} from {phase.micro_batch_size} to {smaller} (the global batch stays "
               f"{phase.global_batch_size}, by more accumulation steps)"] if smaller else []
    if not config.activation_checkpointing:
        changes.append(f"add {option('--activation-checkpointing', 'activation_checkpointing=True')}")
    if strategy == "ddp":  # (each process holds the whole model and optimizer state)
        fsdp = option("--strategy fsdp", "strategy='fsdp'")
        changes.append(f"use {fsdp} (each of the {world_size} processes then holds a share of the weights and "
                       "optimizer state)")
    kept = list_checkpoints(config.output_dir)
    after = (f"{resume_option()} continues from the last checkpoint, {kept[-1].name}, with "
             f"{('it', 'either', 'any of them')[len(changes) - 1]}" if kept and changes
             else "no checkpoint was written yet" if not kept else f"the last checkpoint is {kept[-1].name}")
    shorter = f"a shorter {f'LEN of {phased}' if config.phases else option('--max-length', 'max_length')} is a new run"
    passes = (f"micro-batches of up to {phase.micro_batch_size * phase.max_length} padded tokens"
              if config.token_micro_batches
              else f"{phase.micro_batch_size} protein{'s' if phase.micro_batch_size > 1 else ''} a forward pass")
    return (f"step {step} (max length {phase.max_length}, {passes}): "
            + " or ".join(changes) + ("; " if changes else "") + f"{after}; {shorter}")


def unused_parameters(loss_module: LossModule, run: _Run) -> list[str]:
    """Names of parameters that get no gradient from the objective, found with one small
    forward/backward pass (RNG state restored, gradients cleared)."""
    from protrans_cli.training.data import Sample

    lay = run.layout
    residues = lay.standard_ids[np.arange(64) % len(lay.standard_ids)]
    samples = [Sample(i, 0, residues.copy(), 12345) for i in range(4)]
    batch = _to_device(run.objective.collate(samples), run.info.device)
    devices = [run.info.device] if run.info.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        loss_module.train()
        sum_loss, _, _ = loss_module(batch)
        sum_loss.backward()
    names = [n for n, p in loss_module.named_parameters() if p.requires_grad and p.grad is None]
    loss_module.zero_grad(set_to_none=True)
    return names


def _no_sync(run: _Run, sync: bool):
    if sync:
        return contextlib.nullcontext()
    if run.strategy == "ddp":
        return run.wrapped.no_sync()
    if run.strategy == "fsdp":
        run.wrapped.set_requires_gradient_sync(False)

        @contextlib.contextmanager
        def restore():
            try:
                yield
            finally:
                run.wrapped.set_requires_gradient_sync(True)

        return restore()
    return contextlib.nullcontext()


def _shared_counts(micro_batches: list[dict], info, *flags: bool) -> tuple:
    """The predicted tokens of `micro_batches` on every rank, then for each of `flags` whether
    any rank's is set, in one exchange (none in one process). A second loss term that is a mean over
    something else (ELECTRA's detection over real tokens, ALBERT's sentence order over
    proteins) gets its weight over all of them as each batch's `step_ratio`. A batch's
    `num_segments` (Transformer-XL's model calls) becomes the most of any batch on any rank."""
    predicted = float(sum(b["num_predicted"] for b in micro_batches))
    aux = float(sum(b.get("num_aux", 0) for b in micro_batches))
    counted = [float(flag) for flag in flags]
    if info.initialised:
        # (and each rank's most model calls per micro-batch, in a slot of its own, as the sum
        # carries no maximum: Transformer-XL's segments, which FSDP needs alike on every rank)
        calls = [0.0] * info.world_size
        calls[info.rank] = float(max((b.get("num_segments", 0) for b in micro_batches), default=0))
        counts = torch.tensor([predicted, aux, *counted, *calls], dtype=torch.float64, device=info.device)
        predicted, aux, *rest = dist.all_reduce_sum(counts).tolist()
        counted, calls = rest[:len(flags)], rest[len(flags):]
        for batch in micro_batches:
            if "num_segments" in batch:
                batch["num_segments"] = int(max(calls))
    if aux:
        # A step without any masked residue (short proteins, a tiny batch) still has its second
        # term: normalised by its own count then (its weight was predicted / aux = 0, and the
        # step trained nothing)
        predicted = predicted or aux
        for batch in micro_batches:
            batch["step_ratio"] = predicted / aux
    return (predicted, *(count > 0 for count in counted))


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def evaluate(run: _Run, phase) -> float:
    """Loss per predicted token on the val corpus's first num_eval_batches x global batch size
    proteins (a smaller file: its first proteins of whole evaluation steps, evaluation_step_size),
    masks fixed by the seed so evaluations compare: the same proteins and masks whatever the
    micro-batch size and process count."""
    config, info = run.config, run.info
    run.wrapped.eval()
    # Evaluation must not consume the training RNG (dropout is off; kept for any model that draws).
    rng = torch.get_rng_state()
    total = torch.zeros(1, dtype=torch.float64, device=info.device)  # the summed loss (the count: _shared_counts)
    try:
        # (--sample-clusters: clusters, each read as epoch 0 takes it, so every evaluation reads the same members)
        available = count_proteins(config.val_corpus, config.num_eval_batches * phase.global_batch_size,
                                   clusters=config.sample_clusters)
        per_step = evaluation_step_size(available, phase.global_batch_size, phase.micro_batch_size, info.world_size)
        if per_step == 0:  # (checked before training: a file changed since)
            units = "clusters" if config.sample_clusters else "proteins"
            raise InputError(f"the validation corpus holds fewer {units} than one evaluation batch now",
                             path=", ".join(map(str, config.val_corpus)))
        stream = CorpusStream(config.val_corpus, run.layout, max_length=phase.max_length,
                              global_batch_size=per_step, micro_batch_size=phase.micro_batch_size,
                              rank=info.rank, world_size=info.world_size, seed=config.seed,
                              # one buffer of exactly the evaluated batches: with bucket_batches, the
                              # length sort put the buffer's shortest proteins first, and the first
                              # batches evaluated were those (num_eval_batches 5: the 40 shortest of 128)
                              bucket_batches=config.num_eval_batches, shuffle=False,
                              collate=phase_collate(run, phase), max_epochs=1, batch_name="evaluation batch",
                              # The first proteins of whole evaluation steps, and no further: proteins
                              # past them joined the buffer (fewer than a global batch after it, or
                              # a file of fewer than num_eval_batches steps), which then evaluated a
                              # random choice of all of them, not the first
                              max_proteins=min(available, config.num_eval_batches * per_step) // per_step * per_step,
                              sample_clusters=config.sample_clusters)
        # islice: a batch past the last is not made (tokenized and collated) only to be dropped
        micro_batches = [b for step_batch in itertools.islice(stream, config.num_eval_batches)
                         for b in step_batch.micro_batches]
    except InputError as exc:
        # Checked before training (check_validation_corpus), so only a file changed since: no
        # eval loss, but the training goes on and the model is saved.
        console.warn(f"no eval loss: {exc.format()}")
        micro_batches = []
    # Weighted over the whole evaluation as a step is (per micro-batch, the eval loss of a
    # two-term objective moved with the micro-batch size). Every rank takes part in this
    # exchange, one whose reading failed too; then none evaluates.
    denominator, failed = _shared_counts(micro_batches, info, not micro_batches)
    try:
        for batch in micro_batches if not failed else []:
            batch = _to_device(batch, info.device)
            _cudagraph_step(run)
            with run.autocast(), sdpa_kernels(info.device, config.sdpa_kernels):
                sum_loss, _, _ = run.wrapped(batch)
            total += sum_loss.detach().double()
    finally:
        torch.set_rng_state(rng)
    dist.all_reduce_sum(total)
    run.wrapped.train()
    # (the step's denominator: the predicted tokens, or for a two-term objective whose batches
    # hold none, the second term's count)
    # (a rank whose reading failed: no rank evaluated, and no eval loss is logged)
    return float(total[0] / denominator) if denominator > 0 and not failed else float("nan")


def _by_parameter_name(saved: dict, wrapped, optimizer) -> dict:
    """An optimizer state saved by one process or DDP (`optimizer.state_dict()`: parameters
    numbered in the order of the optimizer's groups) keyed by parameter name instead, as FSDP's
    set_optimizer_state_dict reads it: resuming such a checkpoint under --strategy fsdp was a
    KeyError ('state.0.step') from every rank. One saved under FSDP (names already) as it is.
    The groups are built the same way under every strategy, so position i of a saved group is
    position i of this optimizer's group."""
    if all(isinstance(k, str) for k in saved.get("state", {})) and all(
            isinstance(p, str) for g in saved.get("param_groups", []) for p in g["params"]):
        return saved
    names = {id(p): name for name, p in wrapped.named_parameters()}
    state, groups = {}, []
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        fqns = [names[id(p)] for p in group["params"]]
        if len(fqns) != len(saved_group["params"]):
            raise InputError(f"the checkpoint's optimizer holds {len(saved_group['params'])} parameters in a group "
                             f"where this model has {len(fqns)}: not a checkpoint of this model")
        for index, fqn in zip(saved_group["params"], fqns):
            if index in saved["state"]:
                state[fqn] = saved["state"][index]
        groups.append({**saved_group, "params": fqns})
    return {"state": state, "param_groups": groups}


def _full_model(run: _Run):
    """The bare model with full weights (FSDP: gathered into a CPU copy on every rank)."""
    if run.strategy != "fsdp":
        return run.model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(run.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not run.info.is_main:
        return None
    # Built without touching the run's random stream: its initial weights (overwritten next) were
    # drawn from the global generator, which moved rank 0's dropout at every save, so that
    # --save-every changed the losses and a resumed FSDP run differed from an uninterrupted one
    with torch.random.fork_rng(devices=[]):
        copy = run.family.pretraining_model_from(run.model)
    copy.load_state_dict({k.removeprefix("model."): v for k, v in full.items()})
    return copy


def _save(run: _Run, optimizer, scheduler, step, data_phase, data_state, log: Accumulator, *,
          seconds: float = 0.0, best: dict | None = None, history: dict | None = None,
          tokens: int = 0) -> Path | None:
    """A checkpoint of the run at `step`; `seconds`: the training time of the metrics interval
    under way (its tokens are in `log`), so the resumed run's first line keeps their rate.
    `best`: --keep-best's best checkpoint so far ({"step", "eval_loss"}, this one's possibly),
    saved in the training state, kept from pruning and recorded in RUN/best_checkpoint.json.
    `tokens`: the run's tokens up to its last metrics line (rank 0's count); the checkpoint's
    "tokens" adds those of the interval under way."""
    info = run.info
    log_state = {**log.state(), "seconds": max(0.0, seconds)}  # collective: every rank takes part
    tokens += int(round(log_state["tokens"]))
    model = _full_model(run)
    if run.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(run.wrapped, optimizer,
                                               options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim_state = optimizer.state_dict()
    # Each rank's RNG (build_run seeds each rank with seed + rank, so their dropout differs: keep them all).
    rng_states = _gather_objects(ckpt.rng_state(run.info.device))
    directory = None
    if info.is_main:
        state = {"step": step, "data_phase": data_phase, "data_state": data_state.to_dict(), "corpus": run.corpus_id,
                 "optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng_states,
                 "world_size": info.world_size, "log": log_state, "tokens": tokens}
        if run.loss_scale is not None:
            state["loss_scale"] = run.loss_scale.state_dict()
        if best is not None:
            state["best"] = best
        # --skip-nonfinite's count, --skip-data's passes (where there are any), the invocations' processes
        state.update({key: value for key, value in (history or {}).items() if value})
        as_given, resolved = run.save_config()
        directory = ckpt.save_checkpoint(ckpt.checkpoint_dir(run.run_dir, step), family=run.family,
                                         model=model, tokenizer=run.tokenizer, training_state=state,
                                         config=as_given, keep_last=run.config.keep_last, resolved=resolved,
                                         best=best, card=_card(run, model, step, checkpoint=True, tokens=tokens,
                                                                history=history))
    dist.barrier()
    return directory


def _tokens_logged_before(state: dict | None, metrics_path: Path) -> int:
    """The tokens of the metrics lines up to a checkpoint (0 for a new run): its "tokens" less
    those of the interval it kept; a checkpoint from before it kept "tokens" (2026-12-07): the
    lines of metrics.jsonl up to its step (truncated to it as the run resumed)."""
    if state is None:
        return 0
    pending = int(round((state.get("log") or {}).get("tokens", 0)))
    if ckpt.is_count(state.get("tokens")):
        return max(0, state["tokens"] - pending)
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    return sum(int(r["tokens"]) for r in rows if isinstance(r.get("tokens"), (int, float))
               and isinstance(r.get("step"), int) and r["step"] <= state["step"])


def _card(run: _Run, model, step: int, checkpoint: bool = False, tokens: int | None = None,
          history: dict | None = None) -> str | None:
    """The README.md model card of the model saved at `step` (training/card.py), `tokens` the
    run's real tokens up to it; None, with a warning, where it cannot be made: the weights are
    what a save must not lose."""
    from protrans_cli.training.card import made_card, train_card

    return made_card(lambda: train_card(family=run.family, model=model, tokenizer=run.tokenizer, config=run.config,
                                        resolved=run.save_config()[1], step=step, run_dir=run.run_dir,
                                        world_size=run.info.world_size, strategy=run.strategy,
                                        checkpoint=checkpoint, tokens=tokens, history=history), f"step {step}")


def _gather_objects(obj) -> list:
    if not dist.info().initialised:
        return [obj]
    import torch.distributed as tdist

    out = [None] * dist.info().world_size
    tdist.all_gather_object(out, obj)
    return out


def _duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `2 h 7 min`: the summary's wall time."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
