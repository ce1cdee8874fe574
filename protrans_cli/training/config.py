"""The training configuration: one dataclass, read from a JSON/TOML file, overridden by flags.

Precedence: dataclass defaults < config file < command-line flags. The config is written as
`train_config.json` into the run directory and into every checkpoint: the settings as given, and
under "resolved" what its automatic ones meant (precision auto, the default warmup, compile auto),
so a run can always be reproduced or resumed from what it actually used.

Defaults follow ESM-2's pretraining recipe where one exists (AdamW, betas 0.9/0.98, eps 1e-8,
weight decay 0.01, lr 4e-4, 2,000 warmup steps, linear decay to a tenth of the peak).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protrans_cli.attention import SDPA_KERNELS
from protrans_cli.choices import COMPILE_MODES
from protrans_cli.errors import (TORCH_SEEDS, UsageError, a_or_an, one_of, option, plain_numbers, seed_in_range,
                                 type_problem)

RESOLVED = "resolved"  # the key of a saved config that records what its automatic settings meant
DEFAULT_MAX_WARMUP = 2000  # warmup steps when none are given: a tenth of the run, at most this
OBJECTIVES = ("mlm", "electra", "t5", "t5_span", "plm", "clm")
OPTIMIZERS = ("adamw", "lamb", "adafactor")
SCHEDULES = ("linear", "cosine", "inverse_sqrt", "constant", "wsd", "wsd_sqrt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
FLOAT32_MAX = 3.4028234663852886e38  # (torch refuses a scalar above it for a float32 tensor)
MAX_SEED = 2**64 - 1  # torch.manual_seed takes an unsigned 64-bit seed, and rank r seeds seed + r


@dataclass
class Phase:
    """A stretch of training at one maximum length (ProtTrans: 512 tokens, then 2,048)."""

    max_length: int
    num_steps: int
    global_batch_size: int | None = None  # None: the config's global_batch_size
    micro_batch_size: int | None = None   # None: the config's micro_batch_size

    def __post_init__(self):
        # numpy's integers, as TrainConfig takes them (Phase(np.int64(512), ...) from an array):
        # the run's train_config.json was a TypeError, "Object of type int64 is not JSON serializable"
        plain_numbers(self)

    @classmethod
    def parse(cls, text: str) -> "Phase":
        """`LEN:STEPS[:GLOBAL_BATCH[:MICRO_BATCH]]`, e.g. `512:150000` or `2048:150000:256:4`."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 4:
            raise UsageError(f"--phase {text!r}: expected LEN:STEPS[:GLOBAL_BATCH[:MICRO_BATCH]]")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"--phase {text!r}: every field must be a whole number") from None
        return cls(*nums)

    def spec(self, resolved: "Phase | None" = None) -> str:
        """The phase as --phase writes it, with the batch sizes it was given (a micro-batch
        size given without a global one shows the run's global one, `resolved`'s)."""
        parts = [self.max_length, self.num_steps]
        if self.micro_batch_size is not None:
            parts += [self.global_batch_size if self.global_batch_size is not None
                      else (resolved or self).global_batch_size, self.micro_batch_size]
        elif self.global_batch_size is not None:
            parts.append(self.global_batch_size)
        return ":".join(map(str, parts))


DEFAULT_FAMILY = "bert"
DEFAULT_PRESET = "tiny"


