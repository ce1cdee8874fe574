"""protrans from-structure: PDB/mmCIF files to FASTA and the row-to-residue map.

The fixtures (tests/data/structures/two_chains.pdb and .cif, the same atoms) are written by hand:
chain A is MET 1, ALA 2 (its CA in altlocs A and B), MSE 3 (HETATM, peptide-bonded), GLY 5 (no 4),
SER 5A (an insertion code), LYS 6, UNK 7; chain B is VAL 10, LEU 11, TRP 12; then, in chain A, a
free GLU (HETATM, bonded to nothing), a calcium ion whose atom is named CA, a sulfate and waters;
a second model holds a chain C, which is not read. The expected outputs are spelled out here.
"""

from __future__ import annotations

import gzip
import shutil

import pytest

from conftest import DATA

STRUCTURES = DATA / "structures"
PDB = STRUCTURES / "two_chains.pdb"
CIF = STRUCTURES / "two_chains.cif"

# (the last field: the CA atom's B-factor, the first altloc's for ALA 2 (80.25, not its B's 10.00);
# each CA's differs from its residue's other atoms' 20.00)
A_ROWS = [("A", "1", "", "MET", "M", "91.50"), ("A", "2", "", "ALA", "A", "80.25"), ("A", "3", "", "MSE", "M", "77.00"),
          ("A", "5", "", "GLY", "G", "66.10"), ("A", "5", "A", "SER", "S", "55.55"), ("A", "6", "", "LYS", "K", "44.00"),
          ("A", "7", "", "UNK", "X", "33.30")]
B_ROWS = [("B", "10", "", "VAL", "V", "95.00"), ("B", "11", "", "LEU", "L", "90.10"), ("B", "12", "", "TRP", "W", "85.20")]
HEADER = "id\trow\tchain\tresidue_number\tinsertion_code\tresidue_name\tresidue\tb_factor"


