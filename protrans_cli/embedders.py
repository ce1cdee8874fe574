"""Embedders: what turns a batch of sequences into arrays, for the pipeline in embed.py.

An `Embedder` needs one method, `embed_batch(sequences, pooled=False)`, and a few attributes
that the output file records. `OneHotEmbedder` and `Blosum62Embedder` are the built-in baselines
that need no weights (`weightless_embedder` builds either by name);
`TransformerEmbedder` wraps any model of the family registry (models/), with the family's input
conventions, layer selection, packing, compilation and the GPU-to-host staging of the rows.

    from protrans_cli.embedders import TransformerEmbedder, resolve_device
    from protrans_cli.models import load_model
    device, dtype = resolve_device("auto")
    embedder = TransformerEmbedder(load_model("prot_bert", device=device, dtype=dtype), (-1,), device, dtype)
    rows = embedder.embed_batch(["MKTAYIAK", "MSEQ"])   # [(1, 8, 1024), (1, 4, 1024)] float32
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from protrans_cli.attention import check_attention, sdpa_kernels
from protrans_cli.errors import RuntimeFailure, UsageError, given, one_of, option

ONEHOT = "onehot"
ONEHOT_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"  # 20 standard residues + X (U/Z/O/B map to X)
BLOSUM62 = "blosum62"
# Biopython's BLOSUM62 columns kept, in onehot's order (column j is the same residue in both files)
BLOSUM62_COLUMNS = ONEHOT_ALPHABET[:20]
# letters with a BLOSUM62 row of their own; U, O and any other letter take X's row
BLOSUM62_ROWS = BLOSUM62_COLUMNS + "BZX"
# the encodings `embed -m` computes without a model (no weights, no torch)
WEIGHTLESS = (ONEHOT, BLOSUM62)
GPU_PAD_MULTIPLE = 8  # batch lengths on a GPU are rounded up to a multiple of this


@dataclass(frozen=True)
class NonFinite:
    """What `embed_arrays` hands back for a sequence whose output held NaN or infinity: why,
    and whether the model's own output did (`compute`: half precision overflowed, float32 may
    give finite numbers) or only the conversion to the storage dtype (values beyond float16's
    range). The pipeline never writes such arrays (embed_retry.embed_with_retry)."""

    reason: str
    compute: bool
    # what a float32 recomputation's `computed` attribute says of why (default: NaN or infinity)
    retried_because: str | None = None


OVERFLOWED = NonFinite("float16 overflowed inside the model (its code clamps that to finite, wrong numbers)", True,
                       "float16 overflowed inside the model")


class Embedder(Protocol):
    """What the pipeline needs from a model; the writer records the attributes."""

    name: str               # model name or path, as given
    family: str
    revision: str | None
    embedding_dim: int
    layers: tuple[int, ...]  # negative: -1 the last hidden state, -num_hidden_states the embedding layer
    num_hidden_states: int  # the embedding layer's output and every layer's (num_layers + 1)
    device: str
    compute_dtype: str
    special_tokens: int     # tokens added to each sequence (for the batch budget)
    max_residues: int | None  # longest sequence the model accepts (absolute positions), None: any

    def embed_batch(self, sequences: Sequence[str], pooled: bool = False) -> list[np.ndarray]:
        """One float32 array (n_layers, L_i, D) per sequence; row j is residue j. With `pooled`,
        (n_layers, D) per sequence instead: the mean over its residues, computed where the model
        runs (a run that writes per-protein arrays only moves D numbers per protein, not L x D)."""
        ...


def is_weightless(model) -> bool:
    """Whether `-m model` names one of the built-in encodings (`onehot`, `blosum62`), not a model."""
    return isinstance(model, str) and model in WEIGHTLESS


def encoding_words(model) -> str:
    """A built-in encoding as other commands' refusals name it: "one-hot encoding", "BLOSUM62 encoding"."""
    return {ONEHOT: "one-hot encoding", BLOSUM62: "BLOSUM62 encoding"}[str(model)]


class _TableEmbedder:
    """A weightless encoding: each residue's row of a (256, D) float32 table indexed by its byte
    (upper and lower case alike; a byte without a row of its own takes X's). One layer, on the
    CPU, numpy only: building and running it never imports torch."""

    name: str
    family: str
    description: str  # one line, for `protrans models`
    revision = None
    num_hidden_states = 1
    device = "cpu"
    compute_dtype = "float32"
    special_tokens = 0
    max_residues = None
    embedding_dim: int
    _TABLE: np.ndarray  # (256, embedding_dim) float32

    def __init__(self, layers: Sequence[int] = (-1,)):
        bad = [x for x in layers if x not in (0, -1)]
        if bad:
            raise UsageError(f"the {self.name} embedder has a single layer: {option('--layer', 'layer')} {bad[0]} "
                             "does not exist")
        if len(layers) > 1:
            named = option(f"--layer {' --layer '.join(map(str, layers))}", f"layers={tuple(layers)}")
            raise UsageError(f"the {self.name} embedder has a single layer: {named} name it more than once")
        self.layers = (-1,)

    @classmethod
    def _table(cls) -> np.ndarray:
        return cls._TABLE

    def embed_batch(self, sequences: Sequence[str], pooled: bool = False) -> list[np.ndarray]:
        table = self._table()
        out = []
        for seq in sequences:
            rows = table[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)][None]  # (1, L, D)
            out.append(mean_rows(rows) if pooled else rows)
        return out


