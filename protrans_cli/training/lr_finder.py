"""`protrans train --find-lr`: the learning-rate range test, on the training loop's own steps."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import torch

from protrans_cli.errors import InputError, RuntimeFailure, UsageError, expect_options, whole_number
from protrans_cli.io.files import atomic_output, file_locking
from protrans_cli.threads import torch_threads
from protrans_cli.training import checkpoint as ckpt
from protrans_cli.training import dist
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.data import CorpusStream, step_batches
from protrans_cli.training.loop import (NonFiniteGradient, TrainResult, build_run, given_family, phase_collate, train_step,
                                       wrap_model)
from protrans_cli.training.optim import build_optimizer


@torch_threads()  # puts the caller's torch thread count back
def find_lr(config: TrainConfig, *, min_lr: float = 1e-7, max_lr: float = 1.0, num_steps: int = 100,
            family=None) -> TrainResult:
    """Leslie Smith's range test: raise the lr exponentially each step, record the loss,
    stop when it diverges; plot loss against lr (lr_find.png) and suggest the lr where the
    smoothed loss falls fastest. Writes no checkpoint."""
    expect_options(config, TrainConfig, "config")
    _check_range(min_lr, max_lr, num_steps)
    family = given_family(family)
    file_locking()  # (before the process group, as train: a usage error never waits for peers)
    info = dist.setup(timeout=config.duration("dist_timeout"))
    try:
        # The run directory's lock, as a run takes it (a range test and a run on one directory
        # wrote into each other), and the folders it made removed where the test failed before
        # its plot: a corpus error or a test that measured nothing left them empty.
        with torch.enable_grad(), ckpt.callers_rng(), ckpt.run_lock(config.output_dir, active=info.is_main):
            return _find_lr(config, info, family, min_lr, max_lr, num_steps)
    finally:
        dist.cleanup()


def _check_range(min_lr, max_lr, num_steps) -> None:
    """The range's arguments, before any model is built: `num_steps="100"` was a TypeError and 0 a
    RuntimeFailure ("measured no loss") once the model was built, and min_lr above max_lr ran the
    range downwards and suggested a learning rate from it."""
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
            raise UsageError(f"find_lr: {name} must be a positive number, got {value!r:.60}")
    if min_lr >= max_lr:
        raise UsageError(f"find_lr: min_lr ({min_lr}) must be below max_lr ({max_lr})")
    if not whole_number(num_steps) or num_steps < 1:
        raise UsageError(f"find_lr: num_steps must be a whole number of at least 1, got {num_steps!r:.60}")


def _find_lr(config: TrainConfig, info, family, min_lr: float, max_lr: float, num_steps: int) -> TrainResult:
    run = build_run(config, info, family, evaluates=False)
    wrap_model(run)  # as the run it is for: compiled if asked, DDP told of unused parameters
    optimizer = build_optimizer(run.wrapped, config)
    phase = config.resolved_phases()[0]
    stream = CorpusStream(config.corpus, run.layout, max_length=phase.max_length,
                          global_batch_size=phase.global_batch_size, micro_batch_size=phase.micro_batch_size,
                          rank=info.rank, world_size=info.world_size, seed=config.seed,
                          bucket_batches=config.bucket_batches, collate=phase_collate(run, phase),
                          sample_clusters=config.sample_clusters, **config.stream_sizing(phase))
    # Workers as the run will have them (--num-workers): the test also shows whether the
    # data keeps up with the steps.
    batches = step_batches(stream, config.num_workers)
    lrs, losses, smoothed = [], [], []
    best = float("inf")
    avg = 0.0
    blown = None  # the NonFiniteGradient that ended the range, if one did, and its step and lr
    first_scale = run.loss_scale.scale if run.loss_scale is not None else None
    try:
        for i in range(num_steps):
            lr = min_lr * (max_lr / min_lr) ** (i / max(num_steps - 1, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                batch = next(batches)
            except InputError as exc:  # (a bad line, a truncated shard: which of the test's steps met it)
                raise InputError(f"{exc.message} (met reading --find-lr's step {i + 1} of {num_steps}: fix the corpus "
                                 "and run the test again)", path=exc.path, record=exc.record, line=exc.line) from None
            try:
                stats = train_step(run, optimizer, batch.micro_batches)
            except NonFiniteGradient as exc:  # the range's end: the lr has made the gradient blow up
                blown = (exc, i + 1, lr)
                break
            num, den = stats["loss"]
            t = dist.all_reduce_sum(torch.tensor([num, den], dtype=torch.float64, device=info.device))
            if not float(t[1]):  # an fp16 step that overflowed and was skipped: nothing measured
                continue
            loss = float(t[0] / t[1])
            avg = 0.9 * avg + 0.1 * loss
            value = avg / (1 - 0.9 ** (len(losses) + 1))  # bias-corrected running mean
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if not math.isfinite(loss) or value > 4 * best:
                break
    finally:
        batches.close()  # the DataLoader's workers, now, also after an error
    if not lrs:
        # Nothing measured: an empty curve was a matplotlib traceback ("Data cannot be
        # log-scaled") where the run itself says why (every rank has the same, reduced, count).
        raise _nothing_measured(blown, num_steps, run.loss_scale, first_scale)
    suggestion = suggest_lr(lrs, smoothed)
    if info.is_main:
        _plot_lr(run.run_dir / "lr_find.png", lrs, losses, smoothed, suggestion)
        # (through a temporary renamed over the name, as the loss curve: written in place, a link
        # planted under either name had the file it pointed to overwritten)
        with atomic_output(run.run_dir / "lr_find.json") as out:
            out.write(json.dumps({"lr": lrs, "loss": losses, "smoothed_loss": smoothed,
                                  "suggested_lr": suggestion}, indent=1).encode())
    dist.print0(f"train: suggested learning rate {suggestion:.2e} (plot: {run.run_dir / 'lr_find.png'})")
    return TrainResult(run.run_dir, len(lrs), True, losses, None, suggestion)


def _nothing_measured(blown, num_steps: int, loss_scale, first_scale) -> RuntimeFailure:
    """Why a range test measured no loss at all, with what to do. `blown`: (the NonFiniteGradient
    that ended it, its step, its lr), or None; `first_scale`: the fp16 loss scale it started at."""
    fp16 = ("float16 may overflow in this model's activations: --precision fp32 (or bf16 on a GPU that has "
            "it)")
    if blown is not None and blown[0].fp16:
        return RuntimeFailure("--find-lr measured no loss: every step overflowed float16 and was skipped, down to a "
                              f"loss scale below 1; {fp16}")
    if blown is not None:
        exc, step, lr = blown
        return RuntimeFailure(f"--find-lr measured no loss: the gradient of its step {step} (lr {lr:.1e}) is not "
                              f"finite (loss {exc.loss:.4g})"
                              + (f", and the {step - 1} step(s) before it had no token to predict" if step > 1 else "")
                              + "; check the corpus and the model settings (--set)")
    if loss_scale is None or loss_scale.scale == first_scale:
        # (no step had a residue to predict: proteins too short, batches too small; in fp16 too,
        # where a step without one is skipped as an overflow is, without lowering the scale)
        return RuntimeFailure(f"--find-lr measured no loss: none of its {num_steps} steps had a token to predict; "
                              "larger batches or longer proteins")
    return RuntimeFailure(f"--find-lr measured no loss: each of its {num_steps} steps overflowed float16 and was "
                          f"skipped (loss scale now {loss_scale.scale:g}); more steps (--num-steps), or {fp16}")


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The lr at the steepest descent of the smoothed loss against log(lr), before its minimum,
    ignoring the first and last tenth of the curve (start-up noise and divergence). (Searched
    past the minimum, a short test suggested the lr where the loss fell back from its first
    spike: already in divergence.)"""
    n = len(lrs)
    if n < 3:
        return lrs[0] if lrs else float("nan")
    lowest = min(range(n), key=smoothed.__getitem__)
    lo, hi = max(1, n // 10), min(max(2, n - n // 10), lowest + 1)
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in range(lo, min(hi, n - 1))]
    if not slopes:  # (no descent to speak of: halfway to the minimum)
        return lrs[lowest // 2]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[lo + best]


def _plot_lr(png: Path, lrs, losses, smoothed, suggestion) -> None:
    # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched a notebook's backend
    # (its plots stopped showing), and pyplot's figure list is shared with the caller's threads.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss per predicted token")
    ax.legend()
    fig.tight_layout()
    with atomic_output(png) as out:
        fig.savefig(out, dpi=100, format="png")
