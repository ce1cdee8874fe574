"""Sample protein sequences from a language model (`protrans generate`).

Two ways, by the kind of model:

    causal    Transformer-XL (ProtTXL) and XLNet (ProtXLNet): residues drawn left to right, each
              from the model's distribution given those before it (after `prompt`, a fixed
              N-terminal start), until the model writes the token its family puts after a
              protein (Transformer-XL's `</s>`, XLNet's `<sep>`) or `max_length` residues.
              Transformer-XL keeps its memory (`mems`) of the whole prefix, so a residue costs
              one token's forward pass (equal to a pass over the whole prefix: the way
              `protrans perplexity` reads a protein). XLNet reads the prefix and a dummy token
              that no position sees, predicted by its query stream (transformers'
              `XLNetLMHeadModel.prepare_inputs_for_generation`, without memory): a pass a
              residue over the whole prefix.
    template  masked LMs (ESM-2, ProtBert, ProtAlbert, ESM C, ...): the positions a template
              marks `_` designed by Gibbs-style sampling. Each starts as the mask token; they are
              filled one at a time in a random order, each drawn from the model's distribution
              there with the designed positions filled so far as they are and the rest masked;
              then `iterations` sweeps draw each designed position again (in a new random order)
              with it alone masked. The other residues never change. A complex (chains split
              by ':', `chains`): linker: the model reads the chains joined by `linker_length`
              glycines (never designed, dropped from the record), every `_` drawn with all chains
              present; separate: each chain's `_` with that chain alone, the chains in turn from
              the sequence's one generator. The records keep the ':'s. `templates`: a FASTA of
              templates, each designed `num_sequences` times (ids PREFIXRECORDID_0001, ...).

What may be drawn: the 20 canonical amino acids (special tokens, X, U, Z, O, B masked out of the
distribution first; `allow_rare` adds U and O where the model reads them as tokens of their own),
and, for a causal model, its end token once `min_length` residues are there. Then `temperature`
divides the logits, `top_k` keeps the k likeliest tokens and `top_p` the smallest set whose
probability reaches p (`filtered_log_probs`).

Reproducible: sequence i draws from a generator of its own seeded by (seed, i) (a templates file's
record's design k: (seed, the record id's 64-bit digest, k), whatever the other records), one
uniform number a draw, so the same seed gives the same sequences whatever the batch size (up to
float rounding of batched passes, on one device and dtype).

Each FASTA record's header (a model's log-probabilities are natural logarithms at temperature 1,
over its whole vocabulary, whatever the sampling settings):

    causal:    >gen_0001 length=L mean_log_prob=-x.xxxx end=stop|max-length
               the mean over the protein's residues (the prompt's included) of log p(residue |
               those before it): `protrans perplexity --method causal`'s mean_log_likelihood
    template:  >gen_0001 length=L designed=D mean_log_prob=-x.xxxx   (L: residues, not ':'s)
               the mean over the designed residues of log p(residue | the rest of the sequence),
               each masked alone (their pseudo-log-likelihood, `protrans perplexity --per-residue`'s
               values at those positions)

    summary = run_generate("designs.fa", GenerateOptions(model="runs/txl", num_sequences=100, top_p=0.95))
    summary.sequences, summary.mean_length, summary.mean_log_prob

Each batch's records are written as it ends; with `-o FILE` the finished batches are also kept in
FILE.partial/ until FILE is written, so that `resume=True` (`--resume`) goes on after an
interruption to the bytes an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from protrans_cli import console
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.errors import UsageError, at_least, expect_options, expect_path, option, whole_number
from protrans_cli.residues import STANDARD

DESIGNED = "_"     # a template's position to design
RARE_TOKENS = "UO"  # drawn with allow_rare, where the model has a token of their own for them


@dataclass
class GenerateOptions:
    """Everything `protrans generate` can be asked for; the CLI fills it from its options."""

    model: str = ""
    num_sequences: int = 10
    prompt: str | None = None            # causal: a fixed N-terminal start
    template: str | None = None          # masked LM: residues, `_` where to design (':' between chains)
    templates: str | None = None         # masked LM: a FASTA of templates, each designed num_sequences times
    chains: str = "error"                # a template's ':' (a complex): error | linker | separate
    linker_length: int = DEFAULT_LINKER_LENGTH  # glycines between the chains under chains='linker'
    max_length: int = 300                # causal: residues at most (the prompt's included)
    min_length: int = 1                  # causal: residues before the end token may be drawn
    iterations: int = 1                  # template: sweeps after the first fill
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    allow_rare: bool = False
    seed: int = 0
    batch_size: int = 16
    prefix: str | None = None            # ids: PREFIX0001, ... (None: gen_); templates: PREFIXRECORDID_0001 (None: none)
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    resume: bool = False                 # -o FILE: go on with FILE.partial/, what an interrupted run kept

    def validate(self) -> None:
        """UsageError for a setting that cannot be; `prompt` and `template` upper-cased, `prefix`
        resolved (None: gen_, or nothing with `templates`)."""
        import os

        from protrans_cli.embed import DTYPES, check_chains
        from protrans_cli.embedders import check_device
        from protrans_cli.errors import one_of
        from protrans_cli.threads import check_threads

        if not isinstance(self.model, str) or not self.model:
            raise UsageError(f"{option('-m MODEL', 'model')}: give the language model to sample from")
        for name, flag, low in (("num_sequences", "-n", 1), ("max_length", "--max-length", 1),
                                ("min_length", "--min-length", 0), ("iterations", "--iterations", 0),
                                ("batch_size", "--batch-size", 1), ("seed", "--seed", 0)):
            value = getattr(self, name)
            if not whole_number(value):
                raise UsageError(f"{option(flag, name)} must be a whole number, got {value!r:.40}")
            at_least(value, low, flag, keyword=name)
        if self.min_length > self.max_length:
            raise UsageError(f"{option('--min-length', 'min_length')} {self.min_length} is more than "
                             f"{option('--max-length', 'max_length')} {self.max_length}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature <= 0:
            raise UsageError(f"{option('--temperature', 'temperature')} must be a number above 0, got "
                             f"{self.temperature!r:.40}")
        if self.top_k is not None:
            if not whole_number(self.top_k):
                raise UsageError(f"{option('--top-k', 'top_k')} must be a whole number, got {self.top_k!r:.40}")
            at_least(self.top_k, 1, "--top-k", keyword="top_k")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"{option('--top-p', 'top_p')} must be above 0 and at most 1, got {self.top_p!r:.40}")
        if self.prompt is not None and self.template is not None:
            raise UsageError(f"{option('--prompt', 'prompt')} is for a causal LM, {option('--template', 'template')} "
                             "for a masked one: give one")
        if self.templates is not None:
            if self.template is not None or self.prompt is not None:
                other = ("--template", "template") if self.template is not None else ("--prompt", "prompt")
                raise UsageError(f"{option('--templates FILE', 'templates')} and {option(*other)}: give one")
            if not isinstance(self.templates, (str, os.PathLike)) or not str(self.templates):
                raise UsageError(f"templates is the path of a FASTA of templates, got "
                                 f"{type(self.templates).__name__} {self.templates!r:.40}")
        check_chains(self)
        if self.prompt is not None and isinstance(self.prompt, str) and ":" in self.prompt:
            raise UsageError(f"{option('--prompt', 'prompt')}: ':' at position {self.prompt.index(':') + 1}: a causal "
                             "LM draws one chain left to right; a complex's chains are designed by a masked LM from "
                             f"{option('--template', 'template')} with {option('--chains', 'chains')}")
        if self.prompt is not None:
            self.prompt = checked_letters(self.prompt, "--prompt", "prompt")
            if len(self.prompt) >= self.max_length:
                raise UsageError(f"{option('--prompt', 'prompt')} has {len(self.prompt)} residues, not fewer than "
                                 f"{option('--max-length', 'max_length')} {self.max_length}: nothing is left to draw")
        if self.template is not None:
            self.template = checked_template(self.template, self.chains, option("--template", "template"),
                                             UsageError)
        if self.prefix is None:
            self.prefix = "" if self.templates is not None else "gen_"
        elif not isinstance(self.prefix, str) or not self.prefix or any(c.isspace() for c in self.prefix):
            raise UsageError(f"{option('--id-prefix', 'prefix')} must be a word without spaces, got "
                             f"{self.prefix!r:.40}")
        if not isinstance(self.resume, bool):
            raise UsageError(f"resume is True or False, got {self.resume!r:.40}")
        check_device(self.device)
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        if self.threads is not None:
            check_threads(self.threads)


@dataclass
class Generated:
    """One sampled protein: its id, residues and mean log-probability; `designed` (a template's
    designed positions) or `end` (how a causal LM's protein ended: stop or max-length)."""

    id: str
    sequence: str
    mean_log_prob: float
    designed: int | None = None
    end: str | None = None

    def header(self) -> str:
        designed = f" designed={self.designed}" if self.designed is not None else ""
        end = f" end={self.end}" if self.end is not None else ""
        return f"{self.id} length={self.residues}{designed} mean_log_prob={self.mean_log_prob:.4f}{end}"

    @property
    def residues(self) -> int:
        """The sequence's residues (a complex's ':'s not counted)."""
        return len(self.sequence) - self.sequence.count(":")


def checked_letters(text: str, flag: str, keyword: str) -> str:
    """`text` upper-cased, each letter a residue (a prompt's; a template's: `checked_template`): a
    UsageError naming the first position that is not."""
    from protrans_cli.residues import ALPHABET

    if not isinstance(text, str) or not text:
        raise UsageError(f"{option(flag, keyword)} is empty: give residues")
    allowed = set(ALPHABET)
    text = text.upper()
    for at, letter in enumerate(text, start=1):
        if letter not in allowed:
            raise UsageError(f"{option(flag, keyword)}: {letter!r} at position {at} is not a residue letter "
                             f"({ALPHABET})")
    return text


def checked_template(text, chains: str, where: str, error=UsageError, **located) -> str:
    """A template upper-cased: residue letters and `_` (at least one), chains separated by ':'
    under `chains` linker or separate (none empty); else `error` (`where` names it: the option, or
    with `located` a templates file's record), a ':' under chains error too (the option's value
    a usage error, the file's record bad input, as every command has them)."""
    from protrans_cli.embed import chain_break
    from protrans_cli.residues import ALPHABET

    if not isinstance(text, str) or not text:
        raise error(f"{where} is empty: give residues with '{DESIGNED}' where to design", **located)
    text = text.upper()
    if ":" in text and chains == "error":
        raise error(f"{where}: {chain_break(text)}", **located)
    allowed = set(ALPHABET) | {DESIGNED, ":"}
    for at, letter in enumerate(text, start=1):
        if letter not in allowed:
            raise error(f"{where}: {letter!r} at position {at} is not a residue letter ({ALPHABET}, or "
                        f"{DESIGNED} to design{', : between chains' if chains != 'error' else ''})", **located)
    parts = text.split(":")
    for i, part in enumerate(parts, start=1):
        if not part:
            raise error(f"{where}: chain {i} of {len(parts)} is empty (a ':' at the start or the end, or '::')",
                        **located)
    if DESIGNED not in text:
        raise error(f"{where} marks no position to design: put '{DESIGNED}' where residues are to be drawn",
                    **located)
    return text


@dataclass
class Design:
    """One template and how its designs are named and seeded: `record` None (--template, or a
    causal LM's sequences): PREFIX0001, ..., sequence i seeded by (seed, i); a templates file's
    record: PREFIXRECORD_0001, ..., design k seeded by (seed, the record id's 64-bit digest, k)."""

    template: str | None
    prefix: str
    record: str | None = None

    def ident(self, i: int) -> str:
        return f"{self.prefix}{i + 1:04d}" if self.record is None else f"{self.prefix}{self.record}_{i + 1:04d}"

    @property
    def stream(self) -> int | None:
        """The record id's key in the seeds (None: --template's, a causal LM's)."""
        import hashlib

        if self.record is None:
            return None
        return int.from_bytes(hashlib.blake2b(self.record.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little")


def read_templates(options: GenerateOptions) -> tuple[list[Design], str]:
    """The templates file's records as Designs (each checked, ids unique), and a digest of their
    ids and templates in order (what --resume's settings check compares)."""
    import hashlib

    from protrans_cli.errors import InputError
    from protrans_cli.io.fasta import read_fasta
    from protrans_cli.io.files import display_name

    path = options.templates
    name = display_name(path)
    designs, seen = [], {}
    digest = hashlib.sha256()
    for rec in read_fasta(path):
        if rec.id in seen:
            raise InputError(f"the id is also that of the record at line {seen[rec.id]}: each template's designs are "
                             "named and seeded by its id", path=name, record=rec.id, line=rec.line)
        seen[rec.id] = rec.line
        where = "the template"
        text = "".join(rec.sequence.split())
        if text.endswith("*"):  # a translated ORF's stop, as every other FASTA reader takes it (not designed)
            text = text[:-1]
        template = checked_template(text, options.chains, where, InputError, path=name, record=rec.id,
                                    line=rec.line)
        designs.append(Design(template, options.prefix, rec.id))
        digest.update(f"{rec.id}\t{template}\n".encode("utf-8", "surrogatepass"))
    if not designs:
        raise InputError("holds no templates (no FASTA records)", path=name)
    return designs, digest.hexdigest()[:32]


# -- sampling ---------------------------------------------------------------------------------------

def filtered_log_probs(logits, allowed=None, *, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None):
    """(..., V) logits -> (..., V) float32 log-probabilities to sample from: tokens not `allowed`
    (a (..., V) or (V,) bool mask) out, the logits divided by `temperature`, then only the `top_k`
    likeliest kept, then only the smallest set of the likeliest whose probability reaches `top_p`
    (the likeliest always kept). What is left out is -inf."""
    import torch

    scores = logits.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    scores = scores / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    log_probs = scores.log_softmax(-1)
    if top_p is not None and top_p < 1:
        ordered, order = log_probs.sort(dim=-1, descending=True)
        before = ordered.exp().cumsum(-1) - ordered.exp()     # probability of the likelier ones
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        log_probs = log_probs.masked_fill(drop, -math.inf).log_softmax(-1)
    return log_probs


def draw(log_probs, uniforms):
    """(B, V) log-probabilities and (B,) uniforms in [0, 1) -> (B,) token ids by the inverse of
    each row's cumulative distribution (float64, on the host)."""
    import torch

    probs = log_probs.double().exp().cpu()
    cumulative = probs.cumsum(-1)
    cumulative = cumulative / cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, (uniforms.double()[:, None]), right=True)[:, 0]
    # (a uniform of the last ulp past the top lands past the end: the last token with probability)
    last = (probs > 0).double().cumsum(-1).argmax(-1)
    return torch.minimum(picked, last)


class Draws:
    """Uniform numbers for each sequence from a generator of its own, seeded by (seed, its index),
    or (seed, `stream`, its index): a templates file's record's designs (Design.stream); `stream`
    a list: each index's own (a batch of several records' designs)."""

    def __init__(self, seed: int, indices: list[int], stream: int | None | list = None):
        import numpy as np
        import torch

        streams = stream if isinstance(stream, list) else [stream] * len(indices)  # (a list: each index's)
        self.generators = []
        for i, stream in zip(indices, streams):
            key = (seed, i) if stream is None else (seed, stream, i)
            state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
            self.generators.append(torch.Generator().manual_seed(int(state)))

    def uniforms(self):
        """(B,) float64: the next draw of each sequence."""
        import torch

        return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])

    def orders(self, count: int) -> list[list[int]]:
        """A random order of `count` positions for each sequence."""
        import torch

        return [torch.randperm(count, generator=g).tolist() for g in self.generators]


