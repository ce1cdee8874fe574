"""Label readers and tasks: every supported format as distributed, label orders, 3-from-8 states,
DeepLoc's dual label and membrane U, and the errors a malformed label file gets."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from protrans_cli.errors import InputError, UsageError
from protrans_cli.heads.labels import read_labels, sniff_format
from protrans_cli.heads.tasks import IGNORE, LOCATIONS, SS3, SS8, get_task, ss8_to_ss3
from protrans_cli.io.h5 import sequence_checksum

from conftest import DATA

HEADS = DATA / "heads"


def test_netsurfp_spaced_header_masks_and_ids():
    ls = read_labels(HEADS / "netsurfp_input_spaced_header.csv")
    assert ls.format == "netsurfp"
    first, second = ls.records
    assert first.sequence == "MKVLAAG"
    # (disorder 0.0 -> D, 1.0 -> O: the disorder task's labels; cb513_mask is a mask when asked for)
    assert first.labels == {"ss3": "CEEHHHC", "ss8": "CBEHGIS", "disorder": "DOOOOOO"}
    assert first.mask.tolist() == [False, True, True, True, True, True, True]  # disorder only by default
    assert first.id == "seq-" + sequence_checksum("MKVLAAG")[4:16]
    assert first.id_from_sequence and second.mask.all()


def test_quoted_csv_headers_are_detected_as_their_format(tmp_path):
    """A CSV quoted throughout (R's write.csv, csv.QUOTE_ALL, pandas' quoting=1) was taken for an
    id,label table by its header `"input"," dssp3",...`: "has 5 fields, more than the 2 of
    'id,label'" (NetSurfP, PISCES), or every row a record (FLIP's CSV)."""
    import csv

    plain = (HEADS / "netsurfp_input_spaced_header.csv").read_text()
    quoted = tmp_path / "q.csv"
    with open(quoted, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(csv.reader(plain.splitlines()))
    assert quoted.read_text().startswith('"input"," dssp3"')
    got, want = read_labels(quoted), read_labels(HEADS / "netsurfp_input_spaced_header.csv")
    assert got.format == "netsurfp" and [(r.id, r.labels) for r in got.records] == [(r.id, r.labels) for r in want.records]
    assert sniff_format('"pdb_id","chain_code","seq","sst8","sst3"\n') == "pisces"
    assert sniff_format('"sequence","target","set","validation"\n') == "flip_csv"
    assert sniff_format('"id"\t"label"\n') == "table"


def test_netsurfp_combined_mask_columns():
    ls = read_labels(HEADS / "netsurfp_input_spaced_header.csv", mask_columns=("disorder", "cb513_mask"))
    assert ls.records[0].mask.tolist() == [False, True, True, True, False, False, True]


def test_netsurfp_seq_header_repeated_sequences_get_distinct_stable_ids():
    ls = read_labels(HEADS / "netsurfp_seq_header_repeated_sequence.csv")
    ids = [r.id for r in ls.records]
    base = "seq-" + sequence_checksum("GGHK")[4:16]
    assert ids[0] == base and ids[2] == base + "-2" and len(set(ids)) == 3
    assert ids == [r.id for r in read_labels(HEADS / "netsurfp_seq_header_repeated_sequence.csv").records]


def test_netsurfp_gzip_is_read_like_plain(tmp_path):
    gz = tmp_path / "x.csv.gz"
    gz.write_bytes(gzip.compress((HEADS / "netsurfp_input_spaced_header.csv").read_bytes()))
    assert [r.labels for r in read_labels(gz).records] == \
        [r.labels for r in read_labels(HEADS / "netsurfp_input_spaced_header.csv").records]


def test_netsurfp_label_count_mismatch_names_line_and_record():
    # the line and the id the record is known by everywhere else (NetSurfP rows have none of their own)
    from protrans_cli.io.h5 import sequence_checksum

    ident = "seq-" + sequence_checksum("MKVL").split(":", 1)[1][:12]
    with pytest.raises(InputError, match=rf"netsurfp_label_length_mismatch.csv:2, record '{ident}': "
                                         "dssp3 has 3 labels for 4 residues"):
        read_labels(HEADS / "netsurfp_label_length_mismatch.csv")


def test_netsurfp_state_tokens_of_several_letters_name_their_line(tmp_path):
    """'C HH' for two residues passed as three states, met later as a length mismatch."""
    path = tmp_path / "multi.csv"
    path.write_text("input,dssp3,disorder\nM K,C H,1.0 1.0\nM K,C HH,1.0 1.0\n")
    with pytest.raises(InputError, match=r"multi.csv:3.*dssp3 holds 'HH': one state per residue"):
        read_labels(path)


@pytest.mark.parametrize("fmt", ["netsurfp", "pisces"])
def test_blank_lines_before_a_csv_header_are_skipped(tmp_path, fmt):
    """The format was told by the first line that is not blank, the header read as the blank one:
    "NetSurfP CSV without a sequence column; header is " (empty). Lines are still counted."""
    path = tmp_path / "blank_first.csv"
    if fmt == "netsurfp":
        path.write_text("\n\ninput,dssp3,disorder\nM K,C H,1.0 1.0\nM K V,C H,1.0 1.0 1.0\n")
    else:
        path.write_text("\n\nid,seq,sst3\nP1,MK,CH\nP2,MKV,CH\n")
    with pytest.raises(InputError, match=r"blank_first.csv:5"):
        read_labels(path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    records = read_labels(path).records
    assert [r.sequence for r in records] == ["MK"] and records[0].line == 4


def test_netsurfp_missing_mask_column():
    with pytest.raises(InputError, match="no mask column cb513_mask"):
        read_labels(HEADS / "netsurfp_seq_header_repeated_sequence.csv", mask_columns=("cb513_mask",))


@pytest.mark.parametrize("tokens", [["1.0", "0.0", "1.0"], ["1.0"] * 4, ["0.0", "0.0"], [],
                                    ["1", "0", "-0.0", "1e0", "0.00", "1.0"]])
def test_mask_values_are_read_as_numpy_reads_them(tokens):
    """Each distinct mask value is converted once (speed): the same mask as numpy's conversion
    of every value; a ValueError naming a value that is not 0 or 1."""
    from protrans_cli.heads.labels import _is_one

    assert _is_one(tokens).dtype == bool
    np.testing.assert_array_equal(_is_one(tokens), np.asarray(tokens, dtype=np.float32) == 1.0)
    for bad in ("one", "0.99", "nan", "-1", "inf", "1.00000001"):
        with pytest.raises(ValueError, match=bad):
            _is_one(tokens + [bad])


@pytest.mark.parametrize("value", ["x", "2.0", "nan", "0.5"])
def test_netsurfp_mask_value_that_is_not_0_or_1_names_line(tmp_path, value):
    """2.0, nan or 0.5 (a damaged column) were taken as 0: fewer residues evaluated without a word."""
    bad = tmp_path / "bad.csv"
    bad.write_text(f"input,dssp3,disorder\nM K,C C,1.0 0.0\nM K,C C,1 {value}\n")
    with pytest.raises(InputError, match=rf"bad.csv:3.*disorder holds '{value}': a mask value is 1 \(evaluated\) or 0"):
        read_labels(bad)


def test_flip_sets_and_mask():
    ls = read_labels(HEADS / "flip_with_sets.fasta", mask_path=HEADS / "flip_mask.fasta")
    assert ls.format == "flip"
    assert [r.split for r in ls.records] == ["train", "valid", "test"]
    assert ls.records[0].mask.tolist() == [False, True, True, True, True]
    assert ls.records[0].sequence is None


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_mask_and_sequences_beside_flip_labels_are_read(tmp_path, encoding):
    """The FASTA files beside a FLIP label file (its mask, --sequences) saved as UTF-16 were refused
    as "not FASTA", where the label file beside them was read in UTF-16."""
    from protrans_cli.heads.labels import read_sequences

    mask = tmp_path / "mask.fasta"
    mask.write_bytes((HEADS / "flip_mask.fasta").read_text().encode(encoding))
    original = read_labels(HEADS / "flip_with_sets.fasta", mask_path=HEADS / "flip_mask.fasta")
    wide = read_labels(HEADS / "flip_with_sets.fasta", mask_path=mask)
    assert [r.mask.tolist() for r in wide.records] == [r.mask.tolist() for r in original.records]
    sequences = tmp_path / "seqs.fasta"
    sequences.write_bytes(">p1 x\r\nMKTAW\r\n>p2\r\nGG\r\n".encode(encoding))
    assert read_sequences(sequences) == {"p1": "MKTAW", "p2": "GG"}


def test_flip_mask_length_mismatch(tmp_path):
    bad = tmp_path / "mask.fasta"
    bad.write_text(">p1\n0111\n>p2\n1111\n>p3\n1110\n")
    with pytest.raises(InputError, match="record 'p1': mask has 4 positions, the labels 5"):
        read_labels(HEADS / "flip_with_sets.fasta", mask_path=bad)


def test_deeploc_dual_label_and_trailing_space():
    ls = read_labels(HEADS / "deeploc_dual_label_trailing_space.fasta")
    assert ls.format == "deeploc"
    assert [r.labels for r in ls.records] == [
        {"loc": "Cell.membrane", "membrane": "M"}, {"loc": "Cytoplasm-Nucleus", "membrane": "U"},
        {"loc": "Nucleus", "membrane": "S"}, {"loc": "Lysosome/Vacuole", "membrane": "U"}]
    assert ls.records[0].sequence == "MKVLAAGT"  # wrapped lines joined
    assert ls.records[2].split == "test"
    task = get_task("loc")
    targets = [task.protein_targets(r) for r in ls.records]
    assert targets[0] == {"loc": LOCATIONS.index("Cell.membrane"), "membrane": 0}
    assert targets[1] == {"loc": LOCATIONS.index("Cytoplasm"), "membrane": IGNORE}  # dual -> first; U left out
    assert get_task("loc", dual="skip").protein_targets(ls.records[1])["loc"] == IGNORE


def test_deeploc_split_words(tmp_path):
    # Light Attention's setHARD marks its proteins "new_test_set": they were read as training data.
    path = tmp_path / "dl.fasta"
    path.write_text(">A Nucleus-S new_test_set \nMKV\n>B Cytoplasm-M test\nMKV\n>C Nucleus-S\nMKV\n"
                    ">D Nucleus-S val\nMKV\n>E Nucleus-S contest\nMKV\n")
    assert [r.split for r in read_labels(path).records] == ["test", "test", None, "valid", None]


def test_tables_with_and_without_header():
    with_header = read_labels(HEADS / "id_label_with_header.tsv")
    assert with_header.format == "table"
    assert [(r.id, r.labels["label"]) for r in with_header.records] == [("q1", "enzyme"), ("q2", "other"),
                                                                       ("q3", "enzyme")]
    assert [r.id for r in read_labels(HEADS / "id_label_no_header.csv").records] == ["q1", "q2"]
    task = get_task("protein").with_classes_from(with_header.records)
    assert task.outputs[0].classes == ("enzyme", "other")


def test_a_table_read_with_all_its_columns(tmp_path):
    """all_columns (project's annotation tables): every column after the id under its header's
    name, an unnamed one as column<N>; the tasks' reading (the second column as `label`) and a
    table without a header are unchanged."""
    path = tmp_path / "annotations.csv"
    path.write_text('id,family,tm,,set\nP1,kinase,55.1,x,train\nP2,"protease, serine",60.2,,test\n')
    records = read_labels(path, all_columns=True).records
    assert [r.labels for r in records] == [{"family": "kinase", "tm": "55.1", "column4": "x", "set": "train"},
                                           {"family": "protease, serine", "tm": "60.2", "column4": "", "set": "test"}]
    assert [r.labels for r in read_labels(path).records] == [{"label": "kinase"}, {"label": "protease, serine"}]
    assert [r.labels for r in read_labels(HEADS / "id_label_no_header.csv", all_columns=True).records] == \
        [r.labels for r in read_labels(HEADS / "id_label_no_header.csv").records]


def test_a_table_read_with_all_its_columns_gives_every_row_the_headers_columns(tmp_path):
    """all_columns: a row short of the header's last columns has them empty (no label); a table
    whose every row ended before `tm` lost the column."""
    path = tmp_path / "annotations.csv"
    path.write_text("id,family,tm\nP1,kinase\nP2,protease,60\n")
    assert [r.labels for r in read_labels(path, all_columns=True).records] == [
        {"family": "kinase", "tm": ""}, {"family": "protease", "tm": "60"}]
    path.write_text("id,family,tm\nP1,kinase\n")
    assert [r.labels for r in read_labels(path, all_columns=True).records] == [{"family": "kinase", "tm": ""}]


def test_a_table_read_with_all_its_columns_and_a_sequence_column_is_no_flip_csv(tmp_path):
    """all_columns: `id,sequence,family,set` (an annotation export) is a table with its ids, not a
    FLIP CSV (ids made from the sequences, or "without a target column"); the tasks read it as before."""
    path = tmp_path / "annotations.csv"
    path.write_text("id,sequence,family,set\nP1,ACDE,kinase,train\nP2,FGHI,protease,test\n")
    label_set = read_labels(path, all_columns=True)
    assert label_set.format == "table" and [(r.id, r.labels) for r in label_set.records] == [
        ("P1", {"sequence": "ACDE", "family": "kinase", "set": "train"}),
        ("P2", {"sequence": "FGHI", "family": "protease", "set": "test"})]
    with pytest.raises(InputError, match="FLIP CSV without a target column"):
        read_labels(path)
    path.write_text("sequence,target,set\nACDE,1.5,train\n")  # (FLIP's own: still FLIP)
    assert read_labels(path, all_columns=True).format == "flip_csv"


def test_a_table_read_with_all_its_columns_keeps_a_set_column_as_a_label(tmp_path):
    """all_columns: a column named `set` is one more label (an annotation's gene set), not a split
    (`A` was refused as an unknown set); the tasks still read it as the split."""
    path = tmp_path / "annotations.csv"
    path.write_text("id,set,family\nP1,A,kinase\nP2,test,protease\n")
    records = read_labels(path, all_columns=True).records
    assert [(r.labels, r.split) for r in records] == [({"set": "A", "family": "kinase"}, None),
                                                      ({"set": "test", "family": "protease"}, None)]
    with pytest.raises(InputError, match="annotations.csv:2: unknown set 'A'"):
        read_labels(path)


@pytest.mark.parametrize("header, twice", [("id,family,tm,family", "'family' twice (columns 2, 4)"),
                                           ("id,,column2", "'column2' twice (columns 2, 3)")])
def test_a_table_read_with_all_its_columns_refuses_a_column_name_given_twice(tmp_path, header, twice):
    """all_columns: two columns of one name (or an unnamed one and a column2) are an error naming
    the line; the second's values took the name and the first's were lost, silently."""
    path = tmp_path / "annotations.csv"
    path.write_text(f"{header}\n" + ",".join(["P1", "a", "b", "c"][:header.count(",") + 1]) + "\n")
    with pytest.raises(InputError, match="annotations.csv:1: the header names " + re.escape(twice)):
        read_labels(path, all_columns=True)
    assert [r.labels for r in read_labels(path).records] == [{"label": "a"}]  # (the tasks read the second)


@pytest.mark.parametrize("text", [
    'id,label\n0,"\n00,\n',                              # found by fuzzing: record 00 was lost
    'id,label\nP1,"cyto\nP2,nucleus\nP3,cyto\n',        # P2 and P3 went into P1's label, exit 0
    'id\tlabel\nP1\t"cyto\nP2\tnucleus\n',                  # a TSV
    # FLIP, NetSurfP and PISCES CSVs too (found by a property test): the FLIP rows after the
    # quote were lost, exit 0; a quote in a NetSurfP header quoted the whole file in the error
    'sequence,target,set,validation\nMKTAY,0.5,train,"False\nMKKLL,1.25,train,True\nGGHH,-3,test,\n',
    '\n"input, dssp3, dssp8\nM K,C C,C C\nM,C,C\n',
    'pdb_id,chain_code,seq,sst8,sst3\n1ABC,A,"MKTAY,CCHHC,CCHHC\n2XYZ,A,MK,CC,CC\n',
])
def test_a_table_quote_that_is_not_closed_is_an_error_naming_its_line(tmp_path, text):
    path = tmp_path / "open_quote.csv"
    path.write_bytes(text.encode())
    with pytest.raises(InputError, match=r"open_quote.csv:2: a quoted field runs over several lines"):
        read_labels(path)


def test_duplicate_ids_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,x\nb,y\na,y\n")
    with pytest.raises(InputError, match=r"dup.csv:3, record 'a': duplicate id \(first seen on line 1\)$"):
        read_labels(path)


def test_a_duplicate_id_is_named_with_its_lines(tmp_path):
    """A duplicate id of a biotrainer FASTA (or a table) is named with the line of its second
    record and of its first, as embed names one: "1 duplicate ids: P1" named no line of a file
    of thousands of records."""
    path = tmp_path / "bt.fasta"
    path.write_text(">P1 TARGET=0.5 SET=train\nMKV\n>P2 TARGET=1 SET=train\nMKL\n"
                    ">P1 TARGET=0.7 SET=test\nMKV\n>P2 TARGET=2 SET=test\nMKL\n")
    with pytest.raises(InputError, match=r"bt.fasta:5, record 'P1': duplicate id \(first seen on line 1\); "
                                         r"1 more: P2$"):
        read_labels(path)


def test_sniff_and_unknown_format():
    assert sniff_format(">a Nucleus-S\nMK\n") == "deeploc"
    assert sniff_format(">a SET=train\nCC\n") == "flip"
    assert sniff_format("seq,dssp3\n") == "netsurfp"
    assert sniff_format("id,label\n") == "table"
    with pytest.raises(UsageError):
        read_labels(HEADS / "id_label_no_header.csv", fmt="parquet")


def test_ss8_to_ss3_reduction():
    assert ss8_to_ss3("HGIEBTSC") == "HHHEECCC"
    with pytest.raises(ValueError):
        ss8_to_ss3("HX")


def test_label_orders_are_fixed():
    # These orders are the class indices stored in every head's config: changing them breaks heads.
    assert SS3 == ("H", "E", "C")
    assert SS8 == ("H", "G", "I", "E", "B", "T", "S", "C")
    assert len(LOCATIONS) == 10 and LOCATIONS[1] == "Cytoplasm"


def test_residue_targets_mask_and_derivation():
    ls = read_labels(HEADS / "netsurfp_input_spaced_header.csv")
    t3 = get_task("ss3").residue_targets(ls.records[0])["ss3"]
    assert t3.tolist() == [IGNORE, 1, 1, 0, 0, 0, 2]  # C E E H H H C, first residue masked out
    t8 = get_task("ss8").residue_targets(ls.records[0])["ss8"]
    assert t8.tolist() == [IGNORE, 4, 3, 0, 1, 2, 6]
    # a file with 8-state labels only gives 3-state targets by the standard reduction
    rec = ls.records[0]
    rec.labels = {"ss8": rec.labels["ss8"]}
    assert get_task("ss3").residue_targets(rec)["ss3"].tolist() == t3.tolist()
    # a letter of no 8-state class there (DSSP 4 writes P for polyproline): named, with its record
    # and line, as in a FLIP file (a ValueError traceback); at a masked residue it counts for nothing
    rec.labels = {"ss8": "CEPHGIS"}
    with pytest.raises(InputError, match=r"record 'seq-.*'P' are not ss3 classes \(HEC, or 8-state HGIEBTSC\)"):
        get_task("ss3").residue_targets(rec)
    rec.labels = {"ss8": "PEEHGIS"}
    assert get_task("ss3").residue_targets(rec)["ss3"].tolist() == [IGNORE, 1, 1, 0, 0, 0, 2]


def test_coil_written_dash_or_l_reads_as_c_in_every_label_source():
    """docs/heads.md: "Coil written `-` or `L` is read as `C`", in a 3-state or 8-state column and
    in FLIP's generic labels, for ss3 and ss8 alike (and in lower case)."""
    rec = read_labels(HEADS / "netsurfp_input_spaced_header.csv").records[0]  # (7 residues, the first masked)
    for labels, output, want in [({"ss3": "CLEH-hl"}, "ss3", "CCEHCHC"), ({"ss8": "CL-HGIs"}, "ss8", "CCCHGIS"),
                                 ({"ss8": "CL-HGIs"}, "ss3", "CCCHHHC"), ({"label": "xL-EEH-"}, "ss3", "CCCEEHC"),
                                 ({"label": "xL-BGT-"}, "ss8", "CCCBGTC")]:
        rec.labels = labels
        classes = SS3 if output == "ss3" else SS8
        assert get_task(output).residue_targets(rec)[output].tolist() == \
            [IGNORE] + [classes.index(c) for c in want[1:]], (labels, output)


def test_flip_three_state_labels_refused_for_ss8_and_bad_letters():
    ls = read_labels(HEADS / "flip_with_sets.fasta")
    assert get_task("ss3").residue_targets(ls.records[0])["ss3"].tolist() == [2, 2, 0, 0, 1]
    with pytest.raises(InputError, match="flip_with_sets.fasta: holds 3-state labels only"):
        get_task("ss8").check_label_states(ls.records, ls.path)
    # An 8-state file where one protein is helix and coil only (CB513 has three): the file's
    # other letters say 8 states, and that protein's H and C are 8-state classes too.
    ls.records[1].labels["label"] = "C" * (len(ls.records[1].labels["label"]) - 1) + "G"
    get_task("ss8").check_label_states(ls.records, ls.path)
    assert get_task("ss8").residue_targets(ls.records[0])["ss8"].tolist() == [7, 7, 0, 0, 3]
    ls.records[0].labels["label"] = "CCQHE"
    with pytest.raises(InputError, match="record 'p1'.*'Q' are not ss3 classes"):
        get_task("ss3").residue_targets(ls.records[0])
    # an unknown letter among 8-state ones: only it is named (G, S, T were listed as "not ss3")
    ls.records[0].labels["label"] = "GPSTH"
    with pytest.raises(InputError, match=r"record 'p1'.*'P' are not ss3 classes \(HEC, or 8-state HGIEBTSC\)"):
        get_task("ss3").residue_targets(ls.records[0])
    # FLIP's mask.fasta given as --labels (for sampled.fasta): said to be the mask, for --mask
    ls = read_labels(HEADS / "flip_mask.fasta")
    with pytest.raises(InputError, match=r"record 'p1'.*'01' are not ss3 classes \(HEC, or 8-state HGIEBTSC\); the "
                                         r"file holds a 0/1 mask \(FLIP's mask.fasta\): give it with --mask, and the "
                                         r"labels to --labels$"):
        get_task("ss3").residue_targets(ls.records[0])


def test_a_lower_case_flip_file_is_told_8_state_or_3_state_by_its_letters_in_any_case(tmp_path):
    """A FLIP file written in lower case (its labels are read as written) holds 8-state labels
    when its letters hold g, i, b, t or s: ss8 takes it, and a lower-case h/e/c file is refused."""
    eight = tmp_path / "eight.fasta"
    eight.write_text(">p1 SET=train VALIDATION=False\nhhggcc\n>p2 SET=test VALIDATION=False\nhhhcc\n")
    ls = read_labels(eight)
    assert get_task("ss8").check_label_states(ls.records, ls.path) == frozenset()
    assert get_task("ss8").residue_targets(ls.records[0])["ss8"].tolist() == [SS8.index(c) for c in "HHGGCC"]
    three = tmp_path / "three.fasta"
    three.write_text(">p1 SET=train VALIDATION=False\nhhecc\n")
    ls = read_labels(three)
    with pytest.raises(InputError, match="three.fasta: holds 3-state labels only"):
        get_task("ss8").check_label_states(ls.records, ls.path)


def test_generic_residue_classes_ignore_masked_positions():
    ls = read_labels(HEADS / "flip_with_sets.fasta", mask_path=HEADS / "flip_mask.fasta")
    task = get_task("residue").with_classes_from(ls.records)
    assert task.outputs[0].classes == ("C", "E", "H")
    assert task.residue_targets(ls.records[2])["label"].tolist() == [2, 2, 2, IGNORE]
    assert np.all(task.residue_targets(ls.records[0])["label"][1:] >= 0)


def test_labels_on_a_plain_sequence_fasta_says_embed_reads_it(tmp_path, run_cli):
    # A proteome FASTA given to `labels` is read as FLIP labels without sequences; the error
    # should point at the likely mistake, not only ask for a sequences file.
    fasta = tmp_path / "proteome.fa"
    fasta.write_text(">sp|P1|A_ECOLI desc\nMKVLLA\n>sp|P2|B_ECOLI\nMSTQ\n")
    r = run_cli("labels", fasta, "-o", tmp_path / "out.fa")
    assert r.exit_code == 1 and "no sequence for 2 ids" in r.stderr
    assert "`protrans embed` reads it as it is" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.fa").exists()
    flip = tmp_path / "flip.fa"
    flip.write_text(">a SET=train VALIDATION=False\nCCH\n")
    r = run_cli("labels", flip, "-o", tmp_path / "out.fa")
    assert r.exit_code == 1 and "give the sequences FASTA with --sequences)" in r.stderr
    r = run_cli("labels", flip, "-o", tmp_path / "nodir" / "out.fa")
    assert r.exit_code == 2 and "nodir: output directory does not exist" in r.stderr


def test_labels_refuses_flip_labels_and_sequences_given_the_wrong_way_round(tmp_path, run_cli):
    # `labels sequences.fasta --sequences sampled.fasta`: every count agreed, and the DSSP strings
    # were written as the proteins to embed, exit 0
    proteins = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWYAC", "MNPQRSTVWW"]
    states = ["CCHHHHHHHHEEEECCCHHHCC", "CEEEECCCCHHHHHHHCCCCCC", "CCCCEEEECC"]
    seqs, labels = tmp_path / "sequences.fasta", tmp_path / "sampled.fasta"
    seqs.write_text("".join(f">p{i}\n{p}\n" for i, p in enumerate(proteins)))
    labels.write_text("".join(f">p{i} SET=train VALIDATION=False\n{s}\n" for i, s in enumerate(states)))
    out = tmp_path / "out.fa"
    r = run_cli("labels", seqs, "--sequences", labels, "-o", out)
    assert r.exit_code == 1 and "are the label file and --sequences swapped?" in r.stderr, r.stderr
    assert "(C, E, H)" in r.stderr and not out.exists()
    r = run_cli("labels", labels, "--sequences", seqs, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == "".join(f">p{i}\n{p}\n" for i, p in enumerate(proteins))


def test_labels_says_sequences_are_not_read_for_a_file_that_carries_its_own(tmp_path, run_cli):
    # --sequences beside DeepLoc (or NetSurfP, PISCES, biotrainer) labels was read and never used,
    # without a word: the FASTA written held the label file's own sequences
    deeploc, other = tmp_path / "dl.fasta", tmp_path / "other.fasta"
    deeploc.write_text(">P1 Nucleus-S\nMKT\n")
    other.write_text(">P1\nMVVV\n")
    r = run_cli("labels", deeploc, "--sequences", other, "-o", tmp_path / "out.fa")
    assert r.exit_code == 0, r.stderr
    assert f"warning: --sequences {other} is not read: deeploc labels carry their own sequences" in r.stderr
    assert (tmp_path / "out.fa").read_text() == ">P1\nMKT\n"


def test_labels_refuses_an_empty_output_name_before_reading(tmp_path, run_cli):
    # -o "" (an unset variable) said ".: is a directory, expected a file", exit 1, once the labels
    # were read; prep and embed say the name is empty, a usage error
    deeploc = tmp_path / "dl.fasta"
    deeploc.write_text(">P1 Nucleus-S\nMKT\n")
    r = run_cli("labels", deeploc, "-o", "")
    assert r.exit_code == 2 and r.stderr.strip() == "protrans: error: the output path is empty"


def test_an_embeddings_file_or_other_binary_given_as_labels_says_what_it_is(tmp_path, run_cli):
    """The HDF5 file given as --labels (the two files swapped) failed with "expected 'id,label'" on
    line 1; a binary file likewise. One line saying what the file is, for labels and fit alike."""
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n>b\nMKL\n")
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "-o", h5).exit_code == 0
    for command in (["labels", h5, "-o", tmp_path / "out.fa"],
                    ["fit", "loc", "--embeddings", h5, "--labels", h5, "-o", tmp_path / "head"]):
        r = run_cli(*command)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{h5}: is an HDF5 file (such as embed writes), not a label file" in r.stderr
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"id,label\nP1,\x00\x01\x02\n")
    with pytest.raises(InputError, match=r"is a binary file \(it holds NUL bytes\), not a label file \(a NetSurfP"):
        read_labels(binary)
    assert not (tmp_path / "out.fa").exists() and not (tmp_path / "head").exists()


@pytest.mark.parametrize("name,first,what", [
    ("1abc.pdb", "HEADER    HYDROLASE    01-JAN-00   1ABC", "a PDB structure"),
    ("x.gb", "LOCUS       X 10 aa", "a GenBank record"),
    ("reads.fq", "@r1", "FASTQ"),
    ("pfam.sto", "# STOCKHOLM 1.0", "a Stockholm alignment"),
    ("corpus.txt", "M K T A", "a pretraining corpus"),
])
def test_a_look_alike_given_as_labels_says_what_it_is(tmp_path, run_cli, name, first, what):
    """A PDB, GenBank, FASTQ or Stockholm file, or prep's corpus, given as the labels said only
    "expected 'id,label'" on line 1: the FASTA readers' look-alikes now tell what it is (labels and
    fit alike); a table's bad row is told as before."""
    path = tmp_path / name
    path.write_text(first + "\nM K K\n")
    for command in (["labels", path, "-o", tmp_path / "out.fa"],
                    ["fit", "loc", "--embeddings", path, "--labels", path, "-o", tmp_path / "head"]):
        r = run_cli(*command)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{path}:1: expected 'id,label'; the file " in r.stderr and what in r.stderr, r.stderr
    table = tmp_path / "t.csv"
    table.write_text("a,1\nM K K\n")
    with pytest.raises(InputError, match=r"t.csv:2: expected 'id,label'$"):
        read_labels(table)


def test_labels_output_that_is_the_label_file_is_refused(tmp_path, run_cli):
    # A DeepLoc FASTA converted onto itself lost its labels.
    path = tmp_path / "dl.fasta"
    text = ">P1 Nucleus-S\nMKVLLA\n>P2 Cytoplasm-U\nMSTQ\n"
    path.write_text(text)
    r = run_cli("labels", path, "-o", str(tmp_path / "." / "dl.fasta"))
    assert r.exit_code == 2 and "is also an input" in r.stderr
    assert path.read_text() == text
    assert run_cli("labels", path, "-o", tmp_path / "embed.fa").exit_code == 0


def test_pisces_table_ids_stars_and_both_state_sets(tmp_path):
    label_set = read_labels(HEADS / "pisces_small.csv")
    assert label_set.format == "pisces"
    assert [r.id for r in label_set.records] == ["1ABC_A", "1ABC_B", "2XYZ_A", "3DEF_C"]
    star = label_set.records[2]
    assert star.sequence == "HSVQXRWRNLIGIDWLT"  # '*' is a non-standard residue there, read as X
    assert star.labels == {"ss8": "IGISHHBEGEIBCHGGG", "ss3": "HHHCHHEEHEHECHHHH"}
    assert any("1 '*'" in note for note in label_set.notes)
    # the 3 states are the 8 reduced as everywhere else (G/H/I -> H, B/E -> E, rest -> C)
    for r in label_set.records:
        assert ss8_to_ss3(r.labels["ss8"]) == r.labels["ss3"]
    targets = get_task("ss3").residue_targets(star)["ss3"]
    assert targets.tolist() == ["HEC".index(c) for c in star.labels["ss3"]]  # every residue counted
    bad = tmp_path / "bad.csv"
    text = (HEADS / "pisces_small.csv").read_text().splitlines()
    text[2] = text[2].replace(",SEHTGHHC,", ",SEHTGHH,")
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"bad.csv:3, record '1ABC_B': sst8 has 7 labels for 8 residues"):
        read_labels(bad)


