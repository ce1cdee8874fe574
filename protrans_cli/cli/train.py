"""`protrans train`: pretrain a protein language model on a `protrans prep` corpus.

    protrans train --family bert --preset tiny --corpus corpus.txt.gz -o runs/bert --num-steps 200
    torchrun --nproc-per-node 8 -m protrans_cli train --config prot_bert.toml -o runs/prot_bert

Every flag left out keeps the config file's value (or the default); the config is saved as
RUN/train_config.json and in every checkpoint: the settings as given, and under "resolved" what
the automatic ones meant (TrainConfig.save).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from protrans_cli.attention import SDPA_KERNELS
from protrans_cli.choices import COMPILE_MODES
from protrans_cli.cli import INPUT_FILE, completion, given_option
from protrans_cli.training.config import OBJECTIVES, OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES


class _TrainCommand(click.Command):
    """`--corpus shards.*.txt.gz` unquoted: the shell expands the pattern, --corpus takes the first
    file and the rest are extra arguments, which click reported as "Got unexpected extra arguments
    (shards.00001.txt.gz ...)" without a word of why. Extra arguments stay an error (make_context
    refuses them, as before), now naming the option that took the first file and the remedy."""

    def parse_args(self, ctx, args):
        allowed = ctx.allow_extra_args
        ctx.allow_extra_args = True
        try:
            rest = super().parse_args(ctx, args)
        finally:
            ctx.allow_extra_args = allowed
        if ctx.args and not allowed and not ctx.resilient_parsing:
            ctx.fail(_extra_arguments(ctx))
        return rest


def _extra_arguments(ctx) -> str:
    extra = list(ctx.args)
    said = f"Got unexpected extra argument{'s' if len(extra) > 1 else ''} ({' '.join(extra)})"
    if not all(Path(name).is_file() for name in extra):
        return said
    # a shell's expansion: the option's last file, then the extra files, in sorted order (of
    # --corpus and --val-corpus, the one whose file shares the longer prefix with them)
    candidates = [(len(os.path.commonprefix([given[-1], extra[0]])), flag, given[-1])
                  for key, flag in (("corpus", "--corpus"), ("val_corpus", "--val-corpus"))
                  for given in [ctx.params.get(key) or ()]
                  if given and sorted([given[-1], *extra]) == [given[-1], *extra]]
    if not candidates:
        return said
    _, flag, first = max(candidates)
    return (f"{said}: files after {flag} {first}, as when the shell expands an unquoted pattern; "
            f"{flag} takes one file: quote the pattern ({flag} 'corpus.*.txt.gz') or repeat {flag} "
            "before each file")


@click.command("train", cls=_TrainCommand)
@click.option("--config", "config_file", type=INPUT_FILE, metavar="FILE",
              help="JSON or TOML file with any settings below (flag names with _ for -).")
@click.option("--recipe", default=None, metavar="NAME",
              help="A published model's pretraining settings (--list-recipes) as the config; flags "
                   "override them. Not with --config.")
@click.option("--family", default=None, shell_complete=completion.families, help="Model family (see --list-presets).  [default: bert; with --init-from: the model's]")
@click.option("--preset", default=None, shell_complete=completion.presets, help="Size preset of the family: tiny, small, base, published sizes.  [default: tiny]")
@click.option("--init-from", default=None, metavar="MODEL", shell_complete=completion.weights,
              help="Continue pretraining an existing model: a protrans run/checkpoint or HF directory, a hub id "
                   "or a short name (prot_bert...); its architecture, tokenizer and weights replace "
                   "--family/--preset.")
@click.option("--set", "model_set", multiple=True, metavar="KEY=VALUE",
              help="Override an HF config field of the model (repeatable), e.g. --set num_hidden_layers=4.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="Pretraining objective.  [default: the family's]")
@click.option("--corpus", multiple=True, help="Corpus file from `protrans prep` (plain or compressed); repeat, or quote a pattern "
                   "such as 'corpus.*.txt.gz', for shards.")
@click.option("--val-corpus", "--valid-corpus", "val_corpus", multiple=True,
              help="Validation corpus (repeatable) for the eval loss (--valid-corpus, as prep's --valid-output "
                   "and fit's --valid call it).")
@click.option("-o", "--output", "--output-dir", "output_dir", default=None, metavar="DIRECTORY", help="Run directory: final model, checkpoints/, metrics.jsonl.  [default: runs/protrans]")
@click.option("--max-length", type=int, default=None, help="Tokens per protein incl. special tokens; longer ones are cropped at random.  [default: 512]")
@click.option("--num-steps", type=int, default=None,
              help="Optimizer steps (without --phase); 0 writes the model as initialised, untrained (a "
                   "random-initialisation baseline; no --corpus needed).  [default: 1000]")
@click.option("--phase", "phases", multiple=True, metavar="LEN:STEPS[:GLOBAL[:MICRO]]",
              help="A sequence-length phase, e.g. --phase 512:150000 --phase 2048:150000:256:2.")
@click.option("--global-batch-size", type=int, default=None, help="Proteins per optimizer step over all processes.  [default: 32]")
@click.option("--micro-batch-size", type=int, default=None, help="Proteins per forward pass per device.  [default: 8]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="[default: adamw]")
@click.option("--lr", type=float, default=None, help="Peak learning rate.  [default: 4e-4]")
@click.option("--weight-decay", type=float, default=None, help="[default: 0.01]")
@click.option("--warmup-steps", type=int, default=None,
              help="Linear warmup to --lr.  [default: a tenth of the steps, at most 2000]")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Decay after warmup; wsd, wsd_sqrt: the peak lr held, then decayed over the last "
                   "--decay-fraction of the steps (linearly, or as 1 - sqrt).  [default: linear]")
@click.option("--min-lr-ratio", type=float, default=None,
              help="linear, cosine and wsd decay to lr x this (ESM-2: 0.1).  [default: 0.1]")
@click.option("--decay-fraction", type=float, default=None,
              help="wsd, wsd_sqrt: the last fraction of the steps that decays.  [default: 0.2]")
@click.option("--decay-steps", type=int, default=None, metavar="N",
              help="linear, cosine: the decay reaches lr x --min-lr-ratio at step N (of all --phase steps "
                   "together) and holds it (ESM-2: 450000 of 500000).  [default: the last step]")
@click.option("--grad-clip", type=float, default=None, help="Max gradient norm; 0 disables.  [default: 1.0]")
@click.option("--skip-nonfinite", type=int, default=None, metavar="N",
              help="Skip (not apply) up to N steps whose gradient is not finite, each warned and counted in "
                   "metrics.jsonl's skipped_steps, over the whole run; the next one stops it.  [default: 0: the "
                   "first stops it]")
@click.option("--mask-prob", type=float, default=None, help="Fraction of residues masked.  [default: 0.15]")
@click.option("--sop/--no-sop", default=None,
              help="ALBERT: add sentence-order prediction (a protein split in two, halves swapped half the time).  [default: off]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="auto: bf16 autocast on a GPU with bfloat16 hardware, fp16 autocast with loss scaling on "
                   "one without (V100, T4), fp32 on the CPU and on GPUs whose float16 is slow (GTX 10xx, P40, "
                   "GTX 16xx).  [default: auto]")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="Multi-process strategy; auto: DDP below 1B parameters, FSDP2 above.  [default: auto]")
@click.option("--dist-timeout", default=None, metavar="DURATION",
              help="torchrun: how long a rank waits for the others (while rank 0 writes a checkpoint, say) "
                   "before the job fails (NCCL's own default, 10 minutes, is short of a large model's "
                   "save to a slow file system).  [default: 30m]")
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile each transformer block (dynamic shapes, static with --static-shapes; one "
                   "compilation serves them all); "
                   "the first steps wait for the compiler.  [default: on for BERT and RoBERTa models on a "
                   "CUDA GPU where torch.compile builds a kernel (1.58x uncompiled on an H200), off elsewhere]")
@click.option("--compile-mode", "compile_mode", type=click.Choice(COMPILE_MODES), default=None,
              help="torch.compile's mode for the compiled blocks; reduce-overhead records CUDA graphs "
                   "(CUDA GPUs only: the default mode elsewhere; best with --static-shapes).  "
                   "[default: default]")
@click.option("--activation-checkpointing/--no-activation-checkpointing", "activation_checkpointing", default=None,
              help="Keep only each transformer block's input and recompute the block in the backward pass: "
                   "far less activation memory (long phases, large models) for about a third more compute; "
                   "the same losses.  [default: off]")
@click.option("--save-every", type=int, default=None, metavar="N", help="Checkpoint every N steps.  [default: 1000]")
@click.option("--keep-last", type=int, default=None, help="Checkpoints kept.  [default: 3]")
@click.option("--keep-best/--no-keep-best", "keep_best", default=None,
              help="Also keep the checkpoint with the lowest eval loss, named in RUN/best_checkpoint.json "
                   "(needs --val-corpus, and an --eval-every that divides --save-every); the model in RUN "
                   "stays the last step's.  [default: off]")
@click.option("--log-every", type=int, default=None, help="Steps per line of metrics.jsonl.  [default: 10]")
@click.option("--tensorboard/--no-tensorboard", "tensorboard", default=None,
              help="Also log metrics.jsonl's lines as TensorBoard scalars in RUN/tensorboard/ (needs the "
                   "tensorboard package: pip install tensorboard).  [default: off]")
@click.option("--wandb/--no-wandb", "wandb", default=None,
              help="Also log metrics.jsonl's lines to Weights & Biases (rank 0; files in RUN/wandb/; --resume "
                   "continues the same W&B run; WANDB_MODE=offline and the other WANDB_* variables apply; needs "
                   "the wandb package: pip install wandb). A failure of W&B is a warning: training goes on.  "
                   "[default: off]")
@click.option("--wandb-project", default=None, metavar="NAME",
              help="The W&B project of --wandb.  [default: $WANDB_PROJECT, else protrans]")
@click.option("--wandb-name", default=None, metavar="NAME",
              help="The W&B run name of --wandb.  [default: the run directory's name]")
@click.option("--eval-every", type=int, default=None, help="Steps between eval losses (0: at the end).  [default: 0]")
@click.option("--num-workers", type=int, default=None, help="Data loader worker processes per rank.  [default: 0]")
@click.option("--pad-multiple", type=int, default=None, metavar="N",
              help="Round each micro-batch's length up to a multiple of N (larger N: fewer distinct shapes, more padding).  [default: 8]")
@click.option("--packing/--no-packing", "packing", default=None,
              help="Masked-LM families: pack each micro-batch into one row without padding; on a CUDA "
                   "GPU with PyTorch 2.9+, in bf16/fp16 and without attention dropout, its attention is one fused "
                   "variable-length kernel.  [default: off]")
@click.option("--token-micro-batches/--no-token-micro-batches", "token_micro_batches", default=None,
              help="Cut each step's proteins into micro-batches by padded tokens (up to micro-batch size x "
                   "max length each) rather than by count: short proteins go many to a forward pass. The same "
                   "losses; fewer, fuller passes.  [default: off]")
@click.option("--sample-clusters/--no-sample-clusters", "sample_clusters", default=None,
              help="Read the corpus by clusters (a block of lines between blank lines, one member a line, as "
                   "prep --clusters writes UniRef50/90): each epoch trains one member of every cluster, drawn "
                   "uniformly by seed, epoch and cluster (ESM-2's sampling); steps and positions count "
                   "clusters.  [default: off]")
@click.option("--static-shapes/--no-static-shapes", "static_shapes", default=None,
              help="With --packing: every packed micro-batch of a phase gets one shape (a row of micro-batch "
                   "size x max length tokens, its padding computed for nothing), so that compiled blocks "
                   "compile once, without dynamic shapes, and CUDA graphs can replay them. The same losses.  "
                   "[default: off]")
@click.option("--sdpa-kernels", type=click.Choice(SDPA_KERNELS), default=None,
              help="GPU attention kernels: auto leaves out cuDNN attention, which builds a plan for every new "
                   "micro-batch shape; torch keeps PyTorch's own choice.  [default: auto]")
@click.option("--stop-after", type=int, default=None, metavar="N",
              help="Stop with a checkpoint after step N (a step number of the run, also with --resume; a "
                   "time-limited job); --resume continues.")
@click.option("--time-limit", default=None, metavar="DURATION",
              help="Stop with a checkpoint before DURATION has passed since the start (the job's wall time "
                   "less a margin: 23:45:00, 1-12:00:00, 90m; auto: the Slurm job's end less 60 s): after "
                   "the last step whose next step and checkpoint would end later, at the pace measured; "
                   "exits 0, --resume continues.")
@click.option("--resume", "resume", is_flag=True, help="Continue from the latest checkpoint in the run directory.")
@click.option("--resume-from", type=click.Path(file_okay=False), default=None, help="Continue from this checkpoint directory.")
@click.option("--accept-corpus-change", is_flag=True,
              help="With --resume: go on although a corpus file changed since the checkpoint (a damaged shard "
                   "replaced by a whole copy); warns.")
@click.option("--skip-data", type=click.IntRange(min=0), default=0, metavar="N",
              help="With --resume or --resume-from: first pass over the data of the next N steps, untrained "
                   "(the batches around a loss spike); the step count stays the checkpoint's.")
@click.option("--find-lr", is_flag=True, help="Run a learning-rate range test (lr_find.png) instead of training "
              "(100 steps, or --num-steps).")
@click.option("--list-presets", is_flag=True, help="List families and presets with parameter counts, then exit.")
@click.option("--list-recipes", is_flag=True, help="List the shipped recipes (--recipe) and their sources, "
              "then exit.")
@click.option("-j", "--threads", type=int, default=None, help="CPU threads per process.  [default: the config file's threads, else "
                   "$PROTRANS_THREADS, else min(cores, 4)]")
def command(config_file, recipe, model_set, phases, resume, resume_from, accept_corpus_change, skip_data, find_lr,
            list_presets, list_recipes, threads, **flags):
    """Pretrain a protein language model (one GPU, many GPUs or nodes via torchrun).

    \b
    protrans train --family bert --preset tiny --corpus corpus.txt.gz \\
        -o runs/bert --num-steps 200
    protrans train --config prot_t5.toml --phase 512:150000 \\
        --phase 2048:150000:256:2 -o runs/t5
    torchrun --nproc-per-node 8 -m protrans_cli train \\
        --recipe prot_bert --corpus 'corpus.*.txt.gz' -o runs/prot_bert
    """
    if list_presets:
        _print_presets(flags.get("family"))
        return
    if list_recipes:
        _print_recipes()
        return
    _refuse_recipe_with_config(recipe, config_file)
    if flags.get("num_steps") == 0 and not find_lr:  # (before a resume's run directory is looked for)
        _refuse_continuing_untrained(resume=resume, resume_from=resume_from,
                                     accept_corpus_change=accept_corpus_change, skip_data=skip_data)
    if resume_from:
        # before anything else: a mistyped path failed only after the model was built (minutes
        # for a ProtT5-XL-sized preset)
        from protrans_cli.training.rundir import find_checkpoint

        find_checkpoint(resume_from)
        if not flags.get("output_dir"):
            flags["output_dir"] = _checkpoint_run_dir(resume_from)
    own = None
    # (a recipe is the config, as a --config file is: the run's own train_config.json is not read)
    if not config_file and recipe is None and (resume or resume_from) and not find_lr:
        own, flags["output_dir"] = _run_settings_file(resume, resume_from, flags)
        if own is not None:
            config_file = str(own)
    config, config_file = _base_config(recipe, config_file)
    saved_as = {}
    if own is not None:
        config, saved_as = _as_run_recorded(config, own)
    if config_file:
        _check_file_values(config, config_file)
    # (under --find-lr, --num-steps is the range test's steps, not a phase's)
    test_steps = flags.pop("num_steps") if find_lr else None
    config, recorded_as = _with_flags(config, config_file, flags, model_set, phases, threads)
    config = _without_file_decay_steps(config, config_file, flags)
    saved_as = {**saved_as, **recorded_as}
    if own is not None:
        _refuse_moved_corpus(config, own, given=[key for key in ("corpus", "val_corpus") if flags.get(key)])
    # The values before a warning that one is ignored: `--find-lr --lr -1` said that --lr is ignored, then
    # refused it. (Checked again with the corpus and the processes, as every run's are.)
    config.check_values()
    _warn_flags_without_effect(config, flags, new_run=not (find_lr or resume or resume_from))
    if config.untrained and not find_lr:
        config = _untrained_settings(config, resume=resume, resume_from=resume_from,
                                     accept_corpus_change=accept_corpus_change, skip_data=skip_data)
    _refuse_flag_combinations(config, flags, find_lr=find_lr, resume=resume, resume_from=resume_from,
                              accept_corpus_change=accept_corpus_change, skip_data=skip_data)
    if find_lr:
        _find_lr(config, flags, test_steps)
        return
    if os.environ.get("WORLD_SIZE", "1") == "1":  # (under torchrun, train() refuses it on every rank alike)
        _refuse_run_dir_before_torch(config, resume_from or resume or None)
    result = _train(config, resume_from or resume or None,
                    saved_as={k: v for k, v in saved_as.items() if not flags.get(k)},
                    accept_corpus_change=accept_corpus_change, skip_data=skip_data)
    _report(config, result)


def _refuse_recipe_with_config(recipe, config_file) -> None:
    """--recipe and --config together, refused."""
    if recipe is not None and config_file:
        from protrans_cli.errors import UsageError

        # (one file of settings: which of the two would win for a key both set is a guess)
        raise UsageError(f"--recipe {recipe} cannot go with --config {config_file}: give flags over the "
                         "recipe, or copy the recipe (docs/train.md, Recipes) into your config file")


def _checkpoint_run_dir(resume_from) -> str:
    """`--resume-from RUN/checkpoints/step_N` without -o: the checkpoint's own run, RUN.
    The run dir its config records was the first run's as typed, and a moved run, or one started
    from another directory, went on in a second folder, past the check for the later checkpoints
    of the run abandoned."""
    from protrans_cli.errors import UsageError

    where = Path(resume_from).resolve()  # (`--resume-from .` inside the checkpoint too)
    if where.parent.name != "checkpoints" and (where / "checkpoints").is_dir():
        # (a run directory: "give -o" left the user to guess that --resume is what continues it)
        raise UsageError(f"--resume-from {resume_from} is a run directory, not one of its checkpoints: "
                         f"--resume -o {resume_from} continues its latest checkpoint (--resume-from "
                         f"{Path(resume_from) / 'checkpoints' / 'step_N'} -o NEW_RUN goes on from another one "
                         "in a new directory)")
    if where.parent.name != "checkpoints":
        raise UsageError(f"--resume-from {resume_from} is not in a run's checkpoints/ folder: give -o, the run "
                         "directory to continue in")
    return str(where.parent.parent)


def _run_settings_file(resume, resume_from, flags) -> tuple[Path | None, str | None]:
    """A resume's own settings (flags still override): `train --resume -o RUN` refused "no
    training corpus", and with --corpus alone, every other setting the run had changed
    ("max_length: 128 there, 512 here") until all of its flags were given again.
    Returns the run's train_config.json (None: none, and none needed) and the run directory
    (-o as given, else the one whose settings were read)."""
    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.training.config import TrainConfig

    output_dir = flags.get("output_dir")
    run_dir = Path(output_dir or TrainConfig.output_dir)
    own = (Path(resume_from) if resume_from else run_dir) / "train_config.json"
    if resume and not resume_from and not own.is_file():
        # A run directory holding only checkpoints/ (copied or synced to another machine
        # without the files beside it): its latest checkpoint, the one --resume continues,
        # holds the same settings. It was refused with "give its settings without --resume",
        # which then refused a directory that holds checkpoints.
        from protrans_cli.training.rundir import list_checkpoints

        kept = list_checkpoints(own.parent)
        if kept and (kept[-1] / "train_config.json").is_file():
            own = kept[-1] / "train_config.json"
    if own.is_file():
        if not output_dir:
            # `train --resume` without -o resumes the default run directory it read, not
            # the output_dir its config records (another path once the run was moved or
            # copied there): that one, holding no checkpoint, started a new run from step 0.
            output_dir = str(run_dir)
        if _rank_zero():
            console.info(f"train: the run's settings from {own} (flags given override them)")
        return own, output_dir
    if resume and not flags.get("corpus"):
        # (not "no training corpus": there is no run there to resume)
        # ("give -o" to a user who had given it: what -o must name, and how to start a run)
        hint = ("-o names the run directory to resume (the one holding train_config.json and checkpoints/); "
                "to start a run there, give its settings (--corpus ...) without --resume"
                if output_dir else "give -o, the run directory")
        raise UsageError(f"{own.parent} holds no run to resume (no train_config.json): {hint}")
    return None, output_dir


def _base_config(recipe, config_file):
    """The settings before the flags: the recipe's, the config file's, or the defaults; and the
    file they came from."""
    from protrans_cli.training.config import TrainConfig

    if recipe is not None:
        from protrans_cli.training import recipes

        return recipes.load(recipe), recipes.path(recipe)
    return (TrainConfig.from_file(config_file) if config_file else TrainConfig()), config_file


def _as_run_recorded(config, own):
    """The run's own settings for this invocation, and the settings (`saved_as`) that its
    train_config.json keeps as the run recorded them."""
    import dataclasses

    if config.stop_after is not None:
        # Versions before 2026-11-30 saved the first invocation's --stop-after in the run's
        # train_config.json: read back here, it refused every `train --resume -o RUN` of such a
        # run ("--stop-after N is not after ... step N"). It belongs to one invocation.
        config = dataclasses.replace(config, stop_after=None)
    # (the run's paths as it recorded them stay so in its config: found elsewhere for this
    # invocation only)
    recorded, config = config, _corpus_found_from_here(config, own)
    return config, {key: getattr(recorded, key) for key in ("corpus", "val_corpus")
                    if getattr(recorded, key) != getattr(config, key)}


def _check_file_values(config, config_file) -> None:
    """The file's own values first, so that an error names the file (checked after the flags
    are merged, `precision = "fp8"` said only "precision must be one of ...")."""
    from protrans_cli.errors import UsageError

    try:
        config.check_values()
    except UsageError as exc:
        raise UsageError(exc.message, path="<stdin>" if config_file == "-" else str(config_file)) from None


def _with_flags(config, config_file, flags, model_set, phases, threads) -> tuple:
    """The config with the flags given over it, and how train_config.json is to record the
    settings that were not given ({"threads": None} where neither -j nor the config sets them)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.threads import resolve_threads
    from protrans_cli.training.config import parse_set

    # --num-steps and --max-length describe the one phase of a run without phases: given next to
    # phases (flags or the config file's), they would be silently ignored.
    single = [f"--{name.replace('_', '-')}" for name in ("num_steps", "max_length") if flags.get(name) is not None]
    if single and (phases or config.phases):
        where = "--phase" if phases else f"the phases of {config_file}"
        raise UsageError(f"{' and '.join(single)} cannot go with {where}: each phase sets its own "
                         "length and steps (LEN:STEPS[:GLOBAL[:MICRO]])")
    # -j overrides the config file's threads only when given; neither: PROTRANS_THREADS or the default,
    # which train_config.json records as not given (null): saved as a number, it came back from the
    # file as a template or on --resume and overrode PROTRANS_THREADS and another machine's default.
    saved_as = {"threads": None} if threads is None and config.threads is None else {}
    if threads is not None or config.threads is None:
        threads = resolve_threads(threads)
    return config.override(model_overrides=parse_set(model_set) or None, phases=list(phases) or None,
                           threads=threads, **flags), saved_as


