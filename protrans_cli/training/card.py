"""README.md model cards for the model directories `protrans train` writes (the run's final model
at the root of the run directory, and every checkpoint), in the form the Hugging Face Hub shows:
YAML front matter (library_name, tags, pipeline_tag) and sections on the model, its training, its
results and how to use it, written from the run's resolved config and its own metrics.jsonl;
and the shorter cards of `protrans finetune`'s merged model (finetune_card) and of the model
directories `protrans import-model` writes (import_card), each made through made_card.
Nothing is looked up on the network; what the run did not record is left out, not guessed.

The card marks itself (`MARK`, an HTML comment the Hub does not show): a README.md without the
mark is the user's own and is never replaced (`may_write`). The usage snippet mirrors the family's
`encode` (spacing, rare residues, special-token rows dropped) and is written only where a probe
sequence tokenized its way gives exactly the ids `encode` gives (`snippet`): no convention made up.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from protrans_cli.console import counted

CARD_FILE = "README.md"
MARK = "<!-- protrans model card: written by protrans; remove this line to keep protrans from replacing the file -->"
# a probe of every residue letter, the rare ones included (U, Z, O, B: X for most families)
_PROBE = "MKTAYIAKQRQISFVKSHFSRQACDEGLNPWUZOBX"

# the Hub's pipeline for a family's pretraining objective: one that transformers 5's `pipeline()`
# runs on the model as saved. None for a permutation LM, ELECTRA's pair, or T5 (transformers 5
# removed text2text-generation; text-generation refuses T5ForConditionalGeneration, and
# feature-extraction's T5Model wants decoder inputs)
_PIPELINES = {"mlm": "fill-mask", "clm": "text-generation"}
# objectives whose loss is the mean cross-entropy per predicted token, so exp(loss) is a perplexity
_PERPLEXITY = ("mlm", "t5", "t5_span", "plm", "clm")
# keyword arguments of a family's load_encoder beyond the model directory (models/esm.py)
_ENCODER_KWARGS = {"esm": "add_pooling_layer=False"}


def may_write(directory) -> bool:
    """Whether protrans may write its card into `directory`: no README.md there, or one of its own."""
    path = Path(directory) / CARD_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return False
    if not path.exists():
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARK in f.read(1 << 16)
    except OSError:
        return False


def write_card(directory, text: str) -> None:
    """The card as `directory`/README.md (a directory being written: its rename makes it appear)."""
    Path(directory, CARD_FILE).write_text(text, encoding="utf-8")


def made_card(make, what: str) -> str | None:
    """`make()`'s card text; None, with a warning naming `what` the card is of, where it cannot be
    made (a bug in the card: the model is what a save must not lose, written without it)."""
    from protrans_cli import console
    from protrans_cli.errors import first_line

    try:
        return make()
    except Exception as exc:  # pragma: no cover - a bug in the card
        console.warn(f"no model card (README.md) for {what}: {first_line(exc)}")
        return None


def _uses_transformers(family) -> bool:
    """Whether the family's encoder is a transformers class (library_name, the snippet)."""
    return (family.encoder_class.__module__ or "").startswith("transformers.")


def _front_matter(family, *, tags: tuple = (), base_model: str | None = None, pipeline: str | None = None) -> list:
    """The card's YAML front matter (the Hub's metadata) and the mark, as lines: library_name for a
    transformers encoder, `base_model`, the tags every card has and `tags`, `pipeline` (with
    library_name only)."""
    uses_transformers = _uses_transformers(family)
    front = ["---"] + (["library_name: transformers"] if uses_transformers else [])
    if base_model:
        front.append(f"base_model: {base_model}")
    # (each tag once: the objective of T5 and ELECTRA is named as the family is)
    front += ["tags:", *(f"- {tag}" for tag in dict.fromkeys(("protein language model", "protein", "protrans",
                                                             family.name, *tags)))]
    if uses_transformers and pipeline:
        front.append(f"pipeline_tag: {pipeline}")
    return front + ["---", MARK, ""]


def _torch_version() -> str:
    import torch

    return torch.__version__


def _count(n: int) -> str:
    return f"{n:,}"


def _number(x: float) -> str:
    return f"{x:.4g}"