def test_pisces_release_reads_whole(shared_data):
    label_set = read_labels(shared_data / "pisces_kaggle" / "2018-06-06-pdb-intersect-pisces.csv.gz")
    assert label_set.format == "pisces" and len(label_set.records) == 9078
    assert sum(len(r.sequence) for r in label_set.records) == 2207484
    assert sum(r.sequence.count("X") for r in label_set.records) >= 156
    assert any("156 '*'" in note for note in label_set.notes)


@pytest.mark.parametrize("name", ["netsurfp_input_spaced_header.csv", "deeploc_dual_label_trailing_space.fasta",
                                  "id_label_with_header.tsv", "pisces_small.csv"])
def test_cr_only_line_endings_read_like_the_original(tmp_path, name):
    """Old Mac line endings: csv gave a traceback, the DeepLoc reader one record of the three."""
    source = HEADS / name
    cr = tmp_path / name
    cr.write_bytes(source.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r"))
    original, converted = read_labels(source), read_labels(cr)
    assert [(r.id, r.sequence, r.labels) for r in converted.records] == \
        [(r.id, r.sequence, r.labels) for r in original.records]



@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
@pytest.mark.parametrize("name", ["id_label_with_header.tsv", "netsurfp_input_spaced_header.csv",
                                  "deeploc_dual_label_trailing_space.fasta"])
def test_utf16_label_files_read_like_the_original(tmp_path, name, encoding):
    """Excel's "Unicode Text" export (and PowerShell's `>`) is UTF-16 with a byte-order mark: read
    as latin-1 every other character was a NUL, and the error was "expected 'id,label'" on line 3."""
    source = HEADS / name
    wide = tmp_path / name
    text = source.read_text(encoding="utf-8")
    wide.write_bytes((b"\xfe\xff" if encoding == "utf-16-be" else b"") + text.encode(encoding))
    assert wide.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    original, converted = read_labels(source), read_labels(wide)
    assert converted.format == original.format
    assert [(r.id, r.sequence, r.labels) for r in converted.records] == \
        [(r.id, r.sequence, r.labels) for r in original.records]

@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_label_files_without_a_byte_order_mark_are_read(tmp_path, encoding):
    """pandas' to_csv(encoding="utf-16-le") writes no byte-order mark: such a file was "a binary
    file" (and before that "expected 'id,label'")."""
    source = HEADS / "id_label_with_header.tsv"
    wide = tmp_path / "wide.tsv"
    wide.write_bytes(source.read_text(encoding="utf-8").encode(encoding))
    assert wide.read_bytes()[:2] not in (b"\xff\xfe", b"\xfe\xff")
    original, converted = read_labels(source), read_labels(wide)
    assert [(r.id, r.labels) for r in converted.records] == [(r.id, r.labels) for r in original.records]


def test_a_sequence_longer_than_csvs_field_limit_is_read(tmp_path):
    """csv refuses fields over 131,072 characters by default: a traceback for a 144k-residue protein.
    The limit (the csv module's, for the whole process) is raised only by a file that needs it:
    every label file raised it, changing a notebook's own csv reading."""
    import csv

    default = csv.field_size_limit(131_072)
    short = tmp_path / "short.csv"
    short.write_text("input,dssp3,dssp8,disorder\nM K,C C,C C,1.0 1.0\n")
    read_labels(short)
    assert csv.field_size_limit() == 131_072
    n = 70_000  # spaced: 140,000 characters per field
    path = tmp_path / "long.csv"
    path.write_text("input,dssp3,dssp8,disorder\n" + ",".join([" ".join("M" * n), " ".join("H" * n), " ".join("H" * n),
                                                              " ".join(["1.0"] * n)]) + "\nM K,C C,C C,1.0 1.0\n")
    try:
        records = read_labels(path).records
        assert [len(r.sequence) for r in records] == [n, 2]
        assert csv.field_size_limit() > 131_072
    finally:
        csv.field_size_limit(default)


def test_sequences_beside_labels_refuse_an_id_given_twice_or_an_empty_sequence(tmp_path, run_cli):
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\nP1,1.5\nP2,2.0\n")
    for body, message in ((">P1\nMKT\n>P2\nGG\n>P1\nMKTAAA\n", "seqs.fa:5, record 'P1': id given twice with "
                                                                "different sequences (first at line 1)"),
                          (">P1\nMKT\n>P2\n", "seqs.fa:3, record 'P2': empty sequence")):
        seqs = tmp_path / "seqs.fa"
        seqs.write_text(body)
        result = run_cli("labels", labels, "--sequences", seqs, "-o", tmp_path / "out.fa")
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines()[-1] == f"protrans: error: {seqs.parent / message}"
        assert not (tmp_path / "out.fa").exists()
    seqs.write_text(">P1\nMKT\n>P2\nGG\n>P1\nMKT\n")  # the same sequence twice is the same record
    assert run_cli("labels", labels, "--sequences", seqs, "-o", tmp_path / "out.fa").exit_code == 0


@pytest.mark.parametrize("command", [["labels", "{d}"], ["embed", "{d}", "-m", "onehot", "-o", "{o}"],
                                     ["fit", "ss3", "--embeddings", "{d}", "--labels", "{d}", "-o", "{o}"]])
def test_a_folder_given_as_an_input_file_is_one_line(tmp_path, run_cli, command):
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_cli(*[a.format(d=folder, o=tmp_path / "out") for a in command])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"protrans: error: {folder}: is a directory, expected a file"]


