"""variants' reading of substitutions and its windows, for every variant (Hypothesis; see
docs/development.md): a set of substitutions written in any notation docs/variants.md lists
(A24G joined by `:`, `;`, `,` or `+`; HGVS `p.Ala24Gly`, `p.(...)`, `p.[...;...]`, `=`), at any
--offset, reads back as those substitutions (synonymous ones dropped); a wrong wild-type letter
or a position outside the protein is a ValueError saying so; and a window always holds the
residue it is chosen for."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protrans_cli.variants import (AMINO_ACIDS, _THREE_LETTER, Mutation, covering_window, mutate,  # noqa: E402
                                   parse_variant, window_start)

THREE = {one: three for three, one in _THREE_LETTER.items()}


@st.composite
def variants(draw):
    wild_type = draw(st.text(st.sampled_from(AMINO_ACIDS), min_size=1, max_size=60))
    offset = draw(st.integers(-20, 300))
    positions = draw(st.lists(st.integers(0, len(wild_type) - 1), min_size=1, max_size=5, unique=True))
    mutant = [draw(st.sampled_from(AMINO_ACIDS + "*")) for _ in positions]
    return wild_type, offset, list(zip(positions, mutant))


def _written(draw, wild_type: str, offset: int, changes) -> str:
    notation = draw(st.sampled_from(["one", "hgvs", "hgvs_paren", "hgvs_list"]))
    if notation == "one":
        words = [f"{draw(st.sampled_from([wild_type[p], wild_type[p].lower()]))}{p + offset}{mt}" for p, mt in changes]
        separator = draw(st.sampled_from([":", ";", ",", "+", " "]))
        return separator.join(words)
    words = [f"{THREE[wild_type[p]]}{p + offset}"
             f"{draw(st.sampled_from(['=', THREE[mt]])) if mt == wild_type[p] else THREE[mt] if mt != '*' else draw(st.sampled_from(['*', 'Ter']))}"
             for p, mt in changes]
    if notation == "hgvs":
        return ";".join(f"p.{w}" for w in words)
    if notation == "hgvs_paren":
        return "p.(" + ";".join(words) + ")"
    return "p.[" + ";".join(words) + "]"


@given(variants(), st.data())
def test_substitutions_read_back_from_every_notation(case, data):
    wild_type, offset, changes = case
    text = _written(data.draw, wild_type, offset, changes)
    expected = tuple(Mutation(p, wild_type[p], mt) for p, mt in changes if mt != wild_type[p])
    assert parse_variant(text, wild_type, offset) == expected, text
    assert mutate(wild_type, expected) == "".join(
        dict(changes).get(i, residue) for i, residue in enumerate(wild_type))


@given(variants(), st.data())
def test_a_wrong_wild_type_letter_or_position_is_said(case, data):
    wild_type, offset, changes = case
    p, mt = changes[0]
    if data.draw(st.booleans()):
        wrong = data.draw(st.sampled_from([a for a in AMINO_ACIDS if a != wild_type[p]]))
        with pytest.raises(ValueError, match=f"residue {p + offset} of the wild type is {wild_type[p]}, not {wrong}"):
            parse_variant(f"{wrong}{p + offset}{mt}", wild_type, offset)
    else:
        number = data.draw(st.sampled_from([offset - 1, offset + len(wild_type)]))
        with pytest.raises(ValueError, match=f"position {number} is outside the sequence"):
            parse_variant(f"{wild_type[p]}{number}{mt}", wild_type, offset)


@given(st.integers(1, 3000), st.integers(1, 1100), st.integers(0, 10**6))
@example(10, 4, 9)  # the last residue, past the last window of the stride (the window ending the protein)
def test_a_window_holds_the_residue_it_is_chosen_for(length, window, position):
    position %= length
    window = min(window, length)
    for start in (window_start(position, length, window), covering_window(position, length, window)):
        assert 0 <= start <= length - window and start <= position < start + window, (start, position)
    # centred where the protein allows: as many residues either side, give or take one
    start = window_start(position, length, window)
    if window // 2 <= position <= length - 1 - (window - 1 - window // 2):
        assert start == position - window // 2