def _map(ident_rows):
    lines = [HEADER]
    for ident, rows in ident_rows:
        lines += ["\t".join((ident, str(i), *row)) for i, row in enumerate(rows)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", [PDB, CIF], ids=["pdb", "mmcif"])
def test_one_record_a_chain_and_the_map(run_cli, tmp_path, path):
    out, table = tmp_path / "x.fa", tmp_path / "x.tsv"
    r = run_cli("from-structure", path, "-o", out, "--residues", table)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == (f">two_chains_A file={path} chain=A residues=7\nMAMGSKX\n"
                               f">two_chains_B file={path} chain=B residues=3\nVLW\n")
    assert table.read_text() == _map([("two_chains_A", A_ROWS), ("two_chains_B", B_ROWS)])
    assert "wrote 2 records (10 residues) of 1 structure" in r.stderr


@pytest.mark.parametrize("path", [PDB, CIF], ids=["pdb", "mmcif"])
def test_complex_joins_the_chains_and_counts_rows_across_them(run_cli, tmp_path, path):
    table = tmp_path / "x.tsv"
    r = run_cli("from-structure", path, "--complex", "--residues", table)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f">two_chains file={path} chains=A:B residues=7:3\nMAMGSKX:VLW\n"
    assert table.read_text() == _map([("two_chains", A_ROWS + B_ROWS)])


def test_chain_selects_and_orders_a_complex(run_cli, tmp_path):
    r = run_cli("from-structure", PDB, "--chain", "B")
    assert r.exit_code == 0 and r.stdout == f">two_chains_B file={PDB} chain=B residues=3\nVLW\n"
    table = tmp_path / "m.tsv"
    r = run_cli("from-structure", CIF, "--chain", "B,A", "--complex", "--residues", table)
    assert r.exit_code == 0 and r.stdout == f">two_chains file={CIF} chains=B:A residues=3:7\nVLW:MAMGSKX\n"
    assert table.read_text() == _map([("two_chains", B_ROWS + A_ROWS)])


def test_unknown_chain_names_the_file_and_its_chains(run_cli, tmp_path):
    out = tmp_path / "x.fa"
    r = run_cli("from-structure", PDB, "--chain", "A,C", "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert r.stderr.strip().splitlines() == [f"protrans: error: {PDB}: no protein chain C (its protein chains: A, B)"]
    r = run_cli("from-structure", PDB, "--chain", "A,A")
    assert r.exit_code == 2 and "chains names chain A twice" in r.stderr


def test_gzip_and_the_format_from_the_content(run_cli, tmp_path):
    gz = tmp_path / "9abc.pdb.gz"
    gz.write_bytes(gzip.compress(PDB.read_bytes()))
    disguised = tmp_path / "model.pdb"  # an mmCIF file under a PDB name
    shutil.copy(CIF, disguised)
    r = run_cli("from-structure", gz, disguised, "--complex")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (f">9abc file={gz} chains=A:B residues=7:3\nMAMGSKX:VLW\n"
                        f">model file={disguised} chains=A:B residues=7:3\nMAMGSKX:VLW\n")


def test_stdin_takes_the_entry_id(run_cli):
    r = run_cli("from-structure", "-", "--complex", input=CIF.read_bytes())
    assert r.exit_code == 0 and r.stdout.startswith(">9TST file=<stdin> chains=A:B residues=7:3\n")
    r = run_cli("from-structure", "-", "--chain", "B", input=PDB.read_bytes())
    assert r.exit_code == 0 and r.stdout.startswith(">9TST_B ")


@pytest.mark.parametrize("content, message", [
    (b">x\nMKV\n", "not a structure file: no ATOM or HETATM records (PDB) and no data_ block (mmCIF) "
                   "(a FASTA: protrans embed reads it as it is)"),
    (b"\x00\x01binary", "is a binary file (it holds NUL bytes), not a structure file (PDB or mmCIF)"),
    (b"HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00 20.00           O\n",
     "holds no protein chain (no amino acid with a CA atom in its first model)"),
    (b"ATOM      1  CA  ALA A   1     abc     0.000   0.000  1.00 20.00           C\n",
     "Biopython cannot parse it as PDB: Invalid or missing coordinate(s) at line 1."),
    (b"data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1 2\n",
     "Biopython cannot parse it as mmCIF: no _atom_site.label_atom_id field"),
    (b"data_x\n_cell.length_a 10\n", "holds no atoms: an mmCIF file without an _atom_site table"),
], ids=["fasta", "binary", "water-only", "bad-pdb", "bad-mmcif", "no-atoms"])
def test_bad_files_are_one_line_naming_the_file(run_cli, tmp_path, content, message):
    bad = tmp_path / "bad.pdb"
    bad.write_bytes(content)
    out = tmp_path / "x.fa"
    out.write_text("kept\n")
    r = run_cli("from-structure", PDB, bad, "-o", out, "--residues", tmp_path / "m.tsv")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"protrans: error: {bad}: {message}"]
    assert out.read_text() == "kept\n" and not (tmp_path / "m.tsv").exists()  # nothing half-written


def test_the_same_id_twice_and_outputs_that_collide(run_cli, tmp_path):
    r = run_cli("from-structure", PDB, CIF)
    assert r.exit_code == 1 and f"{CIF}: gives the record id 'two_chains_A', as {PDB} does" in r.stderr
    r = run_cli("from-structure", PDB, "--residues", "-")
    assert r.exit_code == 2 and "cannot both go to stdout" in r.stderr
    r = run_cli("from-structure", PDB, "-o", tmp_path / "a", "--residues", tmp_path / "a")
    assert r.exit_code == 2 and "is the FASTA's own -o" in r.stderr


def test_library_records_carry_the_residues():
    from protrans_cli.structures import StructureOptions, read_structure, structure_records

    structure = read_structure(CIF)
    assert structure.format == "mmcif" and [c.id for c in structure.chains] == ["A", "B"]
    (record,) = structure_records([structure], StructureOptions(complex=True))
    assert record.sequence == "MAMGSKX:VLW"
    assert [(r.chain, str(r.number), r.icode, r.name, r.letter, f"{r.b_factor:.2f}")
            for r in record.residues] == A_ROWS + B_ROWS


def test_the_complex_embeds_to_one_row_a_mapped_residue(run_cli, tmp_path):
    """from-structure --complex | embed - --chains separate: the rows are the map's, in its order."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("torch")
    from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader

    table = tmp_path / "m.tsv"
    fasta = run_cli("from-structure", PDB, "--complex", "--residues", table)
    assert fasta.exit_code == 0, fasta.stderr
    out = tmp_path / "e.h5"
    r = run_cli("embed", "-", "-m", "onehot", "--chains", "separate", "-o", out, input=fasta.stdout.encode())
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        rows = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
    mapped = [line.split("\t") for line in table.read_text().splitlines()[1:]]
    assert list(rows) == ["two_chains"] and rows["two_chains"].shape[0] == len(mapped) == 10
    # one-hot rows: each row's hot column is its residue's letter, as the map says
    hot = np.asarray(rows["two_chains"]).argmax(1)
    letters = {m[6] for m in mapped}
    assert len({(m[6], h) for m, h in zip(mapped, hot)}) == len(letters) == len(set(hot))


def test_a_point_mutation_counts_once_as_its_first_alternative(run_cli, tmp_path):
    """Residue 1 is GLY in altloc A and ALA in altloc B (more occupied): Biopython selects the last
    one read; the first is written, once."""
    atoms = [("N", "A", "GLY", 0.0), ("CA", "A", "GLY", 1.46), ("N", "B", "ALA", 0.0), ("CA", "B", "ALA", 1.46),
             ("N", " ", "LYS", 3.83), ("CA", " ", "LYS", 5.29)]
    lines = [f"ATOM  {i:>5}  {name:<3}{alt}{res} A{1 + (res == 'LYS'):>4}    {x:8.3f}   0.000   0.000"
             f"{0.3 if alt == 'A' else 0.7 if alt == 'B' else 1.0:6.2f} 20.00           {name[0]}"
             for i, (name, alt, res, x) in enumerate(atoms, 1)]
    pdb = tmp_path / "pm.pdb"
    pdb.write_text("\n".join(lines) + "\nEND\n")
    r = run_cli("from-structure", pdb, "--residues", tmp_path / "m.tsv")
    assert r.exit_code == 0 and r.stdout.splitlines()[1] == "GK", r.stdout + r.stderr
    assert [line.split("\t")[5] for line in (tmp_path / "m.tsv").read_text().splitlines()[1:]] == ["GLY", "LYS"]


@pytest.mark.parametrize("path", [PDB, CIF], ids=["pdb", "mmcif"])
def test_embed_given_a_structure_names_this_command(run_cli, tmp_path, path):
    r = run_cli("embed", path, "-m", "onehot", "-o", tmp_path / "x.h5")
    assert r.exit_code == 1 and "structure: protrans from-structure FILE writes the FASTA" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.h5").exists()


# Folders, tar archives (AlphaFold DB's proteome downloads) and -j workers

def _tar(path, members, mode="w"):
    """A tar archive of (name, bytes) members, in that order (bytes None: a folder member)."""
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _headers(fasta: str):
    return [line.split()[:2] for line in fasta.splitlines() if line.startswith(">")]


def test_a_folder_is_its_structure_files_recursively_in_sorted_order(run_cli, tmp_path):
    models = tmp_path / "models"
    (models / "b" / "a").mkdir(parents=True)
    shutil.copy(PDB, models / "b" / "z.pdb")
    shutil.copy(CIF, models / "a.cif")
    (models / "b" / "a" / "y.pdb.gz").write_bytes(gzip.compress(PDB.read_bytes()))
    (models / "b" / "notes.txt").write_text("not a structure\n")
    (models / "c.fa").write_text(">x\nMKV\n")
    r = run_cli("from-structure", models, "--complex")
    assert r.exit_code == 0, r.stderr
    assert _headers(r.stdout) == [[">a", f"file={models}/a.cif"], [">y", f"file={models}/b/a/y.pdb.gz"],
                                  [">z", f"file={models}/b/z.pdb"]]
    assert r.stdout.count("MAMGSKX:VLW\n") == 3
    assert f"{models}: left out 2 files that are not a structure file" in r.stderr
    assert "wrote 3 records (30 residues) of 3 structures" in r.stderr


def test_a_folder_takes_the_mmcif_of_a_model_given_twice_and_refuses_one_id_twice(run_cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(PDB, models / "m.pdb")
    shutil.copy(CIF, models / "m.cif")
    r = run_cli("from-structure", models, "--chain", "A")
    assert r.exit_code == 0, r.stderr
    assert _headers(r.stdout) == [[">m_A", f"file={models}/m.cif"]]
    assert "read 1 model from its mmCIF file, not the PDB file of the same name beside it" in r.stderr
    (models / "sub").mkdir()
    shutil.copy(PDB, models / "sub" / "m.pdb")  # (another folder: not the same model)
    r = run_cli("from-structure", models, "--chain", "A")
    assert r.exit_code == 1
    assert f"{models}/sub/m.pdb: gives the record id 'm_A', as {models}/m.cif does" in r.stderr


def test_a_folder_without_structure_files_is_an_error_naming_it(run_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.fa"
    r = run_cli("from-structure", PDB, empty, "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert r.stderr.strip().splitlines() == [
        f"protrans: error: {empty}: holds no structure file (.pdb, .ent, .cif, .mmcif; .gz too)"]
    (empty / "readme.txt").write_text("x\n")
    r = run_cli("from-structure", empty)
    assert r.exit_code == 1 and f"{empty}: holds no structure file (.pdb, .ent, .cif, .mmcif; .gz too): 1 other file" in r.stderr


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_a_tar_archive_is_read_in_order_taking_the_mmcif_of_each_model(run_cli, tmp_path, suffix, mode):
    # (as AlphaFold DB's proteome archives: each model as .cif.gz and .pdb.gz; here the .pdb.gz first)
    archive = _tar(tmp_path / f"UP000000625_83333_ECOLI_v4{suffix}", [
        ("AF-P2-F1-model_v4.pdb.gz", gzip.compress(PDB.read_bytes())),
        ("AF-P2-F1-model_v4.cif.gz", gzip.compress(CIF.read_bytes())),
        ("sub", None),
        ("sub/AF-P1-F1-model_v4.pdb", PDB.read_bytes()),
        ("README.txt", b"AlphaFold DB\n"),
    ], mode)
    out, table = tmp_path / "x.fa", tmp_path / "x.tsv"
    r = run_cli("from-structure", archive, "--complex", "-o", out, "--residues", table)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == (f">AF-P2-F1-model_v4 file={archive}:AF-P2-F1-model_v4.cif.gz chains=A:B residues=7:3\n"
                               "MAMGSKX:VLW\n"
                               f">AF-P1-F1-model_v4 file={archive}:sub/AF-P1-F1-model_v4.pdb chains=A:B residues=7:3\n"
                               "MAMGSKX:VLW\n")
    assert table.read_text() == _map([("AF-P2-F1-model_v4", A_ROWS + B_ROWS), ("AF-P1-F1-model_v4", A_ROWS + B_ROWS)])
    assert f"{archive}: left out 1 member that is not a structure file" in r.stderr
    assert f"{archive}: read 1 model from its mmCIF file" in r.stderr
    assert "of 2 structures" in r.stderr


def test_a_broken_member_is_named_archive_colon_member(run_cli, tmp_path):
    archive = _tar(tmp_path / "models.tar.gz", [("AF-P1-F1-model_v4.cif.gz", gzip.compress(CIF.read_bytes())),
                                                 ("AF-P2-F1-model_v4.cif.gz", gzip.compress(b">x\nMKV\n")),
                                                 ("AF-P3-F1-model_v4.pdb.gz", gzip.compress(PDB.read_bytes())[:40])], "w:gz")
    out, table = tmp_path / "x.fa", tmp_path / "x.tsv"
    for threads in ("1", "2"):
        r = run_cli("from-structure", archive, "-o", out, "--residues", table, "-j", threads)
        assert r.exit_code == 1 and not out.exists() and not table.exists()
        assert r.stderr.strip().splitlines() == [
            f"protrans: error: {archive}:AF-P2-F1-model_v4.cif.gz: not a structure file: no ATOM or HETATM records (PDB) "
            "and no data_ block (mmCIF) (a FASTA: protrans embed reads it as it is)"]
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(_tar(tmp_path / "whole.tar", [("a.pdb", PDB.read_bytes() * 3)]).read_bytes()[:1000])
    r = run_cli("from-structure", truncated)
    assert r.exit_code == 1 and r.stderr.startswith(f"protrans: error: {truncated}: cannot read it as a tar archive: ")
    not_tar = tmp_path / "no.tar"
    not_tar.write_text("hello\n")
    r = run_cli("from-structure", not_tar)
    assert r.exit_code == 1 and r.stderr.startswith(f"protrans: error: {not_tar}: cannot read it as a tar archive")


def test_workers_give_the_same_output_in_input_order(run_cli, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    text = PDB.read_text().splitlines(keepends=True)
    for n in range(9):  # (models that differ: chain B's residues cut to n % 3 + 1)
        kept = [line for line in text if not (line.startswith("ATOM") and line[21] == "B" and int(line[22:26]) > 10 + n % 3)]
        name = models / f"m{n}.pdb"
        name.write_text("".join(kept))
        if n % 2:
            (models / f"m{n}.cif.gz").write_bytes(gzip.compress(CIF.read_bytes()))
    archive = _tar(tmp_path / "models.tar", [(p.name, p.read_bytes()) for p in sorted(models.iterdir())])
    outputs = {}
    for threads in ("1", "2", "3"):
        for source in (models, archive):
            table = tmp_path / f"{threads}.tsv"
            r = run_cli("from-structure", source, PDB, "-j", threads, "--residues", table)
            assert r.exit_code == 0, r.stderr
            outputs.setdefault(source, set()).add((r.stdout.replace(f"{archive}:", f"{models}/"), table.read_text()))
    assert outputs[models] == outputs[archive] and len(outputs[models]) == 1
    fasta = next(iter(outputs[models]))[0]
    assert [h[0] for h in _headers(fasta)][:4] == [">m0_A", ">m0_B", ">m1_A", ">m1_B"]
    assert f"file={models}/m1.cif.gz" in fasta and "\nVL\n" in fasta and "\nV\n" in fasta
    r = run_cli("from-structure", PDB, "-", models / "m0.pdb", "-j", "2", "--chain", "B", input=CIF.read_bytes())
    assert r.exit_code == 0, r.stderr  # (stdin read by the main process, its entry id the record's)
    assert _headers(r.stdout) == [[">two_chains_B", f"file={PDB}"], [">9TST_B", "file=<stdin>"],
                                  [">m0_B", f"file={models}/m0.pdb"]]
    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")  # (stderr a log: a line at each file)
    r = run_cli("from-structure", models, "-j", "2")
    assert r.exit_code == 0 and "from-structure: 9/9 file (100%)" in r.stderr
    monkeypatch.setenv("PROTRANS_NO_PROGRESS", "1")
    from protrans_cli.structures import Residue

    assert not hasattr(Residue("A", 1, "", "ALA", "A"), "__dict__")  # (slots: a proteome's residues are held)
    monkeypatch.setenv("PROTRANS_THREADS", "many")
    r = run_cli("from-structure", models)
    assert r.exit_code == 2 and "PROTRANS_THREADS must be a whole number" in r.stderr
    r = run_cli("from-structure", models, "-j", "0")
    assert r.exit_code == 2 and "--threads must be at least 1" in r.stderr


def _die(job):
    import os

    os._exit(3)


def test_a_worker_that_dies_is_an_error_and_nothing_is_written(run_cli, tmp_path, monkeypatch):
    from protrans_cli import structures

    monkeypatch.setattr(structures, "_read_job", _die)  # (forked workers: they see it too)
    out, other = tmp_path / "x.fa", tmp_path / "other.cif"
    shutil.copy(CIF, other)
    r = run_cli("from-structure", PDB, other, "-j", "2", "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert r.stderr.strip().splitlines() == [
        "protrans: error: a worker process parsing the structures died (out of memory?): run with fewer -j"]


def _models(folder, count):
    """`count` copies of the PDB fixture, m0.pdb ..., each a structure of its own (ids m0_A, m0_B, ...)."""
    folder.mkdir()
    for n in range(count):
        (folder / f"m{n}.pdb").write_bytes(PDB.read_bytes())
    return folder


def test_records_are_written_as_each_structure_is_read_not_held(tmp_path, monkeypatch):
    """from_structures writes a structure's records before the next is parsed (the records of the
    input are never all in memory) and returns counts, not the records."""
    from protrans_cli import structures

    models = _models(tmp_path / "models", 4)
    events = []
    read_job, write_fasta = structures._read_job, structures.write_structure_fasta

    def reading(job):
        events.append(("read", job.ident))
        return read_job(job)

    def writing(records, stream):
        records = list(records)
        events.extend(("write", r.id) for r in records)
        write_fasta(records, stream)

    monkeypatch.setattr(structures, "_read_job", reading)
    monkeypatch.setattr(structures, "write_structure_fasta", writing)
    out = tmp_path / "out"
    out.mkdir()
    summary = structures.from_structures([models], out / "x.fa", out / "x.tsv", structures.StructureOptions(threads=1))
    assert summary == structures.StructureSummary(structures=4, records=8, residues=40)
    assert events == [e for n in range(4) for e in (("read", f"m{n}"), ("write", f"m{n}_A"), ("write", f"m{n}_B"))]
    assert sorted(p.name for p in out.iterdir()) == ["x.fa", "x.tsv"]
    assert (out / "x.tsv").read_text() == _map([(f"m{n}_{c}", rows) for n in range(4)
                                                for c, rows in (("A", A_ROWS), ("B", B_ROWS))])


def test_a_bad_last_file_leaves_no_output_no_temporary_and_prints_nothing(run_cli, tmp_path, monkeypatch):
    import tempfile

    models = _models(tmp_path / "models", 3)
    spool = tmp_path / "tmp"  # (TMPDIR: stdout's output is written to a temporary file there first)
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("from-structure", models, "-o", out / "x.fa", "--residues", out / "x.tsv")
    assert r.exit_code == 0, r.stderr
    r_stdout = run_cli("from-structure", models, "--residues", out / "y.tsv")
    assert r_stdout.exit_code == 0 and r_stdout.stdout.encode() == (out / "x.fa").read_bytes()
    assert (out / "y.tsv").read_bytes() == (out / "x.tsv").read_bytes()
    r = run_cli("from-structure", models, "-o", out / "x.fa", "--residues", "-")
    assert r.exit_code == 0 and r.stdout.encode() == (out / "x.tsv").read_bytes()
    (models / "z.pdb").write_bytes(b">x\nMKV\n")  # (sorted last)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for args in (("-o", out / "x.fa", "--residues", out / "x.tsv"), ("--residues", out / "new.tsv"),
                 ("-o", out / "new.fa", "--residues", "-"), ("--complex", "-j", "2")):
        r = run_cli("from-structure", models, *args)
        assert r.exit_code == 1 and r.stdout == "", args
        assert r.stderr.strip().splitlines()[-1].startswith(f"protrans: error: {models / 'z.pdb'}: not a structure file")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # (no output, no temporary)
        assert list(spool.iterdir()) == []


def test_a_chain_without_a_name_is_chosen_by_an_empty_chain(run_cli, tmp_path):
    blank = tmp_path / "1xyz.pdb"  # (chain B's column 22 blank)
    blank.write_text("".join(line[:21] + " " + line[22:] if line.startswith(("ATOM", "HETATM")) and line[21] == "B"
                             else line for line in PDB.read_text().splitlines(keepends=True)))
    r = run_cli("from-structure", blank)
    assert r.exit_code == 0 and r.stdout == (f">1xyz_A file={blank} chain=A residues=7\nMAMGSKX\n"
                                             f">1xyz file={blank} chain= residues=3\nVLW\n")
    for spelling in ("", " "):
        r = run_cli("from-structure", blank, "--chain", spelling)
        assert r.exit_code == 0 and r.stdout == f">1xyz file={blank} chain= residues=3\nVLW\n"
    r = run_cli("from-structure", blank, "--chain", ",A", "--complex")
    assert r.exit_code == 0 and r.stdout == f">1xyz file={blank} chains=:A residues=3:7\nVLW:MAMGSKX\n"
    r = run_cli("from-structure", PDB, "--chain", "")
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"protrans: error: {PDB}: no protein chain ' ' (its protein chains: A, B)"]
    r = run_cli("from-structure", blank, "--chain", " ,")
    assert r.exit_code == 2 and "chains names chain ' ' twice" in r.stderr


def test_a_full_tmpdir_for_stdout_is_one_line_naming_it(run_cli, tmp_path, monkeypatch):
    import errno
    import io
    import tempfile

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kwargs: Full())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    r = run_cli("from-structure", PDB)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"protrans: error: {tmp_path}: cannot write the temporary file that standard output is written to first "
        "(TMPDIR): No space left on device"]


def test_an_empty_residues_path_names_the_option(run_cli, tmp_path):
    """`--residues ''` said "the output path is empty" beside an -o given in full."""
    r = run_cli("from-structure", PDB, "-o", tmp_path / "s.fa", "--residues", "")
    assert r.exit_code == 2 and r.stderr == "protrans: error: --residues is empty: give the path of a file\n", r.stderr
    r = run_cli("from-structure", PDB, "-o", "", "--residues", tmp_path / "r.tsv")
    assert r.exit_code == 2 and r.stderr == "protrans: error: the output path is empty\n", r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["-o", "-", "--residues", "/dev/stdout"], ["-o", "/dev/stdout", "--residues", "-"],
                                  ["--residues", "STDOUT_FILE"]])
def test_the_fasta_and_the_map_both_on_stdout_are_refused(tmp_path, args):
    """Only `-o - --residues -` was refused: /dev/stdout, or the file `> x` opened, is stdout
    too, and the FASTA and the residue table went out into one stream."""
    import subprocess
    import sys

    target = tmp_path / "both.txt"
    args = [str(target) if a == "STDOUT_FILE" else a for a in args]
    with open(target, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "from-structure", str(PDB), *args], stdout=out,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "protrans: error: the FASTA and --residues cannot both go to stdout: give one of them a file name")
    assert target.read_bytes() == b""