class Sampler:
    """A loaded model's tokens and the sampling settings shared by both loops."""

    def __init__(self, loaded, options: GenerateOptions):
        import torch

        from protrans_cli.variants import VariantScorer

        self.loaded, self.options = loaded, options
        self.scorer = VariantScorer(loaded, progress=False)
        self.model, self.family, self.tokenizer = loaded.model, loaded.family, loaded.tokenizer
        self.device = self.scorer.device
        own = {letter: self.scorer.token_id(letter) for letter in STANDARD}
        if options.allow_rare:  # (a family that reads U as X, or a vocabulary without it: none of its own)
            other = {self.scorer.token_id("X"), self.tokenizer.unk_token_id, *own.values()}
            own.update({c: t for c in RARE_TOKENS if (t := self.scorer.token_id(c)) not in other})
        if options.allow_rare and not set(RARE_TOKENS) & set(own):
            console.warn(f"{loaded.name} has no tokens of its own for U and O (it reads them as X or as unknown): "
                         f"{option('--allow-rare', 'allow_rare')} adds nothing")
        self.letter_of = {token: letter for letter, token in own.items()}
        self.allowed = torch.zeros(len(self.tokenizer), dtype=torch.bool)
        self.allowed[list(self.letter_of)] = True

    def sample(self, logits, allowed, draws: Draws):
        """(B, V) logits -> (B,) token ids drawn under the settings."""
        import torch

        o = self.options
        if allowed.shape[-1] < logits.shape[-1]:  # (a head wider than the tokenizer: padding rows)
            allowed = torch.cat([allowed, allowed.new_zeros(logits.shape[-1] - allowed.shape[-1])])
        log_probs = filtered_log_probs(logits, allowed[:logits.shape[-1]].to(logits.device), temperature=o.temperature,
                                       top_k=o.top_k, top_p=o.top_p)
        return draw(log_probs, draws.uniforms())

    def forward(self, **inputs):
        import torch

        with torch.inference_mode():
            return self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits


