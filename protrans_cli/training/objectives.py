"""Pretraining objectives: how a batch of proteins becomes model inputs, and the loss on them.

Every objective has the same two methods:
  collate(samples) -> dict of tensors (with "num_predicted", the tokens the loss is taken over)
  loss(model, batch) -> (sum_loss, num_predicted, metrics)
The loss is a SUM over predicted tokens: the training loop divides by the number of predicted
tokens of the whole step (all micro-batches, all ranks), so a step's loss is a true per-token
mean rather than a mean of micro-batch means. `metrics` maps a name to (numerator, denominator)
tensors that the loop sums the same way (accuracy = correct / predicted).

Masks (and ELECTRA's replacements) come from each protein's own generator (Sample.rng), so they
are fresh every epoch (dynamic masking) and the same whichever rank or worker collates the protein.

Objectives: "mlm" (BERT/ALBERT/ESM), "electra", "t5" (ProtT5), "t5_span", "plm" (XLNet),
"clm" (Transformer-XL with segment memory).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protrans_cli.errors import ModelError
from protrans_cli.models import packing
from protrans_cli.training.data import Sample, TokenLayout

IGNORE = -100

# Raised whenever an objective's inputs or labels change for the same settings; recorded with every
# checkpoint (train_config.json's "resolved"), so that a run resumed across such a change says so.
# Revision N's changes, by what they apply to (an objective's name, or "sop").
OBJECTIVE_REVISION = 2
OBJECTIVE_CHANGES = {
    2: {"electra": "the generator's input is masked as ELECTRA's own code masks it (85% the mask token, "
                   "15% unchanged), not 80/10/10",
        "sop": "a protein's first residue is left out of the sentence-order pair",
        "clm": "the labels at a cropped window's cut ends (<s> -> first residue, </s>) are ignored"},
}


def objective_changes(since: int, objective: str, sop: bool) -> list[str]:
    """What changed in `objective` (and sentence order, with `sop`) after revision `since`."""
    keys = (objective, "sop") if sop else (objective,)
    return [changes[k] for rev, changes in sorted(OBJECTIVE_CHANGES.items()) if rev > since
            for k in keys if k in changes]


def _pad(rows: list[np.ndarray], value: int, multiple: int = 8) -> torch.Tensor:
    """(B, T) tensor of right-padded rows; T rounded up to `multiple` (8 by default, for tensor
    cores; `--pad-multiple` takes larger ones, which make fewer distinct batch shapes)."""
    width = max((len(r) for r in rows), default=1)
    width = max(multiple, -(-width // multiple) * multiple)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


def _logits(output) -> torch.Tensor:
    for name in ("logits", "prediction_logits"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    if isinstance(output, (tuple, list)):
        return output[0]
    raise ModelError(f"the model's output has no logits ({type(output).__name__})")


def _model_inputs(batch: dict, input_ids: torch.Tensor | None = None) -> dict:
    """Keyword arguments of an encoder call: input ids with their attention mask, or for a packed
    batch with the position ids and cumulative lengths that packed attention reads."""
    ids = batch["input_ids"] if input_ids is None else input_ids
    if "cu_seq_lens" not in batch:
        return {"input_ids": ids, "attention_mask": batch["attention_mask"]}
    packed = packing.model_kwargs(batch["cu_seq_lens"], batch["max_length"], batch["position_ids"])
    return {"input_ids": ids, **packed}


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor):
    """Summed cross entropy and correct predictions over positions whose label is not IGNORE.

    Over the full (B, T, V) tensor with ignore_index rather than boolean indexing: no
    device-to-host synchronisation, and the vocabulary is small (~30 tokens)."""
    sel = labels != IGNORE
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
    loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & sel).sum()
    return loss, correct, sel.sum()


class Objective:
    """Base class; `layout` says where residues and special tokens are, `config` the rates."""

    name = ""

    def __init__(self, layout: TokenLayout, config):
        self.layout = layout
        self.config = config
        # With packing (masked-LM objectives only): the first position id of every protein,
        # as the model numbers an unpadded protein (0, or padding_idx + 1 for RoBERTa/ESM).
        self.packed_position_offset: int | None = None
        # train --static-shapes: (row width, segment slots, max length) of every packed row
        # (TrainConfig.packed_shape), set on the copy that collates one phase's micro-batches
        self.packed_shape: tuple[int, int, int] | None = None

    def collate(self, samples: list[Sample]) -> dict:
        raise NotImplementedError

    def _pad(self, rows: list[np.ndarray], value: int) -> torch.Tensor:
        return _pad(rows, value, getattr(self.config, "pad_multiple", 8))

    def loss(self, model, batch: dict):
        raise NotImplementedError

    # helpers ----------------------------------------------------------------------------
    def _with_specials(self, residues: np.ndarray) -> np.ndarray:
        lay = self.layout
        return np.concatenate([np.array(lay.prefix, dtype=np.int64), residues,
                               np.array(lay.suffix, dtype=np.int64)])

    # Of the chosen residues: the share that becomes the mask token, and the share that becomes
    # a random standard residue; the rest stay as they are.
    mask_split = (0.8, 0.1)

    def _bert_mask(self, sample: Sample):
        """BERT masking of one protein: (inputs, labels) over its residues only.

        mask_prob of the residues are chosen; of those 80% become the mask token, 10% a random
        standard residue (never a special token), 10% stay (`mask_split`); labels are IGNORE
        elsewhere.
        """
        lay = self.layout
        res = sample.residues
        rng = sample.rng(1)
        chosen = rng.random(len(res)) < self.config.mask_prob
        action = rng.random(len(res))
        inputs = res.copy()
        to_mask, to_random = self.mask_split
        inputs[chosen & (action < to_mask)] = lay.mask_id
        random_pos = chosen & (action >= to_mask) & (action < to_mask + to_random)
        inputs[random_pos] = rng.choice(lay.standard_ids, size=int(random_pos.sum()))
        labels = np.where(chosen, res, IGNORE)
        return inputs, labels


class MaskedLM(Objective):
    """BERT/RoBERTa/ALBERT/ESM masked language modelling (dynamic, 15%, 80/10/10)."""

    name = "mlm"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        if layout.mask_id is None:
            raise ModelError("masked LM needs a tokenizer with a mask token")

    def collate(self, samples):
        if getattr(self.config, "sop", False):
            return self._collate_sop(samples)
        inputs, labels, residue = [], [], []
        fill = np.full(len(self.layout.prefix), IGNORE), np.full(len(self.layout.suffix), IGNORE)
        for s in samples:
            x, y = self._bert_mask(s)
            inputs.append(self._with_specials(x))
            labels.append(np.concatenate([fill[0], y, fill[1]]))
            residue.append(np.concatenate([np.zeros(len(fill[0]), bool), np.ones(len(x), bool),
                                           np.zeros(len(fill[1]), bool)]))
        return self._finish(inputs, labels, residue)

    def _finish(self, inputs, labels, residue, types=None):
        if self.packed_position_offset is not None and types is None:
            return self._finish_packed(inputs, labels, residue)
        input_ids = self._pad(inputs, self.layout.pad_id)
        labels_t = self._pad(labels, IGNORE)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :]
                          < torch.tensor([len(r) for r in inputs])[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels_t,
                 "residue_mask": self._pad([r.astype(np.int64) for r in residue], 0).bool(),
                 "num_predicted": int((labels_t != IGNORE).sum())}
        if types is not None:
            batch["token_type_ids"] = self._pad(types, 0)
        return batch

    def _finish_packed(self, inputs, labels, residue):
        """One (1, T) row of the proteins back to back (see models/packing.py)."""
        multiple = getattr(self.config, "pad_multiple", 8)
        width, slots, longest = self.packed_shape or (None, None, None)
        input_ids = packing.pack(inputs, self.layout.pad_id, multiple, width)
        labels_t = packing.pack(labels, IGNORE, multiple, width)
        cu, longest, positions = packing.segments([len(r) for r in inputs], input_ids.shape[1],
                                                  self.packed_position_offset, slots=slots, longest=longest)
        residue_mask = packing.pack([r.astype(np.int64) for r in residue], 0, multiple, width).bool()
        return {"input_ids": input_ids, "position_ids": positions, "cu_seq_lens": cu, "max_length": longest,
                "labels": labels_t, "residue_mask": residue_mask, "num_predicted": int((labels_t != IGNORE).sum())}

    def _collate_sop(self, samples):
        """ALBERT sentence order: each protein cut at a random point into A and B; half the
        proteins are given as B, A (label 1). Masking is that of the whole protein. A protein's
        first residue (nearly always the start methionine) is left out where the sample keeps
        it: "A starts with M" told the order apart without reading it (0.93 accuracy over
        DeepLoc proteins, every one of which starts with M)."""
        lay = self.layout
        pre, mid, suf = (np.array(x, dtype=np.int64) for x in (lay.pair_prefix, lay.pair_middle, lay.pair_suffix))
        inputs, labels, residue, types, order = [], [], [], [], []
        for s in samples:
            x, y = self._bert_mask(s)
            if s.n_terminus and len(x) > 2:
                x, y = x[1:], y[1:]
            rng = s.rng(2)
            cut = int(rng.integers(1, len(x))) if len(x) > 1 else len(x)
            swapped = bool(rng.random() < 0.5) and 0 < cut < len(x)
            parts = [(x[:cut], y[:cut]), (x[cut:], y[cut:])]
            if swapped:
                parts.reverse()
            (xa, ya), (xb, yb) = parts
            inputs.append(np.concatenate([pre, xa, mid, xb, suf]))
            labels.append(np.concatenate([np.full(len(pre), IGNORE), ya, np.full(len(mid), IGNORE), yb,
                                          np.full(len(suf), IGNORE)]))
            residue.append(np.concatenate([np.zeros(len(pre), bool), np.ones(len(xa), bool),
                                           np.zeros(len(mid), bool), np.ones(len(xb), bool),
                                           np.zeros(len(suf), bool)]))
            types.append(np.concatenate([np.zeros(len(pre) + len(xa) + len(mid), np.int64),
                                         np.full(len(xb) + len(suf), lay.pair_type_b, np.int64)]))
            order.append(int(swapped))
        batch = self._finish(inputs, labels, residue, types)
        batch["sentence_order_label"] = torch.tensor(order)
        batch["num_aux"] = len(samples)  # the order loss's denominator
        return batch

    def loss(self, model, batch):
        if "sentence_order_label" in batch:
            return self._loss_sop(model, batch)
        out = model(**_model_inputs(batch))
        loss, correct, n = _ce_sum(_logits(out), batch["labels"])  # logits (B, T, V)
        return loss, n, {"accuracy": (correct, n)}

    def _loss_sop(self, model, batch):
        """MLM + sentence order; the order loss (a mean over proteins, as in ALBERT) is scaled by
        masked/proteins of the whole step (all micro-batches, all ranks: `step_ratio`, which the
        training loop sets from `num_predicted` and `num_aux`) so that the step's
        sum_loss / num_masked = mlm_mean + sop_mean whatever the split into micro-batches and
        processes. Outside a training step (evaluation) the batch's own ratio is used."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
        sop_logits = getattr(out, "sop_logits", None)  # (B, 2)
        if sop_logits is None:
            raise ModelError("sentence-order prediction needs a model with a sentence-order head (ALBERT)")
        loss, correct, n = _ce_sum(_logits(out), batch["labels"])
        target = batch["sentence_order_label"]
        sop_sum = F.cross_entropy(sop_logits.float(), target, reduction="sum")
        num_proteins = target.numel()
        ratio = batch.get("step_ratio")
        total = loss + sop_sum * (ratio if ratio is not None else n.float() / num_proteins)
        sop_correct = (sop_logits.argmax(-1) == target).sum()
        return total, n, {"accuracy": (correct, n), "sop_accuracy": (sop_correct, torch.tensor(num_proteins)),
                          "sop_loss": (sop_sum.detach(), torch.tensor(num_proteins))}