def _without_file_decay_steps(config, config_file, flags):
    """A config file's (a recipe's) decay_steps under a --schedule flag it does not apply to
    (wsd, constant, inverse_sqrt): left out, with a warning, as the flag's schedule has no such
    end (`--recipe esm2_t33_650M --schedule wsd` was refused, the recipe's decay_steps being no
    flag to take back). --decay-steps given with such a schedule is refused (check_values)."""
    import dataclasses

    schedule = flags.get("schedule")
    if (schedule is None or schedule in ("linear", "cosine") or flags.get("decay_steps") is not None
            or config.decay_steps is None):
        return config
    if _rank_zero():
        from protrans_cli import console

        console.warn(f"decay_steps {config.decay_steps} of {config_file} ignored: --schedule {schedule} has no "
                     "such end (linear and cosine do)")
    return dataclasses.replace(config, decay_steps=None)


def _warn_flags_without_effect(config, flags, *, new_run: bool) -> None:
    """A flag that the settings make changed nothing, warned (rank 0)."""
    from protrans_cli import console

    # --global-batch-size and --micro-batch-size are the defaults of the phases that set no batch
    # size of their own: where every phase sets it (LEN:STEPS:GLOBAL:MICRO), the flag changed
    # nothing, without a word (a micro-batch size lowered after an out-of-memory error included)
    overridden = [f"--{name.replace('_', '-')} {flags[name]}" for name in ("global_batch_size", "micro_batch_size")
                  if flags.get(name) is not None and config.phases
                  and all(getattr(phase, name) is not None for phase in config.phases)]
    if overridden and _rank_zero():
        console.warn(f"{' and '.join(overridden)} ignored: every phase sets its own "
                     f"({', '.join(phase.spec() for phase in config.phases)}); give the batch sizes in --phase "
                     "LEN:STEPS:GLOBAL:MICRO")
    if new_run and _rank_zero():
        # (flags only, as above; a resume compares them with the run's instead)
        # `--decay-fraction 0.1` without `--schedule wsd`: the flag changed nothing without a word
        if flags.get("decay_fraction") is not None and config.schedule not in ("wsd", "wsd_sqrt"):
            console.warn(f"--decay-fraction {flags['decay_fraction']:g} ignored: --schedule {config.schedule} does "
                         "not use it (wsd and wsd_sqrt decay over that last fraction of the steps)")
        if flags.get("min_lr_ratio") is not None and config.schedule in ("constant", "inverse_sqrt"):
            console.warn(f"--min-lr-ratio {flags['min_lr_ratio']:g} ignored: --schedule {config.schedule} does not "
                         "decay to a floor (linear, cosine, wsd and wsd_sqrt do)")


