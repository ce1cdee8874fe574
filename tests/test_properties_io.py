"""Property tests (Hypothesis) of the input/output side: the FASTA reader against Biopython, the
HDF5 key escaping of ids, and prep's corpus against the reader and the training corpus reader.

Each property compares protrans with an independent reference (Biopython's FASTA parser, h5py,
hashlib, a plain re-implementation of the documented normalisation written here), on generated
input that reaches the edges users hit. `HYPOTHESIS_PROFILE=fuzz` searches harder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
SeqIO = pytest.importorskip("Bio.SeqIO")

from hypothesis import example, given, strategies as st  # noqa: E402

from conftest import fewer  # noqa: E402
from protrans_cli.errors import InputError  # noqa: E402
from protrans_cli.io.fasta import read_fasta  # noqa: E402
from protrans_cli.residues import SequenceRejected, normalise  # noqa: E402

ASCII_WS = " \t\n\r\x0b\x0c"  # what ends an id and what a sequence loses (docs/prep.md)
BOM = "\ufeff"


# --------------------------------------------------------------------------------------------
# The documented normalisation (docs/prep.md, "Normalisation rules"), written out again here


def reference_normalise(raw: bytes, rare: str = "x") -> tuple[str, str | None, int | None]:
    """(sequence, reason, position): the normalised sequence, or a rejection reason and the
    1-based residue of the first offending character (None for `empty`)."""
    data = bytes(c for c in raw if c not in b" \t\r\n\x0b\x0c-.")
    data = bytes(c - 32 if 97 <= c <= 122 else c for c in data)
    if data.endswith(b"*"):
        data = data[:-1]
    if not data:
        return "", "empty", None
    if rare == "x":
        data = bytes(ord("X") if c in b"UZOB" else c for c in data)
    allowed = b"ACDEFGHIKLMNPQRSTVWYX" + (b"UZOB" if rare == "keep" else b"")
    for i, c in enumerate(data):
        if c not in allowed:
            return "", "internal_stop" if c == ord("*") else "invalid_character", i + 1
    return data.decode(), None, None


def protrans_normalise(seq: str, rare: str = "x") -> tuple[str, str | None, int | None]:
    try:
        return normalise(seq, rare), None, None
    except SequenceRejected as exc:
        at = re.search(r"at residue (\d+)", exc.detail)
        return "", exc.reason, int(at.group(1)) if at else None


def ascii_id(header: str) -> str:
    """The id of a header as docs/prep.md defines it: up to the first ASCII whitespace."""
    return re.split(f"[{ASCII_WS}]", header.strip(ASCII_WS), maxsplit=1)[0]


# --------------------------------------------------------------------------------------------
# Generated FASTA files: the records as written, and the text a user's tools would produce

# Header text: ids of letters, digits and punctuation (`|`, `/`, `%`, `.`: UniProt's, paths'),
# unicode letters, unicode spaces that are no ASCII whitespace (NBSP, em space, NEL, the ASCII
# separators \x1c-\x1f that Python's str.split takes for whitespace), `>` inside, NUL rarely.
HEADER_CHARS = st.one_of(
    st.sampled_from("abcXYZ019_|/%.:;=-+>"),
    st.sampled_from(" \t\x0b\x0c"),
    st.sampled_from("\xa0\u2003\x85\x1c\x1f\u200bé\u00fcα漢\U0001f9ec\x7f\x01"),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
)
HEADERS = st.one_of(
    st.text(HEADER_CHARS, max_size=25),
    st.builds(lambda a, b: a + "\x00" + b, st.text(HEADER_CHARS, max_size=5), st.text(HEADER_CHARS, max_size=5)),
)

# residues as written (lower case, rare ones, gaps, blanks, `*`: a record normalise keeps), and
# those with what it refuses (J, digits, `>`, NUL, non-ASCII, a mark) or a stray CR
WILD_CHARS = st.one_of(
    st.sampled_from("ACDEFGHIKLMNPQRSTVWY"),
    st.sampled_from("acdefghiklmnpqrstvwyXxUOBZuobz"),
    st.sampled_from("-. \t\x0b\x0c"),
)
RESIDUE_CHARS = st.one_of(WILD_CHARS, st.sampled_from("*J1#>;\x00é\x1f\ufeff\xa0\r"))


@st.composite
def sequence_lines(draw) -> list[str]:
    """A record's sequence as lines (any width, blank and blanks-only lines inside); no line
    starts with `>` (it would be a header), nor is a mark followed by blanks only (a mark
    before a header is dropped, docs/prep.md: see test_bom_placement for those)."""
    kind = draw(st.sampled_from(["plain", "wild", "junk", "empty"]))
    if kind == "empty":
        return draw(st.lists(st.sampled_from(["", " ", "\t"]), max_size=2))
    chars = {"plain": st.sampled_from("ACDEFGHIKLMNPQRSTVWYX"), "wild": WILD_CHARS, "junk": RESIDUE_CHARS}[kind]
    lines = draw(st.lists(st.text(chars, max_size=70), min_size=1, max_size=5))
    if kind != "plain" and draw(st.booleans()):  # a terminal stop, maybe with blanks or gaps after it
        lines[-1] += "*" + draw(st.sampled_from(["", " ", "-", "*"]))
    return [line for line in lines
            if not re.search("(^|\r)\ufeff?>", line) and not (line.startswith(BOM) and not line[1:].strip(ASCII_WS))]


@dataclass
class Record:
    header: str          # as written after `>`, without the line end
    lines: list[str]
    mark: bool = False   # a byte-order mark before the `>` (cat a.fa b.fa, b with a mark)
    mark_line: str | None = None  # or on a line of its own, then blank lines: "\n \n" (b starts with them)


@dataclass
class FastaFile:
    records: list[Record]
    preamble: list[str]      # blank lines (or not-FASTA text) before the first record
    leading_mark: bool
    ends: list[str]          # line ends, used in turn ("\n", "\r\n")
    final_newline: bool
    gz: bool

    def build(self) -> tuple[bytes, list[int], str]:
        """The file's bytes, the line of each header, and the text Biopython is given (without
        what protrans documents it skips: a leading mark, blank lines before the first header,
        a mark before a header)."""
        out, bio, lines = [], [], []
        n = 0

        def put(text: str, to_bio: bool = True) -> None:
            nonlocal n
            end = self.ends[n % len(self.ends)]
            n += 1
            out.append(text + end)
            if to_bio:
                bio.append(text + end)

        if self.leading_mark:
            out.append(BOM)
        for line in self.preamble:
            put(line, to_bio=False)
        for rec in self.records:
            if rec.mark_line is not None:
                for blank in (BOM + rec.mark_line).split("\n"):
                    put(blank, to_bio=False)
            lines.append(sum(piece.count("\n") for piece in out) + 1)
            put((BOM if rec.mark else "") + ">" + rec.header, to_bio=False)
            bio.append(">" + rec.header + "\n")
            for line in rec.lines:
                put(line)
        text = "".join(out)
        if not self.final_newline and text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        data = text.encode("utf-8")
        return (gzip.compress(data, mtime=0) if self.gz else data), lines, "".join(bio)


@st.composite
def fasta_files(draw, junk: bool = True) -> FastaFile:
    records = draw(st.lists(st.builds(Record, HEADERS, sequence_lines()),
                            max_size=6))
    for rec in records:  # now and then a record of a file concatenated to another with a mark
        rec.mark = draw(st.integers(0, 9)) == 0
        if draw(st.integers(0, 9)) == 0:
            rec.mark_line = draw(st.sampled_from(["", " ", "\t", "\n", " \n\t", "\n\n"]))
    preamble = draw(st.lists(st.sampled_from(["", " ", "\t", "\x0b"]), max_size=2))
    if junk and draw(st.integers(0, 9)) == 0:  # text before the first `>`: not FASTA
        preamble.append(draw(st.sampled_from(["# comment", ";x", "MKTA", " x>a", "\xa0"])))
    return FastaFile(records, preamble, draw(st.booleans()), draw(st.sampled_from([["\n"], ["\r\n"], ["\n", "\r\n"]])),
                     draw(st.booleans()), draw(st.integers(0, 4)) == 0)


def shown(text: str) -> str:
    """Control characters as --rejects writes them (`\\t`, `\\x01`), and a field that starts with a
    quote quoted as CSV quotes it (docs/prep.md)."""
    named = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
    text = "".join(named.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 else c)
                   for c in text)
    return '"' + text.replace('"', '""') + '"' if text.startswith('"') else text


def write_temp(directory: str, data: bytes, name: str = "x.fa") -> Path:
    path = Path(directory) / name
    path.write_bytes(data)
    return path


def biopython(text: str) -> list:
    stream = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8", newline=None)
    return list(SeqIO.parse(stream, "fasta"))


def not_fasta_line(fasta: FastaFile) -> int | None:
    """The line of the first text before the first record that is not blank, or None."""
    for i, line in enumerate(fasta.preamble):
        if line.strip(ASCII_WS):
            return i + 1
    return None


# --------------------------------------------------------------------------------------------
# 1. The FASTA reader against Biopython


@given(fasta_files())
@example(FastaFile([Record("a\xa0b c", ["mkTa*"]), Record("", ["MK"])], [""], True, ["\r\n"], False, False))
# an empty file with a mark, concatenated to one with a mark: prep read it, embed said "not FASTA"
@example(FastaFile([Record("a", ["MK"], mark=True)], [], True, ["\n"], True, False))
@example(FastaFile([Record("sp|P1|X_HUMAN\x1fdesc", ["MK", "", "ta"]), Record("t", ["MKT**"]), Record("u", ["mk*-"]),
                    Record("v", ["M\x0bK\x0cT", "a-.b*"])], [], False, ["\n"], True, True))
def test_read_fasta_matches_biopython(fasta):
    """Every record read_fasta yields is Biopython's (same order, id, description and sequence)
    after the documented differences: ids end at ASCII whitespace only, the description is the
    header stripped of ASCII whitespace, `\\v` and `\\f` leave sequences too; a leading mark and
    blank lines before the first header are skipped, and a mark before a later header. Where
    protrans refuses (text before the first `>`, a header without an id or with a NUL byte) it
    is one InputError naming the file and the line (and the record where it has an id), raised
    at that record, the records before it read as Biopython reads them."""
    data, header_lines, bio_text = fasta.build()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data, "x.fa.gz" if fasta.gz else "x.fa")
        got, error = [], None
        try:
            for rec in read_fasta(path):
                got.append(rec)
        except InputError as exc:
            error = exc
    junk = not_fasta_line(fasta)
    if junk is not None:
        assert error is not None and got == [], got
        assert "not FASTA" in error.message and error.path == str(path), error
        assert error.line == junk, error
        return
    reference = biopython(bio_text)
    assert len(reference) == len(fasta.records)
    bad = next((i for i, rec in enumerate(fasta.records) if not ascii_id(rec.header) or "\x00" in rec.header), None)
    if bad is None:
        assert error is None, error
    else:
        assert error is not None and len(got) == bad, (error, got)
        assert error.path == str(path) and error.line == header_lines[bad], error
        ident = ascii_id(fasta.records[bad].header)
        assert error.record == (ident or None), error
        assert str(error).count("\n") == 0
        reference = reference[:bad]
    assert len(got) == len(reference)
    for rec, bio, written, line in zip(got, reference, fasta.records, header_lines):
        # the id: Biopython's, but for the Unicode whitespace Python splits at and protrans keeps
        if not any(c.isspace() and c not in ASCII_WS for c in written.header):
            assert rec.id == bio.id
        assert rec.id == ascii_id(written.header) and rec.id
        assert rec.description == written.header.strip(ASCII_WS)
        assert rec.description.rstrip() == bio.description.lstrip(ASCII_WS)
        assert rec.line == line
        bio_bytes = bytes(bio.seq)
        assert rec.sequence.encode("latin-1") == bio_bytes.translate(None, b"\x0b\x0c")
        for rare in ("x", "keep"):
            assert protrans_normalise(rec.sequence, rare) == reference_normalise(bio_bytes, rare)


HEADER_BYTES = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\x00", b""))
WORD_BYTES = st.one_of(st.sampled_from([b"\xc3\xbc1", b"\xfc1", b"37\xb0C", b"\xe2\x80\x8b", b"a|b", b"\xff"]),
                       HEADER_BYTES)


@given(st.lists(st.tuples(WORD_BYTES, st.sampled_from([b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"  \r"])), min_size=1,
                max_size=4),
       st.sampled_from([b"\n", b"\r\n"]), st.sampled_from([b"MKTA", None, b"", b" "]))
@example([(b"\xc3\xbc1", b"\r"), (b"37\xb0C", b" ")], b"\n", b"MKTA")  # a stray CR, then a latin-1 word
@example([(b"a", b"\r"), (b"b", b" ")], b"\n", b"")  # a stray CR, an empty record: prep refused the run
@example([(b'"', b" ")], b"\n", b"MKTA")  # an id that starts with a quote: quoted in --rejects
def test_header_bytes_give_the_id_prep_documents(words, end, residues):
    """Any bytes in a header (but NUL and the line end): the id is the first word, cut at ASCII
    whitespace (a stray CR included: docs/prep.md), decoded as UTF-8 where it is UTF-8 and as
    latin-1 where not, whatever the other words hold; a header of blanks alone is an InputError
    naming its line. A CR inside the header is that record's own (docs/prep.md), but for a
    header with no line after it, which is how a file of CR-only line ends reads: an InputError.
    Read by read_fasta and by prep, alike (`residues`: a sequence line, a blank line, or none)."""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    header = b"".join(word + space for word, space in words)
    body = b"" if residues is None else residues + end
    data = b">" + header + end + body + b">last\nGG\n"
    first = header.split()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data)
        rejects = Path(tmp) / "rejects.tsv"
        options = CorpusOptions(output=str(Path(tmp) / "c.txt"), rejects=str(rejects), min_length=5)
        if not first:
            with pytest.raises(InputError) as caught:
                list(read_fasta(path))
            assert caught.value.line == 1 and caught.value.path == str(path)
            return
        if residues is None and b"\r" in (header + end).rstrip(b"\r\n"):
            for read in (lambda: list(read_fasta(path)), lambda: build_corpus([str(path)], options)):
                with pytest.raises(InputError, match="carriage return") as caught:
                    read()
                assert caught.value.line == 1 and caught.value.path == str(path)
            return
        try:
            want = first[0].decode("utf-8")
        except UnicodeDecodeError:
            want = first[0].decode("latin-1")
        records = list(read_fasta(path))
        seq = (residues or b"").strip().decode()
        assert [(r.id, r.sequence) for r in records] == [(want, seq), ("last", "GG")]
        build_corpus([str(path)], options)
        rows = [line.split("\t") for line in rejects.read_text("utf-8").splitlines()[1:]]
        assert rows and rows[0][:2] == [shown(want), "too_short" if seq else "empty"], rows


# --------------------------------------------------------------------------------------------
# 3. prep: its corpus (and --rejects) against Biopython's records and the documented rules,
#    read back by the training corpus reader


def expected_prep(fasta: FastaFile, rare: str, dedup: bool, min_length: int = 1, max_length: int | None = None,
                  long: str = "skip", ids: list | None = None) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The proteins prep writes, in order, and its rejects (id, reason, line), from Biopython's
    records and the rules of docs/prep.md (`ids`: the kept proteins' ids are put there)."""
    _, header_lines, bio_text = fasta.build()
    kept, rejects, seen = [], [], set()
    for written, bio, line in zip(fasta.records, biopython(bio_text), header_lines):
        ident = ascii_id(written.header)
        if not ident:
            rejects.append((ident, "missing_id", line))
            continue
        if "\x00" in written.header:
            rejects.append((ident, "invalid_character", line))
            continue
        seq, reason, _ = reference_normalise(bytes(bio.seq), rare)
        if reason is None and len(seq) < min_length:
            reason = "too_short"
        if reason is None and max_length is not None and len(seq) > max_length and long == "skip":
            reason = "too_long"
        if reason is None and dedup and seq in seen:
            reason = "duplicate"
        if reason is not None:
            rejects.append((ident, reason, line))
            continue
        seen.add(seq)
        kept.append(seq)
        if ids is not None:
            ids.append(ident)
    return kept, rejects