# -- causal: Transformer-XL and XLNet ---------------------------------------------------------------

class TransfoXLSteps:
    """Next-token logits of Transformer-XL from its memory: the whole prefix once, then one token
    a pass (the memory keeps the whole prefix, not the last mem_len tokens, during generation:
    each pass asks the model for it, `whole_memory=True`, as transformers' generate() does; the
    model's config, shared by every caller, is not touched)."""

    def __init__(self, model):
        self.model, self.mems = model, None

    def start(self, ids, device):
        return self._pass(ids, device)

    def next(self, ids, token, device):
        return self._pass(token[:, None], device)

    def _pass(self, ids, device):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids.to(device), mems=self.mems, whole_memory=True)
        self.mems = out.mems
        return out.logits[:, -1]


class XLNetSteps:
    """Next-token logits of XLNet: the prefix and a dummy token no position sees, read by the
    query stream at the dummy (transformers' prepare_inputs_for_generation, without memory)."""

    def __init__(self, model):
        self.model = model

    def start(self, ids, device):
        return self._pass(ids, device)

    def next(self, ids, token, device):
        return self._pass(ids, device)

    def _pass(self, ids, device):
        import torch

        batch, width = ids.shape[0], ids.shape[1] + 1
        inputs = torch.cat([ids, torch.zeros(batch, 1, dtype=ids.dtype)], dim=1)
        perm_mask = torch.zeros(batch, width, width)
        perm_mask[:, :, -1] = 1.0
        target_mapping = torch.zeros(batch, 1, width)
        target_mapping[:, 0, -1] = 1.0
        with torch.inference_mode():
            out = self.model(input_ids=inputs.to(device), perm_mask=perm_mask.to(device),
                             target_mapping=target_mapping.to(device), use_mems=False)
        return out.logits[:, -1]


