"""The pretraining corpus as a stream of length-bucketed, rank-sharded batches.

Reads `protrans prep`'s format (one protein per line, residues separated by spaces, a blank line
between proteins; plain or compressed; any number of shards read in order) with bounded memory:
only `bucket_batches` global batches are held at a time.
With `sample_clusters` (train --sample-clusters) a block of lines between blank lines is one
cluster, and each epoch reads one member of it (`Clusters`): every count below is then of clusters.

How a global batch is formed, identically on every rank:
  1. the stream is cut into buffers of `global_batch_size * bucket_batches` proteins (the last
     full one also takes the corpus's tail when that is shorter than one global batch);
  2. a protein longer than the maximum is cropped at a random window (not at the N-terminus);
  3. the buffer is sorted by length and cut into global batches (little padding), whose order
     is then shuffled. The sort key is the padded length collate gives a row (the protein's
     length with its special tokens, rounded up to `pad_multiple`, at least 8: see
     `bucket_width`), and proteins of one such width come in a random order drawn from (seed,
     epoch, buffer_start): each batch is then put in order of length (ties by position), so
     micro-batches hold similar lengths. Proteins of one padded width are interchangeable for
     padding, so every epoch re-forms the batches (which proteins go together) at no padding
     cost when pad_multiple is 8 or more: each batch pads to the width the plain length sort
     gave it. Measured on the E. coli proteome (4,401 proteins, global batch 64, bucket_batches
     16, max length 512, pad_multiple 8): padded / real tokens 1.0737 before and after (1.0177
     with micro-batches of 8); 64 of 68 global batches of epoch 0 recurred in epoch 1 with a
     plain length sort (all but the last buffer's, whose dropped remainder is drawn per epoch),
     2 of 68 now, and 22% of the pairs of proteins batched together in epoch 0 are apart in
     epoch 1. (pad_multiple 1: padded / real 1.0631 before, 1.0712 after.) A random tie-break
     between equal lengths alone left 15 of 68 batches as they were; buckets of 16 or a random
     jitter of 12-16 residues added to the sort key parted more pairs (28-33%) for 0.9-1.4
     points more padding at the global batch. A stream without `shuffle` (evaluation) keeps
     the plain length sort, ties by position;
  4. a global batch is cut into `world_size * grad_accum` micro-batches; micro-batch j goes to
     rank j % world_size, so ranks get similar lengths and never the same protein.
Crops and masks come from a random generator seeded by (seed, epoch, protein index), so a
protein gets the same crop and mask whichever rank, worker or resume reads it, and fresh ones
every epoch. Every rank scans the text of the whole stream (cheap) and tokenizes only its own
proteins; DataLoader workers split the global batches of a rank between them.

The position in the stream (epoch, first protein of the current buffer, batches done in it, and
the file and byte where that buffer begins) is part of every checkpoint, so a resumed run sees
exactly the batches it would have seen, reading from that byte on (from that line of the file,
read from its beginning, where the file changed since: a change moves no position in the files
after it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from protrans_cli.errors import InputError, ProtransError, UsageError
from protrans_cli.residues import ALPHABET, STANDARD


@dataclass
class TokenLayout:
    """How residues become token ids for one tokenizer, read from the tokenizer itself."""

    residue_table: np.ndarray   # (256,) int64: byte of a residue letter -> token id, -1 if none
    prefix: list[int]           # special tokens before the residues ([CLS], <cls>...)
    suffix: list[int]           # special tokens after them ([SEP], </s>, <sep> <cls>...)
    pad_id: int
    mask_id: int | None
    vocab_size: int
    standard_ids: np.ndarray    # ids of the 20 standard residues (random replacements)
    residue_ids: np.ndarray     # ids any residue letter maps to
    sentinel_ids: list[int] = field(default_factory=list)  # T5 <extra_id_N>, in order
    # A protein split in two segments (ALBERT sentence order): ids around and between them,
    # and the token type of the second segment.
    pair_prefix: list[int] = field(default_factory=list)
    pair_middle: list[int] = field(default_factory=list)
    pair_suffix: list[int] = field(default_factory=list)
    pair_type_b: int = 1
    use_pair: bool = False  # reserve room for the pair's special tokens when cropping

    @property
    def num_special(self) -> int:
        single = len(self.prefix) + len(self.suffix)
        pair = len(self.pair_prefix) + len(self.pair_middle) + len(self.pair_suffix)
        return max(single, pair) if self.use_pair else single

    @classmethod
    def from_tokenizer(cls, tokenizer, prepare: Callable[[str], str] | None = None) -> "TokenLayout":
        prepare = prepare or (lambda s: " ".join(s))
        letters = ALPHABET
        ids = tokenizer(prepare(letters), add_special_tokens=False)["input_ids"]
        if len(ids) != len(letters):
            # A family may map rare residues to X in prepare(); tokenize letter by letter.
            ids = [tokenizer(prepare(c), add_special_tokens=False)["input_ids"] for c in letters]
            if any(len(i) != 1 for i in ids):
                raise InputError("the tokenizer does not map each residue to exactly one token")
            ids = [i[0] for i in ids]
        table = np.full(256, -1, dtype=np.int64)
        for letter, token in zip(letters, ids):
            table[ord(letter)] = token
            table[ord(letter.lower())] = token
        probe_letter = "A"
        probe = tokenizer(prepare(probe_letter), add_special_tokens=True)["input_ids"]
        at = probe.index(int(table[ord(probe_letter)]))
        mask_id = tokenizer.mask_token_id
        sentinels = []
        vocab = tokenizer.get_vocab()
        for n in range(1000):
            tok = vocab.get(f"<extra_id_{n}>")
            if tok is None:
                break
            sentinels.append(tok)
        if mask_id is None and sentinels:
            mask_id = sentinels[0]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        a_id, c_id = int(table[ord("A")]), int(table[ord("C")])
        pair = tokenizer(prepare("A"), prepare("C"), add_special_tokens=True, return_token_type_ids=True)
        pair_ids = list(pair["input_ids"])
        at_a, at_c = pair_ids.index(a_id), pair_ids.index(c_id)
        types = pair.get("token_type_ids") or [0] * len(pair_ids)
        # a token the model reads before every protein (ProstT5's <AA2fold>, continued with
        # --init-from): trained with as embed feeds it (models/base.py input_prefix)
        from protrans_cli.models.base import input_prefix_ids

        lead = [int(i) for i in input_prefix_ids(tokenizer)]
        return cls(
            residue_table=table, prefix=list(probe[:at]) + lead, suffix=list(probe[at + 1:]),
            pad_id=int(pad_id), mask_id=None if mask_id is None else int(mask_id),
            vocab_size=len(tokenizer),
            standard_ids=np.array(sorted({int(table[ord(c)]) for c in STANDARD}), dtype=np.int64),
            residue_ids=np.array(sorted({int(t) for t in ids}), dtype=np.int64),
            sentinel_ids=sentinels, pair_prefix=pair_ids[:at_a] + lead, pair_middle=pair_ids[at_a + 1:at_c],
            pair_suffix=pair_ids[at_c + 1:], pair_type_b=int(types[at_c]))

    def encode(self, residues: str, *, path: str | None = None, line: int | None = None) -> np.ndarray:
        """Residue letters (no spaces) -> (L,) token ids, without special tokens."""
        ids = self.residue_table[np.frombuffer(residues.encode("latin-1", errors="replace"), dtype=np.uint8)]
        if (ids < 0).any():
            pos = int(np.argmax(ids < 0))
            raise InputError(f"invalid residue {residues[pos]!r} at residue {pos + 1} of the protein "
                             "(is this a `protrans prep` corpus?)", path=path, line=line)
        return ids


@dataclass
class Sample:
    """One protein of a batch: its place in the stream and its (cropped) residue token ids."""

    index: int          # position in the corpus stream (0-based, counting proteins)
    epoch: int
    residues: np.ndarray  # (L,) token ids, L <= max_length - layout.num_special
    seed: int
    # Whether the residues begin / end where the protein does (False: a random crop cut it
    # there, and the special token on that side marks no terminus)
    n_terminus: bool = True
    c_terminus: bool = True

    def rng(self, purpose: int) -> np.random.Generator:
        """The generator for this protein, this epoch and one purpose (0 crop, 1 mask, ...)."""
        return np.random.default_rng((self.seed, self.epoch, self.index, purpose))


_RESIDUE_LETTERS = ALPHABET + ALPHABET.lower()  # what every family's TokenLayout maps
_BLANK = b" \t\r\n\v\f"
# (a tab inside a line is no corpus's: a TSV of names and sequences trained on name+sequence)
_LINE_BYTES = _RESIDUE_LETTERS.encode() + b" \r\n"
_OTHER_SPACE = {"\t": "tab", "\v": "vertical tab", "\f": "form feed"}


@dataclass
class Cursor:
    """A place in the corpus stream: after its first `proteins` proteins, at byte `offset` of
    the (decompressed) text of file number `file`, `line` lines into that file. A checkpoint
    keeps one, so that a resume opens the file it names at that byte rather than reading the
    whole corpus up to it."""

    file: int = 0
    offset: int = 0
    line: int = 0
    proteins: int = 0
    # A compressed file of many gzip members or zstd frames (prep writes one per block): the
    # last member begun before `offset`, its byte in the file and in the text (0, 0: none), for
    # a resume to decompress from there rather than from the file's beginning.
    member: int = 0
    member_text: int = 0

    def copy(self) -> "Cursor":
        return dataclasses.replace(self)


@dataclass(frozen=True)
class Clusters:
    """`train --sample-clusters`: the corpus read by clusters (ESM-1b/ESM-2's UniRef50 sampling).
    A block of lines between blank lines (or a file's ends) is one cluster, each line one member;
    the reader yields ONE member of each cluster, chosen uniformly by `pick` from (seed, epoch,
    the cluster's ordinal in the corpus): the same on every rank, worker and resume, another
    member (mostly) in another epoch. Everything downstream counts clusters as it counted
    proteins. A corpus of one protein per block reads the same in both modes."""

    seed: int = 0
    epoch: int = 0

    def pick(self, ordinal: int, size: int) -> int:
        """The member (0-based) of the `ordinal`-th cluster, of `size` members, taken this epoch:
        a splitmix64 hash of (seed, epoch, ordinal) modulo size (3 µs a cluster: numpy's
        default_rng per cluster took 31 µs, half an hour an epoch of UniRef50's 60 million
        clusters on every rank). Reading by clusters: 0.75 s for 120 MB of text (200,000
        proteins in 66,531 clusters of 1-5), 0.46 s by lines (2-core CPU, 2026-12-08)."""
        if size <= 1:
            return 0
        return _mix(_mix(_mix(self.seed & _U64) ^ (self.epoch & _U64)) ^ (ordinal & _U64)) % size


_U64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser (Steele, Lea and Flood 2014): 64 well-mixed bits from `x`."""
    x = (x + 0x9E3779B97F4A7C15) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


class _StalePosition(Exception):
    """A cursor that does not fall at the start of a line of its file (the file changed since), or
    names a file the corpus does not have."""


def iter_proteins(paths, start: Cursor | None = None, cursor: Cursor | None = None,
                  clusters: Clusters | None = None) -> Iterator[tuple[str, int, str]]:
    """(path, line number, residues without spaces) for every protein of every shard in order,
    from the place `start` names when it is given: its byte of its file when that byte begins a
    line there; otherwise (the file changed since) its line, that file read from its beginning,
    so that a shard cut short or rewritten moves no position in the shards after it; a file the
    corpus no longer has, by reading and counting `start.proteins` proteins from the beginning.
    The proteins are counted on from `start.proteins`. `cursor`, when given, is kept at the
    place after the protein last yielded.

    Every line is checked whole as it is read (one C-level pass, on every rank alike, so all
    ranks stop at the same bad line): a character that is not a residue letter is an error
    naming the file, line and residue position, whichever part of the protein a crop would keep.

    `clusters` (train --sample-clusters): one member of every cluster (block of lines, `Clusters`)
    instead of every line, with its own path and line number; the count and the cursor are then
    of clusters, the cursor after the cluster's last line."""
    paths = list(paths)
    cursor = cursor if cursor is not None else Cursor()
    reader = _read_proteins(paths, start or Cursor(), cursor, clusters=clusters)
    try:
        first = next(reader)
    except StopIteration:
        return
    except _StalePosition:
        if start.file < len(paths):
            # By its line in its own file: counted from the corpus's beginning, a shard before
            # the position cut short since (--accept-corpus-change) shifted it into the next
            # shard, whose first proteins that many went untrained that epoch.
            reader = _read_proteins(paths, start, cursor, by_line=True, clusters=clusters)
        else:
            reader = _read_proteins(paths, Cursor(), cursor, clusters=clusters)
            for _ in range(start.proteins):
                if next(reader, None) is None:
                    return
        first = next(reader, None)
        if first is None:
            return
    yield first
    yield from reader


def _read_proteins(paths: list, start: Cursor, cursor: Cursor, by_line: bool = False,
                   clusters: Clusters | None = None) -> Iterator[tuple[str, int, str]]:
    """iter_proteins from `start`'s byte, or, `by_line`, from its line (its file read from the beginning)."""
    if start.file > 0 and start.file >= len(paths):
        raise _StalePosition
    cursor.proteins = start.proteins
    for index in range(start.file, len(paths)):
        path = paths[index]
        resuming = index == start.file and start.offset > 0
        member = None
        if resuming and not by_line and 0 < start.member_text < start.offset:
            member = start.member, start.member_text
        with _open_corpus_file(path, member) as (stream, members):
            offset = lineno = 0
            if resuming and by_line:
                # (the lines skipped are not checked, as the bytes before a sought position are not)
                for raw in itertools.islice(stream, start.line):
                    lineno += 1
                    offset += len(raw)
            elif resuming:
                if not _skip_to(stream, start.offset - (member[1] if member else 0)):
                    raise _StalePosition
                offset, lineno = start.offset, start.line
            cursor.file, cursor.offset, cursor.line = index, offset, lineno
            cursor.member, cursor.member_text = member or (0, 0)
            # (the file's first bytes, for _not_text: a PyTorch checkpoint's first line was cut by a
            # 0x0a of its zip header before the member name that tells it from any zip)
            head = stream.peek(4096)[:4096] if not resuming and hasattr(stream, "peek") else b""
            block: list = []  # with clusters: the (line number, residues, byte after it) of the cluster read so far
            for raw in stream:
                lineno += 1
                offset += len(raw)
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, as prep and labels take it
                    raw = raw[3:]
                if lineno == 1 and (kind := _not_text(raw, head)):
                    raise InputError(f"not a corpus: {kind}; the corpus is the text `protrans prep` writes, one "
                                     "protein per line", path=str(path), line=lineno)
                if b"\r" in raw and b"\r" in raw.rstrip(b"\r\n"):
                    # CR-only line ends: the proteins of the whole file in one "line", read as one protein
                    raise InputError("lines end in CR alone (old Mac line endings), which would join every protein "
                                     "into one: convert with tr '\\r' '\\n'", path=str(path), line=lineno)
                if raw.translate(None, _LINE_BYTES):
                    raise _invalid_line(str(path), lineno, raw)
                text = raw.translate(None, _BLANK).decode("latin-1")
                if clusters is not None:
                    if text:
                        block.append((lineno, text, offset))
                    elif block:
                        yield _cluster_member(clusters, block, str(path), cursor, members)
                        block = []
                    continue
                if text:
                    cursor.offset, cursor.line = offset, lineno
                    if members is not None:
                        cursor.member, cursor.member_text = members.member_before(offset) or (0, 0)
                    cursor.proteins += 1
                    yield str(path), lineno, text
            if block:  # (a file's end ends its last cluster)
                yield _cluster_member(clusters, block, str(path), cursor, members)


def _cluster_member(clusters: Clusters, block: list, path: str, cursor: Cursor, members) -> tuple[str, int, str]:
    """The member of a cluster read whole (`block`: its lines' numbers, residues and the byte after
    each) that `clusters` takes, the cursor moved after the cluster's last line and counted on."""
    lineno, text, _ = block[clusters.pick(cursor.proteins, len(block))]
    cursor.line, _, cursor.offset = block[-1]
    if members is not None:
        cursor.member, cursor.member_text = members.member_before(cursor.offset) or (0, 0)
    cursor.proteins += 1
    return path, lineno, text


@contextlib.contextmanager
def _open_corpus_file(path, member: tuple[int, int] | None):
    """open_members, with a member that is not one of the file's (the file changed) as a
    stale position."""
    from protrans_cli.io.files import open_members

    with contextlib.ExitStack() as stack:
        try:
            stream, members = stack.enter_context(open_members(path, member))
        except ValueError:
            raise _StalePosition from None
        yield stream, members


def _skip_to(stream, offset: int) -> bool:
    """Move `stream` to byte `offset`; whether the byte before it ends a line. A plain file
    seeks; a compressed one is decompressed up to there (no line splitting or checking)."""
    if stream.seekable():
        stream.seek(offset - 1)
        return stream.read(1) == b"\n"
    left, last = offset, b""
    while left:
        chunk = stream.read(min(left, 1 << 22))
        if not chunk:
            return False
        left -= len(chunk)
        last = chunk[-1:]
    return last == b"\n"


def _not_text(first: bytes, head: bytes = b"") -> str | None:
    """What a corpus file is where its first line tells it is no text (a wrong file given as
    --corpus): a model's weights were "lines end in CR alone", an HDF5 file an "invalid residue
    '\\x89'", as the first such byte happened to be; None for text. `head`: the file's first
    bytes, read where the first line is no corpus line (a binary file's first "line" ends at a
    0x0a of its header, before what names it; a NUL further on in a corpus is its line's error)."""
    from protrans_cli.io.files import UTF16_BOMS, binary_kind

    if first.startswith(UTF16_BOMS):  # (text to binary_kind; a corpus is not read as UTF-16)
        return "the file is UTF-16 text (convert it to UTF-8 first, iconv -f UTF-16 -t UTF-8)"
    if len(head) > len(first) and head.startswith(first) and first.translate(None, _LINE_BYTES):
        first = head
    return binary_kind(first, sentence=True)


def _invalid_line(path: str, lineno: int, raw: bytes) -> InputError:
    """The error for a corpus line holding something other than residues and spaces."""
    from protrans_cli.io.fasta import decode_word, look_alike

    line = decode_word(raw)  # (the whole line as one word: the message shows its characters, nothing matches them)
    blank = _BLANK.decode()  # what the reader skips: str.split() also skipped a no-break space or
    stripped = line.strip(blank)  # \x1c-\x1f, found no bad letter, and next() raised StopIteration
    if stripped.startswith(">"):
        return InputError("a FASTA header line ('>...'): the corpus must come from `protrans prep` "
                          "(one protein per line), e.g. protrans prep proteins.fasta -o corpus.txt",
                          path=path, line=lineno)
    for char, name in _OTHER_SPACE.items():
        if char in line:
            return InputError(f"a {name} at column {line.index(char) + 1} (a table?): a corpus line holds one "
                              "protein, its residues separated by single spaces; make one with `protrans prep`",
                              path=path, line=lineno)
    if lineno == 1 and (hint := look_alike(raw)) and "pretraining corpus" not in hint:
        # (a NetSurfP CSV given as the corpus was an "invalid residue ','"; a PDB or GenBank file
        # an invalid residue of its first line. A corpus line itself, `M K J A`, is what it looks
        # like: its error is the invalid residue, not "not a corpus: the file is a pretraining corpus")
        return InputError(f"not a corpus: {hint}; the corpus is the text `protrans prep` writes, one protein "
                          "per line", path=path, line=lineno)
    line = stripped
    residues = "".join(c for c in line if c not in blank)
    pos = next(i for i, c in enumerate(residues) if c not in _RESIDUE_LETTERS)
    return InputError(f"invalid residue {residues[pos]!r} at residue {pos + 1} of the protein "
                      "(the corpus must come from `protrans prep`)", path=path, line=lineno)


def count_proteins(paths, limit: int | None = None, clusters: bool = False) -> int:
    """Proteins in `paths` (`clusters`: clusters, `Clusters`), counted up to `limit` (None: all)."""
    return sum(1 for _ in itertools.islice(iter_proteins(paths, clusters=Clusters() if clusters else None), limit))


def evaluation_step_size(available: int, global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Proteins per evaluation step: the global batch size, so that the proteins evaluated (the
    val corpus's first num_eval_batches x global batch size) and their masks are the same
    whatever the micro-batch size and process count (both may change on --resume). A val
    corpus smaller than one global batch: the most of it that whole micro-batches on every
    process take."""
    if available >= global_batch_size:
        return global_batch_size
    per_pass = micro_batch_size * world_size
    return available // per_pass * per_pass


_ENDS = 1 << 16  # bytes hashed at each end of a corpus file


def corpus_fingerprint(paths) -> list[dict]:
    """What a checkpoint records of each corpus file, so that a resume notices a file changed
    since (its data position counts proteins of that file): the size and a hash of the first
    and last 64 KiB. Not the mtime: a corpus copied to another place is the same corpus."""
    import hashlib
    import os

    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                digest = hashlib.sha256(f.read(_ENDS))
                if size > _ENDS:
                    f.seek(max(_ENDS, size - _ENDS))
                    digest.update(f.read())
        except OSError as exc:
            raise InputError(f"cannot read the corpus file: {exc.strerror or exc}", path=str(path)) from None
        out.append({"size": size, "ends_sha256": digest.hexdigest()})
    return out


def changed_corpus_files(saved: list[dict] | None, paths, current: list[dict] | None = None) -> list[tuple[int, str]]:
    """The corpus files whose fingerprint differs from the checkpoint's, in order, as (their
    number, the file and what differs); none for a checkpoint of an earlier version without
    fingerprints. `current`: the files' corpus_fingerprint when it is already taken (else it is
    taken here)."""
    if not saved:
        return []
    out = []
    for index, (path, old, new) in enumerate(zip(paths, saved, current if current is not None
                                                 else corpus_fingerprint(paths))):
        # A relative path named as the file found (a resume's recorded `c.txt` met another c.txt in
        # the working directory: "c.txt: ... bytes then" did not say which file was read)
        name = path if path == "-" or os.path.isabs(path) else f"{os.path.abspath(path)} ({path}, relative to " \
                                                                 "this directory)"
        if old["size"] != new["size"]:
            out.append((index, f"{name}: {old['size']:,} bytes then, {new['size']:,} now"))
        elif old["ends_sha256"] != new["ends_sha256"]:
            out.append((index, f"{name}: the same size, other content"))
    return out


def _units(clusters: bool) -> str:
    """What a count of the stream's units is, in a message: clusters with --sample-clusters."""
    return "cluster(s) (--sample-clusters)" if clusters else "protein(s)"


def check_corpus(paths, batch_size: int = 0, *, batch_text: str = "", clusters: bool = False) -> list[str]:
    """Open every shard and check its first protein (cheap, before training starts): a missing
    or unreadable file, a FASTA file given as a corpus, or a corpus without any protein is an
    error now, before a model is built. So is a corpus of fewer than `batch_size` proteins (the
    largest global batch of the run, described by `batch_text`), counted up to that many: the
    stream found it only when it came to a batch, for a later phase's larger batch after the
    earlier phases had trained. Returns the shards without a protein (trained without; the
    caller warns: a 0-byte shard left by a failed copy went unnoticed). `clusters`: counted in
    clusters (train --sample-clusters), each of which gives one protein an epoch."""
    empty = [str(path) for path in paths if next(iter_proteins([path]), None) is None]
    if paths and len(empty) == len(paths):
        raise InputError("the corpus holds no protein", path=", ".join(map(str, paths)))
    if paths and batch_size > 1:
        total = count_proteins(paths, batch_size, clusters=clusters)
        if total < batch_size:
            raise InputError(f"the corpus holds {total} {_units(clusters)}, fewer than one global batch ({batch_size}"
                             f"{batch_text})", path=", ".join(map(str, paths)))
    return empty


def corpus_overlaps(corpus, val_corpus=()) -> list[str]:
    """Warnings for a corpus file named more than once (a pattern and a name, or a name twice:
    its proteins are trained that many times an epoch) and for a validation file that is also a
    training file (`--corpus 'corpus.*.txt'` matching prep's `corpus.valid.txt`: the eval loss
    measured on proteins trained on). Files are compared as files (links, other spellings)."""
    def key(path):
        try:
            st = os.stat(path)
        except OSError:
            return None  # (check_corpus names a missing file)
        return st.st_dev, st.st_ino

    keys = [key(path) for path in corpus]  # (each file stat-ed once)
    seen: dict = {}
    warned: set = set()
    out = []
    for path, k in zip(corpus, keys):
        if k is None:
            continue
        if k not in seen:
            seen[k] = path
        elif k not in warned:
            warned.add(k)
            times = keys.count(k)
            out.append(f"corpus file {seen[k]} is named {times} times (--corpus names and patterns): each of its "
                       f"proteins is trained {times} times an epoch")
    # A file beside its compressed copy (`--corpus 'corpus.*'` matching corpus.txt and
    # corpus.txt.gz): two files, most likely one corpus, trained twice an epoch without a word.
    # (the extensions prep writes, as it reads them: a list of its own here missed .zstd and .GZ)
    from protrans_cli.io.files import compression_for_output

    plain: dict[str, str] = {}
    for path in dict.fromkeys(seen.values()):
        name = os.path.abspath(str(path))
        stem = os.path.splitext(name)[0] if compression_for_output(name) else name
        if stem in plain:
            how = ("compressed two ways" if compression_for_output(plain[stem]) and compression_for_output(name)
                   else "compressed and not")
            out.append(f"corpus files {plain[stem]} and {path} look like one corpus, {how} (a pattern "
                       "matching both?): if they are, each of its proteins is trained twice an epoch")
        else:
            plain[stem] = path
    for path in val_corpus:
        k = key(path)
        if k is not None and k in seen:
            also = "" if seen[k] == path else f" ({seen[k]})"
            out.append(f"validation corpus file {path} is also a training corpus file{also}: the eval loss is "
                       "measured on proteins the model trains on")
    return out


def check_validation_corpus(paths, batch_size: int, *, batch_text: str, evaluated: int = 0,
                            clusters: bool = False) -> None:
    """A validation corpus must exist and hold at least one evaluation batch (`batch_size`
    proteins, described by `batch_text`); read before training starts as far as the proteins an
    evaluation reads (`evaluated`), every line of them checked (a bad line among them, beyond
    the first batch, let the run train and end with exit 0 without any eval loss). `clusters`:
    counted in clusters, as the evaluation reads them (one member each)."""
    total = 0
    wanted = max(batch_size, evaluated)
    for path in paths:
        found = 0
        for _ in iter_proteins([path], clusters=Clusters() if clusters else None):  # (every file is read to its first protein at least)
            found += 1
            if total + found >= wanted:
                break
        if not found:
            raise InputError("the validation corpus holds no protein", path=str(path))
        total += found
    if total < batch_size:
        raise InputError(f"the validation corpus holds {total} {_units(clusters)}, fewer than one evaluation batch "
                         f"of {batch_size} ({batch_text})", path=", ".join(map(str, paths)))


# How a buffer's global batches are planned (`CorpusStream._plan_buffer`): 1, a plain length
# sort, the same batches every epoch (the checkpoints of earlier versions have no plan and were
# made so); 2, re-formed every epoch, in length buckets 8 tokens wide unless the stream cut
# micro-batches by tokens (`train` gave the stream its --pad-multiple only then); 3, the same in
# buckets of the run's --pad-multiple (at least 8: `bucket_width`), as docs/train.md says. A run
# keeps the plan it started with, so that a run of an earlier version resumed by this one sees
# the batches it would have seen: resumed with another plan, the buffer under way was
# re-planned, and some of its proteins were trained twice and others not at all.
PLAN = 3
PLANS = (1, 2, 3)


@dataclass
class StreamState:
    """Where the stream is: the epoch, the first protein of the current buffer, batches done in
    it, and `at`, a cursor at or before that protein (None: read from the corpus's beginning;
    the checkpoints of earlier versions have none); `plan`, how batches are formed (PLAN)."""

    epoch: int = 0
    buffer_start: int = 0
    batches_done: int = 0
    at: Cursor | None = None
    plan: int = PLAN
    # The width of the length buckets the run's batches are formed with (CorpusStream records
    # it as it starts; None: not recorded, as in earlier versions' checkpoints). A resume with
    # another --pad-multiple keeps it: re-planned with other buckets, the buffer under way
    # trained some of its proteins twice and others not at all.
    width: int | None = None

    def to_dict(self) -> dict:
        d = {"epoch": self.epoch, "buffer_start": self.buffer_start, "batches_done": self.batches_done,
             "plan": self.plan}
        if self.at is not None:
            d["at"] = dataclasses.asdict(self.at)
        if self.width is not None:
            d["width"] = self.width
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "StreamState":
        if not d:
            return cls()
        d = dict(d)
        at = d.pop("at", None)
        d.setdefault("plan", 1)  # (a checkpoint of an earlier version)
        return cls(**d, at=Cursor(**at) if at else None)


def next_phase_state(state: StreamState, paths, global_batch_size: int, bucket_batches: int,
                     clusters: bool = False) -> StreamState:
    """Where a new `--phase` starts in the stream: at the buffer after the one the previous phase
    (of `global_batch_size`) was in, when it had done some of that buffer's batches. That buffer
    holds `global_batch_size * bucket_batches` proteins, and also the corpus's tail when fewer
    than one global batch follow it (CorpusStream reads one global batch ahead): the new phase
    then starts at the next epoch. It began with that tail, and trained again in the epoch the
    tail's proteins that the previous phase's batches of the buffer had held. `clusters`: the
    stream's units are clusters (train --sample-clusters)."""
    if not state.batches_done:
        return state
    size = global_batch_size * max(1, bucket_batches)
    start = state.at if state.at is not None and state.at.proteins <= state.buffer_start else None
    skip = state.buffer_start - (start.proteins if start is not None else 0)
    # the proteins from the buffer's first on, up to one global batch past its full size
    held = sum(1 for _ in itertools.islice(iter_proteins(paths, start, clusters=Clusters() if clusters else None),
                                           skip, skip + size + global_batch_size))
    ahead = held - size
    return dataclasses.replace(state, buffer_start=state.buffer_start + size + (ahead if 0 < ahead < global_batch_size
                                                                               else 0), batches_done=0)


def position_in_corpus(paths, state: StreamState, clusters: Clusters | None = None) -> tuple[str, int] | None:
    """The file and line of the protein at `state`'s position (its buffer's first protein) in
    the corpus as it is now, or None where it holds none there: where the corpus shrank since
    (`--accept-corpus-change`), and the stream, finding nothing there, goes on from the next
    epoch's beginning. `clusters`: the stream's units are clusters, and the line is that of the
    member the epoch takes."""
    start = state.at if state.at is not None and state.at.proteins <= state.buffer_start else None
    skip = state.buffer_start - (start.proteins if start is not None else 0)
    found = next(itertools.islice(iter_proteins(paths, start, clusters=clusters), skip, None), None)
    return None if found is None else (found[0], found[1])


@dataclass
class StepBatch:
    """What one optimizer step consumes on this rank: its micro-batches, collated."""

    micro_batches: list           # each whatever `collate` returned
    state_after: StreamState      # resume here to continue after this step
    num_proteins: int             # proteins in this rank's micro-batches


class CorpusStream:
    """An iterable of StepBatch for one rank (and, inside a DataLoader, one worker)."""

    def __init__(self, paths, layout: TokenLayout, *, max_length: int, global_batch_size: int,
                 micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 bucket_batches: int = 16, shuffle: bool = True, collate=None,
                 state: StreamState | None = None, max_epochs: int | None = None,
                 batch_name: str = "global batch", micro_batch_tokens: int | None = None,
                 pad_multiple: int = 1, packed: bool = False, max_proteins: int | None = None,
                 sample_clusters: bool = False):
        self.paths = list(paths)
        self.layout = layout
        self.max_residues = max_length - layout.num_special
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.bucket_batches = max(1, bucket_batches)
        self.shuffle = shuffle
        self.collate = collate or (lambda samples: samples)
        self.state = state or StreamState()
        self.max_epochs = max_epochs
        self.batch_name = batch_name  # for the error when the corpus holds less than one batch
        self.num_micro = global_batch_size // micro_batch_size  # micro-batches per global batch
        # Token-sized micro-batches (see `_token_split`): the padded tokens a micro-batch may hold,
        # counted as collate pads (to the longest, rounded up to pad_multiple; packed: one row).
        self.micro_batch_tokens = micro_batch_tokens
        self.pad_multiple = max(1, pad_multiple)
        self.packed = packed
        # Each epoch reads the corpus's first `max_proteins` proteins only (None: all of it): the
        # evaluation's, so that the proteins past those it evaluates never join its buffer.
        self.max_proteins = max_proteins
        # One member of every cluster (block of lines) an epoch, chosen by (seed, epoch, the
        # cluster's ordinal): `Clusters`. Positions, counts and batches are then of clusters.
        self.sample_clusters = sample_clusters

    # ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StepBatch]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # (the global batches this rank sees, split between its workers)
        for counter, (batch, buffer, state, after) in enumerate(self._planned()):
            if counter % num_workers == worker:
                yield self._step_batch(batch, buffer, state, after)

    def passed_over(self, steps: int) -> StreamState:
        """The position after the next `steps` global batches, which are read (their proteins'
        text, as the stream reads it to plan its buffers) but neither cropped, tokenized nor
        collated: `train --skip-data`'s way past the batches around a loss spike."""
        state = self.state
        with contextlib.closing(self._planned()) as planned:
            for _, (_, _, _, after) in zip(range(steps), planned):
                state = after
        return state

    def epoch_ahead(self) -> int:
        """The epoch of the next global batch from `self.state`: the state's own, but the next one's
        where the state is an epoch's end (after its last batch the state keeps the epoch it ended,
        and the next batch, from the corpus's beginning, is the next epoch's). Read ahead (one
        buffer's text, as passed_over reads it) only at a buffer's end, where an epoch can end."""
        state = self.state
        if state.batches_done or not state.buffer_start:
            return state.epoch
        with contextlib.closing(self._planned()) as planned:
            following = next(planned, None)
        return following[2].epoch if following is not None else state.epoch + 1

    def _planned(self):
        """(batch, buffer, state, the state after the batch) of every global batch from
        `self.state` on, the batch as buffer positions (`_plan_buffer`), not yet made into samples."""
        state = StreamState.from_dict(self.state.to_dict())
        if self.shuffle and state.plan >= 2 and state.width is None:
            state = dataclasses.replace(state, width=self._bucket_width(state))
        buffer_size = self.global_batch_size * self.bucket_batches
        while self.max_epochs is None or state.epoch < self.max_epochs:
            produced = 0
            # From the saved cursor (a resume, a new phase): the file and byte it names, then
            # the proteins between it and the buffer's first (none, but after a phase change).
            start = state.at if state.at is not None and state.at.proteins <= state.buffer_start else None
            cursor = start.copy() if start is not None else Cursor()  # (where the buffer begins when none is skipped)
            stream = iter_proteins(self.paths, start, cursor,
                                   clusters=Clusters(self.seed, state.epoch) if self.sample_clusters else None)
            skipped = start.proteins if start is not None else 0
            while skipped < state.buffer_start and next(stream, None) is not None:
                skipped += 1
            if self.max_proteins is not None:
                stream = itertools.islice(stream, max(0, self.max_proteins - skipped))
            carry: list = []  # proteins read ahead, the next buffer's first ones
            carry_at = None  # where they begin
            while True:
                at = carry_at if carry else cursor.copy()  # the buffer's first protein
                buffer, carry = carry, []
                while len(buffer) < buffer_size and (item := next(stream, None)) is not None:
                    buffer.append(item)
                ended = len(buffer) < buffer_size
                if not ended:
                    # Read one global batch ahead: a corpus that ends within it joins this buffer.
                    # As a buffer of its own (fewer proteins than one global batch) it made no
                    # batch, and the corpus's last proteins were left out of every epoch.
                    carry_at = cursor.copy()
                    while len(carry) < self.global_batch_size and (item := next(stream, None)) is not None:
                        carry.append(item)
                    if len(carry) < self.global_batch_size:
                        buffer, carry, ended = buffer + carry, [], True
                end = carry_at if carry else cursor.copy()  # where the next buffer begins
                batches = self._plan_buffer(buffer, state)
                # the position after this buffer: the next one's first protein (after its last batch too)
                following = dataclasses.replace(state, buffer_start=state.buffer_start + len(buffer), batches_done=0,
                                                at=end.copy())
                for b in range(state.batches_done, len(batches)):
                    produced += 1
                    after = following if b + 1 == len(batches) else dataclasses.replace(state, batches_done=b + 1, at=at)
                    yield batches[b], buffer, state, after
                state = following
                if ended:
                    break
            if produced == 0 and state.buffer_start < self.global_batch_size:
                raise InputError(f"the corpus holds {state.buffer_start} {_units(self.sample_clusters)}, fewer than "
                                 f"one {self.batch_name} ({self.global_batch_size})", path=", ".join(self.paths))
            state = dataclasses.replace(state, epoch=state.epoch + 1, buffer_start=0, batches_done=0, at=None)

    def _plan_buffer(self, buffer, state: StreamState) -> list[np.ndarray]:
        """Global batches of a buffer as arrays of buffer positions, each sorted by length; with
        `shuffle`, formed anew every epoch and in a shuffled order."""
        n_full = len(buffer) // self.global_batch_size * self.global_batch_size
        if n_full == 0:
            return []
        lengths = np.array([min(len(text), self.max_residues) for _, _, text in buffer])
        if self.shuffle and state.plan >= 2:
            # By padded width, in a random order within one width drawn from (seed, epoch,
            # buffer_start) alone, so every rank (and a resume) computes the same order and each
            # epoch forms other batches (see the module docstring).
            width = state.width or self._bucket_width(state)
            tie = np.random.default_rng((self.seed, state.epoch, state.buffer_start, 11)).permutation(len(buffer))
            order = np.lexsort((tie, -(-(lengths + self.layout.num_special) // width)))
        else:
            # Ties broken by position, so every rank computes the same order.
            order = np.lexsort((np.arange(len(buffer)), lengths))
        if len(buffer) > n_full:
            # Drop a random remainder rather than always the longest proteins.
            rng = np.random.default_rng((self.seed, state.epoch, state.buffer_start, 7))
            keep = np.zeros(len(buffer), dtype=bool)
            keep[rng.choice(len(buffer), n_full, replace=False)] = True
            order = order[keep[order]]
        batches = order.reshape(-1, self.global_batch_size)
        if self.shuffle:
            if state.plan >= 2:
                # each batch in order of length, ties by position (micro-batches of similar lengths)
                batches = np.stack([batch[np.lexsort((batch, lengths[batch]))] for batch in batches])
            # (plan 1 shuffles the order of its batches too, as the versions that made it did)
            rng = np.random.default_rng((self.seed, state.epoch, state.buffer_start, 3))
            batches = batches[rng.permutation(len(batches))]
        return list(batches)

    def _step_batch(self, batch: np.ndarray, buffer, state: StreamState, after: StreamState) -> StepBatch:
        # batch: (G,) buffer positions sorted by length; micro-batch j -> rank j % world_size
        micro = batch.reshape(self.num_micro, self.micro_batch_size)
        mine = micro[self.rank::self.world_size]
        if self.micro_batch_tokens:
            mine = self._token_split(micro, buffer)
        out = []
        for positions in mine:
            samples = [self._sample(buffer, int(p), state) for p in positions]
            out.append(self.collate(samples))
        return StepBatch(out, after, sum(len(p) for p in mine))

    def _bucket_width(self, state: StreamState) -> int:
        """The bucket width a run starting at `state` without a recorded one forms batches with
        (plan 2: 8 wide where `train` gave no pad_multiple, without token micro-batches)."""
        return self.bucket_width if state.plan >= 3 or self.micro_batch_tokens else 8

    @property
    def bucket_width(self) -> int:
        """Padded tokens of one length bucket: the smallest multiple of pad_multiple that is 8
        or more: with pad_multiple 1 (or 2, 4) a random order among equal lengths alone kept 89%
        of the pairs of proteins batched together (8-token buckets: 78%), for a little padding."""
        return -(-8 // self.pad_multiple) * self.pad_multiple

    def _tokens(self, count: int, longest: int, residues: int) -> int:
        """Padded tokens of a micro-batch of `count` proteins, as collate makes it: rows padded to
        the longest (special tokens included) rounded up to pad_multiple; packed, one such row."""
        m, special = self.pad_multiple, self.layout.num_special
        if self.packed:
            return -(-(residues + special * count) // m) * m
        return count * (-(-(longest + special) // m) * m)

    def _token_split(self, micro: np.ndarray, buffer) -> list[np.ndarray]:
        """This rank's proteins (the same ones as with micro-batches of micro_batch_size) cut
        into micro-batches of at most micro_batch_tokens padded tokens: short proteins go many to a
        forward pass, long ones few. The step's loss is a sum over its predicted tokens divided
        by their count, and every protein's masks come from its own generator, so the split
        changes no result beyond float rounding. Every rank makes as many micro-batches as the
        rank that needs most (FSDP gathers parameters collectively at every forward pass)."""
        def greedy(positions) -> list[np.ndarray]:
            lengths = [min(len(buffer[int(p)][2]), self.max_residues) for p in positions]
            parts, start, longest, residues = [], 0, 0, 0
            for i, n in enumerate(lengths):
                if i > start and self._tokens(i - start + 1, max(longest, n), residues + n) > self.micro_batch_tokens:
                    parts.append(positions[start:i])
                    start, longest, residues = i, 0, 0
                longest, residues = max(longest, n), residues + n
            parts.append(positions[start:])
            return parts

        def tokens(part) -> int:
            lengths = [min(len(buffer[int(p)][2]), self.max_residues) for p in part]
            return self._tokens(len(lengths), max(lengths), sum(lengths))

        shares = [np.concatenate(list(micro[r::self.world_size])) for r in range(self.world_size)]
        most = max(len(greedy(share)) for share in shares)
        parts = greedy(shares[self.rank])
        while len(parts) < most:  # halve the largest part (in tokens) until the counts agree
            big = max(range(len(parts)), key=lambda i: (len(parts[i]) > 1, tokens(parts[i])))
            half = len(parts[big]) // 2
            parts[big:big + 1] = [parts[big][:half], parts[big][half:]]
        return parts

    def _sample(self, buffer, pos: int, state: StreamState) -> Sample:
        path, lineno, text = buffer[pos]
        sample = Sample(state.buffer_start + pos, state.epoch, np.empty(0, dtype=np.int64), self.seed)
        ids = self.layout.encode(text, path=path, line=lineno)  # the whole protein: positions are its own
        if len(ids) > self.max_residues:
            start = int(sample.rng(0).integers(0, len(ids) - self.max_residues + 1))
            sample.n_terminus, sample.c_terminus = start == 0, start + self.max_residues == len(ids)
            ids = ids[start:start + self.max_residues]
        sample.residues = ids
        return sample


def _ignore_stop_signals(worker_id: int, parent_pid: int | None = None) -> None:
    """DataLoader workers leave Ctrl-C/SIGTERM/SIGHUP (and SIGUSR1/SIGUSR2) to the main process, which
    finishes its step and saves a checkpoint (a worker dying first would abort that: a hang-up, like Ctrl-C, reaches
    the whole process group); they exit with it, and die with it when it is killed (a worker
    ignores SIGTERM, so one whose trainer was SIGKILLed stayed alive under PID 1, reading the
    corpus for nobody): prep's workers' way."""
    import signal

    from protrans_cli.corpus import _STOP_SIGNALS, _die_with_parent

    # (a scheduler's warning among them: Slurm's --signal=USR1@N reaches every process of the job,
    # and its default action killed the worker and so the run, before its checkpoint)
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    # (forked with them blocked, step_batches: one sent to the group before this point waited, and is
    # ignored here instead of running the trainer's handler, inherited, in the worker)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent_pid)


class _SigchldRestore:
    """The caller's SIGCHLD handler, taken before torch's DataLoader sets its own (once per
    process, in the main thread), and put back by `restore`."""

    def __init__(self):
        import signal
        import threading

        from torch.utils.data._utils import signal_handling

        self.active = (hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread()
                       and getattr(signal_handling, "_SIGCHLD_handler_set", None) is False)
        self.previous = signal.getsignal(signal.SIGCHLD) if self.active else None
        # (kept for restore, which imports nothing: it also runs as the generator is finalised at
        # the interpreter's exit, where an import fails, "Exception ignored ... import of signal halted")
        self._modules = (signal, threading, signal_handling)

    def restore(self) -> None:
        signal, threading, signal_handling = self._modules
        # (None: a handler not set from Python, left as is; another thread, a generator closed by
        # the garbage collector there, cannot set a handler)
        if self.active and self.previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, self.previous)
            signal_handling._SIGCHLD_handler_set = False
        self.active = False


def step_batches(stream: CorpusStream, num_workers: int = 0) -> Iterator[StepBatch]:
    """Iterate a stream, through a DataLoader with `num_workers` processes when asked."""
    if num_workers <= 0:
        yield from stream
        return
    import multiprocessing

    import torch.utils.data

    # Forked, as prep's workers: the dataset below wraps the stream as it is (its collate is the
    # objective's, which holds the tokenizer), which spawn and forkserver would have to pickle.
    # (Python 3.14 made forkserver the default on Linux, and macOS has spawn: "Can't pickle local
    # object" and a traceback there.) Where there is no fork (Windows), workers are refused.
    if "fork" not in multiprocessing.get_all_start_methods():
        raise UsageError(f"--num-workers {num_workers}: data-loader workers are forked, and this platform cannot "
                         "fork; use --num-workers 0 (the data is then prepared in the main process)")

    class _Iterable(torch.utils.data.IterableDataset):
        def __iter__(self_inner):
            try:
                yield from stream
            except ProtransError as exc:
                # Handed over as an item: raised in a worker, the DataLoader would re-raise it
                # in the main process as a multi-line "Caught InputError in DataLoader worker".
                yield exc

    # A DataLoader draws its workers' base seed from `generator`, by default from the global
    # torch RNG: that draw would shift the dropout (and any other) random numbers of the main
    # process, so a run with workers would differ from one without, and a resumed run (whose
    # loader starts after the RNG state is restored) from an uninterrupted one. Its own generator,
    # seeded by where the stream starts, leaves the global RNG alone. (The data itself draws from
    # per-protein generators, not from the workers' seeds.)
    state = stream.state
    seed = int(np.random.SeedSequence((stream.seed, stream.rank, state.epoch, state.buffer_start,
                                       state.batches_done)).generate_state(1)[0])
    # batch_size=None: the stream already yields whole steps. A DataLoader takes items from
    # its workers in turn, which matches the round-robin split in CorpusStream.__iter__.
    loader = torch.utils.data.DataLoader(_Iterable(), batch_size=None, num_workers=num_workers,
                                         persistent_workers=False,
                                         worker_init_fn=functools.partial(_ignore_stop_signals, parent_pid=os.getpid()),
                                         generator=torch.Generator().manual_seed(seed),
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    # torch installs a SIGCHLD handler for the whole process with its first loader that has
    # workers, and leaves it there: a notebook's train(num_workers=N) changed the caller's handler
    # for good. Put back once the workers are gone (and torch's flag, so a later loader of the
    # caller's installs its own again).
    sigchld = _SigchldRestore()
    from protrans_cli.corpus import _stop_signals_held

    # The workers are forked here with the stop signals blocked (prep's way): one sent to the group
    # between a fork and the worker's _ignore_stop_signals ran the trainer's handler in the worker
    # (its warning printed once more); in the main process they come once the forks are done.
    with _stop_signals_held():
        iterator = iter(loader)
    # A library caller that stops iterating without closing this generator left the workers to
    # multiprocessing's exit handler, which waits for them forever (they ignore SIGTERM): shut
    # down at exit too, before that handler (atexit runs the later registration first; not
    # through weakref.finalize, whose one atexit hook may predate multiprocessing's).
    import atexit

    atexit.register(iterator._shutdown_workers)
    try:
        for item in iterator:
            if isinstance(item, ProtransError):
                # Not `raise item`: the local would hold the error, whose traceback holds this
                # frame, a cycle that kept the caller's model, optimizer and the workers' pipes
                # and shared memory alive after a failed train() until the garbage collector ran.
                error, item = item, None
                try:
                    raise error
                finally:
                    del error
            yield item
    finally:
        # Now, not at exit: the workers ignore SIGTERM, so multiprocessing's exit handler
        # (terminate, then join) waited for them forever after an error.
        atexit.unregister(iterator._shutdown_workers)
        iterator._shutdown_workers()
        sigchld.restore()