def _byte_table(rows: dict[str, np.ndarray], default: str) -> np.ndarray:
    """(256, D) float32: `rows[c]` at the bytes of c and of its lower case, `rows[default]` elsewhere."""
    table = np.tile(rows[default].astype(np.float32), (256, 1))
    for letter, row in rows.items():
        table[ord(letter)] = table[ord(letter.lower())] = row
    return table


class OneHotEmbedder(_TableEmbedder):
    """The built-in baseline: one-hot residues over ACDEFGHIKLMNPQRSTVWY + X (21 dimensions).

    U/Z/O/B are encoded as X, as ProtTrans' models see them; per-protein is therefore the amino
    acid composition. It has one layer (index -1/0); other --layer values are refused.
    """

    name = ONEHOT
    family = ONEHOT
    description = ("one-hot residues over ACDEFGHIKLMNPQRSTVWY + X (U/Z/O/B as X); per protein: "
                   "the amino-acid composition")
    embedding_dim = len(ONEHOT_ALPHABET)
    _TABLE = _byte_table({c: row for c, row in zip(ONEHOT_ALPHABET, np.eye(len(ONEHOT_ALPHABET)))}, "X")


class Blosum62Embedder(_TableEmbedder):
    """The BLOSUM62 baseline: each residue's row of BLOSUM62 substitution scores against the 20
    standard residues (columns ACDEFGHIKLMNPQRSTVWY, onehot's order), raw integer scores as
    float32: 20 dimensions. B, Z and X have rows of their own in the matrix; U and O (and any
    letter without a row) take X's, as protrans maps rare residues to X. The matrix is Biopython's
    (`Bio.Align.substitution_matrices`), read once, when the first embedder is built."""

    name = BLOSUM62
    family = BLOSUM62
    description = ("each residue's BLOSUM62 scores against the 20 standard residues (onehot's "
                   "column order; U/O take X's row)")
    embedding_dim = len(BLOSUM62_COLUMNS)
    _TABLE = None

    @classmethod
    def _table(cls) -> np.ndarray:
        if cls._TABLE is None:
            cls._TABLE = _byte_table(blosum62_rows(), "X")
        return cls._TABLE


def blosum62_rows() -> dict[str, np.ndarray]:
    """BLOSUM62's row of every letter of BLOSUM62_ROWS over BLOSUM62_COLUMNS (float32), from Biopython."""
    from Bio.Align import substitution_matrices

    matrix = substitution_matrices.load("BLOSUM62")
    return {r: np.array([matrix[r][c] for c in BLOSUM62_COLUMNS], dtype=np.float32) for r in BLOSUM62_ROWS}


def weightless_embedder(name: str, layers: Sequence[int] = (-1,)) -> _TableEmbedder:
    """The built-in encoding `name` (one of WEIGHTLESS)."""
    one_of(name, WEIGHTLESS, "-m", keyword="model")
    return (OneHotEmbedder if name == ONEHOT else Blosum62Embedder)(layers)


def _warn_electra_generator(loaded, family: str) -> None:
    """ELECTRA's generator (a small masked LM, `RUN/generator`, Rostlab/prot_electra_generator_bfd)
    embeds without a word, where ProtTrans and ELECTRA's authors take representations from the
    discriminator (a run's root, Rostlab/prot_electra_discriminator_bfd): a warning saying so."""
    from protrans_cli import console

    architectures = getattr(getattr(loaded.model, "config", None), "architectures", None) or []
    if family == "electra" and "ElectraForMaskedLM" in architectures:
        console.warn(f"{loaded.name} is an ELECTRA generator (ElectraForMaskedLM), a small model trained to fill "
                     "in masks; ProtElectra's embeddings are the discriminator's (a protrans run's directory "
                     "itself, not its generator/; prot_electra_discriminator_bfd for the published one)")


