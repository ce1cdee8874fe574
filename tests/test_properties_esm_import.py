"""import-esm of any set of esm-extract outputs (Hypothesis; see docs/development.md): whatever
the labels (a `/` makes esm-extract write folders; `|`, `.`, `%`, non-ASCII), layers, kinds,
storage dtype and layout, the file holds exactly the arrays of the .pt files under the labels'
first words, as docs/formats.md describes embed's files, with lengths and checksums from the
FASTA when one is given."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import fewer  # noqa: E402
from protrans_cli.esm_import import import_esm  # noqa: E402
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader  # noqa: E402

ids = st.text(st.sampled_from("abAB09|.%_-é"), min_size=1, max_size=5).map(lambda i: i.strip(".")).filter(bool)


@st.composite
def extracts(draw):
    """{id: (label, sequence, rows {layer: (L, D)}, means {layer: (D,)})}, one width, the same
    layers in every file, as one esm-extract run writes them."""
    names = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    folders = draw(st.lists(st.sampled_from(["", "sp/", "a/b/"]), min_size=len(names), max_size=len(names)))
    width = draw(st.integers(1, 6))
    layers = sorted(draw(st.sets(st.integers(0, 6), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = {}
    for name, folder in zip(names, folders):
        sequence = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(rng.integers(1, 12))))
        rows = {k: rng.normal(size=(len(sequence), width)).astype(np.float32) for k in layers}
        means = {k: v.mean(0) for k, v in rows.items()}
        out[folder + name] = (f"{folder + name} note {seed % 97}", sequence, rows, means)
    return out


def _save(root: Path, label: str, rows, means) -> None:
    path = root / f"{label}.pt"  # (esm-extract: a label with '/' makes a folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"label": label, "representations": {k: torch.from_numpy(v) for k, v in rows.items()},
                "mean_representations": {k: torch.from_numpy(v) for k, v in means.items()}}, path)


@fewer(25)
@given(extracts(), st.sampled_from(["grouped", "flat", "stacked"]), st.sampled_from(["float32", "float16"]),
       st.booleans(), st.data())
def test_imported_files_hold_the_extracts_arrays_under_their_ids(extracted, layout, dtype, with_fasta, data):
    layers = sorted(next(iter(extracted.values()))[2])
    chosen = data.draw(st.sampled_from(layers))
    kinds = {"grouped": data.draw(st.sampled_from([(PER_RESIDUE, PER_PROTEIN), (PER_PROTEIN,), (PER_RESIDUE,)])),
             "flat": data.draw(st.sampled_from([(PER_PROTEIN,), (PER_RESIDUE,)])), "stacked": (PER_PROTEIN,)}[layout]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, _, rows, means in extracted.values():
            _save(tmp / "esm", label, rows, means)
        fasta = None
        if with_fasta:
            fasta = tmp / "in.fa"
            fasta.write_text("".join(f">{label}\n{seq}\n" for label, seq, _, _ in extracted.values()),
                             encoding="utf-8")
        out = tmp / "out.h5"
        import_esm([tmp / "esm"], out, fasta=fasta, layers=[chosen], layout=layout, storage_dtype=dtype,
                   per_residue=PER_RESIDUE in kinds, per_protein=PER_PROTEIN in kinds)
        with EmbeddingsReader(out) as reader:
            assert set(reader.kinds) == set(kinds)
            for kind in kinds:
                got = {ident: (np.asarray(array), meta) for ident, array, meta in reader.items(kind)}
                assert sorted(got) == sorted(label.split()[0] for label, *_ in extracted.values())
                for label, seq, rows, means in extracted.values():
                    array, meta = got[label.split()[0]]
                    want = (rows if kind == PER_RESIDUE else means)[chosen].astype(dtype)
                    np.testing.assert_array_equal(array, want, err_msg=label)
                    if with_fasta:
                        assert meta["length"] == len(seq)
                        assert meta["checksum"] == "md5:" + hashlib.md5(seq.encode()).hexdigest()