def test_a_flip_csv_without_its_target_column_says_so(tmp_path):
    path = tmp_path / "flip.csv"
    path.write_text("sequence,set,validation\nMKTA,train,False\n")
    with pytest.raises(InputError, match=r"flip.csv:1: FLIP CSV without a target column"):
        read_labels(path)


def test_labels_refuses_an_empty_sequence_and_flip_labels_of_another_length(tmp_path, run_cli):
    """Both went into the FASTA without a word: embed then refused the empty record, and fit
    reported the other length only after embedding."""
    deeploc = tmp_path / "dl.fasta"
    deeploc.write_text(">A Nucleus-S\n>B Cytoplasm-M test\nMKV\n")
    out = tmp_path / "out.fa"
    r = run_cli("labels", deeploc, "-o", out)
    assert r.exit_code == 1 and r.stderr.strip().endswith(f"{deeploc}:1, record 'A': empty sequence")
    flip = tmp_path / "sampled.fasta"
    flip.write_text(">A SET=train VALIDATION=False\nHHE\n>B SET=test VALIDATION=False\nCC\n")
    seqs = tmp_path / "seqs.fa"
    seqs.write_text(">A\nMKVL\n>B\nGG\n")
    r = run_cli("labels", flip, "--sequences", seqs, "-o", out)
    assert r.exit_code == 1
    assert r.stderr.strip().endswith(f"{flip}:1, record 'A': 3 per-residue labels for a sequence of 4 residues")
    assert not out.exists()
    seqs.write_text(">A\nMKV\n>B\nGG\n")
    assert run_cli("labels", flip, "--sequences", seqs, "-o", out).exit_code == 0
    assert out.read_text() == ">A\nMKV\n>B\nGG\n"