@fewer(40)
@given(fasta_files(), st.sampled_from(["x", "keep"]), st.booleans(), st.sampled_from([1, 1, 2, 3]),
       st.sampled_from(["", ".gz"]), st.one_of(st.just(0), st.integers(900, 1100)))
@example(FastaFile([Record("a", ["MK"], mark=True), Record("b", ["mk*"], mark=True), Record("", ["GG"]),
                    Record("e", ["MKT**", ""]), Record("f", ["M\x0bK", "u*"])],
                   [""], True, ["\r\n"], False, False), "x", True, 2, ".gz", 1010)
def test_prep_writes_the_documented_corpus_of_every_fasta(fasta, rare, dedup, shards, suffix, filler):
    """prep's corpus holds exactly the records Biopython reads that the documented rules keep, in
    input order (protein k in shard k mod N), normalised, one a line with single spaces and an
    empty line after each; --rejects lists the others with the reason and the header's line;
    the training corpus reader reads the same proteins back. Whatever the block size the input
    is cut into (a record over many blocks, a mark or a CRLF at a cut: a first record of `filler`
    residues moves the records over prep's smallest block, 1,024 bytes)."""
    from protrans_cli.corpus import CorpusOptions, build_corpus
    from protrans_cli.io.files import open_input
    from protrans_cli.training.data import iter_proteins

    if filler:
        fasta = FastaFile([Record("filler", ["A" * filler])] + fasta.records, *list(vars(fasta).values())[1:])
    data, _, _ = fasta.build()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data, "x.fa.gz" if fasta.gz else "x.fa")
        out = Path(tmp) / f"corpus.txt{suffix}"
        rejects = Path(tmp) / "rejects.tsv"
        options = CorpusOptions(output=str(out), rare=rare, dedup=dedup, num_shards=shards, rejects=str(rejects),
                                block_bytes=1024)
        junk = not_fasta_line(fasta)
        if junk is not None and fasta.records:
            with pytest.raises(InputError) as caught:
                build_corpus([str(path)], options)
            assert "not FASTA" in caught.value.message and caught.value.line == junk
            return
        if junk is not None:
            return  # (text alone, no record: not part of this property)
        stats = build_corpus([str(path)], options)
        kept, refused = expected_prep(fasta, rare, dedup)
        files = [out] if shards == 1 else [Path(tmp) / f"corpus.{k:05d}.txt{suffix}" for k in range(shards)]
        texts = []
        for k, name in enumerate(files):
            with open_input(name) as stream:
                texts.append(stream.read())
            assert texts[-1] == b"".join(" ".join(seq).encode() + b"\n\n" for seq in kept[k::shards]), k
        back = [text for _, _, text in iter_proteins([str(f) for f in files])]
        assert back == [seq for k in range(shards) for seq in kept[k::shards]]
        rows = [row.split("\t") for row in rejects.read_text("utf-8").splitlines()]
        assert rows[0] == ["id", "reason", "detail", "file", "line"]
        assert [(row[0], row[1], int(row[4])) for row in rows[1:]] == [(shown(i), r, n) for i, r, n in refused]
        assert stats.proteins_out == len(kept) and stats.records_in == len(fasta.records)


