"""Protein sequences from structure files (PDB, mmCIF), one letter per residue modelled.

The sequence of a structure that a per-residue embedding is laid on is the one its residues give,
not SEQRES's or UniProt's (missing loops, expression tags, insertion codes, numbering that skips):
`read_structure` takes the first model's amino acids that have a CA atom, in file order, and
`structure_records` makes the FASTA records `protrans embed` reads, each residue of each row known
(chain, author residue number, insertion code, residue name), which `write_residue_map` writes.

    from protrans_cli.structures import StructureOptions, from_structures
    records = from_structures(["1abc.cif.gz"], "1abc.fa", residues_map="1abc.map.tsv",
                              options=StructureOptions(complex=True))
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from pathlib import Path

from protrans_cli.errors import InputError, UsageError

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdbx")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
# A C and the next residue's N closer than this are a peptide bond (1.33 A; 2.0 allows for poor models).
PEPTIDE_BOND = 2.0
MAP_HEADER = ("id", "row", "chain", "residue_number", "insertion_code", "residue_name", "residue", "b_factor")
_NOT_IN_AN_ID = re.compile(r"[\x00-\x20\x7f]")


@dataclasses.dataclass(frozen=True)
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
    """`chains`: the chains to take (None: every protein chain), a complex's in this order;
    `complex`: one record a structure, its chains joined by ':' (else one record a chain)."""

    chains: tuple[str, ...] | None = None
    complex: bool = False

    def __post_init__(self):
        if self.chains is not None:
            self.chains = tuple(self.chains)
            if not self.chains or any(not c for c in self.chains):
                raise UsageError(f"chains must name chains, got {','.join(self.chains)!r}")
            twice = sorted({c for c in self.chains if self.chains.count(c) > 1})
            if twice:
                raise UsageError(f"chains names chain {', '.join(twice)} twice")


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
    try:
        from Bio.Data.PDBData import protein_letters_3to1_extended as letters
    except ImportError:  # (before biopython 1.80's Bio.Data.PDBData)
        from Bio.Data.SCOPData import protein_letters_3to1 as letters
    return letters


def read_structure(path, name: str | None = None) -> Structure:
    """The protein chains of a PDB or mmCIF file (`-` for stdin; compressed ones read as they are),
    its format told by its content. Raises InputError naming the file for anything that is not a
    structure file, one Biopython cannot parse, and one without an amino acid."""
    from protrans_cli.io.files import binary_kind, display_name, kind_refusal, open_input

    shown = name or display_name(path)
    with open_input(path, shown) as stream:
        data = stream.read()
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
    ident = structure_ident(path) if str(path) != "-" else _entry_id(text, fmt)
    if fmt == "mmcif" and "_atom_site." not in text:
        raise InputError("holds no atoms: an mmCIF file without an _atom_site table", path=shown)
    from Bio.PDB import MMCIFParser, PDBParser

    parser = MMCIFParser(QUIET=True, PERMISSIVE=True) if fmt == "mmcif" else PDBParser(QUIET=True, PERMISSIVE=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parser.get_structure(ident, io.StringIO(text))
    except Exception as exc:  # (Biopython's errors are of many types: KeyError, ValueError, its own)
        words = " ".join(str(exc).split()) or type(exc).__name__
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
                                name=residue.get_resname().strip(), letter=letter,
                                b_factor=float(residue["CA"].get_bfactor())))
    return Chain(id=str(chain.id).strip(), residues=tuple(kept))


def _bonded(before, after) -> bool:
    if "C" not in before or "N" not in after:
        return False
    return float(before["C"] - after["N"]) < PEPTIDE_BOND


def structure_records(structures, options: StructureOptions | None = None) -> list[StructureRecord]:
    """The FASTA records of `structures`: one a chain (`ID_CHAIN`; `ID` for a chain without a
    name), or with `options.complex` one a structure (`ID`, chains joined by ':'). An id given by
    two files, or a chain of options.chains that a structure lacks, is an InputError."""
    options = options or StructureOptions()
    records, seen = [], {}
    for structure in structures:
        chains = structure.chains
        if options.chains is not None:
            by_id = {c.id: c for c in chains}
            missing = [c for c in options.chains if c not in by_id]
            if missing:
                has = ", ".join(c.id or "' '" for c in chains)
                raise InputError(f"no protein chain {', '.join(missing)} (its protein chains: {has})",
                                 path=structure.path)
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
        records.extend(made)
    return records


def write_structure_fasta(records, stream) -> None:
    """One FASTA record each (a binary stream): `>ID file=F chain(s)=A:B residues=120:98`."""
    from protrans_cli.io.fasta import write_fasta

    for record in records:
        write_fasta(stream, record.id, record.sequence, record.description)


def write_residue_map(records, stream) -> None:
    """The TSV of each record's rows (a binary stream): id, row (0-based, the embedding's row),
    chain, residue_number, insertion_code, residue_name (as in the file), residue (one letter),
    b_factor (the CA atom's: pLDDT in a predicted model)."""
    from protrans_cli.io.files import tsv_quoted

    stream.write(("\t".join(MAP_HEADER) + "\n").encode())
    for record in records:
        for row, r in enumerate(record.residues):
            fields = (record.id, str(row), r.chain, str(r.number), r.icode, r.name, r.letter, f"{r.b_factor:.2f}")
            stream.write(("\t".join(tsv_quoted(f) for f in fields) + "\n").encode())


def from_structures(paths, output="-", residues_map=None, options: StructureOptions | None = None
                    ) -> list[StructureRecord]:
    """Structure files to a FASTA for `protrans embed` (`output`, '-' for stdout) and, given
    `residues_map`, the TSV that puts each row of the embedding on its residue. Every file is read
    and checked before anything is written; both outputs are written atomically."""
    from protrans_cli.io.files import atomic_output

    options = options or StructureOptions()
    paths = [str(p) for p in paths]
    if not paths:
        raise UsageError("no structure file given")
    if paths.count("-") > 1:
        raise UsageError("stdin ('-') can be one input at most")
    records = structure_records([read_structure(p) for p in paths], options)
    with atomic_output(output, follow_link=True) as fasta:
        if residues_map is None:
            write_structure_fasta(records, fasta)
        else:
            with atomic_output(residues_map, follow_link=True) as table:
                write_structure_fasta(records, fasta)
                write_residue_map(records, table)
    return records