class TransformerEmbedder:
    """A model from the family registry: tokenises with the family's conventions, keeps the
    hidden states at the requested layers and returns exactly the rows of the residues."""

    def __init__(self, loaded, layers: Sequence[int], device: str, compute_dtype: str, packed: bool = False,
                 sdpa_kernels: str = "auto", compile: bool = False, attention: str = "sdpa", three_di: bool = False,
                 pooling: str = "mean"):
        import torch

        from protrans_cli.models.base import input_prefix

        self.loaded = loaded
        self.family_impl = loaded.family
        # a token put before every protein (ProstT5's <AA2fold>, models/base.py), '' for none
        self.input_prefix = input_prefix(loaded.tokenizer)
        if three_di:  # the sequences are Foldseek 3Di strings (embed --3di)
            self.family_impl, self.input_prefix = _three_di(loaded)
        self.name = loaded.name
        self.family = getattr(loaded.family, "name", str(loaded.family))
        _warn_electra_generator(loaded, self.family)
        self.revision = getattr(loaded, "revision", None)
        self.commit = getattr(loaded, "commit", None)  # what a hub revision (main by default) resolved to
        # a local directory's weights (it has no commit): --resume and merge tell a retrained model
        self.weights_fingerprint = getattr(loaded, "weights_fingerprint", None)
        self.embedding_dim = int(loaded.embedding_dim)
        num_states = int(loaded.num_layers) + 1  # embeddings output + every layer
        self.num_hidden_states = num_states
        for x in layers:
            if not -num_states <= x < num_states:
                raise UsageError(f"{option('--layer', 'layer')} {x} does not exist: {self.name} has "
                                 f"{loaded.num_layers} layers (valid indices {-num_states}..{num_states - 1}; 0 is the "
                                 "embedding layer)")
        # Normalised to negative indices so that -1 and num_layers name the same layer in the file.
        self.layers = tuple(x - num_states if x >= 0 else x for x in layers)
        for i, x in enumerate(self.layers):
            if x in self.layers[:i]:
                first = layers[self.layers.index(x)]
                flag = option("--layer", "layer")
                raise UsageError(f"{flag} {first} and {flag} {layers[i]} are the same hidden state of {self.name} "
                                 f"({loaded.num_layers} layers; 0 is the embedding layer, -1 the last)")
        self.device = device
        self.compute_dtype = compute_dtype
        self.tokenizer = loaded.tokenizer
        # The per-protein vector: the mean over the residue rows, or (--pooling cls) the hidden
        # state of the tokenizer's cls token ([CLS], <cls>, <s>; XLNet's <cls> at the end)
        self.pooling = pooling
        one_of(pooling, POOLINGS, "--pooling", keyword="pooling")
        if pooling == "cls":
            problem = cls_problem(self.family_impl, self.tokenizer)
            if problem:
                raise UsageError(f"{given('--pooling', 'pooling', 'cls')}: {self.name}: {problem}")
        # A model spread over devices (embed --device-map): left where from_pretrained placed each
        # module, in the dtype it was loaded in (its offloaded weights are read back in that dtype);
        # `device` is where its inputs go, and every hidden state is brought there.
        self.device_map = dict(getattr(loaded.model, "hf_device_map", None) or {}) or None
        if self.device_map is not None:
            self.model = loaded.model.eval()
            self._overflow_guard = None
        else:
            self.model = loaded.model.to(device=device).eval()
            # float16: a family that can see its own overflows (T5) runs every module in float16,
            # as the ProtTrans script does; the proteins where it overflowed are redone in float32
            self._overflow_guard = (_overflow_guard(self.family_impl, self.model) if compute_dtype == "float16"
                                    else None)
            cast_weights(self.model, getattr(torch, compute_dtype), keep_fp32=self._overflow_guard is None)
        # BERT-like models count positions 0..width-1 over the padding too: a batch rounded up
        # to pad_multiple must stay inside the learned table (one of 100 positions took 104)
        self._position_tokens = _absolute_positions(self.model)
        self.special_tokens = _count_special_tokens(self.family_impl, self.tokenizer)
        self.max_residues = _max_residues(self.model, self.special_tokens)
        # (residues, where it is known): embed warns about proteins beyond it
        self.trained_residues = _trained_residues(loaded, self.special_tokens)
        self._cpu_copy = None
        self._staging = _HostStaging(pinned=str(device).startswith("cuda"))
        # On a GPU a batch's length is rounded up to a multiple of 8 (tensor-core shapes, as
        # transformers' pad_to_multiple_of=8); on the CPU extra padding is only extra work.
        self.pad_multiple = GPU_PAD_MULTIPLE if str(device).startswith("cuda") else 1
        self.sdpa_kernels = sdpa_kernels  # which attention kernels a GPU may use (attention.py)
        # --attention flex: the family switches its attention modules in place (models/t5.py);
        # a family without such a path refuses here, once its model is known.
        check_attention(attention, compile=compile)
        if attention == "auto":
            raise UsageError("an embedder runs attention='sdpa' or 'flex'; 'auto' is embed's choice between them "
                             "(protrans_cli.embed.build_embedder, flex_by_default)")
        if attention == "flex":
            self.family_impl.use_flex_attention(self.model)
        self.attention = attention
        self._check_attention()
        self.packed = False
        if packed:
            self.use_packing()
        # --compile: each transformer block compiled in place (one compilation serves every block,
        # dynamic shapes: one graph for every batch length; training/recompute.py says why block
        # by block). The float32 retry runs them eagerly and the CPU twin drops them.
        self.compiled = bool(compile)
        if compile:
            from protrans_cli.training.recompute import compile_blocks

            compile_blocks(self.model)
        self._run_model = self.model

    def drop_flex(self) -> None:
        """Run the model's own attention from now on (attention = "sdpa"): padded batches, as a T5
        model packs only under FlexAttention. For the CPU twin, and for embed's automatic choice
        when FlexAttention's kernel cannot be built on this machine."""
        from protrans_cli.models.t5 import drop_flex_attention

        drop_flex_attention(self.model)
        self.attention = "sdpa"
        self.packed = False  # its rows were packed for the flex block mask: padded ones now

    def _check_attention(self) -> None:
        """The flex switch is made in place on the model (models/t5.py): an embedder built for the
        model's own attention on a model that another embedder switched (before or since) would
        run FlexAttention and record attention = "sdpa". Refused, with what to do."""
        from protrans_cli.models.t5 import uses_flex_attention

        if self.attention != "flex" and uses_flex_attention(self.model):
            raise UsageError(f"{self.name}: this model was switched to FlexAttention in place by an embedder "
                             "built on it with attention='flex', so this attention='sdpa' embedder cannot use it: "
                             "build the flex one on a copy of the model (copy.deepcopy(loaded.model) before it is "
                             "switched) or load the model again")

    def activation_bytes_per_token(self) -> int | None:
        """An upper estimate of the device memory one token of a batch takes in the forward pass
        (embed's GPU batch budget: default_max_tokens), or None for a model whose attention
        materialises its (L, L) scores (T5 with its own attention, XLNet, Transformer-XL): their
        memory per token grows with the batch's length. Per token: two of a block's live
        tensors at a time (the feed-forward's inner width plus six model widths: the residual,
        q, k, v, attention output, norm), the hidden states kept when layers other than the
        last are asked for, and the float32 sums or rows of each requested layer."""
        import torch

        if not (getattr(self.family_impl, "packable", False) or self.attention == "flex"):
            return None
        config = self.model.config
        hidden = self.embedding_dim
        inner = next((int(v) for v in (getattr(config, name, None) for name in ("intermediate_size", "d_ff"))
                      if v), 4 * hidden)
        if getattr(config, "is_gated_act", False):  # gated feed-forward: two inner tensors
            inner *= 2
        width = torch.finfo(getattr(torch, self.compute_dtype)).bits // 8
        kept = self.num_hidden_states if self.layers != (-1,) else 1
        return 2 * (inner + 6 * hidden) * width + kept * hidden * width + len(self.layers) * hidden * 4

    def packing_problem(self) -> str | None:
        """Why this model cannot pack its batches (None: it can). Under FlexAttention (T5) a
        packed row is split by a block mask of its proteins (models/t5.py), whatever the family
        says of its own attention."""
        from protrans_cli.models.base import residue_layout

        fam = self.family_impl
        if self.pooling == "cls":  # (its token's row is found in a padded batch's rows)
            return f"{given('--pooling', 'pooling', 'cls')} reads each protein's cls token from padded batches"
        problem = None if self.attention == "flex" else fam.packing_problem(self.model.config, training=False)
        if problem is None and residue_layout(fam, self.tokenizer) is None:
            problem = "its tokenizer does not give one token per residue letter"
        return problem

    def use_packing(self) -> None:
        """--packing: each batch becomes one row without padding (models/packing.py; under
        FlexAttention, models/t5.py's segment block mask)."""
        from protrans_cli.models import packing
        from protrans_cli.models.base import residue_layout

        problem = self.packing_problem()
        if problem:
            hint = f" (T5 models pack with {given('--attention', 'attention', 'flex')})" if self.family == "t5" else ""
            raise UsageError(f"{option('--packing', 'packing=True')}: {self.name}: {problem}{hint}")
        fam = self.family_impl
        # The layout's table holds the family's conventions (case, rare residues): raw letters go in.
        self._packed_layout = residue_layout(fam, self.tokenizer)
        if self.attention != "flex":  # (flex: a block mask of the row's proteins, from embed_arrays' inputs)
            packing.use_packed_attention(self.model)
        self._position_offset = fam.packed_position_offset(self.model.config)
        self.packed = True

    def embed_batch(self, sequences: Sequence[str], pooled: bool = False) -> list[np.ndarray]:
        """The arrays as the model gives them (NaN or infinity included: `embed_arrays` checks)."""
        pairs = self.embed_arrays(sequences, rows=not pooled, means=pooled, check=False)
        return [mean if pooled else rows for rows, mean in pairs]

    def _multiple(self, sequences) -> int:
        """pad_multiple for this batch, or 1 where rounding up would pass the learned position
        table (a model whose table is no multiple of 8, near its length limit)."""
        multiple, limit = self.pad_multiple, getattr(self, "_position_tokens", None)
        if multiple > 1 and limit is not None:
            width = max(len(s) for s in sequences) + self.special_tokens
            if -(-width // multiple) * multiple > limit:
                return 1
        return multiple

    def embed_arrays(self, sequences: Sequence[str], *, rows: bool = True, means: bool = False,
                     dtype: str = "float32", check: bool = True
                     ) -> list[tuple[np.ndarray | None, np.ndarray | None] | NonFinite]:
        """(rows, mean) per sequence, each None unless asked for: rows (n_layers, L_i, D) in
        `dtype` (the storage dtype: converted where the model runs, so a GPU sends float16 rows
        to the host at half the bytes), mean (n_layers, D) float32, from float32 sums over the
        residue positions taken where the model runs and divided on the host in float64. The
        means are the same numbers with or without the rows.

        With `check`, a sequence whose rows (in `dtype`) or mean hold NaN or infinity gets a
        `NonFinite` instead. The check is one float32 sum of the batch where the model runs
        (finite in the usual case: measured 0.14-0.31 ns per number on a 2-core CPU); each sequence is
        looked at only when it is not."""
        import torch

        self._check_attention()
        model, device = self._run_model, self.device
        encoded = self._packed_layout.encode_packed(list(sequences), self.tokenizer.pad_token_id,
                                                    self._position_offset) if self.packed else None
        inputs, mask = encoded or self.family_impl.encode(self.tokenizer, list(sequences), self._multiple(sequences))
        if encoded and self.attention == "flex":  # the row's proteins as segments (models/t5.py)
            from protrans_cli.models.t5 import packed_inputs

            inputs = packed_inputs(inputs)
        lengths = [len(s) for s in sequences] if encoded else mask.sum(dim=1).tolist()
        if encoded and int(mask.sum()) != sum(lengths):
            raise RuntimeFailure(f"the packed {self.family} row holds {int(mask.sum())} residue rows for "
                                 f"{sum(lengths)} residues (a bug in its encode_packed())")
        for seq, n in zip(sequences, lengths):
            if n != len(seq):
                raise RuntimeFailure(f"the {self.family} family produced {n} residue rows for a "
                                     f"{len(seq)}-residue sequence (a bug in its encode())")
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        mask = mask.to(device=device, dtype=torch.bool)  # (B, T)
        out_rows = out_means = [None] * len(lengths)
        guard = self._overflow_guard if self.compute_dtype == "float16" else None
        if guard is not None:
            guard.watch(inputs.get("attention_mask"), int(mask.shape[0]), device)
        with torch.inference_mode(), sdpa_kernels(device, self.sdpa_kernels):
            states = self.family_impl.hidden_states(model, inputs, list(self.layers))
            if self.device_map is not None:  # (each layer's state where its block ran: cuda:1, ...)
                states = [state.to(device) for state in states]
            # (n_layers, B, T, D); one layer (the usual case) is a view, not a copy of the batch
            stacked = states[0].unsqueeze(0) if len(states) == 1 else torch.stack(list(states), dim=0)
            residue_rows = stacked[:, mask] if rows or encoded else None  # (n_layers, sum L_i, D)
            bad: dict[int, NonFinite] = {}
            if means and self.pooling == "cls":
                out_means = self._cls_vectors(stacked, inputs["input_ids"])
                if check:
                    for i, vector in enumerate(out_means):
                        if not np.isfinite(vector).all():
                            bad[i] = NonFinite(f"NaN or infinity in the model's {self.compute_dtype} output", True)
            elif means:
                # Sums in float32 over the residue positions only (whatever padding positions
                # hold, NaN included, is replaced, not multiplied by zero).
                if encoded:  # one row: sum each protein's segment of the residue rows
                    owner = torch.repeat_interleave(torch.arange(len(lengths), device=stacked.device),
                                                    torch.tensor(lengths, device=stacked.device))
                    flat = residue_rows.float()
                    sums = flat.new_zeros(flat.shape[0], len(lengths), flat.shape[2]).index_add_(1, owner, flat)
                    sums = sums.transpose(0, 1)  # (B, n_layers, D)
                else:
                    kept = stacked.masked_fill(~mask[None, :, :, None], 0)
                    sums = kept.sum(dim=2, dtype=torch.float32).transpose(0, 1)  # (B, n_layers, D)
                sums = sums.cpu().numpy().astype(np.float64)
                out_means = [(sums[i] / n).astype(np.float32) for i, n in enumerate(lengths)]
                if check:  # (whether a mean fits the storage dtype is checked where it is written)
                    for i, mean in enumerate(out_means):
                        if not np.isfinite(mean).all():
                            bad[i] = NonFinite(f"NaN or infinity in the model's {self.compute_dtype} output", True)
            if rows:
                stored = residue_rows.to(getattr(torch, dtype))  # where the rows are (a GPU converts)
                if check and not bool(torch.isfinite(stored.sum(dtype=torch.float32))):
                    bad.update(self._non_finite_rows(stored, residue_rows, lengths, dtype))
                host = self._staging.to_host(stored, dtype)
                out_rows = np.split(host, np.cumsum(lengths)[:-1], axis=1)
            # (read last: the guard's flags wait for the device, and the results above are
            # already on the host by now, so no extra round trip)
            met = guard.rows() if guard is not None else []
        pairs = list(zip(out_rows, out_means))
        if any(met):
            # (a packed batch is one row: all of its proteins)
            hit = list(range(len(lengths))) if encoded else [i for i, m in enumerate(met) if m]
            if check:  # the pipeline redoes them in float32 (embed_retry._redo_in_float32)
                bad.update({i: OVERFLOWED for i in hit})
            else:  # embed_batch: the model's numbers, not T5's clamped ones
                with self.in_float32() as exact:
                    again = exact.embed_arrays([sequences[i] for i in hit], rows=rows, means=means, dtype=dtype,
                                               check=False)
                for i, pair in zip(hit, again):
                    pairs[i] = pair
        return [bad.get(i, pair) for i, pair in enumerate(pairs)]

    def _cls_vectors(self, stacked, input_ids) -> list[np.ndarray]:
        """(n_layers, D) float32 per sequence: the hidden states at its cls token, one per row
        of a padded batch (`stacked` (n_layers, B, T, D))."""
        import torch

        where = input_ids == self.tokenizer.cls_token_id  # (B, T)
        counts = where.sum(dim=1)
        if bool((counts != 1).any()):
            raise RuntimeFailure(f"the {self.family} family's input holds {counts.tolist()} cls tokens per row, not "
                                 "one (a bug in its encode())")
        rows = stacked[:, where].to(torch.float32)  # (n_layers, B, D), in row order
        return list(rows.transpose(0, 1).cpu().numpy())

    def _non_finite_rows(self, stored, computed, lengths: list[int], dtype: str) -> dict[int, NonFinite]:
        """Which sequences of a batch whose sum was not finite hold NaN or infinity in their
        rows: in the model's output, or only once converted to the storage dtype."""
        import torch

        bad, start = {}, 0
        for i, n in enumerate(lengths):
            if not bool(torch.isfinite(stored[:, start:start + n]).all()):
                if bool(torch.isfinite(computed[:, start:start + n]).all()):
                    bad[i] = beyond_range(computed[:, start:start + n].float().cpu().numpy(), dtype)
                else:
                    bad[i] = NonFinite(f"NaN or infinity in the model's {self.compute_dtype} output", True)
            start += n
        return bad

    @contextlib.contextmanager
    def in_float32(self):
        """This embedder with its model cast to float32 on its device, for the few sequences whose
        half-precision output overflowed; cast back afterwards, exactly (every bfloat16 or float16
        number is a float32). The float32 weights take twice the memory meanwhile: out of memory
        while casting leaves the model as it was and is raised."""
        import copy

        import torch

        exact = copy.copy(self)
        exact.compute_dtype = "float32"
        # the compiled blocks' graphs are for the half-precision weights: eager here (a rare retry)
        exact._run_model, exact.compiled = (_Eager(self.model) if self.compiled else self.model), False
        try:
            cast_weights(self.model, torch.float32)
            yield exact
        finally:
            cast_weights(self.model, getattr(torch, self.compute_dtype), keep_fp32=self._overflow_guard is None)

    def on_cpu(self) -> "TransformerEmbedder | None":
        """A float32 CPU twin, built on first use, for proteins too large for the accelerator."""
        import copy

        import torch

        if self.device == "cpu" or self.device_map is not None:  # (a device map holds on the CPU what the GPUs cannot)
            return None
        if self._cpu_copy is None:
            twin = copy.copy(self)
            # Copied on the CPU, not on the accelerator that just ran out of memory.
            self.model.to("cpu")
            twin.model = copy.deepcopy(self.model)
            cast_weights(twin.model, torch.float32)
            self.model.to(self.device)
            twin.device = "cpu"
            twin.compute_dtype = "float32"
            twin._cpu_copy = None
            twin._staging = _HostStaging(pinned=False)
            twin._run_model, twin.compiled = twin.model, False  # a rare fallback: not worth a compilation
            if self.compiled:  # the copy's blocks would call the original blocks' compiled forwards
                from protrans_cli.training.recompute import drop_compiled_blocks

                drop_compiled_blocks(twin.model)
            if getattr(twin, "attention", "sdpa") == "flex":  # eager on the CPU: the model's own is far faster
                twin.drop_flex()
            twin.pad_multiple = 1
            self._cpu_copy = twin
        return self._cpu_copy


class _Eager:
    """A model whose compiled blocks run eagerly (`torch.compiler.set_stance("force_eager")`),
    with the model's attributes; for a call the compiled graphs were not made for."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        import torch

        with torch.compiler.set_stance("force_eager"):
            return self._model(*args, **kwargs)


class _HostStaging:
    """Device rows to a numpy array of the storage dtype that the caller owns.

    From a GPU, copying into freshly allocated (pageable) host memory is slow: every new page is
    faulted in during the transfer (1.2 GiB/s on the H200 machine of docs/benchmarks.md#gpu,
    against 51 GiB/s into pinned memory and 6.7 GiB/s for filling fresh memory on the host). So
    the rows go to one reused pinned buffer first, then into a new array by a host copy. They
    are converted to the storage dtype where they are, before the transfer: float16 storage
    moves half the bytes, and a blocking `copy_` between devices and dtypes would convert on
    the host, through a fresh pageable temporary (PyTorch's copy_kernel_cuda), which is the
    slow path the buffer exists to avoid. The buffer grows to the largest batch seen (tokens x
    layers x D x itemsize); batches above MAX_BYTES take the direct path. On the CPU the rows
    are converted in place of a copy (torch converts float32 to float16 several times faster
    than numpy)."""

    MAX_BYTES = 1 << 30

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.buffer = None  # 1-D uint8 host tensor

    def to_host(self, rows, dtype: str = "float32") -> np.ndarray:
        import torch

        rows = rows.to(getattr(torch, dtype))  # where the rows are (a GPU converts)
        if rows.device.type == "cpu":
            return rows.numpy()
        if rows.numel() * rows.element_size() > self.MAX_BYTES:
            return rows.cpu().numpy()
        return self.stage(rows)

    def stage(self, rows, dtype: str | None = None) -> np.ndarray:
        """`rows` (converted to `dtype` first, where they are) copied through the buffer."""
        import torch

        if dtype is not None:
            rows = rows.to(getattr(torch, dtype))
        nbytes = rows.numel() * rows.element_size()
        if self.buffer is None or self.buffer.numel() < nbytes:
            size = max(nbytes, 2 * (self.buffer.numel() if self.buffer is not None else 0))
            self.buffer = torch.empty(min(size, self.MAX_BYTES), dtype=torch.uint8, pin_memory=self.pinned)
        staged = self.buffer[:nbytes].view(rows.dtype).view(rows.shape)
        staged.copy_(rows)  # same dtype: one transfer into the pinned buffer
        return staged.numpy().copy()


def fits(values: np.ndarray, dtype) -> bool:
    """Whether every number of `values` is finite once stored as `dtype` (float16 holds up to 65504)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(values.astype(dtype, copy=False)).all())


def beyond_range(values: np.ndarray, dtype: str) -> NonFinite:
    # (the magnitude in float64: cast to float32 first, a library embedder's float64 1e300 read
    # "inf", and the hint named the storage dtype in use)
    biggest = float(np.abs(values.astype(np.float64, copy=False)).max())
    hint = "; --storage-dtype float32 keeps them" if dtype != "float32" else ""
    return NonFinite(f"values beyond {dtype}'s range (largest magnitude {biggest:.6g}{hint})", False)


def cast_weights(model, dtype, *, keep_fp32: bool = True) -> None:
    """The model's floating-point parameters in `dtype`, as from_pretrained(dtype=...) leaves
    them, where `model.to(dtype)` cast everything: buffers keep their dtype (ESM-2's rotary
    `inv_freq` stays float32; cast, it was rounded to bfloat16, and the float32 retry and the CPU
    twin cast the rounded values back), and under float16 the modules a model keeps in float32
    (`_keep_in_fp32_modules`: T5's `wo`, whose float16 output overflows) stay so, unless
    `keep_fp32` is False (a model whose overflows are watched: `_overflow_guard`)."""
    import torch

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 and keep_fp32 else set()
    for name, module in model.named_modules():
        if keep and keep & set(name.split(".")):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)