def windows(seq: str, max_length: int | None, min_length: int) -> list[str]:
    """--long crop: consecutive windows from the N-terminus, a last one under --min-length dropped."""
    if max_length is None or len(seq) <= max_length:
        return [seq]
    cut = [seq[i:i + max_length] for i in range(0, len(seq), max_length)]
    return cut if len(cut[-1]) >= min_length else cut[:-1]


def in_validation(ident: str, fraction: float) -> bool:
    """docs/prep.md: blake2b-64(id, person="protrans-split") / 2^64 < F."""
    digest = hashlib.blake2b(ident.encode("utf-8"), digest_size=8, person=b"protrans-split").digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


@fewer(30)
@given(fasta_files(junk=False), st.integers(1, 3), st.one_of(st.none(), st.integers(3, 8)),
       st.sampled_from(["skip", "crop"]), st.sampled_from([0.0, 0.5]), st.booleans(), st.sampled_from([1, 2]))
@example(FastaFile([Record("a", ["MKTAY"]), Record("b", ["MKTAYI"]), Record("c", ["MKTAYIA"]), Record("d", ["MK"]),
                    Record("e", ["MKTAYI"])], [], False, ["\n"], True, False), 2, 3, "crop", 0.5, True, 2)
def test_prep_lengths_crops_and_split_follow_the_documented_rules(fasta, min_length, max_length, long, fraction,
                                                                  dedup, shards):
    """--min-length, --max-length with --long skip or crop (windows from the N-terminus as
    consecutive lines of one document, a last one under --min-length dropped), --dedup after those
    filters and the --valid-fraction split by the id's blake2b digest, re-implemented from
    docs/prep.md: the training shards and the validation file hold exactly those proteins, lengths
    at the bounds included."""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    long = "skip" if max_length is None else long  # (crop needs a window: a usage error without one)
    data, _, _ = fasta.build()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data, "x.fa.gz" if fasta.gz else "x.fa")
        out, valid, rejects = Path(tmp) / "c.txt", Path(tmp) / "v.txt", Path(tmp) / "r.tsv"
        build_corpus([str(path)], CorpusOptions(
            output=str(out), min_length=min_length, max_length=max_length, long=long, dedup=dedup,
            valid_fraction=fraction, valid_output=str(valid) if fraction else None, num_shards=shards,
            rejects=str(rejects)))
        ids = []
        kept, refused = expected_prep(fasta, "x", dedup, min_length, max_length, long, ids)
        train, held = [], []
        for ident, seq in zip(ids, kept):
            document = "\n".join(" ".join(w) for w in windows(seq, max_length, min_length)) + "\n\n"
            (held if fraction and in_validation(ident, fraction) else train).append(document)
        files = [out] if shards == 1 else [Path(tmp) / f"c.{k:05d}.txt" for k in range(shards)]
        for k, name in enumerate(files):
            assert name.read_text() == "".join(train[k::shards]), k
        if fraction:
            assert valid.read_text() == "".join(held)
        rows = [row.split("\t") for row in rejects.read_text("utf-8").splitlines()[1:]]
        assert [(row[0], row[1], int(row[4])) for row in rows] == [(shown(i), r, n) for i, r, n in refused]