def _refuse_flag_combinations(config, flags, *, find_lr, resume, resume_from, accept_corpus_change,
                              skip_data) -> None:
    """The flags that cannot go together, and a run without a corpus, refused in this order."""
    from protrans_cli.errors import UsageError
    from protrans_cli.training.config import check_skip_data

    if find_lr:  # (before the corpus: `--find-lr --resume -o RUN` said "no training corpus")
        ignored = [name for name, given in (("--resume", resume), ("--resume-from", resume_from),
                                            ("--skip-data", skip_data), ("--stop-after", flags.get("stop_after")),
                                            ("--time-limit", flags.get("time_limit"))) if given]
        if ignored:
            raise UsageError(f"--find-lr runs a learning-rate range test from fresh weights: {', '.join(ignored)} "
                             "cannot go with it")
    if not config.corpus and not config.untrained:  # (--num-steps 0 reads none)
        raise UsageError("no training corpus: give --corpus (or 'corpus' in --config)")
    if resume and resume_from:
        raise UsageError("give --resume or --resume-from, not both")
    if accept_corpus_change and not (resume or resume_from):
        raise UsageError("--accept-corpus-change goes with --resume or --resume-from")
    check_skip_data(skip_data, resume or resume_from)


def _untrained_settings(config, *, resume, resume_from, accept_corpus_change, skip_data):
    """--num-steps 0, the model written as initialised: the flags of a run to continue refused
    (there is no checkpoint), and the corpora, which it does not read, left out with a warning
    (train_config.json then records none: the model saw none)."""
    import dataclasses

    from protrans_cli import console

    _refuse_continuing_untrained(resume=resume, resume_from=resume_from, accept_corpus_change=accept_corpus_change,
                                 skip_data=skip_data)
    unread = [flag for key, flag in (("corpus", "--corpus"), ("val_corpus", "--val-corpus")) if getattr(config, key)]
    if unread and _rank_zero():
        console.warn(f"{' and '.join(unread)} ignored: --num-steps 0 writes the model as initialised, untrained, "
                     "and reads no corpus")
    return dataclasses.replace(config, corpus=[], val_corpus=[])


