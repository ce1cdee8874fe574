"""ProstT5's translations (`protrans translate`): amino acids to Foldseek 3Di strings, and 3Di
strings to amino acids (inverse folding).

ProstT5 (Heinzinger et al. 2024, Rostlab/ProstT5) is ProtT5-XL fine-tuned to translate between
a protein's amino acids and Foldseek's 3Di structure alphabet (20 states, one a residue). Its
encoder reads the source as its model card lays it out: `<AA2fold>` before upper-case amino acids
(to 3Di) or `<fold2AA>` before lower-case 3Di letters (to amino acids), spaced, then `</s>`: the
family's `encode` with the prefix, as `protrans embed` and `embed --3di` read them. Its decoder
writes the target with transformers' `model.generate`:

- exactly one letter a residue: a logits processor (`TargetAlphabet`) lets the decoder write only
  the target alphabet's 20 tokens (lower-case 3Di tokens, or the 20 amino acids) until the
  protein's length, then only `</s>`; generation stops at the batch's longest protein;
- greedy by default (deterministic; the same letters whatever the batching, in float32). The
  model card samples (AA -> 3Di: do_sample, num_beams 3, top_p 0.95, temperature 1.2, top_k 6,
  repetition_penalty 1.2; 3Di -> AA: do_sample, top_p 0.85, temperature 1.0, top_k 3,
  repetition_penalty 1.2): `sample=True` with those settings reproduces it; `num_beams` runs beam
  search; `num_sequences` > 1 (sampling or beams) writes several designs a protein.
- sampling without beams is drawn here (`RowSampler`, a logits processor after the repetition
  penalty and TargetAlphabet, under greedy `generate`): record r's design k draws from a
  generator of its own seeded by (seed, r's id's 64-bit digest, k), one uniform number a letter,
  under temperature, then top-k, then top-p (transformers' order), so a record's designs are the
  same whatever the batching or the other records (up to float rounding of batched passes).
  Beam sampling (`sample` with `num_beams` > 1, the model card's AA -> 3Di) is transformers' own:
  its beams draw from torch's generator together, seeded a batch at a time by (seed, the
  batch's ids): reproducible for the same batching, not whatever the batching.

Identical sequences (as the encoder reads them: upper-case, rare amino acids as X; 3Di
lower-case) are translated once a run under greedy decoding and beam search (they would get the
same letters), written under each record; under sampling each record draws its own (records with
one sequence get designs of their own, as their ids seed them). The translations of the distinct
sequences are held to the end of the run (about the output's size).

Output: FASTA, a record a protein (`ID_k` for design k of several), 3Di strings upper-case (as
Foldseek's databases hold them), headers `ID 3Di predicted by MODEL` or `ID designed from 3Di by
MODEL`. Records are read `window` at a time, sorted by length within it and batched by a
padded-token budget (`max_tokens`, counted with every beam and design), and written in input
order as each window's last batch ends, into the output's hidden temporary (renamed over it when
every record is written; stdout's: a temporary file copied out at the end, so that a failed run
prints nothing). With `-o FILE` each finished batch is also kept in FILE.partial/ (variants'
UnitStore, named by the model, device type, compute dtype, the settings the letters depend on
and the batch's sequences) until FILE is written: `resume=True` (`--resume`) goes on after an
interruption to the bytes an uninterrupted run writes; one under another setting the letters
depend on (SETTINGS) is refused naming it.

    summary = translate("proteins.fa", "proteins.3di.fa", TranslateOptions(model="prostt5", to="3di"))
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from protrans_cli import console
from protrans_cli.errors import (InputError, ModelError, UsageError, at_least, expect_options, expect_path, one_of,
                                  option, whole_number)

TARGETS = ("3di", "aa")
AA_PREFIX = "<AA2fold>"
CPU_MAX_TOKENS = 2048
GPU_MAX_TOKENS = 8192  # (not measured with ProstT5's weights: none here; a guess for a 3B decoder's cache)


@dataclass
class TranslateOptions:
    """Everything `protrans translate` can be asked for; the CLI fills it from its options."""

    model: str = "prostt5"
    to: str | None = None                # "3di" (amino acids in) or "aa" (3Di strings in)
    num_beams: int = 1
    sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    num_sequences: int = 1               # designs a protein (sampling, or at most num_beams beams)
    seed: int = 0
    invalid_policy: str = "error"        # a record that cannot be read: fail, or leave it out
    max_tokens: int | None = None        # padded tokens a batch, beams and designs counted
    max_batch_size: int = 64
    window: int = 10000                  # records read, sorted and translated at a time
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    resume: bool = False                 # -o FILE: go on with FILE.partial/, what an interrupted run kept

    def validate(self) -> None:
        from protrans_cli.embed import DTYPES
        from protrans_cli.embedders import check_device
        from protrans_cli.threads import check_threads

        if not isinstance(self.model, str) or not self.model:
            raise UsageError(f"{option('-m MODEL', 'model')}: give the translation model (prostt5)")
        from protrans_cli.embedders import is_weightless

        if is_weightless(self.model):
            raise UsageError(f"{option(f'-m {self.model}', 'model=' + repr(self.model))} is an encoding, not a model: "
                             f"translating needs ProstT5 ({option('-m prostt5', 'model=' + repr('prostt5'))})")
        if self.to is None:
            raise UsageError(f"{option('--to', 'to')} is required: 3di (amino acids in, 3Di strings out) or aa "
                             "(3Di strings in, amino acids out)")
        one_of(self.to, TARGETS, "--to", keyword="to")
        one_of(self.invalid_policy, ("error", "skip"), "--invalid-policy", keyword="invalid_policy")
        for name, flag, low in (("num_beams", "--num-beams", 1), ("num_sequences", "-n", 1), ("seed", "--seed", 0),
                                ("max_batch_size", "--max-batch-size", 1), ("window", "--window", 1)):
            value = getattr(self, name)
            if not whole_number(value):
                raise UsageError(f"{option(flag, name)} must be a whole number, got {value!r:.40}")
            at_least(value, low, flag, keyword=name)
        if self.max_tokens is not None:
            if not whole_number(self.max_tokens):
                raise UsageError(f"{option('--max-tokens', 'max_tokens')} must be a whole number, got "
                                 f"{self.max_tokens!r:.40}")
            at_least(self.max_tokens, 1, "--max-tokens", keyword="max_tokens")
        if self.top_k is not None:
            if not whole_number(self.top_k):
                raise UsageError(f"{option('--top-k', 'top_k')} must be a whole number, got {self.top_k!r:.40}")
            at_least(self.top_k, 1, "--top-k", keyword="top_k")
        for name, flag, value in (("temperature", "--temperature", self.temperature),
                                  ("repetition_penalty", "--repetition-penalty", self.repetition_penalty)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise UsageError(f"{option(flag, name)} must be a number above 0, got {value!r:.40}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"{option('--top-p', 'top_p')} must be above 0 and at most 1, got {self.top_p!r:.40}")
        for name in ("sample", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} is True or False, got {getattr(self, name)!r:.40}")
        if not self.sample:
            moved = [flag for flag, value, default in (("--temperature", self.temperature, 1.0),
                                                       ("--top-p", self.top_p, None), ("--top-k", self.top_k, None))
                     if value != default]
            if moved:
                raise UsageError(f"{option(moved[0], moved[0][2:].replace('-', '_'))} shapes sampling: give "
                                 f"{option('--sample', 'sample=True')} with it (decoding is greedy or beam search "
                                 "otherwise)")
            if self.num_sequences > self.num_beams:
                raise UsageError(f"{option('-n', 'num_sequences')} {self.num_sequences} designs a protein need "
                                 f"{option('--sample', 'sample=True')} or at least as many "
                                 f"{option('--num-beams', 'num_beams')} (greedy decoding writes one)")
        check_device(self.device)
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        if self.threads is not None:
            check_threads(self.threads)


@dataclass
class TranslateSummary:
    model: str
    to: str
    proteins: int = 0
    residues: int = 0
    records: int = 0          # written (proteins x designs)
    skipped: int = 0          # left out under invalid_policy skip
    repeated: int = 0         # records whose sequence an earlier record had: translated once
    seconds: float = 0.0
    device: str = ""
    compute_dtype: str = ""


class Translator:
    """A loaded ProstT5-like model (`load_model(name, masked_lm=True)`: T5ForConditionalGeneration)
    translating lists of sequences `to` "3di" or "aa" (`translate_batch`)."""

    def __init__(self, loaded, to: str):
        from protrans_cli.models.base import three_di_input

        one_of(to, TARGETS, "--to", keyword="to")
        self.loaded, self.to = loaded, to
        check_translation_model(loaded)
        amino, three_di = loaded.family, three_di_input(loaded.family)
        # the source read as the model card lays it out, the target's 20 tokens as the decoder writes them
        self.source = amino if to == "3di" else three_di
        self.alphabet, self.target_ids = target_tokens(three_di if to == "3di" else amino, loaded.tokenizer)
        self.eos = int(loaded.tokenizer.eos_token_id)
        self.device = loaded.device

    def translate_batch(self, sequences: list[str], options: TranslateOptions,
                        ids: list[str] | None = None) -> list[list[str]]:
        """For each sequence, `options.num_sequences` translations of exactly its length. Sampling
        without beams draws each row's letters from a generator of its own, seeded by (seed, the
        record id's 64-bit digest, the design's number) (`ids`, needed then): the same letters
        whatever the batch (up to float rounding of batched passes)."""
        import torch

        inputs, mask = self.source.encode(self.loaded.tokenizer, sequences)
        lengths = mask.sum(1)
        if lengths.tolist() != [len(s) for s in sequences]:  # (encode checks it; a translation is one a residue)
            raise UsageError(f"{self.loaded.name}: its tokenizer does not read one token a residue")
        n = options.num_sequences
        input_ids, attention = inputs["input_ids"], inputs["attention_mask"]
        processors = []
        if row_sampling(options):
            if ids is None or len(ids) != len(sequences):
                raise UsageError("translate_batch: sampling draws by record: give the ids")
            # (generate's own sampling draws from torch's one generator, in the batch's order: the
            # letters depended on the batching; here greedy decoding takes the one letter drawn)
            input_ids, attention, lengths = (t.repeat_interleave(n, 0) for t in (input_ids, attention, lengths))
            processors.append(RowSampler(record_draws(options.seed, ids, n), options))
        processors.insert(0, TargetAlphabet(self.target_ids, self.eos, lengths.to(self.device)))
        kwargs = generate_kwargs(options, int(lengths.max()))
        with torch.no_grad():
            out = self.loaded.model.generate(input_ids=input_ids.to(self.device),
                                             attention_mask=attention.to(self.device),
                                             logits_processor=processors, **kwargs)
        out = out[:, 1:].cpu()  # (the decoder's start token first)
        letters = {int(t): c for t, c in zip(self.target_ids, self.alphabet)}
        result = []
        for i, sequence in enumerate(sequences):
            designs = []
            for k in range(n):
                row = out[i * n + k, :len(sequence)].tolist()
                bad = next((t for t in row if t not in letters), None)
                if bad is not None:  # (the processor allows nothing else: a transformers that ignored it)
                    raise ModelError(f"{self.loaded.name}: generate wrote token {bad}, not a "
                                     f"{'3Di' if self.to == '3di' else 'amino-acid'} letter")
                designs.append("".join(letters[t] for t in row))
            result.append(designs)
        return result


def row_sampling(options: TranslateOptions) -> bool:
    """Sampling drawn by RowSampler, a generator a record's design (--sample without beams); beam
    sampling is transformers' own (its beams draw together), seeded a batch at a time."""
    return options.sample and options.num_beams == 1