# --------------------------------------------------------------------------------------------
# 2. HDF5 keys of protein ids (docs/formats.md, "Keys"), and embed's files of such ids


def reference_escape(ident: str) -> str:
    """docs/formats.md: `%` is `%25`, `/` `%2F`, a control character `%XX`, `.` and `..` `%2E`s."""
    if ident in (".", ".."):
        return "%2E" * len(ident)
    return "".join(f"%{ord(c):02X}" if c in "%/" or ord(c) < 0x20 or ord(c) == 0x7f else c for c in ident)


ID_TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
    st.text(st.sampled_from("%/.2EF5a|\x00\x01\x1f\x7f\x85é"), min_size=1, max_size=8),
    st.sampled_from([".", "..", "%", "%25", "%2E", "%2F", "/", "a/b", "per_protein", "ids", "0", "1",
                     "0123456789abcdef0123456789abcdef", "sp|P69905|HBA_HUMAN"]),
)


@given(ID_TEXT)
def test_escape_key_is_the_documented_reversible_hdf5_name(ident):
    """escape_key is the escaping docs/formats.md describes; unescape_key gives the id back; the
    key is a name h5py takes for a dataset (no `/`, not `.` or `..`, not empty) and lists again."""
    import h5py

    from protrans_cli.io.h5 import escape_key, unescape_key

    key = escape_key(ident)
    assert key == reference_escape(ident)
    assert unescape_key(key) == ident
    assert key and "/" not in key and key not in (".", "..") and not any(ord(c) < 0x20 for c in key)
    with tempfile.TemporaryDirectory() as tmp:
        with h5py.File(Path(tmp) / "flat.h5", "w") as f:  # a flat file's root
            f.create_dataset(key, data=[1])
        with h5py.File(Path(tmp) / "grouped.h5", "w") as f:
            f.create_group("per_protein").create_dataset(key, data=[2])
        with h5py.File(Path(tmp) / "flat.h5", "r") as f, h5py.File(Path(tmp) / "grouped.h5", "r") as g:
            assert list(f) == [key] and f[key][0] == 1
            assert list(g["per_protein"]) == [key] and g["per_protein"][key][0] == 2


@given(ID_TEXT, ID_TEXT)
@example("/", "%2F")
@example(".", "%2E")
def test_two_ids_never_share_a_key(a, b):
    from protrans_cli.io.h5 import escape_key

    assert (escape_key(a) == escape_key(b)) == (a == b)


# A FASTA id: no ASCII whitespace (it ends the id), no NUL (refused), not empty
FASTA_ID = ID_TEXT.map(lambda s: re.sub(f"[{ASCII_WS}\x00]", "", s)).filter(bool)
PROTEINS = st.lists(st.tuples(FASTA_ID, st.text(st.sampled_from("\xa0é x\t|="), max_size=8),
                              st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYXUZOBacdy-."), max_size=30)
                              .map(lambda s: s + "M" if not s.strip("-.") else s), st.sampled_from(["", "*", "*-"])),
                    min_size=1, max_size=5, unique_by=lambda t: t[0])