class Electra(MaskedLM):
    """ELECTRA: generator MLM + replaced-token detection on the discriminator (weight 50).

    The detection loss is a mean over real tokens, the generator's over masked ones; to fit the
    per-predicted-token normalisation the detection sum is scaled by masked/real tokens of the
    whole step (all micro-batches, all ranks: `step_ratio`, which the training loop sets from
    `num_predicted` and `num_aux`), so that the step's sum_loss / num_masked = gen_mean +
    weight * disc_mean, whatever the split into micro-batches and processes. Outside a training
    step (evaluation) the batch's own ratio is used.
    """

    name = "electra"
    # The generator's input as ELECTRA's own code masks it (pretrain_helpers.mask, which
    # ProtElectra was trained with): 85% of the chosen residues become the mask token, 15% stay,
    # none a random residue (every chosen one is replaced by a generator sample anyway).
    mask_split = (0.85, 0.0)

    def collate(self, samples):
        batch = super().collate(samples)
        # One uniform number per masked residue from the protein's own generator (purpose 4):
        # the replacement drawn for it from the generator's output (inverse CDF in `loss`) then
        # depends on the protein alone, not on the rank, micro-batch or worker that holds it, and
        # nothing is drawn from the global RNG. Ordered as the masked positions of the batch
        # (row by row; protein by protein in a packed row).
        sel = batch["labels"] != IGNORE
        if "cu_seq_lens" in batch:
            cu = batch["cu_seq_lens"].tolist()
            counts = [int(sel[0, cu[i]:cu[i + 1]].sum()) for i in range(len(samples))]
        else:
            counts = sel.sum(1).tolist()
        draws = [s.rng(4).random(int(c), dtype=np.float32) for s, c in zip(samples, counts)]
        batch["replace_u"] = torch.from_numpy(np.concatenate(draws) if draws else np.zeros(0, np.float32))
        batch["num_aux"] = int(batch["residue_mask"].sum())  # the detection loss's denominator
        return batch

    def loss(self, model, batch):
        for part in ("generator", "discriminator"):
            if not hasattr(_unwrap(model), part):
                raise ModelError(f"the electra objective needs a model with .{part}")
        inner = _unwrap(model)
        input_ids, labels = batch["input_ids"], batch["labels"]
        gen_logits = _logits(inner.generator(**_model_inputs(batch)))  # (B, T, V)
        gen_loss, gen_correct, n_masked = _ce_sum(gen_logits, labels)
        sel = labels != IGNORE
        original = torch.where(sel, labels, input_ids)
        with torch.no_grad():
            # Sample replacements from the generator, restricted to residue tokens: the first
            # token whose cumulative probability exceeds the protein's own uniform number.
            picked = gen_logits[sel].float()  # (N, V)
            residue_ids = torch.as_tensor(self.layout.residue_ids, device=picked.device)
            allowed = torch.full((picked.shape[-1],), float("-inf"), device=picked.device)
            allowed[residue_ids] = 0.0
            cdf = torch.softmax(picked + allowed, -1).float().cumsum(-1)  # (N, V)
            u = batch["replace_u"].to(picked.device)[:, None] * cdf[:, -1:]  # (N, 1)
            # Rounding can leave u at the very top: the last residue token, never a special one.
            last = int(self.layout.residue_ids.max())  # on the host: no device synchronisation
            sampled = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=last)
            corrupted = original.clone()
            corrupted[sel] = sampled
        replaced = (corrupted != original).float()  # (B, T)
        real = batch["residue_mask"]
        disc_logits = _logits(inner.discriminator(**_model_inputs(batch, corrupted)))  # (B, T)
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits[real].float(), replaced[real],
                                                       reduction="sum")
        n_real = real.sum()
        disc_correct = ((disc_logits[real] > 0).float() == replaced[real]).sum()
        ratio = batch.get("step_ratio")
        scale = ratio if ratio is not None else n_masked.float() / n_real.clamp(min=1).float()
        total = gen_loss + self.config.electra_disc_weight * disc_loss * scale
        return total, n_masked, {"accuracy": (gen_correct, n_masked),
                                 "disc_accuracy": (disc_correct, n_real),
                                 "gen_loss": (gen_loss.detach(), n_masked),
                                 "disc_loss": (disc_loss.detach(), n_real)}