def causal_layout(sampler: Sampler) -> tuple[list[int], int | None]:
    """(the tokens before a protein, the token after it) of the family's layout: Transformer-XL's
    `<s>` and `</s>`, XLNet's none and `<sep>`."""
    inputs, mask = sampler.family.encode(sampler.tokenizer, ["A"])
    ids, at = inputs["input_ids"][0].tolist(), int(mask[0].nonzero()[0, 0])
    pad = sampler.tokenizer.pad_token_id
    after = [t for t in ids[at + 1:] if t != pad]
    return [t for t in ids[:at] if t != pad], (after[0] if after else None)


def prompt_log_prob(sampler: Sampler, before: list[int], prompt: list[int]) -> float:
    """The sum over the prompt's residues of log p(residue | those before it) (once a run: every
    sequence starts with it). Transformer-XL: one pass over the tokens before the prompt and the
    prompt's but its last (causal, the whole of it in one segment: each position's logits are the
    next token's given those before it, as a pass over that prefix alone gives them). XLNet: a
    pass a residue, over its prefix and a dummy token, as the residues are drawn (its content
    stream reads the whole prefix both ways, so no one pass gives these contexts)."""
    import torch

    if not prompt:
        return 0.0
    if not sampler.scorer.permutation and before:
        ids = torch.tensor([before + prompt[:-1]], dtype=torch.long)
        with torch.inference_mode():  # (one pass without memory: mem_len caps only the memory it returns)
            logits = sampler.model(input_ids=ids.to(sampler.device)).logits[0, len(before) - 1:]
        log_probs = logits.float().log_softmax(-1).cpu()
        return float(log_probs.gather(1, torch.tensor(prompt)[:, None]).double().sum())
    total = 0.0
    for k, token in enumerate(prompt):
        logits = _steps(sampler).start(torch.tensor([before + prompt[:k]], dtype=torch.long), sampler.device)
        total += float(logits.float().log_softmax(-1)[0, token])
    return total


def _steps(sampler: Sampler):
    return XLNetSteps(sampler.model) if sampler.scorer.permutation else TransfoXLSteps(sampler.model)


def sample_causal(sampler: Sampler, indices: list[int], prompt_lp: float = 0.0) -> list[Generated]:
    """The sequences `indices` (0-based) drawn left to right in one batch; `prompt_lp`: the
    prompt's log-probability (`prompt_log_prob`)."""
    import torch

    o = sampler.options
    steps = _steps(sampler)
    before, end = causal_layout(sampler)
    prompt = o.prompt or ""
    batch = len(indices)
    ids = torch.tensor([before + [sampler.scorer.token_id(c) for c in prompt]] * batch, dtype=torch.long)
    draws = Draws(o.seed, indices)
    drawn: list[list[int]] = [[] for _ in indices]
    log_prob = [prompt_lp] * batch
    active, ended = [True] * batch, [False] * batch
    residues = len(prompt)
    logits = steps.start(ids, sampler.device)
    while residues < o.max_length and any(active):
        allowed = sampler.allowed.clone()
        if end is not None and residues >= o.min_length:
            allowed[end] = True
        token = sampler.sample(logits, allowed, draws)
        step = logits.float().log_softmax(-1).cpu().gather(1, token[:, None])[:, 0].tolist()
        for b in range(batch):
            if not active[b]:
                continue
            if end is not None and int(token[b]) == end:
                active[b], ended[b] = False, True
            else:
                drawn[b].append(int(token[b]))
                log_prob[b] += step[b]
        residues += 1
        if residues < o.max_length and any(active):
            ids = torch.cat([ids, token[:, None]], dim=1)
            logits = steps.next(ids, token, sampler.device)
    out = []
    for b, i in enumerate(indices):
        sequence = prompt + "".join(sampler.letter_of[t] for t in drawn[b])
        out.append(Generated(f"{o.prefix}{i + 1:04d}", sequence, log_prob[b] / len(sequence),
                             end="stop" if ended[b] else "max-length"))
    return out