def record_stream(ident: str) -> int:
    """A record id's 64-bit digest: its key in the seeds (as generate's --templates records')."""
    from protrans_cli.generate import Design

    return Design(None, "", record=ident).stream


def record_draws(seed: int, ids: list[str], n: int):
    """generate.Draws for the rows of several records, `n` a record (its designs, in order):
    record r's design k draws from a generator seeded by (seed, r's id's digest, k)."""
    from protrans_cli.generate import Draws

    return Draws(seed, [k for _ in ids for k in range(n)], [record_stream(i) for i in ids for _ in range(n)])


class RowSampler:
    """A logits processor for greedy `generate`: each row's next token drawn from the scores the
    processors before it left (repetition penalty, TargetAlphabet), under --temperature, then
    --top-k, then --top-p (the order transformers applies them; generate.filtered_log_probs), by
    a uniform number from the row's own generator; every other token -inf, so greedy decoding
    takes the one drawn."""

    def __init__(self, draws, options: TranslateOptions):
        self.draws = draws
        self.temperature, self.top_k, self.top_p = options.temperature, options.top_k, options.top_p

    def __call__(self, input_ids, scores):
        import torch

        from protrans_cli.generate import draw, filtered_log_probs

        log_probs = filtered_log_probs(scores, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        picked = draw(log_probs, self.draws.uniforms()).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), picked] = 0.0
        return out


