"""`protrans from-structure`: PDB or mmCIF files to the FASTA that `protrans embed` needs, one
letter per residue modelled, and the map from each embedding row to its residue.

    protrans from-structure 1abc.cif.gz --residues 1abc.map.tsv -o 1abc.fa
    protrans from-structure models/*.pdb --complex | protrans embed - -m onehot --chains separate -o x.h5
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE


@click.command("from-structure", context_settings={"show_default": True})
@click.argument("structures", nargs=-1, required=True, type=INPUT_FILE)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="FASTA to write ('-' = stdout; .gz/.bz2/.xz/.zst compress).")
@click.option("--residues", "residues_map", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              metavar="MAP.tsv",
              help="Also write each record's rows: id, row, chain, residue number, insertion code, residue name, "
                   "letter, the CA's B-factor (pLDDT in a predicted model).")
@click.option("--chain", "chains", default=None, metavar="A,B",
              help="Only these chains (a --complex joins them in this order; '' names a chain without a name, "
                   "whose record is FILE).  [default: every protein chain]")
@click.option("--complex", "complex_", is_flag=True,
              help="One record a structure, its chains joined by ':' (embed --chains linker|separate).")
@click.option("-j", "--threads", type=int, default=None,
              help="Worker processes parsing the files.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(structures, output, residues_map, chains, complex_, threads):
    """Convert structure files (PDB, mmCIF; .gz too) to FASTA for embed, residue by residue.

    STRUCTURES are files, folders (their structure files, recursively, in sorted order) and tar
    archives (.tar, .tar.gz: their structure members, in order, read without extracting, as
    AlphaFold DB's proteome downloads); a model there as both .cif and .pdb is read from the .cif.

    A residue is an amino acid of the first model that has a CA atom, in file order: missing
    loops leave no letter, insertion codes are residues of their own, modified residues (MSE)
    take their parent's letter; waters and ligands are left out. Records are FILE_CHAIN (FILE
    without its suffixes; FILE for a chain without a name), or FILE with --complex.

    \b
    protrans from-structure 1abc.cif.gz --residues 1abc.map.tsv -o 1abc.fa
    protrans embed 1abc.fa -m prot_t5_xl_half --per-residue -o 1abc.h5
    """
    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.io.files import input_named_by, names_stdout, output_directory, same_file
    from protrans_cli.structures import StructureOptions, from_structures, structure_sources
    from protrans_cli.threads import resolve_threads

    # (/dev/stdout, or the file `> x` opened, is stdout as `-` is: the FASTA and the table went
    # out one after the other, into one stream)
    if residues_map is not None and (output in (None, "-") or names_stdout(output)) and names_stdout(residues_map):
        raise UsageError("the FASTA and --residues cannot both go to stdout: give one of them a file name")
    for target, flag in ((output, None), (residues_map, "--residues")):
        if target not in (None, "-"):
            output_directory(target, flag)
            source = input_named_by(target, structures)
            if source:
                raise UsageError(f"{target} is also an input: writing it would replace {source} (choose another name)")
    if residues_map not in (None, "-") and output not in (None, "-") and (
            residues_map == output or same_file(residues_map, output)):
        raise UsageError(f"--residues {residues_map} is the FASTA's own -o: choose another name")
    options = StructureOptions(chains=None if chains is None else tuple(chains.split(",")),
                               complex=complex_, threads=resolve_threads(threads),
                               progress=console.progress_wanted())
    if list(structures).count("-") > 1:
        raise UsageError("stdin ('-') can be one input at most")
    sources = structure_sources(structures)
    for note in sources.notes:
        console.info(note)
    summary = from_structures(sources, output, residues_map, options)
    shown = "standard output" if output in (None, "-") else str(output)
    console.output_complete(shown)
    console.info(f"wrote {console.counted(summary.records, 'record')} ({console.counted(summary.residues, 'residue')}) "
                 f"of {console.counted(sources.count, 'structure')} to {shown}"
                 + (f", their residues to {'standard output' if residues_map == '-' else residues_map}"
                    if residues_map else ""))