# -- masked LMs: Gibbs-style design of a template ---------------------------------------------------

def sample_template(sampler: Sampler, indices: list[int], design: Design | list | None = None) -> list[Generated]:
    """The designs `indices` (0-based) of `design`'s template (None: --template's), one batch: the
    `_` positions filled one at a time in a random order (the rest masked), then `iterations`
    sweeps each masked alone. A complex (chains split by ':'): under chains linker the model reads
    the chains joined by the linker's glycines (never designed) and each `_` is designed with
    every chain present; under separate each chain's `_` with that chain alone, the chains in turn
    drawing from the same generators. The records keep the ':'s, not the linker. `design` a list:
    each index's Design, templates of one `template_shape` (a batch of several templates: each
    row's sites, generator and draws its own, as in a batch of its template alone)."""
    from protrans_cli.embed import chain_lengths
    from protrans_cli.variants import _works

    o = sampler.options
    design = design if design is not None else Design(o.template, o.prefix)
    row_designs = design if isinstance(design, list) else [design] * len(indices)
    draws = Draws(o.seed, indices, [d.stream for d in row_designs])
    batch = len(indices)
    letters: list[list[str]] = [[] for _ in indices]
    total = [0.0] * batch
    works = [_works(d.template, o.chains, o.linker_length) for d in row_designs]
    if len({_shape(w) for w in works}) > 1:
        raise ValueError("sample_template: a batch's templates must be of one shape (template_shape)")
    for row_works in zip(*works):
        texts = [w.text for w in row_works]
        filled, log_prob = _design_text(sampler, texts, draws, batch) if DESIGNED in texts[0] else \
            (texts, [0.0] * batch)
        for b, work in enumerate(row_works):
            sites = work.sites
            letters[b].extend(filled[b] if sites is None else (filled[b][s] for s in sites))
            total[b] += log_prob[b]
    out = []
    for b, i in enumerate(indices):
        template = row_designs[b].template
        residues, chains, start = "".join(letters[b]), [], 0
        for n in chain_lengths(template):
            chains.append(residues[start:start + n])
            start += n
        designed = template.count(DESIGNED)
        out.append(Generated(row_designs[b].ident(i), ":".join(chains), total[b] / designed, designed=designed))
    return out


def template_shape(template: str, chains: str, linker_length: int) -> tuple:
    """What the model reads of a template, as a batch must share it: each reading's length and
    designed positions' count (templates of one shape are designed in one batch, each row its own)."""
    from protrans_cli.variants import _works

    return _shape(_works(template, chains, linker_length))


def _shape(works) -> tuple:
    """template_shape of a template's readings (variants._works)."""
    return tuple((len(w.text), w.text.count(DESIGNED)) for w in works)


def _design_text(sampler: Sampler, text: str | list[str], draws: Draws, batch: int) -> tuple[list[str], list[float]]:
    """`text` (what the model reads: residues, `_` to design; a list: each sequence's, of one
    length and designed count) with its `_` drawn, for each of the batch's sequences, and the sum
    of the designed residues' pseudo-log-likelihoods."""
    import torch

    o = sampler.options
    texts = text if isinstance(text, list) else [text] * batch
    encoded = {}
    for t in texts:  # (each distinct text encoded alone, as a batch of one template encodes it)
        if t not in encoded:
            encoded[t] = sampler.family.encode(sampler.tokenizer, [t.replace(DESIGNED, "A")])
    inputs, _ = encoded[texts[0]]
    if len({tuple(enc[0]["input_ids"].shape) for enc in encoded.values()}) > 1:
        raise ValueError("_design_text: a batch's texts must encode to one length")
    rows = torch.cat([encoded[t][0]["input_ids"][:1] for t in texts])
    extra = {k: v[0].expand(batch, *v.shape[1:]) for k, v in inputs.items() if k != "input_ids"}
    sites = torch.stack([encoded[t][1][0].nonzero()[:, 0][[p for p, c in enumerate(t) if c == DESIGNED]]
                         for t in texts])                     # (B, D): each row's designed positions' tokens
    count = sites.shape[1]
    mask_id = sampler.scorer.mask_id
    every = torch.arange(batch)
    rows[every[:, None], sites] = mask_id

    def logits_at(positions):
        return sampler.forward(input_ids=rows, **extra)[every, positions.to(sampler.device)]

    for _ in range(1 + o.iterations):
        orders = draws.orders(count)
        for t in range(count):
            positions = sites[every, torch.tensor([order[t] for order in orders], dtype=torch.long)]
            rows[every, positions] = mask_id                   # (a sweep: this one masked alone)
            rows[every, positions] = sampler.sample(logits_at(positions), sampler.allowed, draws)
    # the designed residues' pseudo-log-likelihood in the final sequences
    total = torch.zeros(batch, dtype=torch.float64)
    for j in range(count):
        positions = sites[:, j]
        token = rows[every, positions].clone()
        rows[every, positions] = mask_id
        log_probs = logits_at(positions).float().log_softmax(-1).cpu()
        total += log_probs.gather(1, token[:, None])[:, 0].double()
        rows[every, positions] = token
    filled = []
    for b in range(batch):
        drawn = iter(sampler.letter_of[int(t)] for t in rows[b, sites[b]])
        filled.append("".join(next(drawn) if c == DESIGNED else c for c in texts[b]))
    return filled, total.tolist()