def _heads(config) -> int | None:
    from protrans_cli.dir_info import _SIZES  # (the config keys info reads the head count from)

    for key in _SIZES["heads"]:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def architecture(family, config) -> str | None:
    """`layers x hidden x heads` (T5: encoder + decoder layers), None where the config does not say."""
    try:
        layers, hidden = family.num_layers(config), family.embedding_dim(config)
    except (AttributeError, TypeError, ValueError):
        return None
    decoder = getattr(config, "num_decoder_layers", None) if family.name == "t5" else None
    heads = _heads(config)
    text = f"{layers} + {decoder} (encoder + decoder) layers" if decoder else f"{layers} layers"
    text += f" x hidden {hidden}"
    return text + (f" x {heads} attention heads" if heads else "")


def _encoder_params(family, config) -> int | None:
    from protrans_cli.models.base import _count_on_meta

    try:
        return _count_on_meta(lambda: family.encoder_model(config))
    except Exception:  # (a family whose encoder cannot be built on the meta device: the line is left out)
        return None


def snippet(family, tokenizer) -> str | None:
    """Python that reads the model directory with plain transformers and gives the per-residue
    rows `protrans embed` gives; None where the family's encoder is not a transformers class or
    its tokenizer does not lay proteins out as the snippet does."""
    try:
        uses_transformers = _uses_transformers(family)
    except Exception:
        return None
    if not uses_transformers or not _snippet_ids_match(family, tokenizer):
        return None
    name = family.encoder_class.__name__
    tok_kwargs = "".join(f", {k}={v!r}" for k, v in family.tokenizer_kwargs.items())
    model_kwargs = "".join(f", {k}" for k in filter(None, [_ENCODER_KWARGS.get(family.name)]))
    lines = ["import re", "", "import torch", f"from transformers import AutoTokenizer, {name}", "",
             'model_dir = "."  # this folder (or its Hub id once uploaded)',
             f"tokenizer = AutoTokenizer.from_pretrained(model_dir{tok_kwargs})",
             f"model = {name}.from_pretrained(model_dir{model_kwargs}).eval()", "",
             'sequence = "MKTAYIAKQRQISFVKSHFSRQ"']
    text = "sequence.upper()"
    if family.rare_to == "X":
        lines.append("# rare residues U, Z, O, B read as X, as in training")
        text = f're.sub("[UZOB]", "X", {text})'
    if family.spaced:
        lines.append("# one residue per word, separated by spaces")
        text = f'" ".join({text})'
    lines += [f"text = {text}",
              "inputs = tokenizer(text, return_tensors=\"pt\", return_special_tokens_mask=True)",
              'special = inputs["special_tokens_mask"][0].bool()',
              "with torch.no_grad():",
              "    hidden = model(" + ", ".join(f'{k}=inputs["{k}"]' for k in family.input_names)
              + ").last_hidden_state[0]",
              "per_residue = hidden[~special]  # (len(sequence), hidden size): the special tokens' rows dropped",
              "per_protein = per_residue.mean(0)  # protrans embed's default pooling"]
    return "\n".join(lines)


def _snippet_ids_match(family, tokenizer) -> bool:
    """Whether the snippet's tokenization of a probe gives the ids and residue rows of `encode`."""
    try:
        seq = _PROBE.upper()
        if family.rare_to == "X":
            seq = re.sub("[UZOB]", "X", seq)
        text = " ".join(seq) if family.spaced else seq
        enc = tokenizer(text, return_special_tokens_mask=True)
        inputs, mask = family.encode(tokenizer, [_PROBE])
        ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
        rows = mask[0][inputs["attention_mask"][0].bool()].tolist()
        return enc["input_ids"] == ids and [not s for s in enc["special_tokens_mask"]] == rows
    except Exception:
        return False


def _metrics_until(run_dir, step: int) -> list[dict]:
    from protrans_cli.training.metrics import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    try:
        rows = read_metrics(path) if path.is_file() else []
    except Exception:
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= step]


def _corpus_names(paths) -> str:
    return ", ".join("standard input" if p == "-" else f"`{os.path.basename(p)}`" for p in paths)


def _init_from(name: str) -> str:
    return f"`{os.path.basename(os.path.normpath(name))}`" if os.path.exists(name) else f"`{name}`"