@fewer(25)
@given(PROTEINS, st.sampled_from(["grouped", "flat", "stacked"]))
@example([(".", "", "MK", ""), ("..", " x", "mkU", "*"), ("a/b", "", "M-K", "*-"), ("%2F", "", "A", "")], "grouped")
@example([("0", "", "MK", ""), ("1", "", "GG", ""), ("0123456789abcdef0123456789abcdef", "", "A", "")], "flat")
def test_embed_gives_back_every_id_header_and_checksum(proteins, layout):
    """embed (onehot) over a FASTA of such ids: the reader gives back exactly the ids, the header
    lines, `length` (the rows) and `checksum`, md5 of the sequence as docs/formats.md defines it
    (upper-cased, gaps and a terminal `*` removed, U/Z/O/B as written) computed here with
    hashlib; the keys are the escaped ids (stacked: the `ids` column, in key order as bytes)."""
    import h5py

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

    wanted = {}
    text = ""
    for ident, description, raw, stop in proteins:
        raw += stop
        seq, reason, _ = reference_normalise(raw.encode(), "keep")
        assert reason is None
        header = ident + (" " + description if description.strip(ASCII_WS) else "")
        text += f">{header}\n{raw}\n"
        wanted[ident] = (header.strip(ASCII_WS), len(seq), "md5:" + hashlib.md5(seq.encode()).hexdigest())
    kind = PER_PROTEIN if layout == "stacked" else PER_RESIDUE
    with tempfile.TemporaryDirectory() as tmp:
        fasta = write_temp(tmp, text.encode("utf-8"))
        out = Path(tmp) / "e.h5"
        embed(fasta, out, EmbedOptions(model="onehot", layout=layout, per_protein=kind == PER_PROTEIN,
                                       per_residue=kind == PER_RESIDUE, command_line=""))
        with EmbeddingsReader(out) as reader:
            assert sorted(reader.ids(kind)) == sorted(wanted)
            got = {}
            for ident, array, attrs in reader.items(kind):
                got[ident] = (attrs["header"], int(attrs["length"]), attrs["checksum"])
                assert array.shape[0] == wanted[ident][1] or kind == PER_PROTEIN
                assert reader.get(ident, kind).shape == array.shape
            assert got == wanted
        with h5py.File(out, "r") as f:
            if layout == "stacked":
                ids = list(f["ids"].asstr()[()])
                assert ids == sorted(wanted, key=lambda i: reference_escape(i).encode())
            else:
                group = f if layout == "flat" else f[kind]
                assert sorted(group) == sorted(reference_escape(i) for i in wanted)
                for ident in wanted:
                    assert group[reference_escape(ident)].attrs["id"] == ident


# --------------------------------------------------------------------------------------------
# 4. Every family's tokenizer: one token per residue of any protein normalise keeps

_TOKENIZERS: dict = {}


def tokenizer_of(name: str):
    from protrans_cli.models import FAMILIES

    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = FAMILIES[name].build_tokenizer()
    return _TOKENIZERS[name]


RAW_PROTEINS = st.text(WILD_CHARS, max_size=40).map(lambda s: s + "*" if s.endswith("W") else s)


def _family_names() -> list[str]:
    from protrans_cli.models import FAMILIES

    return list(FAMILIES)


@fewer(30)
@given(st.lists(RAW_PROTEINS, min_size=1, max_size=4), st.sampled_from(["x", "keep"]), st.sampled_from([1, 8]))
@example(["U", "mkuzob*", "W"], "keep", 8)
@pytest.mark.parametrize("name", _family_names())
def test_every_family_reads_one_token_per_residue(name, raws, rare, multiple):
    """For each family's tokenizer (a tiny one from build_tokenizer), any protein normalise keeps
    (lower case, rare residues kept or as X, gaps, blanks, a terminal `*`) gives exactly one
    non-special token per residue, the residue's own letter (X for a rare one where the family
    reads them so; `<unk>` where its vocabulary lacks them: XLNet), called as the tokenizer is;
    and Family.encode's residue mask picks those tokens, one per row of the embedding."""
    import torch

    from protrans_cli.models import FAMILIES

    family, tokenizer = FAMILIES[name], tokenizer_of(name)
    seqs = []
    for raw in raws:
        seq, reason, _ = reference_normalise(raw.encode(), rare)
        if reason is None:
            seqs.append(seq)
    if not seqs:
        return
    inputs, mask = family.encode(tokenizer, seqs, multiple)
    assert mask.shape[1] % multiple == 0
    for i, seq in enumerate(seqs):
        enc = tokenizer(family.prepare(seq), add_special_tokens=True, return_special_tokens_mask=True)
        ids = [t for t, special in zip(enc["input_ids"], enc["special_tokens_mask"]) if not special]
        assert len(ids) == len(seq) == int(mask[i].sum())
        letters = [t.lstrip("\u2581\u0120") for t in tokenizer.convert_ids_to_tokens(ids)]
        for letter, residue in zip(letters, seq):
            read = "X" if residue in "UZOB" and family.rare_to == "X" else residue
            assert letter == read or (read in "UZOB" and family.rare_to is None and letter == tokenizer.unk_token), \
                (letter, residue)
        assert inputs["input_ids"][i][mask[i]].tolist() == ids
        assert torch.equal(inputs["attention_mask"][i].bool() | ~mask[i], torch.ones_like(mask[i]))


# --------------------------------------------------------------------------------------------
# 5. Label files: damaged ones are read or refused in one line, never a traceback

