"""Protein sequences from structure files (PDB, mmCIF), one letter per residue modelled.

The sequence of a structure that a per-residue embedding is laid on is the one its residues give,
not SEQRES's or UniProt's (missing loops, expression tags, insertion codes, numbering that skips):
`read_structure` takes the first model's amino acids that have a CA atom, in file order, and
`structure_records` makes the FASTA records `protrans embed` reads, each residue of each row known
(chain, author residue number, insertion code, residue name), which `write_residue_rows` writes.
`structure_sources` expands folders and tar archives (AlphaFold DB's proteome downloads, streamed)
into the structures to read, and `read_structures` parses them in worker processes, in order.

`from_structures` streams: each structure's records are written (to the outputs' temporaries) as
it is read, and only the record ids are kept, so its memory is that of the largest structure (and
of the names of the files and ids), not of the input; it returns a StructureSummary (counts).
`structure_records` (a list) and `iter_structure_records` (a generator) give the records in memory.

    from protrans_cli.structures import StructureOptions, from_structures
    summary = from_structures(["1abc.cif.gz"], "1abc.fa", residues_map="1abc.map.tsv",
                              options=StructureOptions(complex=True))
    summary.records, summary.residues
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import warnings
from pathlib import Path

from protrans_cli.errors import InputError, UsageError

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdbx")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
# A C and the next residue's N closer than this are a peptide bond (1.33 A; 2.0 allows for poor models).
PEPTIDE_BOND = 2.0
MAP_HEADER = ("id", "row", "chain", "residue_number", "insertion_code", "residue_name", "residue", "b_factor")
_NOT_IN_AN_ID = re.compile(r"[\x00-\x20\x7f]")


@dataclasses.dataclass(frozen=True, slots=True)  # (slots and interned names: 120 bytes a residue held, not 220)
class Residue:
    """One residue modelled: its chain, author number, insertion code ('' for none), name as in the
    file (MSE) and one-letter code (M; X for an amino acid of unknown parent), and its CA atom's
    B-factor (the per-residue confidence, pLDDT, in AlphaFold DB, ColabFold and ESMFold models)."""

    chain: str
    number: int
    icode: str
    name: str
    letter: str
    b_factor: float = 0.0


@dataclasses.dataclass(frozen=True)
class Chain:
    id: str
    residues: tuple[Residue, ...]

    @property
    def sequence(self) -> str:
        return "".join(r.letter for r in self.residues)


@dataclasses.dataclass(frozen=True)
class Structure:
    """The protein chains of a structure file's first model, in file order (chains without an
    amino acid left out). `ident` is the file's name without its suffixes."""

    path: str
    ident: str
    format: str  # "pdb" or "mmcif"
    chains: tuple[Chain, ...]


@dataclasses.dataclass(frozen=True)
class StructureRecord:
    """A FASTA record of a structure: `residues[i]` is the residue of the embedding's row i
    (for a complex, rows run across the chains, the ':'s taking none)."""

    id: str
    path: str
    chains: tuple[Chain, ...]

    @property
    def sequence(self) -> str:
        return ":".join(c.sequence for c in self.chains)

    @property
    def residues(self) -> tuple[Residue, ...]:
        return tuple(r for c in self.chains for r in c.residues)

    @property
    def description(self) -> str:
        return (f"{self.id} file={self.path} chain{'s' if len(self.chains) > 1 else ''}="
                f"{':'.join(c.id for c in self.chains)} residues={':'.join(str(len(c.residues)) for c in self.chains)}")