# -- the command ------------------------------------------------------------------------------------

# the options a record depends on (besides the model, device and dtype), each with its flag: a
# --resume under other values is refused naming the first that differs (-n may change: sequence i
# is the same whatever the count; --batch-size may not, a batched pass rounds by its batch)
CAUSAL_SETTINGS = (("prompt", "--prompt"), ("max_length", "--max-length"), ("min_length", "--min-length"))
TEMPLATE_SETTINGS = (("template", "--template"), ("iterations", "--iterations"))
SETTINGS = (("model", "-m"), ("revision", "--revision"), ("seed", "--seed"), ("temperature", "--temperature"),
            ("top_k", "--top-k"), ("top_p", "--top-p"), ("allow_rare", "--allow-rare"), ("prefix", "--id-prefix"),
            ("batch_size", "--batch-size"))
SETTINGS_FILE = "generate-settings.json"  # (in OUTPUT.partial/: what its units were drawn under)


@dataclass
class GenerateSummary:
    """What a run wrote: its sequences' count and sums (not the records, unless asked for)."""

    model: str
    sequences: int = 0
    residues: int = 0
    stopped: int = 0                     # causal: ended by the model's end token
    log_prob_sum: float = 0.0            # the sum of the records' mean_log_prob
    records: list | None = None          # every Generated, with run_generate(keep_records=True)

    @property
    def mean_length(self) -> float:
        return self.residues / self.sequences if self.sequences else float("nan")

    @property
    def mean_log_prob(self) -> float:
        return self.log_prob_sum / self.sequences if self.sequences else float("nan")


def settings_of(options: GenerateOptions, device: str | None = None, dtype: str | None = None,
                templates: str | None = None) -> dict:
    """The options a run's records depend on, for OUTPUT.partial/'s settings file; with the device
    type and compute dtype once the model is loaded. `templates`: the templates file's digest
    (read_templates), in place of the template; --chains where a complex is read (not error), and
    --linker-length under linker."""
    masked = options.template is not None or options.templates is not None
    values = {name: getattr(options, name) for name, _ in (*SETTINGS, *(TEMPLATE_SETTINGS if masked else
                                                                        CAUSAL_SETTINGS))}
    if options.templates is not None:
        del values["template"]
        values["templates"] = templates
    if masked and options.chains != "error":
        values["chains"] = options.chains
        if options.chains == "linker":
            values["linker_length"] = options.linker_length
    return values if device is None else {**values, "device": device, "dtype": dtype}


def _generate_flag(name: str) -> str:
    named = dict((*SETTINGS, *CAUSAL_SETTINGS, *TEMPLATE_SETTINGS, ("device", "--device"), ("dtype", "--dtype"),
                  ("templates", "--templates"), ("chains", "--chains"), ("linker_length", "--linker-length")))
    return named.get(name, name)


def check_kept_settings(folder, settings: dict, *, file: str = SETTINGS_FILE, flag_of=None,
                        held: str = "sequences drawn") -> None:
    """UsageError where `folder` (OUTPUT.partial/) was drawn under settings other than these,
    naming the first that differs: its units would not be this run's sequences. `file`, `flag_of`
    (a setting's name -> its flag) and `held` (what the units are) for another command's
    (translate's) settings."""
    import json

    _flag_of = flag_of or _generate_flag
    path = folder / file
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # (none yet, or damaged: the units' names still hold every setting)
    if not isinstance(kept, dict):
        return
    for name, value in settings.items():
        if name in kept and kept[name] != value:
            flag = _flag_of(name)
            raise UsageError(f"{folder} holds {held} with {option(flag, name)} {kept[name]!r}, not {value!r}: "
                             f"{option('--resume', 'resume=True')} goes on only with the same options (delete it "
                             "to start afresh)")
        if name not in kept:
            raise UsageError(f"{folder} holds {held} without {option(flag := _flag_of(name), name)} "
                             f"(this run: {value!r}): {option('--resume', 'resume=True')} goes on only with the same "
                             "options (delete it to start afresh)")
    extra = sorted(set(kept) - set(settings) - ({"device", "dtype"} if "device" not in settings else set()))
    if extra:
        raise UsageError(f"{folder} holds {held} with {option(_flag_of(extra[0]), extra[0])} "
                         f"{kept[extra[0]]!r} (this run has none): {option('--resume', 'resume=True')} goes on only "
                         "with the same options (delete it to start afresh)")


def _batch_text(records: list[Generated]) -> str:
    return "".join(f">{r.header()}\n{r.sequence}\n" for r in records)


def _parsed(text: str) -> list[Generated]:
    """A kept batch's FASTA text back as its records (for the summary)."""
    out = []
    lines = text.splitlines()
    for header, sequence in zip(lines[::2], lines[1::2]):
        ident, *fields = header[1:].split()
        values = dict(f.split("=", 1) for f in fields)
        out.append(Generated(ident, sequence, float(values["mean_log_prob"]),
                             designed=int(values["designed"]) if "designed" in values else None,
                             end=values.get("end")))
    return out


def _batch_check(ids: list[str]):
    """A kept batch: the ASCII FASTA of exactly its records, ids in order."""
    import numpy as np

    def check(value) -> bool:
        if value.dtype != np.uint8 or value.ndim != 1:
            return False
        try:
            lines = value.tobytes().decode("ascii").splitlines()
        except UnicodeDecodeError:
            return False
        return len(lines) == 2 * len(ids) and [line.split(" ", 1)[0] for line in lines[::2]] == \
            [f">{i}" for i in ids]

    return check