def generate_kwargs(options: TranslateOptions, longest: int) -> dict:
    """`model.generate`'s keyword arguments: as many new tokens as the longest protein has residues
    (TargetAlphabet ends each shorter one with `</s>` at its own length), then the decoding
    settings (the sampling ones only for transformers' beam sampling: greedy ignores them, with a
    warning; RowSampler's rows are greedy over the one letter it drew, a row a design)."""
    own = row_sampling(options)
    kwargs = dict(max_new_tokens=longest, min_new_tokens=None, num_beams=options.num_beams,
                  num_return_sequences=1 if own else options.num_sequences, do_sample=options.sample and not own,
                  repetition_penalty=options.repetition_penalty)
    if options.sample and not own:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if options.num_beams > 1:
        kwargs.update(early_stopping=True)
    return kwargs


class TargetAlphabet:
    """A logits processor for `generate`: row r (of the batch's proteins, each repeated for its
    beams or designs) may write only `allowed` (the target alphabet's token ids) before its
    protein's length, then only `eos` (at score 0: a beam's score is that of its letters alone)."""

    def __init__(self, allowed: list[int], eos: int, lengths):
        import torch

        self.allowed = torch.tensor(allowed, dtype=torch.long, device=lengths.device)
        self.eos = eos
        self.lengths = lengths

    def __call__(self, input_ids, scores):
        import torch

        rows = input_ids.shape[0]
        written = input_ids.shape[1] - 1  # (the decoder start token first)
        lengths = self.lengths.repeat_interleave(rows // len(self.lengths))  # (B * expand,)
        keep = torch.full_like(scores, float("-inf"))
        keep[:, self.allowed] = scores[:, self.allowed]
        done = lengths.to(scores.device) <= written
        if bool(done.any()):
            keep[done] = float("-inf")
            keep[done, self.eos] = 0.0
        return keep


def target_tokens(family, tokenizer) -> tuple[str, list[int]]:
    """The 20 letters (STANDARD) and the token id `family` reads each as: the decoder's target
    tokens (lower-case 3Di tokens through three_di_input, or the amino acids)."""
    from protrans_cli.residues import STANDARD

    inputs, mask = family.encode(tokenizer, [STANDARD])
    ids = inputs["input_ids"][0][mask[0]].tolist()
    return STANDARD, [int(i) for i in ids]


def check_translation_model(loaded) -> None:
    """UsageError unless `loaded` is an encoder-decoder with its decoder (T5ForConditionalGeneration)
    whose vocabulary holds ProstT5's prefixes and a token for every lower-case 3Di letter."""
    model = loaded.model
    check_translation_tokens(loaded.name, loaded.family, model.config, loaded.tokenizer)
    if not hasattr(model, "generate") or getattr(model, "decoder", None) is None:
        raise UsageError(f"{loaded.name}: not an encoder-decoder with its decoder ({type(model).__name__}): "
                         f"translating needs ProstT5's, e.g. {_PROSTT5}")


_PROSTT5 = option("-m prostt5", "model='prostt5'")


def check_translation_tokens(name: str, family, config, tokenizer) -> None:
    """check_translation_model's part that needs no weights (load_model's `before_weights`): an
    encoder-decoder config, ProstT5's prefixes and a token for every lower-case 3Di letter."""
    from protrans_cli.models.base import THREE_DI_PREFIX, three_di_input, unknown_residues

    if not getattr(config, "is_encoder_decoder", False):
        if getattr(config, "model_type", None) == "t5":  # (ProtT5's -enc checkpoints; T5EncoderModel's config)
            raise UsageError(f"{name}: an encoder saved without its decoder: translating needs ProstT5's encoder "
                             f"and decoder ({_PROSTT5})")
        raise UsageError(f"{name}: not an encoder-decoder ({getattr(config, 'model_type', None) or 'its config'}): "
                         f"translating needs ProstT5's, e.g. {_PROSTT5}")
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        vocab = {}
    missing = [p for p in (AA_PREFIX, THREE_DI_PREFIX) if p not in vocab]
    if missing:
        raise UsageError(f"{name}: its vocabulary has no {' or '.join(missing)}: not a translation model "
                         f"between amino acids and 3Di strings (ProstT5 is: {_PROSTT5})")
    lacking = unknown_residues(three_di_input(family), tokenizer)
    if lacking:
        raise UsageError(f"{name}: its vocabulary has no token for the 3Di letter(s) "
                         f"{', '.join(m.lower() for m in lacking)}")


def header(ident: str, k: int, n: int, to: str, model: str) -> str:
    name = ident if n == 1 else f"{ident}_{k + 1}"
    what = f"3Di predicted by {model}" if to == "3di" else f"designed from 3Di by {model}"
    return f">{name} {what}" + (f" (design {k + 1} of {n})" if n > 1 else "")


def _batches(order: list[int], lengths: list[int], budget: int, max_batch: int, expand: int):
    """Consecutive runs of `order` (indices sorted by length, longest first) whose padded tokens
    (longest x proteins x expand, the source's specials counted) stay within `budget`."""
    batch: list[int] = []
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * (longest + 2) * expand > budget or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# the options a translation depends on, each with its flag: a --resume under other values is
# refused naming the first that differs (the sampling ones only when sampling; --max-tokens,
# --max-batch-size and --window may change: a kept batch is named by its records, so one batched
# otherwise is computed again, never mixed in)
SETTINGS = (("model", "-m"), ("revision", "--revision"), ("to", "--to"), ("num_beams", "--num-beams"),
            ("sample", "--sample"), ("repetition_penalty", "--repetition-penalty"), ("num_sequences", "-n"))
SAMPLING_SETTINGS = (("seed", "--seed"), ("temperature", "--temperature"), ("top_k", "--top-k"),
                     ("top_p", "--top-p"))
SETTINGS_FILE = "translate-settings.json"  # (in OUTPUT.partial/: what its batches were translated under)


def settings_of(options: TranslateOptions, device: str | None = None, dtype: str | None = None) -> dict:
    """The options the letters depend on, for OUTPUT.partial/'s settings file; with the device
    type and compute dtype once the model is loaded."""
    values = {name: getattr(options, name) for name, _ in (*SETTINGS, *(SAMPLING_SETTINGS if options.sample else ()))}
    return values if device is None else {**values, "device": device, "dtype": dtype}


def _flag_of(name: str) -> str:
    return dict((*SETTINGS, *SAMPLING_SETTINGS, ("device", "--device"), ("dtype", "--dtype"))).get(name, name)


def _check_kept(folder, settings: dict) -> None:
    from protrans_cli.generate import check_kept_settings

    check_kept_settings(folder, settings, file=SETTINGS_FILE, flag_of=_flag_of, held="translations made")


def _unit_check(lengths: list[int], n: int, alphabet: str):
    """A kept batch: one line a design (n a protein, in order) of exactly its protein's length,
    in the target's letters."""
    import numpy as np

    letters = set(alphabet)

    def check(value) -> bool:
        if value.dtype != np.uint8 or value.ndim != 1:
            return False
        try:
            lines = value.tobytes().decode("ascii").split("\n")
        except UnicodeDecodeError:
            return False
        return len(lines) == n * len(lengths) and all(
            len(line) == lengths[i // n] and set(line) <= letters for i, line in enumerate(lines))

    return check


def translate(fasta, output="-", options: TranslateOptions | None = None) -> TranslateSummary:
    """Translate every record of `fasta` (a path, `-` for stdin; .gz read) `options.to` 3Di or
    amino acids with `options.model`, and write the FASTA `output` (`-`/None: stdout; .gz
    compresses), in input order, a window's records as its last batch ends (into the output's
    hidden temporary, renamed when all are written; for stdout into a temporary file, copied out
    at the end: nothing is written unless every record was translated). With `-o FILE` each
    finished batch is also kept in FILE.partial/ until FILE is written: `options.resume` goes on
    from them after an interruption, to the bytes an uninterrupted run writes (refused where an
    option the letters depend on differs). Greedy and beam search translate a sequence (as the
    encoder reads it) once a run, written under each record that holds it; sampling draws each
    record's designs from its own generators (by its id), so records with one sequence get
    designs of their own."""
    import time
    from pathlib import Path

    import torch

    from protrans_cli.embed import read_windows
    from protrans_cli.embedders import resolve_device
    from protrans_cli.io.files import display_name, streamed_output, through_link
    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads
    from protrans_cli.variants import UnitStore, partial_folder, resumable_output, unit_output_lock

    if options is None:
        raise UsageError("translate needs TranslateOptions(to='3di' or 'aa')")
    expect_options(options, TranslateOptions, "options")
    options.validate()
    expect_path(fasta, "fasta", " (one FASTA file, or '-' for stdin)")
    if output is not None:
        expect_path(output, "output", " (one FASTA file, or '-' for stdout)")
    to_stdout = output in (None, "-")
    special = resumable_output(output, options.resume, (fasta,), (options.model,))
    to_file = not to_stdout and not special
    target = through_link(Path(output)) if to_file else output
    name = display_name(fasta)
    device, dtype = resolve_device(options.device, options.dtype)
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    started = time.perf_counter()
    with threads, contextlib.ExitStack() as held:
        held.enter_context(unit_output_lock(target, to_file))
        if to_file and options.resume and partial_folder(target).is_dir():
            _check_kept(partial_folder(target), settings_of(options))  # (before the load)
        store = UnitStore(partial_folder(target), resume=options.resume, command="translate") if to_file else None
        try:
            loaded = load_model(options.model, device=device, dtype=dtype, revision=options.revision,
                                masked_lm=True, before_weights=check_translation_tokens)
        except ModelError as exc:
            from protrans_cli.models import FAMILIES

            if not any(f.masked_lm_lacking and f.masked_lm_lacking in exc.message for f in FAMILIES.values()):
                raise
            # (ProtT5's -enc checkpoints: "scoring residues needs the decoder" is variants' wording)
            raise UsageError(f"{options.model}: an encoder saved without its decoder: translating needs "
                             f"ProstT5's encoder and decoder ({option('-m prostt5', 'model=' + repr('prostt5'))})"
                             ) from None
        translator = Translator(loaded, options.to)
        summary = TranslateSummary(model=loaded.name, to=options.to, device=str(loaded.device),
                                   compute_dtype=str(loaded.dtype).removeprefix("torch."))
        settings = settings_of(options, loaded.device.type, summary.compute_dtype)
        units = None
        if store is not None:
            if options.resume:
                _check_kept(store.folder, settings)
            # (UnitStore names a unit by the model, its files, the device type and compute dtype)
            units = store.for_model(loaded, _StoreKey(loaded.device, summary.compute_dtype))
        # (input records, repeats and left-out ones included: a protein's sequence for --to 3di, a
        # structure's 3Di string for --to aa, not "protein" for both; the total where the input is a
        # file, counted by its headers before the first batch, as embed's and perplexity's bars)
        bar = console.progress(total=_count_records(fasta), desc="translating",
                               unit="protein" if options.to == "3di" else "structure") \
            if console.progress_wanted() else None
        seeded = torch.random.fork_rng(devices=[loaded.device] if loaded.device.type == "cuda" else [])
        try:
            with seeded, streamed_output(output) as stream:  # (stdout's: a file in TMPDIR, copied out at the end)
                _translate_all(fasta, name, read_windows, translator, options, settings, store, units, stream,
                               summary, bar)
        finally:
            if bar is not None:
                bar.close()
        if store is not None:
            store.remove()
    summary.seconds = time.perf_counter() - started
    if not to_stdout:
        console.output_complete(str(output))
    what = "3Di strings predicted" if options.to == "3di" else "amino-acid sequences designed"
    console.info(f"translate: {console.counted(summary.records, 'record')} ({what}) for "
                 f"{console.counted(summary.proteins, 'protein')}, {summary.residues:,} residues, with "
                 f"{summary.model} on {summary.device} ({summary.compute_dtype})"
                 + (f"; {console.counted(summary.skipped, 'record')} left out" if summary.skipped else "")
                 + (f"; {console.counted(summary.repeated, 'record')} repeating an earlier record's sequence "
                    "(translated once)" if summary.repeated else ""))
    return summary


def _count_records(fasta) -> int | None:
    """The FASTA records of `fasta` (its header lines), read in 1 MiB blocks (.gz decompressed);
    None for stdin or a stream (read once) and where the file cannot be read (translating it
    says why)."""
    from protrans_cli.errors import ProtransError
    from protrans_cli.embed import is_stream
    from protrans_cli.io.files import open_input

    if str(fasta) == "-" or is_stream(fasta):
        return None
    count, last = 0, b"\n"
    try:
        with open_input(fasta) as stream:
            while block := stream.read(1 << 20):
                count += block.count(b"\n>") + (last == b"\n" and block[:1] == b">")
                last = block[-1:]
    except (OSError, ProtransError):
        return None
    return count or None


class _StoreKey:
    """What UnitStore.for_model reads of a scorer: the device and compute dtype (translate has
    no length limit or policy)."""

    max_length = long_policy = None

    def __init__(self, device, compute_dtype: str):
        self.device, self.compute_dtype = device, compute_dtype


def _translate_all(fasta, name: str, read_windows, translator: Translator, options: TranslateOptions,
                   settings: dict, store, units, stream, summary: TranslateSummary, bar) -> None:
    """Every window read, its records' batches translated (or read from `store`'s kept units) and
    its records written to `stream` in input order."""
    import hashlib

    import numpy as np

    from protrans_cli.generate import _settings_file
    from protrans_cli.residues import THREE_DI
    from protrans_cli.variants import _compute, _run_unit, _unit_key

    alphabet = THREE_DI if options.to == "aa" else None
    skip = options.invalid_policy == "skip"
    cuda = translator.device.type == "cuda"
    budget = options.max_tokens or (GPU_MAX_TOKENS if cuda else CPU_MAX_TOKENS)
    expand = max(options.num_beams, options.num_sequences)
    n = options.num_sequences
    by_record = options.sample  # (sampling: a record's own draws; else a sequence's translation, once a run)
    normalise = translator.source.normalise
    # (a unit's name holds every setting its letters depend on: one made otherwise is never read)
    digest = _unit_key("translate-settings", "", [f"{k}={v!r}" for k, v in sorted(settings.items())])
    known: dict[str, list[str]] = {}  # greedy, beams: a source as the encoder reads it -> its translations
    seen: dict[str, int] = {}  # id -> its line: an output's ids are Foldseek's keys
    for window in read_windows(fasta, name, options.window, skip, alphabet, offered=()):
        for p in window:
            if p.id in seen:
                raise InputError(f"duplicate id (first seen on line {seen[p.id]}); ids must be unique "
                                 "because they name the output's records", path=name, line=p.line, record=p.id)
            seen[p.id] = p.line
        kept = [p for p in window if p.rejected is None]
        for p in window:
            if p.rejected is not None:
                summary.skipped += 1
                console.warn(f"{name}: record {p.id!r} left out: {p.rejected}")
                if bar is not None:
                    console.skip(bar, 1)  # (of the total: not translated)
        keys = [p.id if by_record else normalise(p.sequence) for p in kept]
        done: dict[str, list[str]] = {} if by_record else known
        todo, queued = [], set()
        for i, key in enumerate(keys):
            if key not in done and key not in queued:
                todo.append(i)
                queued.add(key)
        summary.repeated += 0 if by_record else len(kept) - len(todo)
        lengths = [len(p.sequence) for p in kept]
        order = sorted(todo, key=lambda i: -lengths[i])
        for batch in _batches(order, lengths, budget, options.max_batch_size, expand):
            ids = [kept[i].id for i in batch]
            sequences = [kept[i].sequence for i in batch]
            sources = [keys[i] for i in batch] if not by_record else \
                [f"{kept[i].id}\t{normalise(kept[i].sequence)}" for i in batch]

            def compute(ids=ids, sequences=sequences):
                if options.sample and not row_sampling(options):
                    # transformers' beam sampling draws from torch's generator: seeded by the batch's records
                    ident = hashlib.blake2b("\n".join(ids).encode("utf-8", "surrogatepass"), digest_size=8).digest()
                    torch_seed(options.seed, int.from_bytes(ident, "little"))
                designs = translator.translate_batch(sequences, options, ids)
                if bar is not None:
                    bar.update(len(ids))
                return np.frombuffer("\n".join(d for ds in designs for d in ds).encode("ascii"), dtype=np.uint8)

            if units is not None:
                _settings_file(store, settings, SETTINGS_FILE)
            key = _unit_key(f"translate-{digest}", "", sources)
            value = _run_unit(units or _compute, key, compute, bar, len(batch),
                              _unit_check([lengths[i] for i in batch], n, translator.alphabet))
            lines = value.tobytes().decode("ascii").split("\n")
            for j, i in enumerate(batch):
                done[keys[i]] = lines[j * n:(j + 1) * n]
        text = []
        for i, prot in enumerate(kept):
            for k, letters in enumerate(done[keys[i]]):
                text.append(f"{header(prot.id, k, n, options.to, translator.loaded.name)}\n{letters}\n")
                summary.records += 1
            summary.proteins += 1
            summary.residues += lengths[i]
        stream.write("".join(text).encode("utf-8"))
        if bar is not None and len(kept) > len(todo):
            console.skip(bar, len(kept) - len(todo))  # (repeats: not translated again)
    if not summary.proteins:
        raise InputError("no FASTA records" + (" left after --invalid-policy skip" if summary.skipped else ""),
                         path=name)


def torch_seed(seed: int, stream: int) -> None:
    """torch's generators (CPU and CUDA) seeded by (seed, stream)."""
    import numpy as np
    import torch

    torch.manual_seed(int(np.random.SeedSequence((seed, stream)).generate_state(1, np.uint64)[0]))