@dataclass
class TrainConfig:
    """Everything a training run needs. Field names are the config-file keys and the flags."""

    # model
    family: str | None = None     # None: bert, or --init-from's family (resolved when the run is built)
    preset: str | None = None     # None: tiny; no preset goes with init_from
    model_overrides: dict[str, Any] = field(default_factory=dict)  # HF config kwargs
    # Start from an existing model's architecture, tokenizer and weights (a protrans run or
    # checkpoint directory, an HF model directory, a hub id or a short name such as prot_bert):
    # continued, domain-adaptive pretraining. family and preset then come from that model.
    init_from: str | None = None
    objective: str | None = None  # None: the family's objective
    # the shipped recipe (protrans_cli/recipes/NAME.toml, `train --recipe`) the settings started
    # from: recorded in train_config.json, it sets nothing itself
    recipe: str | None = None
    # data
    corpus: list[str] = field(default_factory=list)
    val_corpus: list[str] = field(default_factory=list)
    output_dir: str = "runs/protrans"
    max_length: int = 512          # tokens, special tokens included
    num_steps: int = 1000          # optimizer steps when no phases are given
    phases: list[Phase] = field(default_factory=list)
    global_batch_size: int = 32    # proteins per optimizer step, all ranks together
    micro_batch_size: int = 8      # proteins per forward pass on one device
    bucket_batches: int = 16       # global batches sorted together by length to limit padding
    pad_multiple: int = 8          # micro-batch lengths rounded up to a multiple (tensor cores; larger: fewer shapes)
    num_workers: int = 0           # DataLoader workers per rank
    packing: bool = False          # masked LM: micro-batches packed into one row (varlen attention)
    token_micro_batches: bool = False  # micro-batches of up to micro_batch_size x max_length padded tokens
    # the corpus read by clusters (a block of lines between blank lines, one member a line): each
    # epoch one member of every cluster, chosen uniformly by (seed, epoch, cluster); ESM-2's sampling
    sample_clusters: bool = False
    # with packing: every packed micro-batch of a phase one shape (row width, segment count, max
    # length): compiled blocks without dynamic shapes, CUDA graphs (compile_mode reduce-overhead)
    static_shapes: bool = False
    sdpa_kernels: str = "auto"     # GPU attention kernels: auto leaves out cuDNN (protrans_cli/attention.py)
    # objective
    mask_prob: float = 0.15
    sop: bool = False              # ALBERT sentence-order prediction next to MLM
    noise_density: float = 0.15    # t5_span
    mean_span_length: float = 3.0  # t5_span
    plm_prob: float = 0.15         # fraction of residues XLNet predicts
    electra_disc_weight: float = 50.0
    segment_length: int = 128      # Transformer-XL: tokens per segment (memory carries the rest)
    # optimisation
    optimizer: str = "adamw"
    lr: float = 4e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    warmup_steps: int | None = None  # None: a tenth of the run, at most 2000 (resolved_warmup_steps)
    schedule: str = "linear"
    min_lr_ratio: float = 0.1      # linear, cosine and wsd decay end at lr * min_lr_ratio (inverse_sqrt: no floor)
    # wsd, wsd_sqrt (warmup-stable-decay): the last fraction of the steps that decays from the peak
    decay_fraction: float = 0.2
    # linear, cosine: the step (of the whole run, every phase together) at which the decay reaches
    # lr * min_lr_ratio, held after it (ESM-2: 450,000 of 500,000); None: the run's last step
    decay_steps: int | None = None
    grad_clip: float = 1.0         # max global grad norm; 0 disables clipping
    # steps whose gradient is not finite that are skipped (not applied) before the run stops as
    # diverged; 0: it stops at the first. Counted over the whole run (checkpoints keep the count).
    skip_nonfinite: int = 0
    # engine
    seed: int = 0
    precision: str = "auto"        # auto: bf16 autocast on a GPU that has it, else fp16 (loss scaling); fp32 on CPU
    strategy: str = "auto"         # auto: FSDP above fsdp_min_params, else DDP (with >1 rank)
    fsdp_min_params: int = 1_000_000_000
    # how long a collective may wait for the other ranks (torchrun) before the job fails: they
    # wait while rank 0 writes a checkpoint or the final model, or checks a checkpoint's sums
    dist_timeout: str = "30m"
    compile: bool | None = None    # None: auto (recompute.resolve_compile): on for BERT and RoBERTa
                                   # models on a CUDA GPU whose torch.compile builds a kernel, else off
    compile_mode: str = "default"  # torch.compile's mode for the blocks (COMPILE_MODES; reduce-overhead: CUDA graphs)
    activation_checkpointing: bool = False  # recompute each block in the backward pass (training/recompute.py)
    threads: int | None = None     # CPU threads per process
    # logging / checkpoints
    log_every: int = 10
    tensorboard: bool = False      # metrics.jsonl's lines also as TensorBoard scalars under RUN/tensorboard/
    wandb: bool = False            # metrics.jsonl's lines also to Weights & Biases (files under RUN/wandb/)
    wandb_project: str | None = None  # None: $WANDB_PROJECT, else "protrans"
    wandb_name: str | None = None  # None: the run directory's name
    eval_every: int = 0            # 0: evaluate only at the end (when a val corpus is given)
    num_eval_batches: int = 20
    save_every: int = 1000
    keep_last: int = 3
    # also keep the checkpoint with the lowest eval loss so far (needs val_corpus, and eval_every
    # dividing save_every: every checkpoint evaluated); recorded in RUN/best_checkpoint.json
    keep_best: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this step of the run, also on --resume
    # stop (with a checkpoint) so that it is saved before this much time since the process started
    # ("23:45:00", "1-12:00:00", "90m"; "auto": the Slurm job's end: training/timelimit.py); like
    # stop_after, one invocation's
    time_limit: str | None = None

    # ------------------------------------------------------------------------------------
    def __post_init__(self):
        # From Python: pathlib paths (json.dumps of the saved config was a TypeError after the
        # model was built) and one corpus file as a bare string (read letter by letter: "c: no
        # such file") are taken as the strings and lists they stand for.
        for name in ("corpus", "val_corpus"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if isinstance(value, (list, tuple)):
                setattr(self, name, [os.fspath(p) if isinstance(p, os.PathLike) else p for p in value])
        for name in ("output_dir", "init_from"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        # numpy's scalars (a setting taken from an array or a data frame), which errors.type_problem
        # accepts for plain settings: np.float32 failed check_values ("--lr (lr) must be a number,
        # got np.float32(0.001)") and np.int64 the saved config's json.dumps (not JSON serializable)
        plain_numbers(self)

    def stream_sizing(self, phase: "Phase") -> dict:
        """How CorpusStream cuts a rank's share of a step into micro-batches: `micro_batch_size`
        proteins each, or with token_micro_batches up to the padded tokens of micro_batch_size
        proteins at max_length (short proteins then go many to a pass; the memory bound stays);
        and pad_multiple, which also sets the width of its length buckets (`bucket_width`)."""
        if not self.token_micro_batches:
            return {"pad_multiple": self.pad_multiple}  # (the width of its length buckets too)
        return {"micro_batch_tokens": phase.micro_batch_size * phase.max_length,
                "pad_multiple": self.pad_multiple, "packed": self.packing}

    def packed_shape(self, phase: "Phase", num_special: int, world_size: int = 1) -> tuple[int, int, int] | None:
        """With static_shapes: (row width, segment slots, max length) of every packed micro-batch
        of `phase`, else None. The width is the token budget of micro_batch_size proteins at
        max_length rounded up to pad_multiple, which holds every micro-batch (token_micro_batches
        fills rows up to that budget; without it a row holds micro_batch_size proteins). The
        slots: the most proteins a row can hold (micro_batch_size; with token_micro_batches the
        rank's share of the step, at most a row's tokens over a protein's fewest, its special
        tokens) and the padding's segments, each at most max_length long."""
        if not self.static_shapes:
            return None
        m, length = self.pad_multiple, phase.max_length
        width = -(-(phase.micro_batch_size * length) // m) * m
        proteins = phase.micro_batch_size
        if self.token_micro_batches:
            proteins = min(-(-phase.global_batch_size // world_size), width // max(1, num_special))
        return width, proteins + -(-width // length), length

    def resolved_phases(self) -> list[Phase]:
        """The phases with batch sizes filled in (one phase when none were given)."""
        phases = self.phases or [Phase(self.max_length, self.num_steps)]
        return [Phase(p.max_length, p.num_steps,
                      self.global_batch_size if p.global_batch_size is None else p.global_batch_size,
                      self.micro_batch_size if p.micro_batch_size is None else p.micro_batch_size) for p in phases]

    @property
    def total_steps(self) -> int:
        return sum(p.num_steps for p in self.resolved_phases())

    @property
    def untrained(self) -> bool:
        """num_steps 0 (without phases): the run writes its model as initialised, trains no step and
        reads no corpus (a random-initialisation baseline of the architecture)."""
        return not self.phases and self.num_steps == 0

    @property
    def resolved_warmup_steps(self) -> int:
        """The steps of linear warmup: as given, or a tenth of the run and at most 2000, so that
        a short run still reaches its peak lr and decays."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(DEFAULT_MAX_WARMUP, max(1, self.total_steps // 10))

    def validate(self, world_size: int = 1, *, evaluates: bool = True) -> None:
        """Refuse contradictory settings up front, before any model is built. `evaluates`: False
        for the lr range test, which evaluates nothing (and warns of the settings it ignores)."""
        self._check_structure()
        if not self.corpus and not self.untrained:
            raise UsageError("no training corpus: give --corpus (or 'corpus' in the config file)")
        if self.keep_best and evaluates:
            # (here, not in check_values: a config file's keep_best may have its val corpus or
            # intervals from the flags)
            if not self.val_corpus:
                raise UsageError(f"{setting_name('keep_best')} needs {setting_name('val_corpus')}: the best "
                                 "checkpoint is the one with the lowest eval loss")
            if not self.eval_every or self.save_every % self.eval_every:
                # As HF's Trainer with load_best_model_at_end: a checkpoint without an eval loss
                # could be neither kept nor compared. (Evaluating at every save instead would
                # change the run's evaluations and metrics lines without a word.)
                given = (f"--eval-every {self.eval_every}" if self.eval_every
                         else "no --eval-every (eval_every 0: only at the end)")
                raise UsageError(f"{setting_name('keep_best')} needs an eval loss at every checkpoint: "
                                 f"--save-every {self.save_every} (save_every) must be a multiple of "
                                 f"--eval-every (eval_every), got {given}")
        from protrans_cli.io.files import utf8_path_problem, utf8_text

        # (the tokenizer is saved with the first checkpoint: found there, every step before was lost)
        if (problem := utf8_path_problem(os.path.abspath(self.output_dir))) is not None:
            raise UsageError(f"the run directory {utf8_text(self.output_dir)}: {problem}")
        if "-" in self.corpus:
            raise UsageError(f"{setting_name('corpus')} cannot be stdin ('-'): training reads it once per epoch")
        if "-" in self.val_corpus:
            # (it said "the corpus cannot be stdin ... once per epoch" of a --corpus given as a file)
            raise UsageError(f"{setting_name('val_corpus')} cannot be stdin ('-'): it is read before training "
                             "and at every evaluation; give it as a file")
        import stat

        for setting, paths, reads in (("corpus", self.corpus, "training reads it once per epoch"),
                                      ("val_corpus", self.val_corpus, "it is read before training and at every "
                                                                      "evaluation")):
            for path in paths:
                # a pipe (<(zcat ...), a FIFO) is read once by the corpus check, and the next open waited
                # for a writer for ever (said as "the corpus must be a regular file" of --val-corpus too)
                if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
                    what = ("a pipe, which can be read once" if stat.S_ISFIFO(os.stat(path).st_mode)
                            else "not a regular file")
                    raise UsageError(f"{setting_name(setting)} {path} is {what}, and {reads}: give it as a file")
        if self.strategy == "none" and world_size > 1:
            # Each rank would train its own copy on its share of every batch, never synchronised.
            raise UsageError(f"--strategy none (strategy) is for one process, not {world_size}: under torchrun use "
                             "auto, ddp or fsdp")
        self.check_values()
        if world_size > 1:  # (rank r seeds seed + r)
            seed_in_range(self.seed, MAX_SEED - world_size + 1, f"2**64 - {world_size} with {world_size} processes: "
                          "rank r seeds seed + r", setting_name("seed"))
        for i, phase in enumerate(self.resolved_phases(), 1):
            where = f"phase {i} ({self.phases[i - 1].spec(phase)})" if self.phases else "training"
            grad_accum_steps(phase.global_batch_size, phase.micro_batch_size, world_size, where=where)

    def _check_lr_in_float32(self) -> None:
        """The scalars the optimizer hands torch for the float32 parameters (`alpha=`, `value=`,
        which torch converts, checked) are the lr times at most: AdamW's step size lr / (1 -
        adam_beta1 ** step), largest at its first step; Adafactor's decay lr x weight_decay; LAMB's
        lr alone (the schedule's multiplier is never above 1; AdamW's decay, a multiplication, is
        not checked: it makes the weights infinite, which the run's non-finite check reports). One
        past float32's largest number was a traceback from torch's optimizer at the first step
        ("value cannot be converted to type float without overflow"): refused here, naming --lr."""
        factor, why = 1.0, ""
        if self.optimizer == "adamw" and 1 / (1 - self.adam_beta1) > factor:
            factor, why = 1 / (1 - self.adam_beta1), f"AdamW's first step divides it by 1 - adam_beta1 " \
                                                     f"({1 - self.adam_beta1:g}) and "
        if self.optimizer == "adafactor" and self.weight_decay > factor:
            factor, why = self.weight_decay, f"weight decay multiplies it by {setting_name('weight_decay')} " \
                                             f"{self.weight_decay:g} and "
        if self.lr * factor > FLOAT32_MAX:
            limit = FLOAT32_MAX / factor
            unit = 10.0 ** (math.floor(math.log10(limit)) - 2)
            shown = math.floor(limit / unit) * unit  # (3 digits, rounded down: the limit shown passes)
            raise UsageError(f"{setting_name('lr')} must be at most {shown:.3g} with --optimizer {self.optimizer}, "
                             f"got {self.lr:g}: {why}float32 holds no number above {FLOAT32_MAX:.4g}")

    def check_values(self) -> None:
        """Each setting's own range and the pairs that cannot go together, whatever the corpus and
        the number of processes: run on a config file alone too, so that its errors name it."""
        self._check_structure()
        for name, allowed in (("objective", OBJECTIVES), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("strategy", STRATEGIES), ("sdpa_kernels", SDPA_KERNELS),
                              ("compile_mode", COMPILE_MODES)):
            # (the field's and the config file's key: click's choices keep a flag's bad value out)
            if getattr(self, name) is not None:
                one_of(getattr(self, name), allowed, name)
        if isinstance(self.output_dir, str) and not self.output_dir.strip():
            # (Path("") is "."): `-o ""` (an unset shell variable, `-o "$RUN"`) trained into the
            # working directory, its checkpoints/ and model files among whatever was there
            raise UsageError(f"{setting_name('output_dir')} is empty: give the run directory")
        for name in ("corpus", "val_corpus"):
            # (`--corpus "$CORPUS"` with the variable unset said only "'': no such file")
            if any(not path.strip() for path in getattr(self, name)):
                raise UsageError(f"{setting_name(name)} names an empty path: give the corpus file")
        if self.init_from and self.preset:
            raise UsageError(f"preset {self.preset!r} cannot go with init_from: the architecture comes from "
                             f"{self.init_from} ({option('--set KEY=VALUE', 'model_overrides')} changes settings such "
                             "as dropout, not sizes)")
        for name, (text, ok) in _FLOAT_RULES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):  # "must be positive, got 1e-3"
                raise UsageError(f"{setting_name(name)} must be a number, got {value!r}")
            if not (math.isfinite(value) and ok(value)):
                raise UsageError(f"{setting_name(name)} must be {text}, got {value}")
        self._check_lr_in_float32()
        self._check_decay_steps()
        for name, least in (("segment_length", 1), ("fsdp_min_params", 0), ("skip_nonfinite", 0)):
            if getattr(self, name) < least:
                raise UsageError(f"{setting_name(name)} must be at least {least}, got {getattr(self, name)}")
        # torch.manual_seed takes 64 bits, unsigned: a larger seed was a traceback ("Overflow when
        # unpacking long long") once the run was being built. (2**63 to 2**64 - 1 train: an earlier
        # limit of 2**63 - 1 refused them, and the runs started with one on --resume.)
        seed_in_range(self.seed, MAX_SEED, TORCH_SEEDS, setting_name("seed"))
        if self.static_shapes and not self.packing:
            raise UsageError(f"{setting_name('static_shapes')} goes with {setting_name('packing')}: only "
                             "packed micro-batches (one row each) are given one shape")
        if self.sop and (self.objective or "mlm") != "mlm":
            raise UsageError("sop (sentence-order prediction) goes with the mlm objective only")
        if self.sop and self.model_overrides.get("type_vocab_size", 2) < 2:
            # (the two segments are token types 0 and 1: an IndexError at step 1)
            raise UsageError(f"--set type_vocab_size={self.model_overrides['type_vocab_size']} (model_overrides): "
                             "sop (sentence-order prediction) needs at least 2 token types")
        for name in ("log_every", "save_every", "keep_last", "bucket_batches", "pad_multiple", "num_eval_batches"):
            if getattr(self, name) < 1:
                raise UsageError(f"{setting_name(name)} must be at least 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise UsageError(f"{setting_name('stop_after')} must be at least 1, got {self.stop_after}")
        for name in ("time_limit", "dist_timeout"):
            if getattr(self, name) is not None:
                self.duration(name)
        if self.threads is not None:
            from protrans_cli.threads import check_threads

            check_threads(self.threads, setting_name("threads"))
        for name in ("num_workers", "warmup_steps", "eval_every"):
            if (getattr(self, name) or 0) < 0:
                raise UsageError(f"{setting_name(name)} must be 0 or more, got {getattr(self, name)}")
        for key, value in self.model_overrides.items():
            # (ELECTRA's generator_size is a fraction, not a size: its family checks it)
            if (isinstance(value, int) and not isinstance(value, bool) and value < 1
                    and (key.startswith(("num_", "n_")) or key.endswith("_size") and key != "generator_size"
                         or key in ("d_model", "d_ff", "d_kv", "d_head", "d_inner"))):
                raise UsageError(f"--set {key}={value} (model_overrides): must be at least 1")
        for i, phase in enumerate(self.resolved_phases(), 1):
            # (without phases, named as the flags are: "training: max_length must be at least 8"
            # named neither --max-length nor where it came from)
            where = f"phase {i} ({self.phases[i - 1].spec(phase)}): " if self.phases else ""
            named = (lambda name: name) if self.phases else setting_name
            if phase.max_length < 8:
                raise UsageError(f"{where}{named('max_length')} must be at least 8, got {phase.max_length}")
            if phase.num_steps < 1 and (self.phases or phase.num_steps < 0):
                # (num_steps 0 without phases: the initialised model, untrained, written as the run's
                # model, a random-initialisation baseline; a phase of no steps is a mistake)
                least = 1 if self.phases else 0
                raise UsageError(f"{where}{named('num_steps')} must be at least {least}, got {phase.num_steps}"
                                 + ("" if self.phases else " (0: the model as initialised, untrained)"))
            for name in ("global_batch_size", "micro_batch_size"):
                if getattr(phase, name) < 1:
                    # the phase's own batch size (--phase 32:2:4:0) by its name, one it takes from
                    # the run (--phase 32:2 --micro-batch-size 0) by the flag: the flag was named
                    # for both, and --phase 32:2:4:0 was told of a --micro-batch-size never given
                    own = self.phases and getattr(self.phases[i - 1], name) is not None
                    raise UsageError(f"{where}{name if own else setting_name(name)} must be at least 1, got "
                                     f"{getattr(phase, name)}")
        for name in ("global_batch_size", "micro_batch_size"):
            # (the run's own where every phase sets its own, after them: `--phase 32:2:4:2
            # --global-batch-size -1` was warned of as ignored and taken)
            if getattr(self, name) < 1:
                raise UsageError(f"{setting_name(name)} must be at least 1, got {getattr(self, name)}")
        if self.untrained:
            self._check_untrained()

    def _check_untrained(self) -> None:
        """num_steps 0: the settings of a training that it does not do, refused (not ignored)."""
        if self.init_from:
            # (its weights as they are, under a new name: the model itself is the one to give)
            raise UsageError(f"{setting_name('init_from')} {self.init_from} with {setting_name('num_steps')} 0 would "
                             "write an untrained copy of that model: give the model itself wherever a model is "
                             "taken (-m), or train it for at least 1 step")
        unused = [setting_name(name) for name in ("keep_best", "stop_after", "time_limit") if getattr(self, name)]
        if unused:
            raise UsageError(f"{setting_name('num_steps')} 0 writes the model as initialised, without a step or a "
                             f"checkpoint: {', '.join(unused)} cannot go with it")

    def _check_decay_steps(self) -> None:
        """decay_steps: a step after the warmup, for a schedule that decays to a floor over a span
        (linear, cosine; wsd's span is decay_fraction's). One beyond the run's last step is taken:
        the decay is then slower, above the floor at the end (train warns)."""
        if self.decay_steps is None:
            return
        name = setting_name("decay_steps")
        if isinstance(self.decay_steps, bool) or not isinstance(self.decay_steps, int):
            raise UsageError(f"{name} must be a number of steps, got {self.decay_steps!r:.40}")
        if self.schedule not in ("linear", "cosine"):
            raise UsageError(f"{name} goes with --schedule linear or cosine (where their decay ends), not "
                             f"{self.schedule}" + (": wsd's decay is the last --decay-fraction of the steps"
                                                   if self.schedule.startswith("wsd") else ""))
        if isinstance(self.warmup_steps, int) and self.warmup_steps < 0:
            return  # (validate names that one)
        warmup = self.resolved_warmup_steps
        if self.decay_steps <= warmup:
            given = ("--warmup-steps" if self.warmup_steps is not None
                     else "the warmup steps (a tenth of the run, at most 2000)")
            raise UsageError(f"{name} must be after the warmup: above {given} {warmup}, got {self.decay_steps}")

    def _check_structure(self) -> None:
        """The settings that are not plain values (which errors.expect_options checks): from
        Python, phases as "512:1000" strings or tuples, a list of pairs as model_overrides or a
        corpus of numbers were an AttributeError or TypeError deep inside train()."""
        for name in ("corpus", "val_corpus"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise UsageError(f"TrainConfig.{name} must be a path or a list of paths, got {value!r:.60}")
        if not isinstance(self.model_overrides, dict) or not all(isinstance(k, str) for k in self.model_overrides):
            raise UsageError("TrainConfig.model_overrides must be a dict of model config fields, got "
                             f"{self.model_overrides!r:.60}")
        for key, value in self.model_overrides.items():
            # (saved in train_config.json: a TOML date, `architectures = 2024-01-01`, which the
            # model's config took, was a TypeError once the model was built and the run started)
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--set / model_overrides ({key}={value!r:.60}): not a JSON value ({exc}); "
                                 "the settings are saved as JSON") from None
        if not isinstance(self.phases, (list, tuple)):
            raise UsageError(f"TrainConfig.phases must be a list of Phase, got {self.phases!r:.60}")
        for phase in self.phases:
            if not isinstance(phase, Phase):
                raise UsageError(f"TrainConfig.phases must be a list of Phase (Phase(512, 1000) or "
                                 f"Phase.parse('512:1000')), got {type(phase).__name__} {phase!r:.60}")
            for f in dataclasses.fields(Phase):
                if problem := type_problem(f.type, getattr(phase, f.name)):
                    raise UsageError(f"Phase.{f.name} must be {problem}, got {getattr(phase, f.name)!r:.60}")

    def duration(self, name: str) -> float | None:
        """Seconds of a duration setting (time_limit, dist_timeout); a UsageError naming it. None
        for a time_limit of None (no limit; dist_timeout is always a duration: None is refused).
        time_limit "auto": from this process's start to shortly before its Slurm job's end,
        computed when asked (timelimit.slurm_limit); None for a job without an end."""
        from protrans_cli.training.timelimit import is_auto, parse_duration, slurm_limit

        if getattr(self, name) is None:
            return None
        try:
            if name == "time_limit" and is_auto(self.time_limit):
                return slurm_limit()
            return parse_duration(getattr(self, name))
        except ValueError as exc:
            raise UsageError(f"{setting_name(name)}: {exc}") from None

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path, *, resolved: dict | None = None) -> None:
        """Write the settings as given, and, under `resolved`, what a run made of its automatic
        ones (precision auto, the default warmup, compile auto): read back, `resolved` is left
        aside, so the file serves as a template that decides them anew, while a resume of the
        run compares and keeps what it ran with."""
        from protrans_cli.io.files import atomic_output

        # stop_after belongs to one invocation, not to the run: saved, it came back with
        # `--config RUN/train_config.json --resume` and stopped the resumed run at once. So does
        # time_limit (the next job's time is its own).
        saved = {**self.to_dict(), "stop_after": None, "time_limit": None}
        if resolved:
            saved[RESOLVED] = resolved
        with atomic_output(path) as out:
            out.write((json.dumps(saved, indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "TrainConfig":
        # (what a run made of its automatic settings: information, not settings)
        data = {k: v for k, v in data.items() if k != RESOLVED}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            # (the flags whose names are not their settings': --help says "flag names with _ for -")
            named = {"set": "model_overrides", "phase": "phases", "output": "output_dir",
                     "valid_corpus": "val_corpus"}
            hints = [f"{k} is {named[k]} in a config file" for k in unknown if k in named]
            # (a run directory holds config.json beside train_config.json, a head one too: given
            # as --config, either was "unknown setting(s)" and the twenty-odd keys it holds)
            from protrans_cli.io.files import config_kind

            kind = config_kind(data)
            if kind == "model":
                raise UsageError(f"{source}: the config.json of {a_or_an(data['model_type'])} model (its transformers "
                                 "settings), not train settings: a run's settings are its train_config.json; "
                                 "to continue pretraining this model give its directory to --init-from")
            if kind == "head":
                raise UsageError(f"{source}: the config.json of a prediction head (protrans fit), not train "
                                 "settings: a run's settings are its train_config.json")
            raise UsageError(f"{source}: unknown setting(s) {', '.join(unknown)}"
                             + (f" ({'; '.join(hints)})" if hints else ""))
        data = dict(data)
        _check_types(cls, data, source)
        for key in ("corpus", "val_corpus"):
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
            if key in data:
                if not isinstance(data[key], list) or not all(isinstance(p, str) for p in data[key]):
                    raise UsageError(f"{source}: {key} must be a path or a list of paths, got {data[key]!r}")
                data[key] = expand_corpus_paths(data[key], key)
        if "model_overrides" in data and not isinstance(data["model_overrides"], dict):
            raise UsageError(f"{source}: model_overrides must be a table of model config fields, "
                             f"got {data['model_overrides']!r}")
        if "phases" in data:
            if not isinstance(data["phases"], list):
                raise UsageError(f"{source}: phases must be a list (of LEN:STEPS strings or tables), "
                                 f"got {data['phases']!r}")
            # (a saved train_config.json holds both at their defaults: it must read back)
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            single = [k for k in ("num_steps", "max_length") if k in data and data[k] != defaults[k]]
            if single and data["phases"]:
                raise UsageError(f"{source}: {' and '.join(single)} cannot go with phases: each phase sets "
                                 "its own length and steps")
            data["phases"] = [_phase_from(p, source) for p in data["phases"]]
        return cls(**data)

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        """Read a `.json` or `.toml` file (TOML: top-level keys, `[[phases]]` tables)."""
        from protrans_cli.io.files import stdin_binary

        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
            import tomli as tomllib

        path = Path(path)
        name = "<stdin>" if str(path) == "-" else str(path)
        suffix = path.suffix.lower()
        if name != "<stdin>" and suffix not in (".json", ".toml"):
            raise UsageError(f"a config file is JSON (.json) or TOML (.toml), not {suffix or 'a file without a suffix'}",
                             path=name)
        processes = os.environ.get("WORLD_SIZE", "1")
        if name == "<stdin>" and processes.isdigit() and int(processes) > 1:
            # Under torchrun every process shares the launcher's stdin: the first to read it took
            # the settings, the others read nothing and stopped on a setting left out ("no
            # training corpus"), a rank at random.
            raise UsageError(f"--config - under torchrun: stdin goes to one of the {processes} processes, the "
                             "others read nothing; give the config file's path (every process reads it)",
                             path=name)
        try:
            raw = stdin_binary().read() if name == "<stdin>" else path.read_bytes()
        except FileNotFoundError:
            raise UsageError("no such config file", path=name) from None
        except IsADirectoryError:  # (as every input says it: "cannot read the config file: Is a directory")
            raise UsageError("is a directory, expected a config file (.json or .toml)", path=name) from None
        except OSError as exc:
            raise UsageError(f"cannot read the config file: {exc.strerror or exc}", path=name) from None
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # (a byte-order mark: TOML refused it, and JSON from stdin was read as TOML)
        try:
            if suffix == ".toml" or (name == "<stdin>" and not raw.lstrip().startswith(b"{")):
                data = tomllib.loads(raw.decode())
            else:
                data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
        except UnicodeDecodeError as exc:
            from protrans_cli.io.files import not_utf8

            message, line = not_utf8(exc)
            raise UsageError(message, path=name, line=line) from None
        except ValueError as exc:
            raise UsageError(f"cannot parse config ({' '.join(str(exc).split())})", path=name) from None
        except RecursionError:  # thousands of nested brackets: a traceback from the parser
            raise UsageError("cannot parse config (nested too deeply)", path=name) from None
        if not isinstance(data, dict):
            raise UsageError("config must be a table/object of settings", path=name)
        return cls.from_dict(data, source=name)

    def override(self, **flags) -> "TrainConfig":
        """A copy with every flag that was given (not None, not empty) replacing the file's value."""
        changes = {k: v for k, v in flags.items() if v is not None and v != () and v != []}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UsageError(f"unknown setting(s) {', '.join(unknown)}")
        if "model_overrides" in changes:
            changes["model_overrides"] = {**self.model_overrides, **changes["model_overrides"]}
        if changes.get("family") not in (None, self.family) and "objective" not in changes and self.objective:
            # A run's train_config.json as a template for another family: its objective, saved
            # resolved, was its family's default, and the new family's default is meant.
            from protrans_cli.models import get_family

            try:
                was_default = self.family is not None and get_family(self.family).objective == self.objective
            except Exception:  # an unknown family in the file: its own error comes later
                was_default = False
            if was_default:
                changes["objective"] = None
        if changes.get("init_from") and not self.init_from and "preset" not in changes and self.preset is not None:
            # --init-from over a config file (a run's train_config.json, which records the preset
            # the run was built from): the model it names has its architecture; the file's preset
            # gives way, as a flag overrides the file ("preset 'tiny' cannot go with init_from").
            changes["preset"] = None
        for key in ("corpus", "val_corpus"):
            if key in changes:
                changes[key] = expand_corpus_paths(changes[key], key)
        if "phases" in changes:
            changes["phases"] = [p if isinstance(p, Phase) else Phase.parse(p) for p in changes["phases"]]
            # The phases replace a config file's single length and step count (so that the saved
            # train_config.json, which holds both, reads back).
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            replaced = [f"{key} = {getattr(self, key)}" for key in ("num_steps", "max_length")
                        if key not in changes and getattr(self, key) != defaults[key] and not self.phases]
            if replaced:  # a config file's single phase, replaced by --phase flags
                from protrans_cli import console

                console.warn(f"--phase replaces the config file's {' and '.join(replaced)}: each phase sets its "
                             "own length and steps")
            for key in ("num_steps", "max_length"):
                changes.setdefault(key, defaults[key])
        return dataclasses.replace(self, **changes)


# Float settings: what they must be, as words and as a test (NaN and infinity never pass).
_FLOAT_RULES = {
    "lr": ("positive", lambda v: v > 0),
    "weight_decay": ("0 or more", lambda v: v >= 0),
    "grad_clip": ("0 or more (0: no clipping)", lambda v: v >= 0),
    "adam_beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_eps": ("positive", lambda v: v > 0),
    "min_lr_ratio": ("in [0, 1] (the decay ends at lr x min_lr_ratio)", lambda v: 0 <= v <= 1),
    "decay_fraction": ("in (0, 1] (the fraction of the steps that decays)", lambda v: 0 < v <= 1),
    "mask_prob": ("between 0 and 1", lambda v: 0 < v < 1),
    "noise_density": ("between 0 and 1", lambda v: 0 < v < 1),
    "mean_span_length": ("at least 1", lambda v: v >= 1),
    "plm_prob": ("above 0 and at most 1", lambda v: 0 < v <= 1),
    "electra_disc_weight": ("positive", lambda v: v > 0),
}
# Settings that only a config file sets; every other field has a flag of its own name
# (`phases` and `model_overrides` have `--phase` and `--set`). tests/test_train_units.py checks
# this against the click options.
CONFIG_ONLY = frozenset({"adam_beta1", "adam_beta2", "adam_eps", "bucket_batches", "electra_disc_weight",
                         "fsdp_min_params", "mean_span_length", "noise_density",
                         "num_eval_batches", "plm_prob", "segment_length", "phases", "model_overrides"})


def check_skip_data(skip_data, resume) -> None:
    """A UsageError for a `skip_data` (train's --skip-data) that is not a count, or given without
    a resume (`resume`: --resume or --resume-from, train's resume)."""
    import numbers

    flag = option("--skip-data", "skip_data")
    if isinstance(skip_data, bool) or not isinstance(skip_data, numbers.Integral) or skip_data < 0:
        raise UsageError(f"{flag} must be a number of steps, 0 or more, got {skip_data!r:.40}")
    if skip_data and not resume:
        raise UsageError(f"{flag} goes with {option('--resume or --resume-from', 'resume')}: it passes over the data "
                         "the steps after a checkpoint would read (a new run has none to go past)")


def resolve_precision(precision: str, device) -> str:
    """What `precision` means on `device` (a torch.device or its type): auto is bf16 autocast on a
    CUDA GPU that computes bfloat16 in hardware, fp16 autocast with loss scaling on one that
    does not (V100, T4), fp32 on one whose float16 is slower than its float32 (GTX 10xx, P40,
    GTX 16xx: embedders.fast_fp16) and elsewhere."""
    if precision != "auto":
        return precision
    kind = getattr(device, "type", device)
    if kind != "cuda":
        return "fp32"
    from protrans_cli.embedders import fast_fp16, native_bf16

    return "bf16" if native_bf16(device) else "fp16" if fast_fp16(device) else "fp32"


def _no_duplicate_keys(pairs):
    """A JSON object with a key twice is an error (TOML's parser refuses it too); json keeps the last."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"setting {key!r} given twice")
        out[key] = value
    return out


def setting_name(name: str) -> str:
    """How a message names a setting: its flag and config key, or the key alone."""
    return name if name in CONFIG_ONLY else f"--{name.replace('_', '-')} ({name})"


def _check_types(cls, data: dict, source: str) -> None:
    """A config file's scalar settings have the field's type (`num_steps = "ten"` was a traceback)."""
    for f in dataclasses.fields(cls):
        if f.name in data and (problem := type_problem(f.type, data[f.name])):
            raise UsageError(f"{source}: {f.name} must be {problem}, got {data[f.name]!r}")
        if f.name in data and f.type.replace("| None", "").strip() == "float" and data[f.name] is not None:
            try:
                data[f.name] = float(data[f.name])
            except OverflowError:  # a JSON integer of hundreds of digits: a traceback
                raise UsageError(f"{source}: {f.name} is too large a number ({str(data[f.name])[:20]}...)") from None


def expand_corpus_paths(paths, key: str = "corpus") -> list[str]:
    """Corpus paths with shell patterns expanded (`corpus.*.txt.gz`, sorted), so a config file or
    a quoted flag can name hundreds of `prep --shards` files; a literal file name wins. `key`:
    corpus or val_corpus, which the error names."""
    import glob
    import os

    out: list[str] = []
    for path in paths:
        path = str(path)
        if path != "-" and glob.has_magic(path) and not os.path.exists(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise UsageError(f"no {'validation ' if key == 'val_corpus' else ''}corpus file matches {path!r}")
            out.extend(matches)
        else:
            out.append(path)
    return out


def _phase_from(value, source: str) -> Phase:
    if isinstance(value, Phase):
        return value
    if isinstance(value, str):
        try:
            return Phase.parse(value)
        except UsageError as exc:
            # The file's phase, not a --phase flag the user never gave: name the file.
            raise UsageError(exc.message.replace("--phase ", "phase ", 1), path=source) from None
    if isinstance(value, dict):
        for key, number in value.items():
            if number is None and key in ("global_batch_size", "micro_batch_size"):
                continue  # the config's own batch sizes (as a saved config writes them)
            if not isinstance(number, int) or isinstance(number, bool):
                raise UsageError(f"{source}: phase {key} must be a whole number, got {number!r}")
        known = [f.name for f in dataclasses.fields(Phase)]
        unknown = [key for key in value if key not in known]
        if unknown:  # (it said "Phase.__init__() got an unexpected keyword argument")
            raise UsageError(f"{source}: unknown phase setting(s) {', '.join(map(str, unknown))} (a phase has "
                             f"{', '.join(known)})")
        # (every key is a field and every value a whole number or None by now: a field left out
        # is the one TypeError Phase(**value) could raise)
        missing = [f.name for f in dataclasses.fields(Phase)
                   if f.name not in value and f.default is dataclasses.MISSING]
        if missing:
            raise UsageError(f"{source}: a phase needs {', '.join(missing)}: {value!r}")
        return Phase(**value)
    raise UsageError(f"{source}: bad phase {value!r}")


def grad_accum_steps(global_batch_size: int, micro_batch_size: int, world_size: int,
                     *, where: str = "training") -> int:
    """global / (micro x world); an error naming all three when it does not divide."""
    if global_batch_size < 1 or micro_batch_size < 1:
        raise UsageError(f"{where}: the global batch size ({global_batch_size}) and the micro-batch size "
                         f"({micro_batch_size}) must be at least 1")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        # What to do: a run requeued on fewer or more GPUs keeps its global batch (--resume
        # refuses another) but may change its micro-batch size.
        if global_batch_size % world_size:
            advice = f"use a number of processes that divides {global_batch_size}"
        else:
            share = global_batch_size // world_size
            fits = max(d for d in range(1, min(micro_batch_size, share) + 1) if share % d == 0)
            advice = (f"use a micro batch size that divides {share}, e.g. {fits} (it may change on --resume; "
                      "the global batch size may not)")
        raise UsageError(
            f"{where}: global batch size {global_batch_size} is not divisible by micro batch size "
            f"{micro_batch_size} x {world_size} process(es) = {per_step}: {advice}")
    return global_batch_size // per_step


def parse_set(items) -> dict[str, Any]:
    """`--set num_hidden_layers=4 --set hidden_dropout_prob=0.0` -> typed dict (JSON values)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out