def _refuse_continuing_untrained(*, resume, resume_from, accept_corpus_change, skip_data) -> None:
    """--num-steps 0 (given, or a run's own): the flags of a run to continue, refused."""
    from protrans_cli.errors import UsageError

    refused = [name for name, given in (("--resume", resume), ("--resume-from", resume_from),
                                        ("--accept-corpus-change", accept_corpus_change),
                                        ("--skip-data", skip_data)) if given]
    if refused:
        raise UsageError(f"--num-steps 0 writes the model as initialised, without a checkpoint: "
                         f"{', '.join(refused)} cannot go with it (give --num-steps N to train)")


def _find_lr(config, flags, test_steps) -> None:
    """--find-lr: the learning-rate range test instead of training; its suggestion on stdout."""
    from protrans_cli import console
    from protrans_cli.errors import UsageError

    # (given as flags, not a config file's: --config prot_bert.toml --find-lr is the run's own file;
    # given, not true: --eval-every 0, the default's value, was taken without a word, where
    # --no-keep-best and --no-tensorboard say what the range test does anyway)
    unused = [f"--{name.replace('_', '-')}" for name in ("val_corpus", "eval_every", "log_every", "save_every",
                                                          "keep_last", "keep_best", "tensorboard",
                                                          "wandb", "wandb_project", "wandb_name")
              if given_option(name) and flags[name] is not False]
    if unused and _rank_zero():
        console.warn(f"--find-lr trains no run: {', '.join(unused)} ignored (it writes lr_find.png and "
                     "lr_find.json: no evaluation, metrics or checkpoint)")
    # (the range test sets every step's lr itself: these changed nothing without a word)
    swept = [f"--{name.replace('_', '-')}" for name in ("lr", "warmup_steps", "schedule", "min_lr_ratio",
                                                         "decay_fraction", "decay_steps")
             if flags.get(name) is not None]
    if swept and _rank_zero():
        console.warn(f"--find-lr raises the learning rate from 1e-7 to 1 itself: {', '.join(swept)} ignored")
    from protrans_cli.training.lr_finder import find_lr as run_find_lr

    # --num-steps, ignored before (always 100), sets the number of test steps
    if test_steps is not None and test_steps < 10:
        raise UsageError(f"--find-lr needs at least 10 steps to find a descent, got --num-steps {test_steps}")
    result = run_find_lr(config, **({"num_steps": test_steps} if test_steps is not None else {}))
    if _rank_zero():  # under torchrun every rank ran the test: one suggestion on stdout
        click.echo(f"{result.lr_suggestion:.3g}")