def ignored_options(options: GenerateOptions) -> list[str]:
    """The warnings for settings that set nothing in this run (a value other than the default):
    a template's length is its own (--max-length, --min-length are a causal LM's), --iterations
    sweeps a template (nothing for a causal LM), --linker-length is --chains linker's."""
    from protrans_cli.embed import linker_length_ignored

    defaults = GenerateOptions()
    template = options.template is not None or options.templates is not None
    said = []
    if template:
        for name, flag in (("max_length", "--max-length"), ("min_length", "--min-length")):
            if getattr(options, name) != getattr(defaults, name):
                said.append(f"{option(f'{flag} {getattr(options, name)}', f'{name}={getattr(options, name)}')} "
                            "ignored: it bounds what a causal LM draws, and a template's length is its own")
        if (linker := linker_length_ignored(options)) is not None:
            said.append(linker)
    elif options.iterations != defaults.iterations:
        said.append(f"{option(f'--iterations {options.iterations}', f'iterations={options.iterations}')} ignored: "
                    "it sweeps a template's designed positions again (a masked LM's --template); a causal LM draws "
                    "each residue once")
    return said


def run_generate(output="-", options: GenerateOptions | None = None, *,
                 keep_records: bool = False) -> GenerateSummary:
    """Sample `options.num_sequences` proteins from `options.model` and write them to `output`
    (FASTA; .gz compresses; `-`/None: stdout), atomically, headers as the module docstring says.
    Returns the summary (its `records` every Generated with `keep_records`, else None).

    Memory stays at one batch whatever `num_sequences`: each batch's records are written as it
    ends (into the output's hidden temporary, renamed when all are written; for stdout into a
    temporary file, copied out at the end). With `-o FILE` each finished batch is also kept in
    FILE.partial/ (UnitStore) until FILE is written: `options.resume` goes on from them after an
    interruption, to the same bytes as an uninterrupted run (refused where an option the records
    depend on differs, `check_kept_settings`)."""
    from pathlib import Path

    from protrans_cli.embedders import resolve_device
    from protrans_cli.io.files import streamed_output, through_link
    from protrans_cli.variants import (UnitStore, _compute, _run_unit, _unit_key, partial_folder, resumable_output,
                                       unit_output_lock)

    if options is None:
        raise UsageError("run_generate needs GenerateOptions(model=...): the model to sample from")
    expect_options(options, GenerateOptions, "options")
    options.validate()
    if output is not None:
        expect_path(output, "output", " (one FASTA file, or '-' for stdout)")
    to_stdout = output in (None, "-")
    special = resumable_output(output, options.resume, (options.templates,), (options.model,))
    to_file = not to_stdout and not special
    target = through_link(Path(output)) if to_file else output
    for ignored in ignored_options(options):
        console.warn(ignored)
    if options.templates is not None:
        designs, digest = read_templates(options)  # (before the model loads)
    else:
        designs, digest = [Design(options.template, options.prefix)], None
    device, dtype = resolve_device(options.device, options.dtype)
    with contextlib.ExitStack() as held:
        held.enter_context(unit_output_lock(target, to_file))
        if to_file and options.resume and partial_folder(target).is_dir():
            check_kept_settings(partial_folder(target), settings_of(options, templates=digest))  # (before the load)
        store = UnitStore(partial_folder(target), resume=options.resume, command="generate") if to_file else None
        with streamed_output(output) as stream:  # (stdout's: a file in TMPDIR, copied out at the end)
            summary = _sample_all(options, designs, digest, device, dtype, store, stream, keep_records,
                                  (_compute, _run_unit, _unit_key))
        if store is not None:
            store.remove()
    if not to_stdout:
        console.output_complete(str(output))
    ended = f", {summary.stopped:,} ended by the model" if designs[0].template is None else ""
    console.info(f"generate: {console.counted(summary.sequences, 'sequence')} from {summary.model}, mean length "
                 f"{summary.mean_length:.1f}{ended}, mean of mean_log_prob {summary.mean_log_prob:.4f}")
    return summary


def _sample_all(options: GenerateOptions, designs: list[Design], templates: str | None, device, dtype, store,
                stream, keep_records: bool, unit_tools):
    """The summary: the model loaded, every batch sampled (or read from `store`'s kept units) and
    its records written to `stream` as it ends. A batch holds one design's (template's) sequences,
    or a templates file's consecutive records' of one shape (`_batches`); `templates`: the
    templates file's digest (None: one --template, or a causal LM)."""
    import numpy as np

    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads

    _compute, _run_unit, _unit_key = unit_tools
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    with threads:
        loaded = load_model(options.model, device=device, dtype=dtype, revision=options.revision, masked_lm=True)
        sampler = Sampler(loaded, options)
        causal = sampler.scorer.causal or sampler.scorer.permutation
        _check_kind(sampler, causal, designs)
        _warn_past_training(sampler, causal, designs)
        settings = settings_of(options, sampler.device.type, str(sampler.scorer.compute_dtype), templates)
        units = None
        if store is not None:
            if options.resume:
                check_kept_settings(store.folder, settings)
            units = store.for_model(loaded, sampler.scorer)
        total = options.num_sequences * len(designs)
        bar = console.progress(total=total, desc="generating", unit="sequence") if console.progress_wanted() \
            and total > 1 else None
        summary = GenerateSummary(model=loaded.name, records=[] if keep_records else None)
        prompt_lp = None
        # (a unit's name holds every setting its records depend on: one drawn otherwise is never read)
        digest = _unit_key("generate-settings", "", [f"{k}={v!r}" for k, v in sorted(settings.items())])

        def batch(design, indices: list[int]):
            nonlocal prompt_lp
            if causal and prompt_lp is None:
                before, _ = causal_layout(sampler)
                prompt = [sampler.scorer.token_id(c) for c in options.prompt or ""]
                prompt_lp = prompt_log_prob(sampler, before, prompt)
            records = sample_causal(sampler, indices, prompt_lp) if causal else \
                sample_template(sampler, indices, design)
            if bar is not None:  # (a kept batch: _run_unit skips the bar by it, out of the rate)
                bar.update(len(indices))
            return np.frombuffer(_batch_text(records).encode("ascii"), dtype=np.uint8)

        try:
            for rows in _batches(options, designs, templates is not None and not causal):
                indices = [i for _, _, i in rows]
                row_designs = [d for _, d, _ in rows]
                design = row_designs[0] if len({r for r, _, _ in rows}) == 1 else row_designs
                if units is not None:
                    _settings_file(store, settings)
                # (a batch of one template's designs: its first and last; of several: each one's)
                spans = [[r, d.record, i, i] for r, d, i in rows[:1]]
                for r, d, i in rows[1:]:
                    if r == spans[-1][0]:
                        spans[-1][3] = i
                    else:
                        spans.append([r, d.record, i, i])
                key = _unit_key(f"generate-{digest}", "", [indices[0], indices[-1]] if templates is None
                                else [item for span in spans for item in span])
                value = _run_unit(units or _compute, key, lambda: batch(design, indices), bar, len(indices),
                                  _batch_check([d.ident(i) for d, i in zip(row_designs, indices)]))
                stream.write(value.tobytes())
                for record in _parsed(value.tobytes().decode("ascii")):
                    summary.sequences += 1
                    summary.residues += record.residues
                    summary.stopped += record.end == "stop"
                    summary.log_prob_sum += record.mean_log_prob
                    if summary.records is not None:
                        summary.records.append(record)
        finally:
            if bar is not None:
                bar.close()
    return summary