LABEL_SEEDS = {
    "netsurfp.csv": b"input, dssp3, dssp8, disorder, cb513_mask\n"
                    b"M K V L A,C E E H H,C B E H G,0.0 1.0 1.0 1.0 1.0,1 1 1 0 1\n"
                    b"A C D,C C H,T S H,1.0 1.0 0.0,1 1 1\n",
    "deeploc.fasta": b">P1 Cell.membrane-M\nMKVLA\nAGT\n>P2 Cytoplasm-U test\nMKKK\n>P3 Nucleus-S\nMPPK\n",
    "flip.csv": b"sequence,target,set,validation\nMKTAY,0.5,train,False\nMKKLL,1.25,train,True\nGGHH,-3,test,\n",
    "flip.fasta": b">p1 SET=train VALIDATION=False\nCCHHE\n>p2 SET=train VALIDATION=True\nCEEC\n"
                  b">p3 SET=test VALIDATION=False\nHHHC\n",
    "table.tsv": b"id\tlabel\nq1\tenzyme\nq2\tother\nq3\tenzyme\n",
    "pisces.csv": b"pdb_id,chain_code,seq,sst8,sst3,len,has_nonstd_aa\n1ABC,A,FPCDV,BBHTH,EEHCH,5,False\n"
                  b"1ABC,B,VFLQ,SEHT,CEHC,4,False\n",
    "biotrainer.fasta": b">a TARGET=Nucleus SET=train\nMKV\n>b TARGET=Cytoplasm SET=test\nMKK\n",
}
PIECES = st.one_of(st.sampled_from([b",", b"\n", b"\r", b"\r\n", b'"', b"\t", b" ", b">", b"\x00", b"\xff", b"\xc3",
                                    b"=", b"-", b"SET=", b"TARGET=", b"1e999", b"nan", b"\xef\xbb\xbf", b"\xff\xfe"]),
                   st.binary(max_size=6))


@st.composite
def damaged_label_files(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(LABEL_SEEDS)))
    data = LABEL_SEEDS[name]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "line"]))
        at = draw(st.integers(0, len(data)))
        if op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif op == "insert":
            data = data[:at] + draw(PIECES) + data[at:]
        elif op == "replace":
            data = data[:at] + draw(PIECES) + data[at + draw(st.integers(1, 4)):]
        elif op == "truncate":
            data = data[:at]
        else:  # a line said twice, or dropped
            lines = data.split(b"\n")
            k = draw(st.integers(0, len(lines) - 1))
            lines[k:k + 1] = [lines[k]] * draw(st.integers(0, 2))
            data = b"\n".join(lines)
    return name, data


@given(damaged_label_files(), st.booleans())
@example(("flip.csv", b'sequence,target,set,validation\nMKTAY,0.5,train,"False\nMKKLL,1.25,train,True\n'), False)
@example(("netsurfp.csv", b'"input, dssp3, dssp8, disorder\nM K,C C,C C,1 1\n'), True)
def test_a_damaged_label_file_is_read_or_refused_in_one_line(damaged, gz):
    """Any damage to a valid label file of each format (bytes deleted, inserted, replaced, a
    line repeated or dropped, the file cut short; gzip or not) is read, or refused with one
    InputError naming the file: never another exception. What is read holds no line break in an
    id, sequence or label (the rows after a quote not closed, taken into one field)."""
    from protrans_cli.heads.labels import LabelSet, read_labels

    name, data = damaged
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, gzip.compress(data, mtime=0) if gz else data, name + (".gz" if gz else ""))
        try:
            label_set = read_labels(path)
        except InputError as exc:
            assert exc.path == str(path), exc
            assert "\n" not in str(exc), exc
            return
    assert isinstance(label_set, LabelSet) and label_set.records
    assert len({record.id for record in label_set.records}) == len(label_set.records)
    if label_set.format in ("netsurfp", "pisces", "flip_csv"):  # a record a row, after the header
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        rows = [line for line in text.split("\n") if re.sub(r'[\s,"]', "", line)]
        assert len(label_set.records) == len(rows) - 1
    for record in label_set.records:  # no field took the lines after it (a quote not closed)
        assert not re.search("[\r\n]", "".join([record.id, record.sequence or "", *record.labels.values()])), record


# --------------------------------------------------------------------------------------------
# export's tables: ids read back by Python's csv module

TABLE_IDS = st.lists(st.one_of(
    st.text(st.sampled_from('ab,"\t\n\r \'|;%/'), min_size=1, max_size=8),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=10),
), min_size=1, max_size=5, unique=True)


@fewer(30)
@given(TABLE_IDS, st.sampled_from(["csv", "tsv"]), st.sampled_from(["per_protein", "per_residue"]))
@example(['"x', 'a"b', "a,b", "a\tb", "a\r\nb", " \"q", "\r"], "tsv", "per_residue")
@example(['"x', 'a"b', "a,b", "a\tb", "a\r\nb", " \"q", "\r"], "csv", "per_protein")
def test_export_tables_give_back_the_ids(ids, fmt, kind):
    """export's CSV, read by Python's csv module, gives back every id exactly (quoted where it
    holds a comma, quote or line break) and each stored number; its TSV the ids with a tab or line
    break as a space (docs/formats.md), an id starting with a quote quoted as CSV quotes it: one
    row a protein (or residue), in the file's key order."""
    import csv

    import numpy as np

    from protrans_cli.export import export
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(0)
    stored = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.h5"
        with EmbeddingsWriter(path, kinds=(kind,), layout="grouped", attrs={"model": "tiny", "family": "bert"},
                              storage_dtype="float32") as writer:
            for ident in ids:
                rows = rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32)
                array = rows if kind == "per_residue" else rows.mean(0)
                writer.write(ident, ident, "M" * len(rows), **{kind: array})
                stored[ident] = array
        out = Path(tmp) / f"t.{fmt}"
        export(path, out, kind=kind)
        with open(out, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle, delimiter="," if fmt == "csv" else "\t"))
    shown_id = {i: i if fmt == "csv" else re.sub("[\t\r\n]", " ", i) for i in ids}
    order = sorted(ids, key=lambda i: reference_escape(i).encode())
    assert table[0][0] == "id"
    body = table[1:]
    if kind == "per_protein":
        assert [row[0] for row in body] == [shown_id[i] for i in order]
        for row, ident in zip(body, order):
            assert np.array_equal(np.array(row[1:], dtype=np.float32), stored[ident])
    else:
        want = [(shown_id[i], str(p + 1)) for i in order for p in range(len(stored[i]))]
        assert [(row[0], row[1]) for row in body] == want
        got = np.array([row[2:] for row in body], dtype=np.float32)
        assert np.array_equal(got, np.concatenate([stored[i] for i in order]))


ESM_IDS = st.lists(st.one_of(
    st.text(st.sampled_from("ab./%|:*?<>"), min_size=1, max_size=6),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=10),
), min_size=1, max_size=5, unique=True)