def _refuse_run_dir_before_torch(config, resume) -> None:
    """What the run directory holds, refused before torch is imported: `train -o RUN` on a run's
    directory without --resume was told to add it after seconds of imports (9 s on a loaded
    machine). train()'s own checks, in its order: a run in progress in the directory (its lock
    held: it was told to add --resume), then a bad setting."""
    from protrans_cli.errors import ProtransError
    from protrans_cli.training.rundir import refuse_run_dir_in_use, refuse_what_the_run_dir_holds

    try:
        refuse_what_the_run_dir_holds(config.output_dir, resume)
    except ProtransError:
        refuse_run_dir_in_use(config.output_dir)
        config.validate()
        raise


def _train(config, resume, **options):
    """training.loop.train, a stop by Ctrl-C or a signal said in one error line."""
    from protrans_cli.training.loop import train

    try:
        return train(config, resume=resume, **options)
    except KeyboardInterrupt as exc:  # Ctrl-C/SIGTERM/SIGHUP: the one error line says what was kept
        from protrans_cli.cli import stopped

        stop = stopped(exc, getattr(exc, "protrans_detail", None))
        if not _rank_zero():  # rank 0's line says what was kept; the other ranks printed a bare "terminated"
            raise SystemExit(stop.code) from None
        raise stop from None