def _overflow_guard(family, model):
    """The family's float16 overflow guard for `model` (models/t5.py), or None: a family without
    one, or a model whose layout the guard does not know (its float32 modules then stay)."""
    from protrans_cli.errors import ModelError

    make = getattr(family, "overflow_guard", None)
    try:
        return make(model) if make is not None else None
    except ModelError:
        return None


def _absolute_positions(model) -> int | None:
    """The positions of a learned table that counts padding too (BERT, ALBERT, ELECTRA); None
    where padding takes no position of its own (RoBERTa/ESM-1b's padding index) or positions are
    relative or rotary."""
    import torch

    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding) or table.padding_idx is not None:
        return None
    return table.num_embeddings


def _max_residues(model, special_tokens: int) -> int | None:
    """Residues that fit a model with a learned position table (BERT, ALBERT, ELECTRA, RoBERTa);
    None for relative or rotary positions (T5, XLNet, Transformer-XL, ESM-2), which take any length."""
    import torch

    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        return None
    # RoBERTa-style tables start counting after the padding index.
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    return table.num_embeddings - offset - special_tokens


def _trained_residues(loaded, special_tokens: int) -> tuple[int, str] | None:
    """The longest protein a model saw whole in training, and how that is known: a model of
    `protrans train` records its crops (the longest phase, in tokens) in train_config.json;
    ESM-2's rotary positions were trained on crops of 1024 tokens (its config's position count
    less the padding offset). A run that began from another (`train --init-from`) saw the longest
    crops of its chain of origins, followed back to the run from scratch it ends at (an init run
    of 32-token crops from a run of 64: 64). None where it is not known (a published checkpoint of
    another family, a chain that reaches a published model, a fine-tuned one or a missing folder)."""
    from pathlib import Path

    from protrans_cli.origins import FINETUNED, chain_of_origins

    chain = chain_of_origins(Path(str(getattr(loaded, "path_or_hub_id", ""))))
    if chain and chain[0].train_config is not None:
        longest: tuple[int, Path] | None = None
        for step in chain:
            config = step.train_config
            if config is None or step.how == FINETUNED or (config.get("init_from") and step.origin is None):
                return None  # (lengths not recorded; a published model's init_from, its crops unknown)
            try:
                lengths = [int(p["max_length"]) for p in config.get("phases") or []] or [int(config["max_length"])]
            except (KeyError, TypeError, ValueError):
                return None
            if longest is None or max(lengths) > longest[0]:
                longest = (max(lengths), step.folder)
        if chain[-1].origin is not None or longest is None:
            return None  # the chain reaches a published model, a folder no longer there, or its limit
        tokens, folder = longest
        where = ("train_config.json" if folder == chain[0].folder
                 else f"{folder / 'train_config.json'}, a run it was trained further from")
        return tokens - special_tokens, f"crops of {tokens} tokens, {where}"
    model_config = getattr(loaded.model, "config", None)
    positions = getattr(model_config, "max_position_embeddings", None)
    if getattr(model_config, "position_embedding_type", None) == "rotary" and isinstance(positions, int):
        offset = (getattr(model_config, "pad_token_id", None) or 0) + 1
        return positions - offset - special_tokens, f"crops of {positions - offset} tokens"
    return None


