"""A streaming FASTA reader: any line width, CRLF, blank lines, `>` inside headers, stdin, compression.

`read_fasta(path)` yields `FastaRecord`s one at a time and never holds the file in memory.
The id is the header up to the first whitespace; `description` is the whole header line.
Sequences are returned as found (stripped of line breaks only); normalisation is the
caller's choice (see `protrans_cli.residues`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.files import UTF16_BOMS, binary_kind, display_name, open_input, utf16_codec


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str
    line: int  # 1-based line number of the header, for error messages
    # (where parse_fasta's line_map asked for it) the line each stretch of the sequence is on:
    # (offset in `sequence` where the line's characters start, its 1-based line number), so that
    # a character can be named by its own line (a label letter on the 4th line, not the header's 3rd)
    lines: tuple[tuple[int, int], ...] = ()

    def line_of(self, offset: int) -> int:
        """The line holding character `offset` of the sequence (the header's without a line map)."""
        return line_at(self.lines, offset, self.line)


def line_at(lines: tuple[tuple[int, int], ...], offset: int, default):
    """The line number of character `offset` by a line map of (first offset, line number) pairs
    (FastaRecord.lines); `default` where the map starts after it or is empty."""
    found = default
    for start, lineno in lines:
        if start > offset:
            break
        found = lineno
    return found


BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark
ASCII_SPACE = " \t\n\r\x0b\x0c"  # what ends an id (bytes.split's whitespace, as prep's reader)


NUL_HEADER = "the header holds a NUL byte (a damaged file?)"
NOT_FASTA = "not FASTA: expected a '>' header line before sequence data"


def begins_fasta(head: bytes) -> bool:
    """Whether the first bytes of a file are FASTA's: a '>' before anything but blanks and a
    byte-order mark (a FASTA given where an HDF5 file, a table or a .pt file goes)."""
    return head.lstrip(BOM + b" \t\r\n").startswith(b">")


def not_fasta(first: bytes, head: bytes | None = None) -> str:
    """The message for an input whose first non-blank line, `first`, is not a header; it says
    what the file is where its first bytes tell (a UTF-16 FASTA looked like any non-FASTA).
    `head`: the file's first bytes, where `first` is its first line (a line reader's): a binary
    file's first "line" ends at whatever 0x0a byte its header holds, before what names it."""
    raw = first if head is None else head
    if raw.startswith(UTF16_BOMS):  # UTF-16 byte-order mark: PowerShell's `>`, Notepad
        return NOT_FASTA + " (the file is UTF-16 text: convert it to UTF-8 first, iconv -f UTF-16 -t UTF-8)"
    if codec := utf16_codec(raw):  # without it (Python's utf-16-le codec): "binary", or a header of NULs
        return (f"not FASTA: the file is UTF-16 text without a byte-order mark (convert it to UTF-8 first, "
                f"iconv -f {codec.upper().replace('-16-', '-16')} -t UTF-8)")
    if hint := binary_kind(raw, sentence=True) or look_alike(first):
        return f"{NOT_FASTA}; {hint}"
    return NOT_FASTA


def look_alike(first: bytes, tables: bool = True) -> str | None:
    """What a file given by mistake is, told by its first non-blank line, `first` (a PDB structure,
    GenBank, FASTQ, a Stockholm alignment, a pretraining corpus, ...); None if not told. `tables`
    False: a table is not one (for readers of tables, such as the label readers)."""
    for pattern, hint in _LOOK_ALIKES[:None if tables else -1]:
        if pattern.match(first):
            return hint
    return None


# Files given for a FASTA by mistake, by their first line: what each is and where its sequences
# are (they were the bare "not FASTA" of a file of anything else)
_LOOK_ALIKES = [
    (re.compile(rb"# STOCKHOLM"), "the file is a Stockholm alignment: convert it to FASTA first (esl-reformat "
     "fasta FILE)"),
    (re.compile(rb"#[0-9]+(?:,[0-9]+)*\t[0-9]+(?:,[0-9]+)*[ \t]*(?:\r?\n|\Z)"),  # ColabFold's first line
     "the file is an A3M alignment that begins with a '#' line (ColabFold, HH-suite): remove that line "
     "(sed 1d FILE) and its rows read as FASTA"),
    (re.compile(rb"@[^ \t\r\n]"), "the file looks like FASTQ ('@' read headers): protein FASTA has '>' headers"),
    # (from-structure: a letter a modelled residue, so that per-residue rows sit on the structure's residues)
    (re.compile(rb"(HEADER|ATOM  |HETATM|REMARK|CRYST1|MODEL |TITLE |COMPND|EXPDTA)"), "the file is a PDB "
     "structure: protrans from-structure FILE writes the FASTA of its modelled residues"),
    (re.compile(rb"data_"), "the file is an mmCIF structure: protrans from-structure FILE writes the FASTA of its "
     "modelled residues"),
    (re.compile(rb"LOCUS "), "the file is a GenBank record: give its proteins (the CDS /translation) as FASTA"),
    (re.compile(rb"ID   "), "the file is a UniProt or EMBL flat file: give its proteins as FASTA"),
    (re.compile(rb"(?:[A-Za-z*] )+[A-Za-z*][ \t]*(?:\r?\n|\Z)"),
     "the file is a pretraining corpus (one spaced protein a line), such as prep writes for train"),
    # (last: look_alike(tables=False) leaves it out)
    (re.compile(rb"(?!#)[^\r\n]*[,\t]"),
     "the file looks like a table (CSV or TSV): a label file's sequences are written as FASTA by protrans labels "
     "FILE -o seqs.fasta"),
]


def parse_fasta(lines: Iterable[bytes], name: str = "<input>", *, nul_headers: bool = False,
                head: bytes = b"", line_map: bool = False) -> Iterator[FastaRecord]:
    """The records of FASTA `lines`; `nul_headers`: a header holding a NUL byte is the caller's to
    refuse or skip (embed's --invalid-policy), not an error here. `head`: the file's first bytes,
    where `lines` is no stream to peek them from (what a file that is not FASTA is, not_fasta).
    `line_map`: each record's `lines` says which line each part of its sequence is on (label
    files, whose errors name the line of a bad letter)."""
    header: bytes | None = None
    header_line = 0
    chunks: list[bytes] = []
    chunk_lines: list[int] = []  # (line_map) the line of each chunk
    lineno = 0
    pending = b""  # lines of a mark and blanks inside a record: dropped if blank lines, then a header or the end follow
    # (a stream's first bytes, for not_fasta: a PyTorch checkpoint's first line was cut by a 0x0a
    # of its zip header before the member name that tells it from any zip, as prep's blocks show it)
    head = lines.peek(4096)[:4096] if not head and hasattr(lines, "peek") else head
    for lineno, line in enumerate(lines, 1):
        if line[:1] == b"\xef" and line.startswith(BOM):
            # At the start of the file, or of a file concatenated to another (cat a.fa b.fa):
            # before a header, or before blank lines and then a header, as prep drops it. Any
            # other mark is a character of the sequence, which normalise refuses, as prep does
            # (it was dropped from the middle of a sequence: MK, a mark, TA read as MKTA).
            if header is None:  # (marks in a row too, as prep reads them: an empty file with a mark before)
                while line.startswith(BOM):
                    line = line[3:]
            elif line[3:].startswith(b">"):
                line = line[3:]
            elif not line[3:].strip(b" \t\r\n"):
                pending += line
                continue
        if line.startswith(b">"):
            if header is None and b"\0" in line and utf16_codec(head or line):
                # UTF-16LE without a byte-order mark begins with `>` too: its first header was
                # refused as "a damaged file?" (skipped under --invalid-policy skip: exit 0, nothing embedded)
                raise InputError(not_fasta(line, head or None), path=name, line=lineno)
            if header is not None:
                yield _record(header, chunks, header_line, name, nul_headers, chunk_lines if line_map else None)
            header = line[1:].rstrip(b"\r\n")
            header_line = lineno
            chunks = []
            chunk_lines = []
            pending = b""
        elif header is not None:
            if pending and line.strip(b" \t\r\n"):
                chunks.append(pending)
                if line_map:  # (blank lines and marks: no characters of the sequence)
                    chunk_lines.append(lineno - 1)
                pending = b""
            chunks.append(line)
            if line_map:
                chunk_lines.append(lineno)
        elif line.strip():
            start = head if lineno == 1 and len(head) > len(line) and head.startswith(line) else None
            raise InputError(not_fasta(line, start), path=name, line=lineno)
    if header is not None:
        yield _record(header, chunks, header_line, name, nul_headers, chunk_lines if line_map else None)


def header_id(description: str) -> str:
    """The id of a header line (without its '>'): up to the first ASCII whitespace; '' if none."""
    return re.split(f"[{ASCII_SPACE}]", description.strip(ASCII_SPACE), maxsplit=1)[0]


def decode_word(word: bytes) -> str:
    """A word of a header or a label file: UTF-8, else latin-1 (never the whole line or file)."""
    try:
        return word.decode("utf-8")
    except UnicodeDecodeError:
        return word.decode("latin-1")


def decode_text(data: bytes) -> str:
    """A table's bytes (a label file, a variants table): UTF-8, its byte-order mark dropped, else
    each line that is not UTF-8 field by field (decode_word), as a header is decoded word by word:
    one non-UTF-8 byte (`37\xb0C` in a note) read the whole file as latin-1, and every UTF-8 id in
    it (`protéine1` became `protÃ©ine1`) then matched no embedding or record."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # (the lines that are not UTF-8 only: a NetSurfP CSV has a field per residue)
        return "\n".join(_decoded_line(line) for line in data.removeprefix(BOM).split(b"\n"))


def _decoded_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(decode_word(part) for part in re.split(rb"([\s,;]+)", line))


def _record(header: bytes, chunks: list[bytes], line: int, name: str, nul_headers: bool = False,
            chunk_lines: list[int] | None = None) -> FastaRecord:
    if b"\r" in header and not chunks:
        # A whole file read as one header line: its lines end in CR alone (classic Mac OS). (A
        # stray CR inside the header of a record with a sequence ends the id, as prep reads it.)
        # Named by its first record's id, as prep names it (up to the first CR: not the whole file decoded).
        ident = header_id(decode_word(header[:header.index(b"\r")])) or None
        raise InputError("a carriage return inside the header line: lines that end in CR alone (old Mac "
                         "line endings) are not read; convert them first (tr '\\r' '\\n')", path=name, line=line,
                         record=ident)
    try:
        description = header.decode("utf-8").strip(ASCII_SPACE)
    except UnicodeDecodeError:
        # word by word: a non-UTF-8 byte in the description (`37\xb0C`) must not change how the
        # id is read (the UTF-8 id `ü1` became `Ã¼1` beside it, `ü1` elsewhere)
        description = "".join(decode_word(part) for part in re.split(rb"([ \t\r\v\f]+)", header)).strip(ASCII_SPACE)
    ident = header_id(description)
    if not ident:
        raise InputError("header has no id", path=name, line=line)
    if "\x00" in description and not nul_headers:
        raise InputError(NUL_HEADER, path=name, line=line, record=ident)
    seq = b"".join(chunks).translate(None, b" \t\r\n\v\f")  # (ASCII_SPACE: what normalise and prep drop too)
    lines: list[tuple[int, int]] = []
    if chunk_lines is not None:
        offset = 0
        for chunk, lineno in zip(chunks, chunk_lines):
            size = len(chunk.translate(None, b" \t\r\n\v\f"))
            if size:
                lines.append((offset, lineno))
                offset += size
    return FastaRecord(ident, description, seq.decode("latin-1"), line, tuple(lines))


def read_fasta(path) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file (`-` is stdin; gzip/bz2/xz/zstd detected)."""
    import os

    if not isinstance(path, (str, os.PathLike)):  # (None or a list of files: a TypeError from open)
        raise UsageError(f"read_fasta reads one file: give its path, got {type(path).__name__} {path!r:.60}")
    name = display_name(path)
    with open_input(path) as stream:
        yield from parse_fasta(stream, name)


def write_fasta(stream, ident: str, sequence: str, description: str | None = None, width: int = 0) -> None:
    """Write one record to a binary stream (`width` 0 = one line)."""
    stream.write(b">" + (description or ident).encode() + b"\n")
    if width and width > 0:
        for i in range(0, len(sequence), width):
            stream.write(sequence[i:i + width].encode() + b"\n")
    else:
        stream.write(sequence.encode() + b"\n")