def _report(config, result) -> None:
    """How the run ended where it stopped early: what stopped it, and that --resume continues."""
    from protrans_cli import console

    # (quickstart's train step, which asks for it: how the run ended, which its exit status, 0 for a warning's
    # stop, does not say; the caller says what an incomplete run means there, which has no --resume)
    obj = getattr(click.get_current_context(silent=True), "obj", None)
    if isinstance(obj, dict) and "train_result" in obj:
        obj["train_result"] = result
        return
    if not result.completed and _rank_zero():
        if result.stopped_by == "time_limit":
            console.info(f"train: --time-limit {config.time_limit}: stopped after step {result.step} of "
                         f"{config.total_steps}, its checkpoint saved (the next step and its checkpoint would "
                         "have ended later); continue with --resume")
        elif result.stopped_by in ("SIGUSR1", "SIGUSR2", "warning"):
            by = "a scheduler's warning signal" if result.stopped_by == "warning" else result.stopped_by
            console.info(f"train: {by} (the job's time is nearly up): stopped after step {result.step} of "
                         f"{config.total_steps}, its checkpoint saved; continue with --resume")
        else:
            console.info(f"train: stopped after step {result.step}; continue with --resume")


def _corpus_found_from_here(config, saved_file):
    """The run's own config with each relative corpus path that is not found from this working
    directory replaced by the absolute one the run recorded (under "resolved"): a run started
    with `--corpus c.txt` in one directory, resumed from another, failed with "c.txt: no such file"."""
    import dataclasses
    import json
    import os

    try:
        resolved = json.loads(Path(saved_file).read_text(encoding="utf-8")).get("resolved") or {}
    except (OSError, ValueError, AttributeError):
        return config
    changes = {}
    for key in ("corpus", "val_corpus"):
        paths, absolute = getattr(config, key), resolved.get(key)
        if not paths or not isinstance(absolute, list) or len(absolute) != len(paths):
            continue
        found = [b if (not os.path.isabs(a) and not os.path.exists(a) and isinstance(b, str) and os.path.exists(b))
                 else a for a, b in zip(paths, absolute)]
        if found != paths:
            changes[key] = found
    return dataclasses.replace(config, **changes) if changes else config