@fewer(30)
@given(ESM_IDS, st.booleans())
@example([".", "..", ".a", "%2Ea", "a/b", "a%2Fb"], True)
def test_export_esm_writes_a_file_a_protein_under_names_apart(ids, with_rows):
    """export --format esm: one file a protein, under names no two ids share (escaped: `/`, `%`,
    control characters, a leading `.`, so none is hidden), none outside the folder, each loading
    with weights_only=True and holding its header as label and the stored numbers."""
    import numpy as np
    import torch

    from protrans_cli.export import export
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(0)
    kinds = ("per_residue", "per_protein") if with_rows else ("per_protein",)
    stored = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.h5"
        with EmbeddingsWriter(path, kinds=kinds, layout="grouped", attrs={"model": "tiny", "family": "bert"},
                              storage_dtype="float32") as writer:
            for ident in ids:
                rows = rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32)
                writer.write(ident, ident + " h", "M" * len(rows), per_protein=rows.mean(0),
                             **({"per_residue": rows} if with_rows else {}))
                stored[ident] = rows
        export(path, Path(tmp) / "out", fmt="esm")
        files = sorted((Path(tmp) / "out").iterdir())
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["e.h5", "out"]
        assert len(files) == len(ids) and all(not p.name.startswith(".") and p.suffix == ".pt" for p in files)
        got = {}
        for file in files:
            entry = torch.load(file, weights_only=True)
            assert entry["label"] not in got
            got[entry["label"]] = entry
    assert sorted(got) == sorted(i + " h" for i in ids)
    for ident, rows in stored.items():
        entry = got[ident + " h"]
        assert np.array_equal(entry["mean_representations"][-1].numpy(), rows.mean(0))
        if with_rows:
            assert np.array_equal(entry["representations"][-1].numpy(), rows)
        else:
            assert "representations" not in entry


@fewer(30)
@given(fasta_files())
@example(FastaFile([Record("a", ["mkU*"]), Record("b", ["MK*T"]), Record("c", ["", " "]), Record("d", ["MJ"]),
                    Record("e", ["MKT**"])],
                   [], True, ["\r\n"], True, True))
@example(FastaFile([Record("a", ["MK"]), Record("b\x00c", ["MKT"]), Record("\x00", [""])], [], False, ["\n"], False, True))
def test_embed_reads_every_fasta_as_biopython_does(fasta):
    """embed (onehot, --invalid-policy skip) over generated FASTA: the proteins it writes are
    Biopython's records that the documented rules keep, each with one row per residue; the
    others are listed failed with the reason (a header holding a NUL byte among them: a damaged
    record, skipped as prep leaves it out); a FASTA it cannot read (text before the first `>`, a
    header without an id, an id twice) is one InputError naming the file, and no output is left."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.io.h5 import EmbeddingsReader

    data, header_lines, bio_text = fasta.build()
    ids = [ascii_id(rec.header) for rec in fasta.records]
    unreadable = not_fasta_line(fasta) is not None or any(not i for i in ids) or len(set(ids)) < len(ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data, "x.fa.gz" if fasta.gz else "x.fa")
        out = Path(tmp) / "e.h5"
        options = EmbedOptions(model="onehot", invalid_policy="skip", command_line="")
        if unreadable or not fasta.records:
            with pytest.raises(InputError) as caught:
                embed(path, out, options)
            assert caught.value.path == str(path) and "\n" not in str(caught.value), caught.value
            assert not out.exists() and not Path(str(out) + ".partial").exists()
            return
        embed(path, out, options)
        reasons = {"empty": "empty sequence", "internal_stop": "internal stop", "invalid_character": "invalid character"}
        kept, failed = {}, {}
        for ident, bio, rec in zip(ids, biopython(bio_text), fasta.records):
            seq, reason, at = reference_normalise(bytes(bio.seq), "keep")
            if "\x00" in rec.header:  # (asked before the sequence)
                failed[ident] = "NUL byte"
            elif reason is None:
                kept[ident] = len(seq)
            else:
                failed[ident] = reasons[reason] + ("" if at is None else f" .* at residue {at} ")
        with EmbeddingsReader(out) as reader:
            assert {i: len(reader.get(i, "per_residue")) for i in reader.ids("per_residue")} == kept
            got = reader.failed()
            assert sorted(got) == sorted(failed)
            for ident, why in failed.items():
                assert re.search(why, got[ident]), (got[ident], why)


@fewer(25)
@given(fasta_files(junk=False))
def test_old_mac_line_ends_are_refused_by_every_reader(fasta):
    """A FASTA whose lines end in CR alone (classic Mac OS) read as one header line and lost
    every record: read_fasta (embed, labels) and prep refuse it in one InputError naming the file
    (docs/prep.md), whatever it holds. (But a NUL byte: prep then leaves the one "record" out for
    a NUL in its header, with a warning, before it looks for CRs.)"""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    fasta.records.insert(0, Record("P1 first", ["MKTA"]))
    fasta.ends = ["\r"]
    data, _, _ = fasta.build()
    if b"\x00" in (gzip.decompress(data) if fasta.gz else data):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data, "x.fa.gz" if fasta.gz else "x.fa")
        with pytest.raises(InputError) as caught:
            list(read_fasta(path))
        assert caught.value.path == str(path) and "\n" not in str(caught.value)
        with pytest.raises(InputError) as caught:
            build_corpus([str(path)], CorpusOptions(output=str(Path(tmp) / "c.txt")))
        assert caught.value.path == str(path) and "\n" not in str(caught.value)


@fewer(6)
@given(fasta_files(junk=False), st.integers(2100, 5000), st.booleans())
def test_prep_writes_the_same_bytes_with_workers(fasta, filler, dedup):
    """docs/prep.md: the output is byte-identical for every -j (blocks of 1,024 bytes here, so
    that the input is several blocks and the workers run)."""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    fasta = FastaFile([Record("filler", ["A" * filler])] + fasta.records, *list(vars(fasta).values())[1:])
    data, _, _ = fasta.build()
    data = gzip.decompress(data) if fasta.gz else data  # (a plain file over two blocks: workers run)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, data)
        got = []
        for threads in (1, 2):
            out = Path(tmp) / f"c{threads}.txt.gz"
            build_corpus([str(path)], CorpusOptions(output=str(out), threads=threads, block_bytes=1024, dedup=dedup,
                                                    rejects=str(Path(tmp) / f"r{threads}.tsv")))
            got.append((out.read_bytes(), (Path(tmp) / f"r{threads}.tsv").read_bytes()))
        assert got[0] == got[1]


@given(st.lists(st.tuples(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                          st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYXUZOBacdy-."), max_size=12)
                          .map(lambda s: s + "M" if not s.strip("-.") else s)),
                min_size=1, max_size=4, unique_by=lambda t: t[0]))
@example([("\ufeffP1", "MK"), ("\x85x", "mk-"), ("a>b", "A"), ("é", "U")])
@example([("P1", "MK"), ("a b", "MK")])
def test_labels_fasta_for_embed_reads_back_the_same_ids(records):
    """write_embed_fasta (`protrans labels`) writes a FASTA that read_fasta gives back with the
    label file's ids and sequences, or refuses an id a header cannot keep, before writing."""
    from protrans_cli.heads.labels import LabelRecord, LabelSet, write_embed_fasta

    label_set = LabelSet("labels.csv", "table", [LabelRecord(i, s, {"label": "x"}, line=n + 2)
                                                 for n, (i, s) in enumerate(records)])
    stream = io.BytesIO()
    try:
        write_embed_fasta(label_set, stream)
    except InputError as exc:
        assert stream.getvalue() == b"" and exc.path == "labels.csv" and exc.line is not None
        assert any(re.search(f"[{ASCII_WS}\x00-\x1f\x7f]", i) for i, _ in records)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = write_temp(tmp, stream.getvalue())
        back = [(r.id, r.sequence) for r in read_fasta(path)]
    assert back == records