def _three_di(loaded):
    """(family reading 3Di strings, its prefix) for `loaded`, or a usage error where the model
    does not read them: its vocabulary lacks `<fold2AA>` or a 3Di letter (ProstT5 has both)."""
    from protrans_cli.models.base import THREE_DI_PREFIX, three_di_input, unknown_residues

    family = three_di_input(loaded.family)
    if THREE_DI_PREFIX not in loaded.tokenizer.get_vocab():
        raise UsageError(f"{option('--3di', 'three_di=True')}: {loaded.name} does not read 3Di strings (its vocabulary "
                         f"has no {THREE_DI_PREFIX}); ProstT5 does: " + option("-m prostt5", "model='prostt5'"))
    missing = unknown_residues(family, loaded.tokenizer)
    if missing:
        raise UsageError(f"{option('--3di', 'three_di=True')}: {loaded.name} has {THREE_DI_PREFIX} but no token for "
                         f"the 3Di letter(s) {', '.join(m.lower() for m in missing)}")
    return family, THREE_DI_PREFIX


def _count_special_tokens(family, tokenizer) -> int:
    try:
        inputs, mask = family.encode(tokenizer, ["A"])
        return int(inputs["input_ids"].shape[1]) - 1
    except Exception:  # two is right for most families (the count also sets max_residues and trained_residues)
        return 2