def _refuse_moved_corpus(config, saved_file, given) -> None:
    """On a resume with the run's own settings, a corpus file the run recorded that is not there
    (the corpus moved or renamed: scratch restored to another path, the run copied to another
    cluster) refused in one line that says how to name its new place: it was "PATH: no such file",
    which left the user to find that --corpus given again overrides the run's recorded paths.
    `given`: the keys (corpus, val_corpus) given as flags, not checked here."""
    from protrans_cli.errors import UsageError
    from protrans_cli.io.files import unreachable_input

    for key, flag in (("corpus", "--corpus"), ("val_corpus", "--val-corpus")):
        paths = getattr(config, key)
        if key in given or not paths:
            continue
        missing = [path for path in paths if unreachable_input(path) == "no such file"]
        if not missing:
            continue
        where = "" if os.path.isabs(missing[0]) else " (relative to this directory)"
        others = f" and {len(missing) - 1} other file(s)" if len(missing) > 1 else ""
        what = "validation corpus" if key == "val_corpus" else "corpus"
        again = (f"{flag} for each of its {len(paths)} files (or a quoted pattern)" if len(paths) > 1
                 else f"{flag} NEW_PATH")
        raise UsageError(f"the run's {what} file {missing[0]}{where}{others}, as {saved_file} records it, is not "
                         f"there: if it moved, give its new place with {again} (the run goes on where the content "
                         "is the same)")