# --------------------------------------------------------------------------------------------
# Messages: what a huge or hostile name in an error becomes (errors.bounded, console's line)


@given(st.lists(st.one_of(st.text(min_size=0, max_size=40), st.text(alphabet="ab/'\":,.()", min_size=200,
                                                                    max_size=3000)), max_size=6),
       st.sampled_from([" ", "\n", ": ", ", "]))
@example(["'" * 200 + "x" * 300], " ")  # (the quotes kept around the cut word: cut again the next time)
@example(["x" * 300 + ")" * 300], " ")
@fewer(300)
def test_a_message_is_bounded_once_and_for_all(parts, sep):
    """errors.bounded against the rules docs/troubleshooting.md states, written out here: a message
    of at most 250 characters once escaped is unchanged but for its escapes; any other keeps no run
    of more than 250 characters without a space beyond what a cut word becomes, no line of more
    than 5,000 characters, its line count, and cutting again changes nothing."""
    from protrans_cli.errors import LONGEST_LINE, LONGEST_WORD, SHOWN, bounded, escaped

    message = sep.join(parts)
    once = bounded(message, newlines=True)
    if len(escaped(message, newlines=True)) <= LONGEST_WORD:
        assert once == escaped(message, newlines=True)
    assert bounded(once, newlines=True) == once
    assert once.count("\n") == message.count("\n")
    for line in once.split("\n"):
        assert len(line) <= LONGEST_LINE, len(line)
        for word in line.split(" "):
            # a cut word: its two ends of SHOWN, '...', its quotes and punctuation around them
            assert len(word) <= max(LONGEST_WORD, 2 * SHOWN + 20), word[:80]


# What splits a line for str.splitlines (\x1c-\x1f and \x85 among them, which str.split and a
# regex's \s also take for spaces), what rewrites or hides part of a line, quotes and brackets
HOSTILE = ("ab /'\":,.()[]{}\\\t\n\r\x00\x1b\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x85"
           "\u2028\u2029\u202e\u200b\xa0\u3000\U000e0001\xe9")


def _hostile(min_size=0, max_size=40):
    return st.text(alphabet=st.sampled_from(HOSTILE), min_size=min_size, max_size=max_size)


def _one_line(line: str) -> None:
    """`line` is one line however it is split, and shows every character it holds: no control,
    line separator or format character is left in it."""
    import unicodedata

    assert len(line.splitlines()) == 1 and "\n" not in line
    assert not [c for c in line if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cf", "Cs")], ascii(line[:200])


@given(st.lists(st.one_of(st.text(max_size=40), _hostile(),  # (long ones repeated: drawn fast)
                          st.builds(lambda text, n: text * n, _hostile(1, 12), st.integers(20, 1000))),
                max_size=6),
       st.sampled_from([" ", "\n", ": ", ", ", "\x1c", "\u2028"]), _hostile(0, 300), _hostile(0, 300))
@example(["\x01 " * 3000], " ", "", "")  # (escaped after the cut: a line of 12,000 characters)
@example(["a\x1c" * 3000], " ", "", "")  # (\x1c a space to the cut: one run of 12,000 characters)
@example(["".join(map(chr, (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x202e, 0xd800)))], " ", "", "")
@fewer(150)
def test_a_message_line_is_one_bounded_line_however_hostile_the_names(parts, sep, path, record):
    """What the CLI writes for a message built from any names (an id, a path, a label value,
    with control characters, line separators, quotes, runs of thousands of characters): one line
    (nothing in it for which str.splitlines splits, nothing that hides part of it), no longer
    than the documented 5,000 characters after its prefix, no run without a space longer than
    250, and bounding it again (a message quoted in another) changes nothing."""
    import contextlib

    from protrans_cli import console
    from protrans_cli.errors import LONGEST_LINE, LONGEST_WORD, InputError, bounded

    message = sep.join(parts)
    error = InputError(message, path=path or None, record=record or None, line=3 if path else None)
    for text in (message, str(error)):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            console.error(text)
        written = err.getvalue()
        assert written.startswith("protrans: error: ") and written.endswith("\n")
        line = written[len("protrans: error: "):-1]
        _one_line(written[:-1])
        assert len(line) <= LONGEST_LINE, len(line)
        assert all(len(word) <= LONGEST_WORD for word in line.split()), max(map(len, line.split()))
        assert bounded(line) == line
    assert bounded(str(error)) == str(error)


@given(_hostile(0, 20), _hostile(0, 20), st.text(alphabet="ab/\\'\" ", min_size=101, max_size=400),
       st.text(alphabet="ab/\\'\" ", min_size=101, max_size=400))
@example("\x1c", "\\x1c", "a" * 101, "a" * 102)
@fewer(200)
def test_distinct_names_stay_distinct_in_a_message(short_a, short_b, long_a, long_b):
    """Two records a message names are told apart: short ones (up to 20 characters, whatever
    they hold: an escaped \\x1c and a backslash followed by x1c differ) always; long ones by
    their first 100 characters or their length, which the message shows."""
    from protrans_cli.errors import SHOWN, InputError

    def shown(record):
        return str(InputError("duplicate id", record=record))

    if short_a != short_b:
        assert shown(short_a) != shown(short_b)
    if long_a[:SHOWN] != long_b[:SHOWN] or len(long_a) != len(long_b):
        assert shown(long_a) != shown(long_b)