def _batches(options: GenerateOptions, designs: list[Design], mix: bool):
    """The run's batches in the output's order, each a list of (design's number, Design, index):
    `--batch-size` sequences at most, of one design; with `mix` (a templates file) the designs of
    consecutive records of one `template_shape` go on filling a batch (a record's designs are
    drawn by its own generators: a batch of several records writes what batches of each alone do)."""
    n, size = options.num_sequences, options.batch_size
    if not mix:
        for r, design in enumerate(designs):
            for first in range(0, n, size):
                yield [(r, design, i) for i in range(first, min(n, first + size))]
        return
    rows, shape = [], None
    for r, design in enumerate(designs):
        this = template_shape(design.template, options.chains, options.linker_length)
        if rows and this != shape:
            yield rows
            rows = []
        shape = this
        for i in range(n):
            rows.append((r, design, i))
            if len(rows) == size:
                yield rows
                rows = []
    if rows:
        yield rows


def _settings_file(store, settings: dict, file: str = SETTINGS_FILE) -> None:
    """OUTPUT.partial/'s settings file, written with the folder (before its first unit)."""
    import json

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import atomic_output

    path = store.folder / file
    if path.is_file():
        return
    store._create()
    try:
        with atomic_output(path) as out:
            out.write((json.dumps(settings, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {path}: {exc.strerror}") from None


def _check_kind(sampler: Sampler, causal: bool, designs: list[Design]) -> None:
    """UsageError for a start or template the model cannot take, or a template it cannot hold."""
    from protrans_cli.embed import model_length

    o, name = sampler.options, sampler.loaded.name
    if causal and (o.template is not None or o.templates is not None):
        given = option('--templates', 'templates') if o.templates is not None else option('--template', 'template')
        raise UsageError(f"{name} is a causal LM: it draws left to right; give {option('--prompt SEQ', 'prompt')} "
                         f"for a fixed start (or nothing), not {given}")
    if causal:
        return
    if sampler.scorer.decoder:
        raise UsageError(f"{name} is a T5 encoder-decoder: generate designs templates with masked LMs (ESM-2, ProtBert, "
                         "ProtAlbert, ESM C, ...) and samples from causal ones (Transformer-XL, XLNet)")
    if o.template is None and o.templates is None:
        raise UsageError(f"{name} is a masked LM: give {option('--template SEQ', 'template')} with '{DESIGNED}' at "
                         f"each position to design (e.g. MKT____AYIAK), or {option('--templates FILE', 'templates')}"
                         + (f", not {option('--prompt', 'prompt')}" if o.prompt is not None else ""))
    limit = sampler.scorer.model_limit
    for design in designs:
        length = model_length(design.template, o.chains, o.linker_length)
        if limit is not None and length > limit:
            what = option('--template', 'template') if design.record is None else \
                f"{option('--templates', 'templates')} record {design.record!r:.60}"
            reads = " (the chains with their linkers)" if o.chains == "linker" and ":" in design.template else \
                " (its longest chain)" if ":" in design.template else ""
            raise UsageError(f"{what} has {length} residues{reads}, more than {name} accepts ({limit} residues, its "
                             "learned positions)")


def _warn_past_training(sampler: Sampler, causal: bool, designs: list[Design]) -> None:
    """A warning where the sequences may be longer than the proteins the model was trained on."""
    from protrans_cli.embed import model_length

    o, trained = sampler.options, sampler.scorer.max_length
    length = o.max_length if causal else max(model_length(d.template, o.chains, o.linker_length) for d in designs)
    if trained is not None and length > trained:
        what = option(f"--max-length {o.max_length}", f"max_length={o.max_length}") if causal else \
            (f"{option('--template', 'template')} of {length} residues" if o.templates is None else
             f"a template of {length} residues")
        console.warn(f"{what} is more than {sampler.loaded.name} was trained on or holds ({trained} residues): "
                     "what it writes past that is less reliable")


__all__ = ["GenerateOptions", "GenerateSummary", "Generated", "draw", "filtered_log_probs", "run_generate"]