def test_labels_split_error_on_stdin_names_stdin_as_every_other_error(run_cli):
    r = run_cli("labels", "-", "--split", "test", input=b"P1,x\n")
    assert r.exit_code == 1 and r.stderr.startswith("protrans: error: <stdin>: --split test: no record")


def test_misplaced_columns_and_labels_are_named_not_misread(tmp_path):
    """Three files that were read as something else and failed later with a misleading message
    ("no sequence for ids: label, Nucleus"), or not at all (columns shifted by a stray comma)."""
    (tmp_path / "t.csv").write_text("label,id\nNucleus,P1\n")
    with pytest.raises(InputError, match=r"t.csv:1: the header 'label,id' does not start with the id column"):
        read_labels(tmp_path / "t.csv")
    (tmp_path / "d.fa").write_text(">A Nucleus-X\nMKT\n")  # a DeepLoc location with a wrong membrane letter
    assert sniff_format((tmp_path / "d.fa").read_text()) == "deeploc"
    with pytest.raises(InputError, match=r"d.fa:1, record 'A': DeepLoc header needs"):
        read_labels(tmp_path / "d.fa")
    (tmp_path / "n.csv").write_text("input,dssp3,disorder\nM K,C C,1.0 1.0,x\n")
    with pytest.raises(InputError, match=r"n.csv:2: has 4 fields, the header has 3"):
        read_labels(tmp_path / "n.csv")
    (tmp_path / "n2.csv").write_text("input,dssp3,disorder\nM K,C C,1.0 1.0,\n")  # a trailing comma: harmless
    assert read_labels(tmp_path / "n2.csv").records[0].labels == {"ss3": "CC", "disorder": "OO"}


def test_an_empty_class_label_is_no_label_not_a_class(tmp_path):
    """A FLIP CSV row with an empty target, read for the `protein` task: '' became a class, and the
    unlabelled proteins were trained on it and counted in the accuracy. It is left out now, as
    the value task leaves it out."""
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import IGNORE, get_task

    path = tmp_path / "classes.csv"
    path.write_text("sequence,target,set,validation\nMKV,hi,train,False\nMKL,,train,False\nMKA,lo,train,False\n")
    records = read_labels(path).records
    task = get_task("protein").with_classes_from(records)
    assert task.outputs[0].classes == ("hi", "lo")
    assert [task.protein_targets(r)["label"] for r in records] == [0, IGNORE, 1]


def test_numbers_given_to_the_protein_task_are_named_and_the_classes_listed_briefly(tmp_path, capsys):
    """A FLIP CSV of fitness values given to `fit protein`: every number became a class, and the
    first validation number it never saw stopped the fit with a one-line error listing all of
    them (169 on a PISCES-derived set). It warns that `value` regresses numbers, and the error
    lists 20 classes, names how many more, and says the same."""
    from protrans_cli.heads.labels import LabelRecord

    records = [LabelRecord(f"p{i}", None, {"label": f"{i / 40:.3f}"}) for i in range(30)]
    task = get_task("protein").with_classes_from(records)
    assert "30 distinct numbers, each a class of its own" in capsys.readouterr().err
    with pytest.raises(InputError) as err:
        task.protein_targets(LabelRecord("q", None, {"label": "0.333"}))
    message = str(err.value)
    assert "0.475 and 10 more" in message and "0.500" not in message
    assert "the value task regresses them" in message and "\n" not in message
    # integer classes (fold ids, clusters) are classes: no warning
    get_task("protein").with_classes_from([LabelRecord(f"p{i}", None, {"label": str(i)}) for i in range(30)])
    assert "distinct numbers" not in capsys.readouterr().err
    # a missing number written `nan` (str() of a NaN, as a FLIP CSV's target converted) among them
    # hid the warning: the numbers were classes without a word
    get_task("protein").with_classes_from(records + [LabelRecord("m", None, {"label": "nan"})])
    assert "30 distinct numbers, each a class of its own" in capsys.readouterr().err


