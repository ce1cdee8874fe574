"""merge of an input split any way equals one embed run over the whole (Hypothesis; see
docs/development.md): whatever proteins each part holds (repeated across parts or not), in
whatever order the parts are given, whatever layout each part was written in and whatever ids
(with `/`, `.`, `%`, non-ASCII) and shared sequences the input has."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import fewer  # noqa: E402
from protrans_cli.embed import EmbedOptions, embed  # noqa: E402
from protrans_cli.merge import merge  # noqa: E402
from test_embed import assert_same_content, file_content  # noqa: E402

ids = st.text(st.sampled_from("abAB09/.%|:_-é"), min_size=1, max_size=6).filter(lambda i: i.strip("/."))
sequences = st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYXU"), min_size=1, max_size=25)


@st.composite
def split_inputs(draw):
    """Records with unique ids (some sharing a sequence), the parts as lists of record numbers
    (each record in one part at least, some in several), their order, and each part's layout."""
    names = draw(st.lists(ids, min_size=1, max_size=12, unique=True))
    pool = draw(st.lists(sequences, min_size=1, max_size=len(names)))
    records = [(name, draw(st.sampled_from(pool))) for name in names]
    n_parts = draw(st.integers(1, 4))
    home = [draw(st.integers(0, n_parts - 1)) for _ in records]
    parts = [[i for i, h in enumerate(home) if h == p] for p in range(n_parts)]
    for i in range(len(records)):  # copies in other parts
        for p in draw(st.sets(st.integers(0, n_parts - 1), max_size=2)):
            if i not in parts[p]:
                parts[p].append(i)
    parts = [sorted(p, key=lambda i: draw(st.integers(0, 3)) * 100 + i) for p in parts if p]
    per_residue = draw(st.booleans())
    layouts = st.just("grouped") if per_residue else st.sampled_from(["grouped", "flat", "stacked"])
    return records, draw(st.permutations(parts)), [draw(layouts) for _ in parts], draw(layouts), per_residue


def _fasta(path: Path, records, chosen) -> Path:
    path.write_text("".join(f">{records[i][0]} protein {i}\n{records[i][1]}\n" for i in chosen), encoding="utf-8")
    return path


@fewer(15)
@given(split_inputs())
# ids that escape, repeated across parts of three layouts, two of them one sequence
@example(([("a/b", "ACD"), ("c.d", "ACD"), ("%é", "W")], [[0, 1], [2, 0], [1]], ["flat", "grouped", "stacked"],
          "grouped", False))
def test_merged_parts_equal_the_whole_input_embedded_at_once(case):
    records, parts, part_layouts, layout, per_residue = case
    kinds = dict(per_residue=per_residue, per_protein=True) if layout == "grouped" else dict(per_residue=False)

    def options(layout_):
        return EmbedOptions(model="onehot", threads=1, layout=layout_, **kinds)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        whole = tmp / "whole.h5"
        embed(_fasta(tmp / "whole.fa", records, range(len(records))), whole, options(layout))
        files = []
        for n, (chosen, part_layout) in enumerate(zip(parts, part_layouts)):
            files.append(tmp / f"part{n}.h5")
            embed(_fasta(tmp / f"part{n}.fa", records, chosen), files[-1], options(part_layout))
        summary = merge(files, tmp / "merged.h5", layout=layout)
        assert summary.proteins == len(records)
        assert summary.repeated == sum(len(p) for p in parts) - len(records)
        assert_same_content(file_content(tmp / "merged.h5"), file_content(whole))