def train_card(*, family, model, tokenizer, config, resolved: dict, step: int, run_dir, world_size: int = 1,
               strategy: str | None = None, checkpoint: bool = False, tokens: int | None = None,
               history: dict | None = None) -> str:
    """The card of a training run's model at `step`: the final model, or with `checkpoint` one
    of its checkpoints. `config`: the run's TrainConfig (resolved); `resolved`: what its
    automatic settings meant (train_config.json's "resolved"); `tokens`: the real tokens trained
    up to `step` (the run's count; None: the sum of metrics.jsonl's lines up to it, which
    leaves out the steps after the last line); `history`: the run's `nonfinite_steps` (the steps
    --skip-nonfinite skipped), `skipped_data` (--skip-data's passes) and `processes` (each
    invocation's first step, world size, strategy and precision), as its checkpoints keep them;
    without `processes`, `world_size` and `strategy` are the run's throughout."""
    import transformers

    from protrans_cli import __version__

    model_config = model.config
    objective = config.objective or family.objective
    phases = config.resolved_phases()
    total = sum(p.num_steps for p in phases)
    uses_transformers = _uses_transformers(family)
    code = snippet(family, tokenizer)

    front = _front_matter(family, tags=(objective,), pipeline=_PIPELINES.get(objective))

    title = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    what = f"checkpoint at step {_count(step)} of {_count(total)}" if checkpoint else "final model"
    untrained = total == 0
    if untrained:  # (num_steps 0: a random-initialisation baseline)
        front = _front_matter(family, tags=("untrained", "random-initialisation-baseline"))
        about = (f"A protein language model architecture, {family.description or family.name}, UNTRAINED (0 steps): "
                 f"its weights as the model class initialises them under seed {config.seed}, written by `protrans "
                 f"train --num-steps 0` (protrans {__version__}). A random-initialisation baseline: embeddings of "
                 "this model next to a pretrained one's separate what pretraining learned from what the "
                 "architecture alone gives a prediction head. It has learned nothing.")
    else:
        about = (f"A protein language model, {family.description or family.name}: the {what} of a run of "
                 f"`protrans train` (protrans {__version__})"
                 + (f", continued from {_init_from(config.init_from)}." if config.init_from
                    else ", trained from scratch."))
    out = [f"# {title}" + (f" (step {step})" if checkpoint else ""), "", about, "", "## Model", ""]
    out.append(f"- Family: {family.name} (`{type(model).__name__}`"
               + (f"; embeddings from `{family.encoder_class.__name__}`" if uses_transformers else "") + ")")
    if config.preset and not config.init_from:
        overrides = ", ".join(f"{k}={v}" for k, v in sorted(config.model_overrides.items()))
        out.append(f"- Preset: {config.preset}" + (f" with {overrides}" if overrides else ""))
    if arch := architecture(family, model_config):
        out.append(f"- Architecture: {arch}")
    params = sum(p.numel() for p in model.parameters())
    encoder = _encoder_params(family, model_config)
    out.append(f"- Parameters: {_count(params)}" + (f" ({_count(encoder)} in the encoder that embeddings come from)"
                                                    if encoder and encoder != params else ""))
    vocab = getattr(model_config, "vocab_size", None)
    if isinstance(vocab, int):
        out.append(f"- Vocabulary: {_count(vocab)} tokens")

    if untrained:
        out += ["", "## Training", "", "- Steps: 0 (untrained: no corpus read, no optimizer step)",
                f"- Seed: {config.seed} (the same seed writes the same weights)",
                f"- Software: protrans {__version__}, transformers {transformers.__version__}, torch "
                f"{_torch_version()}"]
        return "\n".join(front + out + _use(family, tokenizer, "of this model")) + "\n"
    rows = _metrics_until(run_dir, step)
    out += ["", "## Training", ""]
    if config.recipe:
        out.append(f"- Recipe: `{config.recipe}` (`protrans_cli/recipes/{config.recipe}.toml`, with this run's flags "
                   "over it: the lines here are the settings it trained with)")
    out += [f"- Objective: {objective}"
            + (f" ({config.mask_prob:.0%} of the residues masked)" if objective in ("mlm", "electra") else "")]
    corpus = resolved.get("corpus") or config.corpus
    seen = 0
    start = 0
    for p in phases:
        seen += max(0, min(step, start + p.num_steps) - start) * p.global_batch_size
        start += p.num_steps
    if tokens is None:
        tokens = sum(r["tokens"] for r in rows if isinstance(r.get("tokens"), int))
    sampled = ("; read by clusters, one member of every cluster an epoch (--sample-clusters)"
               if getattr(config, "sample_clusters", False) else "")
    out.append(f"- Corpus: {_corpus_names(corpus)}{sampled}; {_count(seen)} proteins seen"
               + (f", {_count(tokens)} tokens" if tokens else ""))
    out.append(f"- Steps: {_count(step)} of {_count(total)}" + _skipped(history or {}))
    if len(phases) > 1:
        out.append("- Phases (max length: steps x global batch): "
                   + "; ".join(f"{p.max_length}: {_count(p.num_steps)} x {p.global_batch_size}" for p in phases))
    else:
        out.append(f"- Global batch: {phases[0].global_batch_size} proteins; max length {phases[0].max_length} tokens")
    opt = f"- Optimizer: {config.optimizer}"
    if config.optimizer in ("adamw", "lamb"):
        opt += f" (betas {config.adam_beta1:g}/{config.adam_beta2:g}, eps {config.adam_eps:g}"
        opt += f", weight decay {config.weight_decay:g})"
    out.append(opt + (f"; gradient clipping at norm {config.grad_clip:g}" if config.grad_clip else ""))
    warmup = resolved.get("warmup_steps", config.warmup_steps)
    stable = f"constant, then over the last {config.decay_fraction:.0%} of the steps"
    held = (f" at step {_count(config.decay_steps)}, held after it"
            if getattr(config, "decay_steps", None) is not None else "")
    schedule = {"linear": f"linear decay to {config.min_lr_ratio:g} of the peak{held}",
                "cosine": f"cosine decay to {config.min_lr_ratio:g} of the peak{held}",
                "wsd": f"{stable} linear decay to {config.min_lr_ratio:g} of the peak (warmup-stable-decay)",
                "wsd_sqrt": f"{stable} 1 - sqrt decay to {config.min_lr_ratio:g} of the peak (warmup-stable-decay)",
                "inverse_sqrt": "inverse square-root decay", "constant": "constant"}.get(config.schedule,
                                                                                       config.schedule)
    out.append(f"- Learning rate: {config.lr:g} peak"
               + (f", {_count(warmup)} warmup step{'s' if warmup != 1 else ''}" if warmup else "")
               + f", {schedule}")
    out += process_lines((history or {}).get("processes"), step, resolved.get("precision", config.precision),
                         world_size, strategy)
    out.append(f"- Seed: {config.seed}")
    out.append(f"- Software: protrans {__version__}, transformers {transformers.__version__}")

    losses = [r for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    evals = [r for r in rows if isinstance(r.get("eval_loss"), (int, float)) and math.isfinite(r["eval_loss"])]
    if losses or evals:
        out += ["", "## Results", ""]
        if losses:
            out.append(f"- Training loss: {_number(losses[-1]['loss'])} (step {losses[-1]['step']})")
        if evals:
            e = evals[-1]
            line = f"- Eval loss: {_number(e['eval_loss'])} (step {e['step']}"
            if objective in _PERPLEXITY and not (objective == "mlm" and config.sop):
                line += f"; perplexity {_number(math.exp(min(e['eval_loss'], 700)))}"
            val = resolved.get("val_corpus") or config.val_corpus
            out.append(line + ")" + (f" on {_corpus_names(val)}" if val else ""))

    out += _use(family, tokenizer, "of this model")
    if not code:
        out += ["", "This model loads through protrans (`protrans_cli.models.load_model`), which holds its "
                    "model code or its input convention."]
    return "\n".join(front + out) + "\n"


def _process_segments(processes, step: int) -> list[dict]:
    """The steps up to `step` each process setting trained, in order: {"first", "last",
    "world_size", "strategy", "precision"}, invocations in a row with the same setting merged (a
    run resumed by as many processes as before is one stretch); an invocation that trained no
    step up to `step` is left out. Entries that are not an invocation's record are ignored."""
    def usable(e):
        return (isinstance(e, dict) and isinstance(e.get("first_step"), int) and 1 <= e["first_step"] <= step
                and isinstance(e.get("world_size"), int) and e["world_size"] >= 1)

    entries = sorted((e for e in processes or [] if usable(e)), key=lambda e: e["first_step"])
    segments: list[dict] = []
    for e in entries:
        strategy = e.get("strategy") if e["world_size"] > 1 and isinstance(e.get("strategy"), str) else None
        precision = e.get("precision") if isinstance(e.get("precision"), str) else None
        key = (e["world_size"], strategy, precision)
        if segments and (segments[-1]["world_size"], segments[-1]["strategy"], segments[-1]["precision"]) == key:
            continue  # (the same setting resumed: one stretch)
        if segments:
            segments[-1]["last"] = e["first_step"] - 1
        segments.append({"first": e["first_step"], "last": step, "world_size": e["world_size"],
                         "strategy": strategy, "precision": precision})
    return segments


def _steps(first: int, last: int) -> str:
    return f"step {_count(first)}" if first == last else f"steps {_count(first)}-{_count(last)}"


def process_history(processes, step: int, precision: str | None = None) -> tuple[str, str] | None:
    """The precision and the processes of the steps up to `step` as the run's records say them
    (`processes`: training loop's history["processes"], each invocation's first step, world size,
    strategy and precision): ("bf16", "2 (ddp) for steps 1-10, 1 for steps 11-20"), the
    precision by stretch where it differed ("fp16 for steps 1-4, bf16 for steps 5-9"), the steps
    before the first record said "not recorded"; None where no record covers a step. `precision`:
    a record's that says none. (The card's lines and `protrans info`'s, which imports no torch.)"""
    segments = _process_segments(processes, step)
    if not segments:
        return None
    precisions = {s["precision"] or precision for s in segments}
    if len(precisions) == 1:
        precision_said = str(precisions.pop())
    else:
        precision_said = ", ".join(f"{s['precision'] or precision} for {_steps(s['first'], s['last'])}"
                                   for s in segments)
    said = ", ".join(f"{s['world_size']}" + (f" ({s['strategy']})" if s["strategy"] else "")
                     + f" for {_steps(s['first'], s['last'])}" for s in segments)
    if segments[0]["first"] > 1:  # (resumed from a checkpoint of a version that did not record them)
        said += f" ({_steps(1, segments[0]['first'] - 1)}: not recorded)"
    return precision_said, said


def process_lines(processes, step: int, precision: str, world_size: int = 1, strategy: str | None = None) -> list:
    """The card's precision and process lines for the model at `step`. `processes`: the run's
    invocations as its checkpoints record them (training loop's history["processes"]: each one's
    first step, world size, strategy and precision); where they all trained alike (or none is
    recorded: `world_size` and `strategy`, the current invocation's), one line as
    "- Precision: bf16; 2 processes, strategy ddp"; else the precision line and
    "- Processes: 2 (ddp) for steps 1-10, 1 for steps 11-20"."""
    segments = _process_segments(processes, step)
    if len(segments) <= 1:
        if segments:
            world_size, strategy = segments[0]["world_size"], segments[0]["strategy"]
            precision = segments[0]["precision"] or precision
        return [f"- Precision: {precision}; {world_size} process{'es' if world_size != 1 else ''}"
                + (f", strategy {strategy}" if strategy and world_size > 1 else "")]
    precision_said, said = process_history(processes, step, precision)
    return [f"- Precision: {precision_said}", f"- Processes: {said}"]


def _skipped(history: dict) -> str:
    """What a run left out of its steps: those --skip-nonfinite skipped, the data --skip-data passed
    over (each pass), or nothing."""
    said = []
    skipped = history.get("nonfinite_steps")
    if isinstance(skipped, int) and skipped > 0:
        said.append(f"{_count(skipped)} skipped, {'its' if skipped == 1 else 'their'} gradient not finite "
                    "(`--skip-nonfinite`)")
    for p in history.get("skipped_data") or []:
        if isinstance(p, dict) and isinstance(p.get("steps"), int) and isinstance(p.get("after_step"), int):
            said.append(f"the data of {_count(p['steps'])} step{'s' if p['steps'] != 1 else ''} passed over after "
                        f"step {_count(p['after_step'])} (`--skip-data`)")
    return "".join(f"; {s}" for s in said)


def _hub_id(name: str) -> str | None:
    """The Hub id of a model named as `-m` takes it: a short name's, or an `owner/name` that is no
    local path; None for a local directory (a card's base_model names Hub models only)."""
    from protrans_cli.models.checkpoints import CHECKPOINTS

    if name in CHECKPOINTS:
        return CHECKPOINTS[name].hub_id
    if not os.path.exists(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name
    return None


def _use(family, tokenizer, what: str) -> list[str]:
    code = snippet(family, tokenizer)
    out = ["", "## Use", "", f"Per-residue and per-protein embeddings {what} with protrans:", "", "```bash",
           "protrans embed -m . proteins.fasta -o embeddings.h5", "```"]
    if code:
        out += ["", "With transformers alone (what `protrans embed` computes, for one protein):", "",
                "```python", code, "```"]
    return out


def finetune_card(*, family, tokenizer, model, config, task, proteins: int) -> str:
    """The shorter card of `protrans finetune`'s merged model (OUT/model): the base model and
    what was done to it. `config`: the FinetuneConfig; `task`: its heads.tasks.Task."""
    from protrans_cli import __version__

    from protrans_cli.embed import model_attr

    base = _hub_id(config.model)
    front = _front_matter(family, tags=("lora",), base_model=base)
    shown = base or os.path.basename(os.path.normpath(config.model)) or config.model
    out = ["# Fine-tuned encoder", "",
           f"The encoder of `{shown}` ({family.description or family.name}) fine-tuned by `protrans finetune` "
           f"(protrans {__version__}) together with a {task.kind.replace('_', '-')} head for the {task.name} task, "
           "its LoRA adapters merged into the weights: an ordinary model directory of the base model's "
           "architecture and tokenizer (the head is saved beside it, in ../head).", "",
           "## Fine-tuning", "",
           # (a local directory by its absolute path: as given, `models/x` meant nothing elsewhere)
           f"- Base model: `{model_attr(config.model)}`",
           f"- LoRA: rank {config.lora_rank}, alpha {config.lora_alpha:g}, dropout {config.lora_dropout:g}"
           + (f" on {', '.join(family.lora_targets)}" if family.lora_targets else ""),
           f"- Task: {task.name} ({task.kind.replace('_', '-')}), {proteins:,} training proteins",
           f"- Optimizer: AdamW, lr {config.lr:g}, weight decay {config.weight_decay:g}, "
           f"at most {counted(config.max_epochs, 'epoch')} (patience {config.patience})",
           f"- Seed: {config.seed}",
           f"- Parameters: {sum(p.numel() for p in model.parameters()):,}"]
    out += _use(family, tokenizer, "of the fine-tuned encoder")
    return "\n".join(front + out) + "\n"


def import_card(*, loaded, source: str, details: list[str], base: str | None = None) -> str:
    """The card of a model directory `protrans import-model` wrote, from the model as it loads
    back (`loaded`: load_model's LoadedModel): what it was converted from (`source`, one line),
    the conversion's own facts (`details`, list items), the family, architecture and parameters,
    and how to use it. `base`: a peft adapter's base model (a Hub id becomes base_model)."""
    from protrans_cli import __version__

    family, model = loaded.family, loaded.model
    front = _front_matter(family, tags=("lora",) if base else (), base_model=_hub_id(base) if base else None)
    readers = ("`protrans embed -m` and transformers' `from_pretrained`" if _uses_transformers(family)
               else "`protrans embed -m`")
    out = ["# Imported model", "", f"{source}, converted by `protrans import-model` (protrans {__version__}) into a "
           f"model directory that {readers} read; its weights were read back and compared with the source's, "
           "one by one.", "", "## Model", "",
           f"- Family: {family.name} ({family.description or family.name}; `{type(model).__name__}`)"]
    if arch := architecture(family, model.config):
        out.append(f"- Architecture: {arch}")
    out.append(f"- Parameters: {_count(sum(p.numel() for p in model.parameters()))}")
    out += [f"- {line}" for line in details]
    out += _use(family, loaded.tokenizer, "of this model")
    return "\n".join(front + out) + "\n"