def test_the_numbers_as_classes_warning_takes_more_than_20_distinct_numbers(capsys):
    """docs/heads.md: *more than 20* distinct non-integer numbers warn; a protein task of a few
    classes written as decimals (pH 5.5, 7.4) is classes, without a warning."""
    from protrans_cli.heads.labels import LabelRecord

    numbers = [LabelRecord(f"p{i}", None, {"label": f"{i + 0.5}"}) for i in range(21)]
    get_task("protein").with_classes_from(numbers[:20])
    assert "distinct numbers" not in capsys.readouterr().err
    get_task("protein").with_classes_from(numbers)
    assert "21 distinct numbers, each a class of its own" in capsys.readouterr().err


def test_a_sequence_given_as_a_protein_label_is_shown_shortened_with_its_length():
    """A FASTA's sequence read as a loc label: the message shows its first 12 letters and its
    length, not the whole sequence, and says where the sequences go."""
    from protrans_cli.heads.labels import LabelRecord

    sequence = "MKVLAAGGTTSSPLKVLAEEDRKQ"  # (24 residue letters)
    with pytest.raises(InputError) as err:
        get_task("loc").protein_targets(LabelRecord("q", None, {"loc": sequence}))
    message = str(err.value)
    assert "label 'MKVLAAGGTTSS'... (24 residue letters) is not a loc class" in message
    assert sequence not in message and message.endswith("give it to embed, and the labels to --labels)")


def test_labels_says_what_embed_or_fit_would_refuse_later(tmp_path):
    """An id with whitespace or a newline (a PISCES pdb_id) split or forged FASTA headers; a
    DeepLoc record of gaps only passed `labels` and failed in embed; a FLIP sequence ending in '*'
    (embed drops it) was refused as one residue longer than its labels."""
    import io

    from protrans_cli.heads.labels import write_embed_fasta

    pisces = tmp_path / "p.csv"
    pisces.write_text('pdb_id,chain_code,seq,sst8,sst3\n"1ABC\t>EVIL",A,MKTAY,CCHHC,CCHHC\n')
    with pytest.raises(InputError, match=r"p.csv:2, record '1ABC\\t>EVIL_A': the id holds whitespace"):
        write_embed_fasta(read_labels(pisces), io.BytesIO())
    # a newline inside a field is refused as it is read, as in an id,label table (a quote that is
    # not closed takes the rows after it into one field)
    pisces.write_text('pdb_id,chain_code,seq,sst8,sst3\n"1ABC\n>EVIL",A,MKTAY,CCHHC,CCHHC\n')
    with pytest.raises(InputError, match=r"p.csv:2: a quoted field runs over several lines"):
        read_labels(pisces)
    deeploc = tmp_path / "d.fasta"
    deeploc.write_text(">A1 Nucleus-S\n---\n")
    with pytest.raises(InputError, match=r"d.fasta:1, record 'A1': empty sequence"):
        write_embed_fasta(read_labels(deeploc), io.BytesIO())
    unicode_space = tmp_path / "u.csv"  # not what FASTA headers split on: kept whole, as embed keeps it
    unicode_space.write_text("id,label\nP1\u00a0v2,Nucleus\n")
    out = io.BytesIO()
    write_embed_fasta(read_labels(unicode_space), out, {"P1\u00a0v2": "MKT"})
    assert out.getvalue() == ">P1\u00a0v2\nMKT\n".encode()
    flip = tmp_path / "f.fasta"
    flip.write_text(">a SET=train VALIDATION=False\nCCHHC\n")
    out = io.BytesIO()
    assert write_embed_fasta(read_labels(flip, "flip"), out, {"a": "MKTAY*"}) == 1
    assert out.getvalue() == b">a\nMKTAY*\n"