# what --device takes (embed, fit, predict): the same words refuse anything else everywhere
DEVICE_NAME = re.compile(r"auto|cpu|mps(:0)?|cuda(:\d+)?")


def check_device(device) -> None:
    """A device name --device does not take refused, in the one wording of every command."""
    if not DEVICE_NAME.fullmatch(device):
        raise UsageError(f"{given('--device', 'device', device)}: use auto, cpu, cuda, cuda:N or mps")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device, compute dtype): a GPU with bf16 (fp16 without bf16 support, fp32 where fp16 is slow:
    fast_fp16) when there is one, else the CPU in float32. Half precision on the CPU is refused: it
    is slow and inexact there."""
    import torch

    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif mps_available():
            device = "mps"
        else:
            device = "cpu"
            warn_unused_gpu()
    named, cpu = given("--device", "device", device), given("--device", "device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{named}: no CUDA device is available (try {cpu})")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(f"{named}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    if device.startswith("mps") and not mps_available():
        raise UsageError(f"{named}: no MPS device is available (try {cpu})")
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if native_bf16(device) else "float16" if fast_fp16(device) else "float32"
        elif device.startswith("mps"):
            dtype = "float16"
        else:
            dtype = "float32"
    if device == "cpu" and dtype != "float32":
        raise UsageError(f"{given('--dtype', 'dtype', dtype)} on the CPU: half precision is only used "
                         "on a GPU (use float32)")
    return device, dtype


def native_bf16(device) -> bool:
    """Whether this CUDA device computes bfloat16 in hardware (compute capability 8.0 and up:
    A100, H100, RTX 30xx/40xx; ROCm). torch.cuda.is_bf16_supported() also says yes where bfloat16
    is only emulated (V100, T4: the free Colab GPU), and there it runs several times slower than
    float16 on their tensor cores."""
    import torch

    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(_cuda_index(device))[0] >= 8


def _cuda_index(device) -> int:
    """The index of CUDA device `device` ("cuda": the current one)."""
    import torch

    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def fast_fp16(device) -> bool:
    """Whether this CUDA device (one without bfloat16 hardware: native_bf16) computes float16 faster
    than float32: tensor cores (V100, T4, RTX 20xx) or paired half arithmetic (P100: 6.0; Jetson
    5.3 and 6.2). Not compute capability 6.1 (GTX 10xx, Titan Xp, Tesla P40/P4: float16 at 1/64 of
    float32's rate), 5.0 or 5.2, and not the GTX 16xx (7.5 with its tensor cores removed: float16
    matrix products at a few percent of float32's, pytorch/pytorch#121957): `auto` computes in
    float32 there."""
    import torch

    if torch.version.hip:
        return True
    index = _cuda_index(device)
    capability = torch.cuda.get_device_capability(index)
    if capability in ((5, 3), (6, 0), (6, 2)) or capability >= (7, 0) and capability != (7, 5):
        return True
    return capability == (7, 5) and "GTX 16" not in torch.cuda.get_device_name(index)


_GPU_NODES = (("/dev/nvidia0", "CUDA_VISIBLE_DEVICES", "an NVIDIA GPU"),
              ("/dev/kfd", "HIP_VISIBLE_DEVICES", "an AMD GPU"))
_warned_unused_gpu = False


def warn_unused_gpu(remedy: str | None = None) -> None:
    """Once a process: say so where the machine has a GPU (its device file) that torch cannot use,
    so the work runs on the CPU, many times slower, where it said nothing: a CPU build of torch
    (what `pip install torch==X` gives where no CUDA index is named), or a CUDA build whose driver
    is too old. Not where CUDA_VISIBLE_DEVICES (HIP_VISIBLE_DEVICES) hides the GPUs on purpose."""
    import os

    import torch

    global _warned_unused_gpu
    if _warned_unused_gpu:
        return
    found = next((what for node, hidden, what in _GPU_NODES
                  if os.path.exists(node) and os.environ.get(hidden, "x").strip() not in ("", "-1")), None)
    if found is None:
        return
    _warned_unused_gpu = True
    from protrans_cli import console

    if torch.version.cuda is None and torch.version.hip is None:
        why = f"this torch ({torch.__version__}) is a CPU build"
    else:
        why = f"this torch ({torch.__version__}) cannot start it (a driver older than the build's? `protrans env`)"
    console.warn(f"this machine has {found}, but {why}: computing on the CPU, many times slower; install a GPU "
                 "build of torch (pytorch.org/get-started), or "
                 + (remedy or f"give {given('--device', 'device', 'cpu')}") + " to say the CPU is meant")


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


POOLINGS = ("mean", "cls")


def cls_problem(family, tokenizer) -> str | None:
    """Why `--pooling cls` cannot be had of this model (None: it can): a causal model's first token
    has seen nothing of the protein, and a tokenizer without a cls token (T5's) has none to read."""
    if getattr(family, "causal", False):
        return (f"a causal model ({family.name}) has no token that sees the whole protein but its last: use "
                + given("--pooling", "pooling", "mean"))
    if getattr(tokenizer, "cls_token_id", None) is None:
        return (f"the {family.name} tokenizer has no cls token (T5 models have none): use "
                + given("--pooling", "pooling", "mean"))
    return None


MEAN_POOLING = "mean over residue tokens (special tokens excluded)"


def pooling_text(embedder, per_protein: bool = True) -> str:
    """The file's `pooling` attribute: how its per-protein vectors were made. A file without
    them (`per_protein` False) says mean: what fit, predict and knn take of its rows, whatever
    the embedder would have pooled (its rows are the same)."""
    if per_protein and getattr(embedder, "pooling", "mean") == "cls":
        return f"cls: the hidden state of the {embedder.tokenizer.cls_token} token"
    return MEAN_POOLING


def mean_rows(rows: np.ndarray) -> np.ndarray:
    """Mean over the residue axis (the one before last), accumulated in float64."""
    with np.errstate(over="ignore"):  # beyond float32 (a library embedder's float64): the storage check names it
        return rows.mean(axis=-2, dtype=np.float64).astype(np.float32)