def _rank_zero() -> bool:
    """Whether this process is torchrun's rank 0 (or no torchrun): the one that reports."""
    import os

    return os.environ.get("RANK", "0").strip() in ("", "0")


def _print_recipes() -> None:
    """One row per shipped recipe on stdout: name, the published model it trains, its source;
    then (stderr) the folder of the files, to copy one as a config file of your own."""
    from protrans_cli import console
    from protrans_cli.training import recipes

    rows = [(name, about.model, about.source) for name in recipes.names() for about in [recipes.get(name)]]
    head = ("recipe", "model", "source")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(2)]
    for row in [head, *rows]:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    console.info(f"train: the recipe files (TOML, their sources in their comments): {recipes.folder()}")


def _print_presets(family: str | None) -> None:
    """One row per preset on stdout: family, preset, parameters of the pretraining model."""
    from protrans_cli.catalog import describe, human_count

    # (as `protrans models` shows them: it said 84.9K where this said 0.08M)
    rows = [(p["family"], p["name"], human_count(p["num_params"]))
            for p in describe(family=family, families=False, checkpoints=False)["presets"]]
    widths = [max(len(r[i]) for r in rows + [("family", "preset", "parameters")]) for i in range(3)]
    for row in [("family", "preset", "parameters"), *rows]:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