def test_a_per_protein_label_matches_the_rows_embed_made_of_its_sequence(tmp_path):
    """DeepLoc records ending in '*' or holding a gap: embed drops them, and fit compared the raw
    length with the embedding's rows ("label length differs")."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.data import match_labels
    from protrans_cli.io.h5 import EmbeddingsReader

    fasta = tmp_path / "d.fasta"
    fasta.write_text(">A1 Nucleus-S\nMKTAYIAK*\n>A2 Cytoplasm-S\nMKT-AYIAK\n>A3 Nucleus-M\nMKTAYIAKQR\n")
    embed(fasta, tmp_path / "d.h5", EmbedOptions(model="onehot", per_residue=False))
    with EmbeddingsReader(tmp_path / "d.h5") as reader:
        matched, report = match_labels(read_labels(fasta), reader, get_task("loc"))
    assert [m.id for m in matched] == ["A1", "A2", "A3"] and not report.problems
    # a record embed refused (no embedding) is one without an embedding, as before: skippable
    fasta.write_text(fasta.read_text() + ">A4 Nucleus-S\nMKJ\n")
    with EmbeddingsReader(tmp_path / "d.h5") as reader:
        matched, report = match_labels(read_labels(fasta), reader, get_task("loc"), on_mismatch="skip")
    assert [m.id for m in matched] == ["A1", "A2", "A3"] and report.missing == ["A4"]



def test_one_byte_that_is_not_utf8_does_not_change_how_the_other_ids_read(tmp_path):
    """`37\xb0C` in one note decoded the whole file as latin-1: every UTF-8 id (protéine1) then
    read as protÃ©ine1 and matched no embedding. Decoded field by field, as FASTA headers are."""
    table = tmp_path / "t.csv"
    table.write_bytes("id,label,note\nprotéine1,Nucleus,37\xb0C\nprotéine2,Cytoplasm,ok\n".encode("utf-8")
                      .replace(b"\xc2\xb0", b"\xb0"))
    assert [r.id for r in read_labels(table).records] == ["protéine1", "protéine2"]


def test_labels_refuses_stdin_for_both_inputs(run_cli):
    r = run_cli("labels", "-", "--sequences", "-", input=b">a\nMKT\n")
    assert r.exit_code == 2 and "stdin ('-') can be one input at most" in r.stderr


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_is_named(tmp_path):
    """`protrans labels x.csv > /dev/full` said only "No space left on device"."""
    import subprocess
    import sys

    table = tmp_path / "t.csv"
    table.write_text("".join(f"p{i},A\n" for i in range(20000)))
    fasta = tmp_path / "s.fa"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQR\n" for i in range(20000)))
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "protrans_cli", "labels", str(table), "--sequences", str(fasta)],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == "protrans: error: standard output: cannot write: No space left on device"


def test_labels_missing_sequences_write_nothing_and_name_the_sequences_file(tmp_path, run_cli):
    """`labels -o -` wrote the records it had sequences for to stdout, then exited 1: a pipeline
    into embed got most of a FASTA. And the hint said to give --sequences when it was given."""
    flip = tmp_path / "labels.fasta"
    flip.write_text(">a SET=train\nCCH\n>b SET=train\nHHE\n>c SET=test\nCEE\n")
    seqs = tmp_path / "seqs.fasta"
    seqs.write_text(">a\nMKT\n>b\nMKV\n")
    r = run_cli("labels", flip, "--sequences", seqs, "-o", "-")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip() == (f"protrans: error: {flip}: no sequence for 1 id: c (not in the --sequences "
                                f"FASTA {seqs})")
    r = run_cli("labels", flip, "-o", "-")
    assert r.exit_code == 1 and r.stdout == "" and "(give the sequences FASTA with --sequences)" in r.stderr
    seqs.write_text(">a\nMKT\n>b\nMKV\n>c\nMKVW\n")  # the last record's labels are one short
    r = run_cli("labels", flip, "--sequences", seqs, "-o", "-")
    assert r.exit_code == 1 and r.stdout == "" and "record 'c': 3 per-residue labels for a sequence of 4" in r.stderr
    seqs.write_text(">a\nMKT\n>b\nMKV\n>c\nMKV\n")
    r = run_cli("labels", flip, "--sequences", seqs, "-o", "-")  # (it said "to -")
    assert r.exit_code == 0 and r.stdout.count(">") == 3 and "wrote 3 sequences (flip labels) to standard output" in r.stderr


def test_labels_keyed_by_uniprot_accession_find_their_sequences_in_uniprots_fasta(tmp_path, run_cli):
    """A table keyed by accession (P69905) beside UniProt's FASTA (>sp|P69905|HBA_HUMAN ...) was "no
    sequence for N ids": found by the accession, written under the table's ids (what fit then
    matches), said in one line; an id found as it is wins, and an id in neither is still refused."""
    table = tmp_path / "loc.csv"
    table.write_text("id,label\nP69905,Cytoplasm\nP68871,Cytoplasm\nmine,Nucleus\n")
    seqs = tmp_path / "uniprot.fasta"
    seqs.write_text(">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha\nMVLSPADKTN\n"
                    ">tr|P68871|HBB_HUMAN Hemoglobin subunit beta\nMVHLTPEEKS\n>mine\nMKT\n"
                    ">sp|mine|OTHER\nWWWW\n")
    r = run_cli("labels", table, "--sequences", seqs, "-o", "-")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ">P69905\nMVLSPADKTN\n>P68871\nMVHLTPEEKS\n>mine\nMKT\n"
    assert (f"2 ids of the labels found in {seqs} by UniProt accession (P69905 as sp|P69905|HBA_HUMAN), "
            "written under the labels' ids") in r.stderr
    table.write_text("id,label\nP69905,Cytoplasm\nQ00001,Nucleus\n")
    r = run_cli("labels", table, "--sequences", seqs, "-o", "-")
    assert r.exit_code == 1 and r.stdout == ""
    assert f"no sequence for 1 id: Q00001 (not in the --sequences FASTA {seqs})" in r.stderr


def test_a_biotrainer_file_whose_first_record_is_to_predict_is_recognised(tmp_path):
    """The format was sniffed from the first header alone: a first SET=pred record (no TARGET=)
    made the file FLIP, refused for its unknown set 'pred'."""
    bio = tmp_path / "bt.fasta"
    bio.write_text(">q0 SET=pred\nMKT\n>q1 TARGET=A SET=train VALIDATION=False\nMKV\n>q2 TARGET=B SET=test\nMKW\n")
    label_set = read_labels(bio)
    assert label_set.format == "biotrainer"
    assert [(r.id, r.labels["label"], r.split) for r in label_set.records] == [("q1", "A", "train"), ("q2", "B", "test")]


def test_a_generic_task_on_labels_of_a_named_task_names_the_task_that_reads_them():
    # `fit residue` on a NetSurfP CSV, `fit protein` on a DeepLoc FASTA: the error said only
    # "has no plain labels", not which labels the file holds nor which task reads them.
    for name, labels, said in [
            ("residue", "netsurfp_input_spaced_header.csv", "(it holds disorder, ss3, ss8: the ss3, ss8, ss3+ss8, disorder or ss3+ss8+disorder task reads them)"),
            ("protein", "deeploc_dual_label_trailing_space.fasta", "(it holds loc, membrane: the loc task reads them)")]:
        with pytest.raises(InputError, match=re.escape(said)):
            get_task(name).with_classes_from(read_labels(HEADS / labels).records)


def test_labels_output_named_by_a_link_is_written_where_it_leads(tmp_path, run_cli):
    """`-o` a symbolic link of the user's own (a results folder linked into a project): the
    FASTA goes where the link leads and the link stays, as the shell's `>` writes it (as prep's
    outputs, docs/prep.md); it was replaced by a regular file, the linked file left stale."""
    table = tmp_path / "t.csv"
    table.write_text("id,label\na,Nucleus\n")
    (tmp_path / "s.fa").write_text(">a\nMKV\n")
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "train.fasta"
    target.write_text("old\n")
    link = tmp_path / "train.fasta"
    link.symlink_to(target)
    r = run_cli("labels", table, "--sequences", tmp_path / "s.fa", "-o", link)
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and target.read_text().startswith(">a") and "MKV" in target.read_text()


def test_labels_a_bad_mask_value_is_one_line_naming_file_line_and_record(run_cli):
    """A NetSurfP row's mask value that is neither 1 nor 0: one line, exit 1, naming the file, its
    line and the id the row is known by everywhere else (its sequence's), as a label count that
    does not match is named."""
    from protrans_cli.io.h5 import sequence_checksum

    path = HEADS / "netsurfp_bad_mask_value.csv"
    ident = "seq-" + sequence_checksum("MKV").split(":", 1)[1][:12]
    r = run_cli("labels", path)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (f"protrans: error: {path}:3, record '{ident}': disorder holds '2.0': a mask value is 1 "
                        "(evaluated) or 0\n")


def test_a_flip_csvs_validation_column_moves_training_rows_to_validation(tmp_path):
    """FLIP's per-protein CSVs (docs/heads.md: `set`/`validation` split the file as for `flip`):
    a training row with validation True is a validation record; only training rows move.
    Reading the column as nothing passed every other test."""
    path = tmp_path / "flip.csv"
    path.write_text("sequence,target,set,validation\nMKV,1.5,train,False\nMKL,2.5,train,True\n"
                    "MKA,0.5,train,TRUE\nMKW,3.0,test,True\n")
    records = read_labels(path).records
    assert [r.split for r in records] == ["train", "valid", "valid", "test"]
    assert [r.labels["label"] for r in records] == ["1.5", "2.5", "0.5", "3.0"]


def test_a_flip_csv_written_with_a_space_after_each_comma_is_read_as_without(tmp_path):
    """A CSV written with ", " between fields (as NetSurfP's own CSVs are): the header names are
    read stripped, and so are the cells: " train" is the training set, not an unknown one."""
    path = tmp_path / "flip.csv"
    path.write_text("sequence, target, set, validation\nMKV, 1.5, train, False\nMKL, 2.5, train, True\n"
                    "MKW, 3.0, test, False\n")
    records = read_labels(path).records
    assert [(r.sequence, r.labels["label"], r.split) for r in records] == [
        ("MKV", "1.5", "train"), ("MKL", "2.5", "valid"), ("MKW", "3.0", "test")]


def test_a_validation_flag_written_1_0_moves_records_and_an_unknown_one_is_refused(tmp_path, run_cli):
    """A validation flag other than True/False (a pandas bool column saved as int: 1/0) was read
    as False: the validation records were trained on, and early stopping chose by a random
    hold-out. 1/0 (and yes/no, an empty cell) are read; anything else is an error naming it."""
    flip = tmp_path / "flip.csv"
    flip.write_text("sequence,target,set,validation\nMKV,1.5,train,0\nMKL,2.5,train,1\nMKA,0.5,train,\n"
                    "MKW,3.0,test,0\n")
    assert [r.split for r in read_labels(flip).records] == ["train", "valid", "train", "test"]
    bio = tmp_path / "bio.fa"
    bio.write_text(">a TARGET=1.5 SET=train VALIDATION=0\nMKV\n>b TARGET=2.5 SET=train VALIDATION=1\nMKL\n"
                   ">c TARGET=0.5 SET=train VALIDATION=Yes\nMKA\n")
    assert [r.split for r in read_labels(bio).records] == ["train", "valid", "valid"]
    residues = tmp_path / "ss.fa"
    # (only training records move: a test record flagged stays in the test set, as in a FLIP CSV)
    residues.write_text(">a SET=train VALIDATION=1\nCCH\n>b SET=train VALIDATION=0\nHHE\n"
                        ">c SET=test VALIDATION=1\nEC\n")
    assert [r.split for r in read_labels(residues).records] == ["valid", "train", "test"]
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,target,set,validation\nMKV,1.5,train,False\nMKL,2.5,train,valid\n")
    r = run_cli("labels", bad)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (f"protrans: error: {bad}:3: unknown validation flag 'valid': True or False "
                        "(also read: 1/0, yes/no, empty)\n")
    bio.write_text(">a TARGET=1.5 SET=train VALIDATION=maybe\nMKV\n")
    with pytest.raises(InputError, match=r"bio.fa:1, record 'a': unknown validation flag 'maybe'"):
        read_labels(bio)


def test_a_tables_validation_column_moves_training_rows_to_validation(tmp_path):
    """An id,target,set,validation table (a FLIP CSV keyed by id): its validation column was not
    read, so the validation records were trained on and early stopping used a random hold-out.
    It splits the table as a FLIP CSV's does (an empty set is train); all_columns (knn, project)
    keeps it a column like the others."""
    path = tmp_path / "t.csv"
    path.write_text("id,target,set,validation\nA,1.5,train,False\nB,2.5,train,True\nC,0.5,,True\n"
                    "D,3.0,test,False\nE,2.0,train,\n")
    records = read_labels(path).records
    assert [r.split for r in records] == ["train", "valid", "valid", "test", "train"]
    assert [r.labels["label"] for r in records] == ["1.5", "2.5", "0.5", "3.0", "2.0"]
    assert read_labels(path, all_columns=True).records[1].labels["validation"] == "True"
    path.write_text("id,target,set,validation\nA,1.5,train,sometimes\n")
    with pytest.raises(InputError, match=r"t.csv:2: unknown validation flag 'sometimes'"):
        read_labels(path)


def test_a_table_whose_set_column_comes_before_the_label_reads_the_label(tmp_path):
    """`id,set,label`: the second column, the set, was read as every protein's label (`fit
    protein` said "the training labels hold 1 class(es)", `fit value` "'train' is not a number")."""
    path = tmp_path / "t.csv"
    path.write_text("id,set,label\nA,train,Nucleus\nB,test,Cytoplasm\nC,,Nucleus\n")
    records = read_labels(path).records
    assert [(r.split, r.labels["label"]) for r in records] == [("train", "Nucleus"), ("test", "Cytoplasm"),
                                                                (None, "Nucleus")]
    path.write_text("id,set,validation,target\nA,train,True,1.5\nB,test,False,-2\n")
    assert [(r.split, r.labels["label"]) for r in read_labels(path).records] == [("valid", "1.5"), ("test", "-2")]


def test_a_flip_csvs_sequences_are_read_upper_case_and_named_by_that_checksum(tmp_path):
    """A FLIP CSV written in lower case: its sequences are read upper-case, as embed reads them,
    and each id is `seq-` and the checksum embed stores for that protein (docs/heads.md: ids
    from the sequence checksum as for NetSurfP). Read as written, the ids were another
    protein's checksum; that passed every test."""
    path = tmp_path / "flip.csv"
    path.write_text("sequence,target,set\nmkvla,1.5,train\nMKTAY,2.0,test\n")
    records = read_labels(path).records
    assert [r.sequence for r in records] == ["MKVLA", "MKTAY"]
    assert [r.id for r in records] == ["seq-" + sequence_checksum(s)[4:16] for s in ("MKVLA", "MKTAY")]


@pytest.mark.parametrize("fmt, text, message", [
    ("pisces", "pdb_id,chain_code,sst3\n1abc,A,CCH\n",
     "bad.txt:1: PISCES CSV without a seq column; header is pdb_id, chain_code, sst3"),
    ("pisces", "pdb_id,chain_code,seq\n1abc,A,MKV\n", "bad.txt:1: PISCES CSV without an sst3 or sst8 column"),
    ("flip", ">p1 SET=train\n>p2 SET=train\nCCH\n", "bad.txt:1, record 'p1': has no label line"),
    ("biotrainer", ">p1 SET=train\nMKV\n", "bad.txt:1, record 'p1': biotrainer header without TARGET= (the label)"),
    ("biotrainer", ">p1 TARGET=a SET=train\n>p2 TARGET=b SET=train\nMKV\n",
     "bad.txt:1, record 'p1': has no sequence line"),
    ("biotrainer", ">p1 TARGET=CCH MASK=1x1 SET=train\nMKV\n",
     "bad.txt:1, record 'p1': MASK= holds characters other than 0 and 1"),
    ("biotrainer", ">p1 TARGET=a SET=pred\nMKV\n", "bad.txt: holds no labelled records"),
    ("netsurfp", "input, dssp3, disorder\nM K V, C C H, 1.0 1.0\n", "disorder has 2 values for 3 residues"),
])
def test_a_malformed_label_file_is_an_error_naming_the_file_line_and_record(tmp_path, fmt, text, message):
    """Each format's damaged records (a missing column, label or sequence line, a bad mask) are
    refused naming where, never read as records without labels or with wrong ones."""
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    with pytest.raises(InputError) as caught:
        read_labels(bad, fmt)
    assert message in str(caught.value)


def test_blank_and_empty_rows_of_a_table_are_skipped_and_lines_still_counted(tmp_path):
    """A spreadsheet's export ends with, or holds, empty rows (`,`, a blank line): skipped, never a
    record, and an error after them names the file's own line."""
    table = tmp_path / "t.csv"
    table.write_text("id,label\nP1,cyto\n\n,\nP2,nucleus\n \n")
    assert [(r.id, r.labels["label"]) for r in read_labels(table, "table").records] == [("P1", "cyto"),
                                                                                       ("P2", "nucleus")]
    table.write_text("id,label\nP1,cyto\n\n,\nP2\n")
    with pytest.raises(InputError, match=r"t.csv:5: expected 'id,label'"):
        read_labels(table, "table")


def test_a_table_is_split_by_the_tab_or_comma_of_its_first_line(tmp_path):
    """A tab in the first non-blank line makes a TSV, whose labels may hold commas unquoted
    (`membrane, peripheral`, in that line too); otherwise commas separate, and a tab is part of a field. A
    semicolon-separated table is no table: one field a line, refused naming the line."""
    (tmp_path / "t.tsv").write_text("\nP1\tmembrane, peripheral\nP2\tnucleus\n")
    (tmp_path / "c.csv").write_text('id,label\nP1,"membrane, peripheral"\nP2,nuc\tleus\n')
    (tmp_path / "s.csv").write_text("id;label\nP1;nucleus\n")
    tsv, csv = read_labels(tmp_path / "t.tsv"), read_labels(tmp_path / "c.csv")
    assert [(r.id, r.labels["label"]) for r in tsv.records] == [("P1", "membrane, peripheral"), ("P2", "nucleus")]
    assert [(r.id, r.labels["label"]) for r in csv.records] == [("P1", "membrane, peripheral"), ("P2", "nuc\tleus")]
    with pytest.raises(InputError, match=r"s.csv:1: expected 'id,label'"):
        read_labels(tmp_path / "s.csv")


def test_split_names_and_deeploc_split_words_are_read_in_any_case(tmp_path):
    """A set column or header word written `TRAIN`, `Test`, `Valid` (spreadsheets, hand-made
    files) names the same split as its lower-case spelling; `SET=PRED` is biotrainer's pred."""
    table = tmp_path / "t.csv"
    table.write_text("id,label,set\nP1,cyto,TRAIN\nP2,nucleus,Test\nP3,cyto,Valid\n")
    assert [r.split for r in read_labels(table).records] == ["train", "test", "valid"]
    deeploc = tmp_path / "dl.fasta"
    deeploc.write_text(">A Nucleus-S Valid\nMKV\n>B Nucleus-S TRAIN\nMKV\n")
    assert [r.split for r in read_labels(deeploc).records] == ["valid", "train"]
    bio = tmp_path / "bio.fasta"
    bio.write_text(">A TARGET=x SET=train\nMKV\n>B SET=PRED\nMKV\n")
    assert [r.id for r in read_labels(bio).records] == ["A"]


def test_sequences_in_lower_case_are_read_upper_case_in_every_format_that_carries_them(tmp_path):
    """A sequence written in lower case (a NetSurfP CSV, a DeepLoc or biotrainer FASTA) is read as
    its upper-case residues, as embed reads it: its checksum id and length then match embed's."""
    nsp = tmp_path / "n.csv"
    nsp.write_text("input,dssp3,disorder\nm k v,C H H,1.0 1.0 1.0\n")
    (record,) = read_labels(nsp).records
    assert record.sequence == "MKV" and record.id == "seq-" + sequence_checksum("MKV")[4:16]
    deeploc = tmp_path / "dl.fasta"
    deeploc.write_text(">A Nucleus-S\nmkv\n")
    assert read_labels(deeploc).records[0].sequence == "MKV"
    bio = tmp_path / "bio.fasta"
    bio.write_text(">A TARGET=x SET=train\nmkv\n")
    assert read_labels(bio).records[0].sequence == "MKV"


def test_a_netsurfp_row_with_more_labels_than_residues_names_the_counts(tmp_path):
    nsp = tmp_path / "n.csv"
    nsp.write_text("input,dssp3,disorder\nM K,H H C,1.0 1.0\n")
    with pytest.raises(InputError, match=r"n.csv:2, record 'seq-\w+': dssp3 has 3 labels for 2 residues"):
        read_labels(nsp)


def test_a_csvs_rows_of_empty_fields_are_skipped(tmp_path):
    """A spreadsheet's empty rows (`,,`) in a NetSurfP CSV or a FLIP CSV are no records (not an
    empty protein), and the rows after them are read."""
    nsp = tmp_path / "n.csv"
    nsp.write_text("input,dssp3,disorder\nM K,H C,1.0 1.0\n,,\nG,E,0.0\n")
    assert [r.sequence for r in read_labels(nsp).records] == ["MK", "G"]
    flip = tmp_path / "f.csv"
    flip.write_text("sequence,target,set\nMKV,1.5,train\n , ,\nGG,0.5,test\n")
    assert [(r.sequence, r.labels["label"]) for r in read_labels(flip).records] == [("MKV", "1.5"), ("GG", "0.5")]


def test_a_utf8_byte_order_mark_and_a_trailing_empty_field_do_not_change_a_table(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark and may end rows with an empty field: the
    header is still the header, the first id has no mark, and `P1,cyto,` is P1's label."""
    table = tmp_path / "t.csv"
    table.write_bytes(b"\xef\xbb\xbfid,label\nP1,cyto,\nP2,nucleus\n")
    ls = read_labels(table)
    assert [(r.id, r.labels["label"]) for r in ls.records] == [("P1", "cyto"), ("P2", "nucleus")]


def test_a_mask_file_with_labels_of_another_format_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="a mask file is only read with FLIP-style labels, not netsurfp"):
        read_labels(HEADS / "netsurfp_input_spaced_header.csv", mask_path=HEADS / "flip_mask.fasta")


def test_a_flip_mask_holding_some_of_the_ids_or_a_longer_mask_is_an_error(tmp_path):
    """An optional mask (beside evaluation labels) that holds some of the ids is an error, not
    read without; a mask longer than its labels is refused as a shorter one is."""
    some = tmp_path / "some.fasta"
    some.write_text(">p1\n01111\n")
    with pytest.raises(InputError, match="no mask for 2 of the ids of flip_with_sets.fasta: p2, p3"):
        read_labels(HEADS / "flip_with_sets.fasta", mask_path=some, mask_optional=True)
    longer = tmp_path / "longer.fasta"
    longer.write_text(">p1\n011111\n>p2\n1111\n>p3\n1110\n")
    with pytest.raises(InputError, match="record 'p1': mask has 6 positions, the labels 5"):
        read_labels(HEADS / "flip_with_sets.fasta", mask_path=longer)


@pytest.mark.parametrize("path, name", [("/d/CB513_HHblits.csv.gz", "CB513_HHblits"), ("x/ts115.tsv", "ts115"),
                                        ("/dev/fd/63", "labels"), ("<stdin>", "stdin")])
def test_a_label_sets_report_name_drops_compression_and_format_suffixes(path, name):
    from protrans_cli.heads.labels import LabelSet

    assert LabelSet(path, "netsurfp", []).name == name


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_holding_characters_beyond_latin1_is_read(tmp_path, encoding):
    """A label beyond Latin-1 (`α-helix`, a non-NUL high byte) in the first 512 characters made a
    UTF-16 file without its byte-order mark "a binary file"; a binary file is still refused."""
    table = tmp_path / "t.csv"
    table.write_bytes("id,label\nP1,α-helix\nP2,β-strand\nP3,coil\n".encode(encoding))
    assert [(r.id, r.labels["label"]) for r in read_labels(table).records] == [
        ("P1", "α-helix"), ("P2", "β-strand"), ("P3", "coil")]
    table.write_bytes(b"\x00\x01\x00\x00" * 64)
    with pytest.raises(InputError, match="is a binary file"):
        read_labels(table)


def test_a_sequence_id_given_a_third_time_names_the_line_of_its_first(tmp_path):
    from protrans_cli.heads.labels import read_sequences

    seqs = tmp_path / "seqs.fa"
    seqs.write_text(">P1\nMKT\n>P1\nMKT\n>P1\nGG\n")
    with pytest.raises(InputError, match=r"seqs.fa:5, record 'P1': .*\(first at line 1\)"):
        read_sequences(seqs)


def test_uniprot_ids_by_accession_keep_the_first_id_of_an_accession():
    from protrans_cli.heads.labels import by_accession

    assert by_accession(["sp|P69905|HBA_HUMAN", "plain", "tr|P69905|X_HUMAN", "tr|Q1|Y"]) == {
        "P69905": "sp|P69905|HBA_HUMAN", "Q1": "tr|Q1|Y"}


@pytest.mark.parametrize("count, shown", [(5, "a0, a1, a2, a3, a4"), (6, "a0, a1, a2, a3, a4 and 1 more")])
def test_some_ids_counts_only_the_ids_it_does_not_show(count, shown):
    from protrans_cli.heads.labels import some_ids

    assert some_ids([f"a{i}" for i in range(count)]) == shown


def test_labels_and_sequences_swapped_are_told_from_twelve_amino_acid_letters(tmp_path):
    """Sequences of 12 distinct residues given as FLIP labels, and DSSP strings as their
    sequences, are the two files swapped (a protein need not hold all 20 residues)."""
    from protrans_cli.heads.labels import write_embed_fasta

    labels = tmp_path / "l.fasta"
    labels.write_text(">p1 SET=train\nMKTAYIQRSFVD\n")
    with pytest.raises(InputError, match=r"\(12 amino-acid letters\).*swapped"):
        write_embed_fasta(read_labels(labels), __import__("io").StringIO(), {"p1": "CCHHHHEEEECC"})


def test_a_comma_table_whose_later_label_holds_a_tab_is_read_by_commas(tmp_path):
    """The delimiter is told by the first line: a quoted label holding a tab further down does not
    make a comma table a TSV."""
    table = tmp_path / "t.csv"
    table.write_text('id,label\nP1,cyto\nP2,"a\tb"\n')
    assert [(r.id, r.labels["label"]) for r in read_labels(table).records] == [("P1", "cyto"), ("P2", "a\tb")]


def test_a_tables_id_ends_at_ascii_whitespace_as_a_fasta_id_does(tmp_path):
    """An id ending in a no-break space is kept whole, as the FASTA reader (embed's keys) keeps
    it; a label loses any surrounding whitespace."""
    from protrans_cli.io.fasta import parse_fasta

    table = tmp_path / "t.csv"
    table.write_text("id,label\nP1\xa0,cyto\xa0\n", encoding="utf-8")
    (fasta_id,) = [r.id for r in parse_fasta(__import__("io").BytesIO("> P1\xa0 desc\nMKV\n".encode()), "x.fa")]
    assert [(r.id, r.labels["label"]) for r in read_labels(table).records] == [(fasta_id, "cyto")]


def test_a_table_row_without_its_id_is_an_error_naming_its_line(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,label\nP1,cyto\n,nucleus\n")
    with pytest.raises(InputError, match=r"t.csv:3: expected 'id,label'"):
        read_labels(table)


def test_labels_suggests_embed_only_for_a_fasta_without_any_set(tmp_path, run_cli):
    """FLIP labels of which some records name their SET= are labels, not a FASTA of sequences: no
    "embed reads it as it is"."""
    flip = tmp_path / "flip.fa"
    flip.write_text(">a SET=train VALIDATION=False\nCCH\n>b\nCHH\n")
    r = run_cli("labels", flip, "-o", tmp_path / "out.fa")
    assert r.exit_code == 1 and "give the sequences FASTA with --sequences)" in r.stderr, r.stderr
    assert "reads it as it is" not in r.stderr


def test_a_biotrainer_files_masks_are_noted(tmp_path):
    bio = tmp_path / "bio.fasta"
    bio.write_text(">A TARGET=HHC MASK=011 SET=train\nMKV\n")
    ls = read_labels(bio)
    assert ls.records[0].mask.tolist() == [False, True, True]
    assert "per-residue masks from MASK= (1 = evaluated)" in ls.notes


def test_utf16_with_its_byte_order_mark_holding_mostly_chinese_labels_is_read(tmp_path):
    # (too few NUL high bytes for UTF-16 without its mark to be told; the mark says it, and the
    # NULs of its ASCII characters make it no binary file)
    table = tmp_path / "t.csv"
    table.write_bytes("id,label\nP1,\u6f22\u5b57\u6f22\u5b57\u6f22\u5b57\nP2,\u5b57\u5b57\u5b57\u5b57\u5b57\u5b57\n"
                      .encode("utf-16"))
    assert [(r.id, r.labels["label"]) for r in read_labels(table).records] == [
        ("P1", "\u6f22\u5b57" * 3), ("P2", "\u5b57" * 6)]


def test_labels_split_train_of_a_file_of_no_split_warns_that_every_record_is_written(run_cli, tmp_path):
    """`--split train` of a file that assigns no record to a split wrote every record without a
    word (a record of no split is a training one, as fit reads it): a user who took the file for
    one with a split is told. A file that has a split is written as before, with no warning."""
    (tmp_path / "seqs.fa").write_text(">P1\nMKV\n>P2\nMKL\n")
    out = tmp_path / "train.fa"
    for table, warned in (("id,label\nP1,a\nP2,b\n", True), ("id,label,set\nP1,a,train\nP2,b,test\n", False)):
        (tmp_path / "t.csv").write_text(table)
        r = run_cli("labels", tmp_path / "t.csv", "--sequences", tmp_path / "seqs.fa", "--split", "train", "-o", out)
        assert r.exit_code == 0, r.stderr
        said = f"protrans: warning: {tmp_path / 't.csv'}: --split train: the file assigns no record to a split, so " \
            "every record is in the training split and all are written"
        assert (said in r.stderr) == warned and ("warning" in r.stderr) == warned, r.stderr
        assert out.read_text() == (">P1\nMKV\n>P2\nMKL\n" if warned else ">P1\nMKV\n")


@pytest.mark.parametrize("fmt", ["netsurfp", "pisces", "flip_csv"])
def test_a_file_of_blank_lines_given_as_a_csv_format_is_said_to_be_empty(run_cli, fmt, tmp_path):
    # (auto refuses an empty file before choosing a reader; a format given goes to the CSV reader,
    # whose search for the header past blank lines must end at the file's end, naming it)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n \n\n")
    with pytest.raises(InputError, match=r"blank\.csv: is empty$"):
        read_labels(blank, fmt)
    r = run_cli("labels", blank, "--label-format", fmt)
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {blank}: is empty\n", r.stderr



def test_a_deeploc_file_given_to_a_secondary_structure_task_names_the_labels_it_holds(tmp_path):
    # (`fit ss3 --labels deeploc.fasta`: the first record is refused, naming what it holds, exit 1
    # before any training)
    deeploc = tmp_path / "dl.fasta"
    deeploc.write_text(">r0 Nucleus-M\nMKVLA\n>r1 Cytoplasm-S\nMKV\n")
    record = read_labels(deeploc).records[0]
    for task, output in (("ss3", "ss3"), ("ss8", "ss8"), ("ss3+ss8", "ss3")):
        with pytest.raises(InputError) as caught:
            get_task(task).residue_targets(record)
        assert caught.value.record == "r0" and caught.value.line == 1
        assert str(caught.value).endswith(f"has no labels for {output} (it has loc, membrane)"), str(caught.value)


def test_a_bad_label_letter_names_the_line_it_is_on_not_the_header(tmp_path):
    """A letter that is no class, in a FLIP FASTA whose labels span lines: the error named the
    record's header line (`FILE:3`), where the letter is on line 5; a bad character of FLIP's
    mask FASTA likewise named its header."""
    from protrans_cli.errors import located

    path = tmp_path / "ss.fasta"
    path.write_text(">p1 SET=train\nCCHHE\n>p2 SET=train\nCCHHE\nHHQEC\n\nCC\n")
    ls = read_labels(path)
    with pytest.raises(InputError, match=r"ss.fasta:5, record 'p2': label letter\(s\) 'Q' are not ss3 classes"):
        with located(ls.path):
            get_task("ss3").residue_targets(ls.records[1])
    path.write_text(">p1 SET=train\nCCHHE\n>p2 SET=train\nCCHHE\nHHEEC\n\nCQ\n")  # (after a blank line)
    ls = read_labels(path)
    with pytest.raises(InputError, match=r"ss.fasta:7, record 'p2': label letter\(s\) 'Q' are not ss8 classes"):
        with located(ls.path):
            get_task("ss8").residue_targets(ls.records[1])
    mask = tmp_path / "mask.fasta"
    mask.write_text(">p1\n11111\n>p2\n11111\n11x11\n11\n")
    with pytest.raises(InputError, match=r"mask.fasta:5, record 'p2': mask holds characters other than 0 and 1"):
        read_labels(path, mask_path=mask)


def test_a_bad_label_letter_of_a_complex_names_its_own_line(tmp_path):
    """A complex's labels (':' between its chains) over several lines of a FLIP FASTA: the ':'s
    were removed before the letters were checked, and the line map kept the offsets of the text
    with them, so a bad letter was named by an earlier line (`FILE:3` for a letter on line 4)."""
    from protrans_cli.errors import located
    from protrans_cli.heads.data import _label_chains

    path = tmp_path / "cx.fasta"
    for body, line in ((">p1\nHHH:\nEEE:\nQCC\n", 4),       # a chain's ':' ending each line
                       (">p1\nHHH\n:EEE\n:CCQ\n", 4),       # ... starting each line
                       (">p1\nHH:H\n:\nEE:E\nQ\n", 5),      # a line of a ':' alone, two on one line
                       (">p0\nCC\n>p1\nHHH:EEE:CC\nCQ\n", 5)):
        path.write_text(body)
        ls = read_labels(path, "flip")
        record, chains = _label_chains(ls.records[-1])
        assert chains is not None
        with pytest.raises(InputError, match=rf"cx.fasta:{line}, record 'p1': label letter\(s\) 'Q' are not ss3"):
            with located(ls.path):
                get_task("ss3").residue_targets(record)


def test_labels_to_stdout_stopped_while_writing_prints_nothing(run_cli, monkeypatch):
    """`labels ... -o -` stopped (Ctrl-C, SIGTERM) while its FASTA was written gave the pipeline the
    records written so far (its first 64 KB, one cut in the middle) before exit 130: stdout gets the
    FASTA whole or nothing."""
    import protrans_cli.io.fasta as fasta_module

    write_fasta, written = fasta_module.write_fasta, []

    def stopped_on_the_third(stream, ident, seq, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(ident)
        return write_fasta(stream, ident, seq, *args, **kwargs)

    monkeypatch.setattr(fasta_module, "write_fasta", stopped_on_the_third)
    r = run_cli("labels", DATA / "heads" / "pisces_small.csv", "-o", "-")
    assert (r.exit_code, r.stdout, r.stderr) == (130, "", "protrans: error: interrupted\n")
    assert len(written) == 2


@pytest.mark.parametrize("layout", ["like its labels", "one digit per residue"])
def test_a_complexs_mask_is_laid_out_like_its_labels_or_one_digit_per_residue(tmp_path, layout):
    """FLIP labels with ':' between a complex's chains (`HHH:EE`, as predict writes states): a
    --mask was checked against the label string's length counting the ':'s, so that neither a mask
    with ':' where the labels have them (a character other than 0 and 1) nor one digit per residue
    ("mask has 5 positions, the labels 6") was read, and one of 6 digits was refused later. Either
    layout now masks the residues it marks 0, as the same mask of the chains written one after the
    other; MASK= beside biotrainer's TARGET= alike."""
    from protrans_cli.heads.data import _label_chains

    labels = tmp_path / "l.fasta"
    labels.write_text(">c\nHHH:EE\n>p\nCHE\n")
    mask = tmp_path / "mask.fasta"
    mask.write_text(">c\n" + ("101:10" if layout == "like its labels" else "10110") + "\n>p\n011\n")
    task = get_task("ss3")
    got = {}
    for record in read_labels(labels, mask_path=mask).records:
        record, _ = _label_chains(record)
        got[record.id] = task.residue_targets(record)["ss3"].tolist()
    h, e, c = (SS3.index(s) for s in "HEC")
    assert got == {"c": [h, IGNORE, h, e, IGNORE], "p": [IGNORE, h, e]}
    bio = tmp_path / "bio.fasta"
    bio.write_text(">c TARGET=HHH:EE MASK=" + ("101:10" if layout == "like its labels" else "10110") + "\nAEL:VI\n")
    record, _ = _label_chains(read_labels(bio).records[0])
    assert task.residue_targets(record)["ss3"].tolist() == got["c"]


@pytest.mark.parametrize("raw, problem", [
    ("101110", "mask has 6 positions, the labels 5 residues in chains of 3, 2 (':' between them): expected one "
               "0/1 per residue, with ':' where the labels have them or none"),
    ("10:110", "mask has chains of 2, 3, the labels 5 residues in chains of 3, 2 (':' between them)"),
    ("101:1", "mask has chains of 3, 1, the labels 5 residues in chains of 3, 2"),
    ("1011", "mask has 4 positions, the labels 5 residues in chains of 3, 2")])
def test_a_complexs_mask_laid_out_otherwise_is_refused_naming_file_record_and_layout(tmp_path, raw, problem):
    labels = tmp_path / "l.fasta"
    labels.write_text(">c\nHHH:EE\n")
    mask = tmp_path / "mask.fasta"
    mask.write_text(f">c\n{raw}\n")
    with pytest.raises(InputError, match=re.escape(f"mask.fasta:1, record 'c': {problem}")):
        read_labels(labels, mask_path=mask)
    # a ':' in the mask of labels without any is named too
    labels.write_text(">c\nHHHEE\n")
    mask.write_text(">c\n101:10\n")
    with pytest.raises(InputError, match=re.escape("mask.fasta:2, record 'c': mask has ':' (a chain break) where the "
                                                   "labels have none: one 0/1 per residue, 5")):
        read_labels(labels, mask_path=mask)