class _Seq2Seq(Objective):
    """Shared by the T5 objectives: the decoder input is the label sequence shifted right."""

    def _finish(self, inputs, labels, masked=None):
        input_ids = self._pad(inputs, self.layout.pad_id)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :]
                          < torch.tensor([len(r) for r in inputs])[:, None]).long()
        labels_t = self._pad(labels, IGNORE)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels_t,
                 "num_predicted": int((labels_t != IGNORE).sum())}
        if masked is not None:
            batch["masked"] = self._pad([m.astype(np.int64) for m in masked], 0).bool()
        return batch

    def loss(self, model, batch):
        labels = batch["labels"]  # (B, S)
        config = _unwrap(model).config
        start = config.decoder_start_token_id
        start = self.layout.pad_id if start is None else start
        decoder_input_ids = torch.full_like(labels, self.layout.pad_id)
        decoder_input_ids[:, 0] = start
        decoder_input_ids[:, 1:] = labels[:, :-1].clamp(min=0)
        decoder_input_ids[:, 1:][labels[:, :-1] == IGNORE] = self.layout.pad_id
        decoder_attention_mask = torch.ones_like(labels)
        decoder_attention_mask[:, 1:] = (labels[:, :-1] != IGNORE).long()
        # No decoder cache in training: it is never read, and a block recomputed by
        # --activation-checkpointing would append to it a second time.
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                    use_cache=False)
        logits = _logits(out)  # (B, S, V)
        loss, correct, n = _ce_sum(logits, labels)
        metrics = {"accuracy": (correct, n)}
        if "masked" in batch:
            m = batch["masked"]
            metrics["masked_accuracy"] = (((logits.argmax(-1) == labels) & m).sum(), m.sum())
        return loss, n, metrics