@dataclasses.dataclass
class StructureOptions:
    """`chains`: the chains to take (None: every protein chain), a complex's in this order; ''
    names a chain without a name (a blank chain id, PDB column 22), whose record is `ID`;
    `complex`: one record a structure, its chains joined by ':' (else one record a chain);
    `threads`: worker processes that parse the files (1: this process)."""

    chains: tuple[str, ...] | None = None
    complex: bool = False
    threads: int = 1  # worker processes parsing the files (the output is the same whatever the count)
    progress: bool = False  # a bar (a line a minute in a log) of the files read, for more than one

    def __post_init__(self):
        from protrans_cli.threads import check_threads

        self.threads = check_threads(self.threads, "threads")
        if self.chains is not None:
            self.chains = tuple(str(c).strip() for c in self.chains)  # (' ' is the blank chain, as '')
            if not self.chains:
                raise UsageError("chains must name chains, got none")
            twice = sorted({c for c in self.chains if self.chains.count(c) > 1})
            if twice:
                raise UsageError(f"chains names chain {', '.join(_chain_name(c) for c in twice)} twice")


def _chain_name(chain_id: str) -> str:
    """A chain's id in a message: `' '` for a chain without a name."""
    return chain_id or "' '"


def structure_ident(path) -> str:
    """`1abc` of 1abc.cif.gz, 1ABC.pdb, AF-P69905-F1-model_v4.pdb (its name without the compression
    and structure suffixes; whitespace and control characters, which a FASTA id cannot hold, as '_')."""
    name = Path(str(path)).name
    for suffixes in (COMPRESSION_SUFFIXES, STRUCTURE_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[:-len(suffix)]
                break
    return _NOT_IN_AN_ID.sub("_", name) or "structure"


def detect_format(text: str) -> str | None:
    """"mmcif" (a `data_` block first), "pdb" (ATOM or HETATM records) or None, from the content."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.lower().startswith("data_"):
            return "mmcif"
        break
    if re.search(r"^(ATOM  |HETATM)", text, re.MULTILINE):
        return "pdb"
    return None


def _letters() -> dict[str, str]:
    from Bio.Data.PDBData import protein_letters_3to1_extended as letters

    return letters


def read_structure(path, name: str | None = None) -> Structure:
    """The protein chains of a PDB or mmCIF file (`-` for stdin; compressed ones read as they are),
    its format told by its content. Raises InputError naming the file for anything that is not a
    structure file, one Biopython cannot parse, and one without an amino acid."""
    from protrans_cli.io.files import display_name, open_input

    shown = name or display_name(path)
    with open_input(path, shown) as stream:
        data = stream.read()
    return parse_structure(data, shown, structure_ident(path) if str(path) != "-" else None)


def parse_structure(data: bytes, shown: str, ident: str | None = None) -> Structure:
    """read_structure of a file's bytes (decompressed), `shown` naming it in errors (a tar
    member's ARCHIVE:MEMBER); `ident` None takes the entry id (as from stdin)."""
    from protrans_cli.io.files import binary_kind, kind_refusal

    kind = binary_kind(data[:4096])
    if kind is not None:
        raise InputError(kind_refusal(kind, "a structure file", "PDB or mmCIF"), path=shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    fmt = detect_format(text)
    if fmt is None:
        hint = " (a FASTA: protrans embed reads it as it is)" if text.lstrip().startswith(">") else ""
        raise InputError("not a structure file: no ATOM or HETATM records (PDB) and no data_ block (mmCIF)" + hint,
                         path=shown)
    ident = ident if ident is not None else _entry_id(text, fmt)
    if fmt == "mmcif" and "_atom_site." not in text:
        raise InputError("holds no atoms: an mmCIF file without an _atom_site table", path=shown)
    from Bio.PDB import MMCIFParser, PDBParser

    parser = MMCIFParser(QUIET=True, PERMISSIVE=True) if fmt == "mmcif" else PDBParser(QUIET=True, PERMISSIVE=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parser.get_structure(ident, io.StringIO(text))
    except Exception as exc:  # (Biopython's errors are of many types: KeyError, ValueError, its own)
        words = _words(exc)
        if isinstance(exc, KeyError):  # (MMCIF2Dict's: the field's name alone)
            words = f"no {words.strip(chr(39))} field"
        raise InputError(f"Biopython cannot parse it as {'mmCIF' if fmt == 'mmcif' else 'PDB'}: {words}",
                         path=shown) from None
    models = list(parsed)
    if not models:
        raise InputError("holds no atoms (no model)", path=shown)
    chains = tuple(c for c in (_chain(chain) for chain in models[0]) if c.residues)
    if not chains:
        raise InputError("holds no protein chain (no amino acid with a CA atom in its first model)", path=shown)
    return Structure(path=shown, ident=ident, format=fmt, chains=chains)


def _entry_id(text: str, fmt: str) -> str:
    """A structure read from stdin is named by its mmCIF entry id or PDB HEADER id code, else `stdin`."""
    if fmt == "mmcif":
        found = re.search(r"^_entry\.id\s+(\S+)", text, re.MULTILINE) or re.search(r"^data_(\S+)", text, re.MULTILINE)
    else:
        found = re.search(r"^HEADER.{56}(\w{4})", text, re.MULTILINE)
    return _NOT_IN_AN_ID.sub("_", found.group(1)) if found else "stdin"


def _first(residue):
    """A residue's first alternative (a point mutation's: Biopython selects the last one read)."""
    if residue.is_disordered() == 2:
        return residue.disordered_get_list()[0]
    return residue


def _chain(chain) -> Chain:
    letters = _letters()
    candidates = []  # (residue, letter, from an ATOM record)
    for residue in chain:
        residue = _first(residue)
        het = residue.id[0]
        if het == "W" or "CA" not in residue:
            continue
        name = residue.get_resname().strip().upper()
        letter = letters.get(name)
        if het == " ":  # an ATOM record with a CA: an amino acid of the polymer
            candidates.append((residue, letter or "X", True))
        elif letter is not None or name == "UNK":  # HETATM: a modified amino acid, or a ligand
            candidates.append((residue, letter or "X", False))
    kept = []
    for i, (residue, letter, polymer) in enumerate(candidates):
        # A HETATM amino acid counts when it is peptide-bonded to the residue before or after it
        # (MSE in its chain), not when it is a free ligand (a glutamate bound to its receptor).
        if polymer or (i > 0 and _bonded(candidates[i - 1][0], residue)) or (
                i + 1 < len(candidates) and _bonded(residue, candidates[i + 1][0])):
            het, number, icode = residue.id
            kept.append(Residue(chain=str(chain.id).strip(), number=int(number), icode=icode.strip(),
                                name=sys.intern(residue.get_resname().strip()), letter=letter,
                                b_factor=float(residue["CA"].get_bfactor())))
    return Chain(id=str(chain.id).strip(), residues=tuple(kept))


def _bonded(before, after) -> bool:
    if "C" not in before or "N" not in after:
        return False
    return float(before["C"] - after["N"]) < PEPTIDE_BOND


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_MMCIF_SUFFIXES = (".cif", ".mmcif", ".pdbx")


def _structure_suffix(name: str) -> str | None:
    """The structure suffix of a file name (`.cif` of `x.CIF.gz`), None for any other name."""
    lower = name.lower()
    for compression in ("", *COMPRESSION_SUFFIXES):
        if compression and not lower.endswith(compression):
            continue
        stem = lower[:len(lower) - len(compression)]
        for suffix in STRUCTURE_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                return suffix
    return None


def is_archive(path) -> bool:
    """Whether `path` names a tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), by its name."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _mmcif_taken(names) -> tuple[list[str], int]:
    """`names` less each PDB-format file of which an mmCIF one of the same stem in the same folder
    is there too (AlphaFold DB's archives hold AF-X-F1-model_v4.cif.gz and .pdb.gz of each model),
    in their order; and how many were left out."""
    def key(name):
        return (str(Path(name).parent), structure_ident(name))

    cif = {key(n) for n in names if _structure_suffix(Path(n).name) in _MMCIF_SUFFIXES}
    kept = [n for n in names if _structure_suffix(Path(n).name) in _MMCIF_SUFFIXES or key(n) not in cif]
    return kept, len(names) - len(kept)


@dataclasses.dataclass(frozen=True)
class _Job:
    """One structure to read: a file (`path`), or bytes read in the main process (`data`: an
    archive member's, compressed as it is; stdin's, decompressed)."""

    shown: str
    ident: str | None
    path: str | None = None
    data: bytes | None = None
    decompressed: bool = False


@dataclasses.dataclass
class StructureSources:
    """The structures that FILES name: a file as it is (`-`: stdin), a folder's structure files
    (recursively, in sorted path order), a tar archive's structure members (in archive order);
    in folders and archives a model given as both mmCIF and PDB is read from its mmCIF.
    `notes` says what was left out."""

    items: list  # ("file", path) | ("archive", path, member names)
    count: int
    notes: list[str]

    def jobs(self):
        """The _Jobs in order, an archive's members read (streamed, not extracted) as they come."""
        for item in self.items:
            if item[0] == "file" and item[1] == "-":  # (read here, not in a worker)
                from protrans_cli.io.files import open_input

                with open_input("-", "<stdin>") as stream:
                    yield _Job(shown="<stdin>", ident=None, data=stream.read(), decompressed=True)
            elif item[0] == "file":
                yield _Job(shown=item[1], ident=structure_ident(item[1]), path=item[1])
            else:
                yield from _archive_jobs(item[1], item[2])


def structure_sources(paths) -> StructureSources:
    """Expand FILES (paths, folders, tar archives) into the structures to read (StructureSources).
    A folder or archive without a structure file is an InputError naming it."""
    import os

    items, count, notes = [], 0, []
    for path in (str(p) for p in paths):
        if path != "-" and os.path.isdir(path):
            found, other = [], 0
            for folder, dirs, files in os.walk(path, onerror=_walk_error):
                dirs.sort()
                for name in files:
                    if _structure_suffix(name):
                        found.append(os.path.join(folder, name))
                    else:
                        other += 1
            found.sort()
            found, replaced = _mmcif_taken(found)
            if not found:
                raise InputError("holds no structure file (.pdb, .ent, .cif, .mmcif; .gz too)"
                                 + (f": {other} other file{'s' if other != 1 else ''}" if other else ""), path=path)
            items.extend(("file", f) for f in found)
            count += len(found)
            notes.extend(_left_out(path, "file", other, replaced))
        elif path != "-" and is_archive(path):
            members, other = _archive_members(path)
            members, replaced = _mmcif_taken(members)
            if not members:
                raise InputError("holds no structure file (.pdb, .ent, .cif, .mmcif; .gz too)"
                                 + (f": {other} other member{'s' if other != 1 else ''}" if other else ""), path=path)
            items.append(("archive", path, members))
            count += len(members)
            notes.extend(_left_out(path, "member", other, replaced))
        else:
            items.append(("file", path))
            count += 1
    return StructureSources(items=items, count=count, notes=notes)


def _walk_error(exc: OSError):
    raise InputError(f"cannot list the folder: {exc.strerror or exc}", path=exc.filename) from None


def _left_out(where: str, noun: str, other: int, replaced: int) -> list[str]:
    notes = []
    if other:
        notes.append(f"{where}: left out {other} {noun}{'s' if other != 1 else ''} that {'are' if other != 1 else 'is'} "
                     "not a structure file (.pdb, .ent, .cif, .mmcif; .gz too)")
    if replaced:
        notes.append(f"{where}: read {replaced} model{'s' if replaced != 1 else ''} from {'their' if replaced != 1 else 'its'} "
                     "mmCIF file, not the PDB file of the same name beside it")
    return notes


def _open_archive(path):
    import tarfile

    try:
        return tarfile.open(path, "r:*")
    except FileNotFoundError:
        from protrans_cli.io.files import missing_file

        raise InputError(missing_file(path), path=path) from None
    except PermissionError:
        raise InputError("permission denied", path=path) from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"cannot read it as a tar archive: {_words(exc)}", path=path) from None


def _words(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _archive_members(path) -> tuple[list[str], int]:
    """The names of an archive's structure members, in order, and how many other files it holds
    (its headers read, not its members' data, where the archive is not compressed)."""
    import tarfile

    found, other = [], 0
    with _open_archive(path) as archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                if _structure_suffix(Path(member.name).name):
                    found.append(member.name)
                else:
                    other += 1
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InputError(f"cannot read it as a tar archive: {_words(exc)}", path=path) from None
    return found, other


def _archive_jobs(path, members):
    """The _Jobs of `members` of the archive, each member's bytes read (decompressed, where a
    member is .gz) as the archive is streamed."""
    import tarfile

    wanted = set(members)
    with _open_archive(path) as archive:
        while True:
            try:
                member = archive.next()
                if member is None:
                    return
                if not (member.isfile() and member.name in wanted):
                    continue
                shown = f"{path}:{member.name}"
                data = archive.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise InputError(f"cannot read it as a tar archive: {_words(exc)}", path=path) from None
            yield _Job(shown=shown, ident=structure_ident(member.name), data=data)


def _read_job(job: _Job):
    """A _Job's Structure, or ("error", message, shown) (a worker's answer, pickled)."""
    try:
        if job.data is None:
            from protrans_cli.io.files import open_input

            with open_input(job.path, job.shown) as stream:
                data = stream.read()
        else:
            data = job.data if job.decompressed else _decompressed(job.data, job.shown)
        return parse_structure(data, job.shown, job.ident)
    except InputError as exc:
        return ("error", exc.message, exc.path)


def _decompressed(data: bytes, shown: str) -> bytes:
    from protrans_cli.io.files import _decompressor, _NamedErrors, sniff_compression

    kind = sniff_compression(data[:8])
    if kind is None:
        return data
    return io.BufferedReader(_NamedErrors(_decompressor(io.BytesIO(data), kind), shown)).read()


def _answer(result) -> Structure:
    if isinstance(result, tuple):
        raise InputError(result[1], path=result[2])
    return result


def _worker_signals() -> None:
    """A worker leaves Ctrl-C (sent to the whole process group) to the main process, which stops
    the pool: each worker printed KeyboardInterrupt's traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_structures(jobs, threads: int = 1):
    """Yield the Structure of each _Job, in order, parsed in `threads` worker processes (at most
    4 a worker in flight: memory holds the residues of the structures read, not Biopython's
    objects nor the whole input). The first bad file in input order is the InputError raised."""
    if threads <= 1:
        for job in jobs:
            yield _answer(_read_job(job))
        return
    import collections
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from protrans_cli.errors import RuntimeFailure

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ProcessPoolExecutor(threads, mp_context=ctx, initializer=_worker_signals)
    pending: collections.deque = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(_read_job, job))
            if len(pending) >= 4 * threads:
                yield _answer(pending.popleft().result())
        while pending:
            yield _answer(pending.popleft().result())
    except BrokenProcessPool:
        raise RuntimeFailure("a worker process parsing the structures died (out of memory?): run with fewer -j") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_structure_records(structures, options: StructureOptions | None = None):
    """The FASTA records of `structures`, yielded as each structure comes: one a chain
    (`ID_CHAIN`; `ID` for a chain without a name), or with `options.complex` one a structure
    (`ID`, chains joined by ':'). An id given by two files, or a chain of options.chains that a
    structure lacks, is an InputError (raised when that structure comes). Only the ids given so
    far (and the file of each) are held, not the records."""
    options = options or StructureOptions()
    seen: dict[str, str] = {}
    for structure in structures:
        chains = structure.chains
        if options.chains is not None:
            by_id = {c.id: c for c in chains}
            missing = [c for c in options.chains if c not in by_id]
            if missing:
                has = ", ".join(_chain_name(c.id) for c in chains)
                raise InputError(f"no protein chain {', '.join(_chain_name(c) for c in missing)} "
                                 f"(its protein chains: {has})", path=structure.path)
            chains = tuple(by_id[c] for c in options.chains)
        if options.complex:
            made = [StructureRecord(structure.ident, structure.path, chains)]
        else:
            made = [StructureRecord(f"{structure.ident}_{c.id}" if c.id else structure.ident, structure.path, (c,))
                    for c in chains]
        for record in made:
            if record.id in seen:
                raise InputError(f"gives the record id {record.id!r}, as {seen[record.id]} does: rename one of them",
                                 path=structure.path)
            seen[record.id] = structure.path
        yield from made


def structure_records(structures, options: StructureOptions | None = None) -> list[StructureRecord]:
    """iter_structure_records' records as a list (every residue held: for the records in memory;
    from_structures writes them without holding them)."""
    return list(iter_structure_records(structures, options))


def write_structure_fasta(records, stream) -> None:
    """One FASTA record each (a binary stream): `>ID file=F chain(s)=A:B residues=120:98`."""
    from protrans_cli.io.fasta import write_fasta

    for record in records:
        write_fasta(stream, record.id, record.sequence, record.description)


def write_residue_rows(records, stream) -> None:
    """The rows of the residue map's TSV (MAP_HEADER's columns; a binary stream) for `records`:
    id, row (0-based, the embedding's row), chain, residue_number, insertion_code, residue_name
    (as in the file), residue (one letter), b_factor (the CA atom's: pLDDT in a predicted model)."""
    from protrans_cli.io.files import tsv_quoted

    for record in records:
        for row, r in enumerate(record.residues):
            fields = (record.id, str(row), r.chain, str(r.number), r.icode, r.name, r.letter, f"{r.b_factor:.2f}")
            stream.write(("\t".join(tsv_quoted(f) for f in fields) + "\n").encode())


@dataclasses.dataclass(frozen=True)
class StructureSummary:
    """What from_structures wrote: the structures read, the records written and their residues."""

    structures: int
    records: int
    residues: int


def from_structures(paths, output="-", residues_map=None, options: StructureOptions | None = None
                    ) -> StructureSummary:
    """Structure files to a FASTA for `protrans embed` (`output`, '-' for stdout) and, given
    `residues_map`, the TSV that puts each row of the embedding on its residue. `paths`: files,
    folders and tar archives (structure_sources), or a StructureSources. Each structure's records
    are written as it is read, into the outputs' temporaries (stdout's: a temporary file in
    TMPDIR), and not held: both outputs appear (are renamed, or copied to stdout) only when every
    file has been read and checked, and a bad file leaves neither, nor any temporary. Returns a
    StructureSummary (counts); for the records themselves, structure_records."""
    from protrans_cli.io.files import streamed_output

    options = options or StructureOptions()
    if isinstance(paths, StructureSources):
        sources = paths
    else:
        paths = [str(p) for p in paths]
        if not paths:
            raise UsageError("no structure file given")
        if paths.count("-") > 1:
            raise UsageError("stdin ('-') can be one input at most")
        sources = structure_sources(paths)
    threads = min(options.threads, sources.count)
    structures = read_structures(sources.jobs(), threads)
    bar = None
    if options.progress and sources.count > 1:
        from protrans_cli import console

        structures = bar = console.progress(structures, total=sources.count, desc="from-structure", unit="file")
    records = residues = 0
    try:
        with contextlib.ExitStack() as outputs:
            fasta = outputs.enter_context(streamed_output(output))
            table = None if residues_map is None else outputs.enter_context(streamed_output(residues_map))
            if table is not None:
                table.write(("\t".join(MAP_HEADER) + "\n").encode())
            for record in iter_structure_records(structures, options):
                write_structure_fasta((record,), fasta)
                if table is not None:
                    write_residue_rows((record,), table)
                records += 1
                residues += sum(len(c.residues) for c in record.chains)
    finally:
        if bar is not None:
            bar.close()
    return StructureSummary(structures=sources.count, records=records, residues=residues)