class T5Denoise(_Seq2Seq):
    """ProtT5: 15% of residues replaced by a mask token; the decoder rebuilds the whole protein."""

    name = "t5"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        if layout.mask_id is None:
            raise ModelError("the t5 objective needs a mask token or <extra_id_0> in the tokenizer")

    def collate(self, samples):
        inputs, labels, masked = [], [], []
        suffix = np.array(self.layout.suffix, dtype=np.int64)
        for s in samples:
            res = s.residues
            chosen = s.rng(1).random(len(res)) < self.config.mask_prob
            x = np.where(chosen, self.layout.mask_id, res)
            inputs.append(np.concatenate([self.layout.prefix, x, suffix]).astype(np.int64))
            labels.append(np.concatenate([res, suffix]))
            masked.append(np.concatenate([chosen, np.zeros(len(suffix), bool)]))
        return self._finish(inputs, labels, masked)


class T5Span(_Seq2Seq):
    """T5 span corruption: noise density 0.15, mean span length 3, one sentinel per span."""

    name = "t5_span"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        if not layout.sentinel_ids:
            raise ModelError("the t5_span objective needs <extra_id_N> sentinel tokens")

    def spans(self, length: int, rng: np.random.Generator):
        """Alternating (keep, noise) span lengths covering `length` residues, keep first."""
        num_noise = int(round(length * self.config.noise_density))
        num_noise = min(max(num_noise, 1), length - 1)
        num_spans = int(round(num_noise / self.config.mean_span_length))
        # (one sentinel kept in reserve: the roll may cut a span in two)
        num_spans = max(1, min(num_spans, num_noise, length - num_noise, len(self.layout.sentinel_ids) - 1))

        def split(total, parts):  # random composition of `total` into `parts` positive parts
            cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else []
            return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)

        return split(length - num_noise, num_spans), split(num_noise, num_spans)

    def noise_mask(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """(length,) bool, the residues to corrupt: the spans above, rolled by a random offset
        (T5's `random_roll`). Unrolled, keep first and noise last, every protein's C-terminal
        residue was corrupted and its N-terminal one never."""
        keep, noise = self.spans(length, rng)
        mask = np.repeat(np.tile([False, True], len(keep)), np.column_stack([keep, noise]).ravel())
        if len(self.layout.sentinel_ids) < 2:  # no sentinel for the second half of a cut span
            return mask
        return np.roll(mask, int(rng.integers(length)))

    def collate(self, samples):
        inputs, labels = [], []
        suffix = list(self.layout.suffix)
        sentinels = self.layout.sentinel_ids
        for s in samples:
            res = s.residues
            if len(res) < 2:  # nothing to corrupt: reconstruct the protein after one sentinel
                inputs.append(np.array(self.layout.prefix + [sentinels[0]] + suffix, dtype=np.int64))
                labels.append(np.array([sentinels[0], *res.tolist(), *suffix], dtype=np.int64))
                continue
            mask = self.noise_mask(len(res), s.rng(1))
            cuts = np.flatnonzero(mask[1:] != mask[:-1]) + 1
            x, y, k = list(self.layout.prefix), [], 0
            for piece, is_noise in zip(np.split(res, cuts), mask[np.concatenate([[0], cuts])]):
                if is_noise:
                    x.append(sentinels[k])
                    y.append(sentinels[k])
                    y.extend(piece.tolist())
                    k += 1
                else:
                    x.extend(piece.tolist())
            inputs.append(np.array(x + suffix, dtype=np.int64))
            labels.append(np.array(y + suffix, dtype=np.int64))
        return self._finish(inputs, labels)


class PermutationLM(Objective):
    """XLNet permutation LM: predict plm_prob of the residues in a random factorisation order.

    Non-target tokens come first in the order (every token sees them); targets follow in a
    random order and see only targets earlier than themselves (perm_mask), and the query
    stream of a target never sees its own content. Inputs are left unchanged.
    """

    name = "plm"

    def collate(self, samples):
        inputs, targets = [], []
        offset = len(self.layout.prefix)
        for s in samples:
            res = s.residues
            rng = s.rng(1)
            chosen = np.flatnonzero(rng.random(len(res)) < self.config.plm_prob)
            if len(chosen) == 0 and len(res):
                chosen = np.array([int(rng.integers(len(res)))])
            order = rng.permutation(len(chosen))
            inputs.append(self._with_specials(res))
            targets.append((chosen[order] + offset, res[chosen[order]]))  # in factorisation order
        input_ids = self._pad(inputs, self.layout.pad_id)
        B, T = input_ids.shape
        P = max(1, max(len(t[0]) for t in targets))
        perm_mask = torch.zeros(B, T, T)
        target_mapping = torch.zeros(B, P, T)
        labels = torch.full((B, P), IGNORE, dtype=torch.long)
        for b, (pos, lab) in enumerate(targets):
            pos_t = torch.as_tensor(pos, dtype=torch.long)
            rank = torch.full((T,), -1, dtype=torch.long)  # -1: not a target (seen by all)
            rank[pos_t] = torch.arange(len(pos))
            is_target = rank >= 0
            # perm_mask[i, j] = 1: token i may not see token j (j a target not before i)
            blocked = is_target[None, :] & ((~is_target[:, None]) | (rank[None, :] >= rank[:, None]))
            perm_mask[b] = blocked.float()
            target_mapping[b, torch.arange(len(pos)), pos_t] = 1.0
            labels[b, :len(pos)] = torch.as_tensor(lab)
        attention_mask = (torch.arange(T)[None, :] < torch.tensor([len(r) for r in inputs])[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "perm_mask": perm_mask,
                "target_mapping": target_mapping, "labels": labels,
                "num_predicted": int((labels != IGNORE).sum())}

    def loss(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"])
        loss, correct, n = _ce_sum(_logits(out), batch["labels"])  # logits (B, P, V)
        return loss, n, {"accuracy": (correct, n)}


class CausalLM(Objective):
    """Transformer-XL: next-token prediction over segments, carrying memory between them."""

    name = "clm"

    def collate(self, samples):
        ids = [self._with_specials(s.residues) for s in samples]
        labels = [np.concatenate([r[1:], [IGNORE]]) for r in ids]  # next token; none after the last
        pre, suf = len(self.layout.prefix), len(self.layout.suffix)
        for s, y in zip(samples, labels):
            # A window cut out of a longer protein: its first residue is not the protein's first
            # (nothing to learn from the prefix about it), and the protein does not end after its
            # last residue (no end-of-protein token to predict there).
            if not s.n_terminus and pre:
                y[pre - 1] = IGNORE
            if not s.c_terminus and suf:
                y[len(y) - suf - 1:] = IGNORE
        input_ids = self._pad(ids, self.layout.pad_id)
        labels_t = self._pad(labels, IGNORE)
        seg = max(1, int(self.config.segment_length))
        # num_segments: the model calls of the batch, which the step's exchange raises to the
        # most of any micro-batch on any rank (see loss)
        return {"input_ids": input_ids, "labels": labels_t,
                "num_predicted": int((labels_t != IGNORE).sum()), "num_segments": -(-input_ids.shape[1] // seg)}

    def loss(self, model, batch):
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T)
        seg = max(1, int(self.config.segment_length))
        width = input_ids.shape[1]
        mems = None
        total = correct = n = 0
        # Under FSDP every model call gathers each block's parameters from all ranks, so every
        # rank must make as many calls: a batch narrower than another rank's (fewer segments)
        # makes up the difference with one-token segments of padding, which predict nothing
        # (their loss and gradient are 0). With a call count of its own, a rank waited in a
        # collective the others never reached (gloo: "Received data size doesn't match").
        segments = max(-(-width // seg), int(batch.get("num_segments", 0)))
        padding = torch.full((input_ids.shape[0], 1), self.layout.pad_id, dtype=input_ids.dtype,
                             device=input_ids.device)
        # Right padding keeps padding after every real token, so causal attention (and the
        # memory of earlier segments) never lets a real token see padding.
        for start in range(0, segments * seg, seg):
            ids, target = ((input_ids[:, start:start + seg], labels[:, start:start + seg]) if start < width
                           else (padding, torch.full_like(padding, IGNORE)))
            out = model(input_ids=ids, mems=mems)
            mems = getattr(out, "mems", None)
            if mems is not None:
                mems = [m.detach() for m in mems]
            part_loss, part_correct, part_n = _ce_sum(_logits(out), target)
            total, correct, n = total + part_loss, correct + part_correct, n + part_n
        return total, n, {"accuracy": (correct, n)}


OBJECTIVE_CLASSES = {cls.name: cls for cls in (MaskedLM, Electra, T5Denoise, T5Span, PermutationLM, CausalLM)}


def make_objective(name: str, layout: TokenLayout, config) -> Objective:
    try:
        cls = OBJECTIVE_CLASSES[name]
    except KeyError:
        raise ModelError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVE_CLASSES)})") from None
    return cls(layout, config)


def _unwrap(model):
    """The module inside DDP (FSDP2 shards in place, so it needs no unwrapping)."""
    return getattr(model, "module", model)
