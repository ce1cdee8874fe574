"""Property tests of train's resume and of a step's loss normalisation (docs/train.md,
Checkpoints and resuming; Objectives): for random small runs (family, phases, micro-batches cut
by count or by tokens, packing, pad multiple, gradient accumulation, save interval, --keep-last,
evaluations, a data-loader worker, optimizer, learning-rate schedule) stopped at a random step,
by --stop-after, by a Ctrl-C (the step under way finishes and is saved) or by a hard kill (a
second Ctrl-C: the steps since the last checkpoint are lost), once or twice, and resumed,
metrics.jsonl's lines (loss, lr, accuracy, gradient norm, tokens, eval loss) and the final
weights are the uninterrupted run's bit for bit (fp32 on the CPU); and the gradient of one
optimizer step over any split of its proteins into micro-batches is the gradient of the whole
global batch in one forward pass, whose loss is the sum over the step's predicted tokens divided
by their number."""

from __future__ import annotations

import contextlib
import functools
import signal
import tempfile
import types
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import example, given, strategies as st  # noqa: E402

from conftest import DATA, fewer  # noqa: E402
from protrans_cli.training.config import Phase, TrainConfig  # noqa: E402
from protrans_cli.training.metrics import read_metrics  # noqa: E402

LEARNABLE = str(DATA / "train" / "learnable.txt")
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
LETTERS = STANDARD + "XUZOB"

torch.set_num_threads(1)


# --- train --resume ----------------------------------------------------------------------

FAMILIES = ("bert", "t5", "esm", "roberta", "albert", "electra", "xlnet", "transfo_xl")
# (masked LM and ELECTRA: --packing goes with them; T5's objectives, XLNet's and Transformer-XL's do not)
PACKABLE = ("bert", "esm", "roberta", "albert", "electra")


@st.composite
def runs(draw):
    """(TrainConfig keyword arguments of a small run, its total steps, [(step, how)] of the one or
    two interruptions of the run in parts: --stop-after, a Ctrl-C, or a hard kill)."""
    family = draw(st.sampled_from(FAMILIES))
    micro = draw(st.sampled_from([1, 2, 4]))
    accum = draw(st.integers(1, 3))
    kw = dict(family=family, global_batch_size=micro * accum, micro_batch_size=micro,
              max_length=draw(st.sampled_from([12, 24, 40])), pad_multiple=draw(st.sampled_from([1, 3, 8])),
              token_micro_batches=draw(st.booleans()), packing=family in PACKABLE and draw(st.booleans()),
              bucket_batches=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)),
              lr=3e-3, log_every=1, save_every=draw(st.integers(1, 4)), threads=1,
              warmup_steps=draw(st.sampled_from([None, 1, 3])), keep_last=draw(st.integers(1, 3)),
              num_workers=draw(st.sampled_from([0, 0, 0, 1])),
              # (LAMB and Adafactor keep state of their own; each schedule its own position)
              optimizer=draw(st.sampled_from(["adamw", "lamb", "adafactor"])),
              schedule=draw(st.sampled_from(["linear", "cosine", "inverse_sqrt", "constant"])))
    if family == "t5" and draw(st.booleans()):
        kw["objective"] = "t5_span"
    if family == "albert" and not kw["packing"] and draw(st.booleans()):  # (--packing refuses --sop)
        kw["sop"] = True
    if draw(st.booleans()):  # evaluated every few steps (and at the end) on a validation corpus
        kw.update(val_corpus=[LEARNABLE], eval_every=draw(st.integers(0, 3)), num_eval_batches=1)
    if kw["packing"] and family == "esm":
        kw["model_overrides"] = {"token_dropout": False}  # (what --packing asks of ESM)
    if draw(st.booleans()):  # two phases, the second longer proteins in other batches
        first, second = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        micro2 = draw(st.sampled_from([1, 2]))
        kw["phases"] = [Phase(kw["max_length"], first),
                        Phase(kw["max_length"] + draw(st.sampled_from([5, 16])), second,
                              micro2 * draw(st.integers(1, 2)), micro2)]
        kw["num_steps"], total = 0, first + second
    else:
        total = kw["num_steps"] = draw(st.integers(2, 6))
    # one or two interruptions, in order: after which step, and how
    steps = sorted(draw(st.sets(st.integers(1, total - 1), min_size=1, max_size=min(2, total - 1))))
    return kw, total, [(k, draw(st.sampled_from(["stop_after", "signal", "kill"]))) for k in steps]


@contextlib.contextmanager
def _after_step(step: int, act):
    """`act()` right after the metrics line of `step` is written (inside a step's bookkeeping)."""
    from protrans_cli.training import loop

    append = loop.append_metrics

    def append_then_act(path, record):
        append(path, record)
        if record.get("step") == step:
            act()

    loop.append_metrics = append_then_act
    try:
        yield
    finally:
        loop.append_metrics = append


def _hard_kill():
    raise KeyboardInterrupt  # (not through the run's signal handler: nothing saved of the step)


def _lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines less their speed (step, phase, epoch, loss, lr, accuracy, grad_norm,
    tokens, eval_loss)."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(run_dir / "metrics.jsonl")]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


@fewer(5)
@given(run=runs())
@example(run=({"family": "bert", "global_batch_size": 4, "micro_batch_size": 2, "max_length": 24, "pad_multiple": 3,
               "token_micro_batches": True, "packing": True, "bucket_batches": 2, "seed": 1, "lr": 3e-3,
               "log_every": 1, "save_every": 2, "threads": 1, "warmup_steps": None, "num_steps": 0,
               "phases": [Phase(24, 2), Phase(40, 2, 2, 1)]}, 4, [(1, "kill"), (3, "signal")]),
         ).via("a kill before the first checkpoint, a Ctrl-C in phase 2")
def test_a_run_stopped_and_resumed_anywhere_is_the_uninterrupted_run(run):
    from protrans_cli.training.loop import train

    kw, total, stops = run
    with tempfile.TemporaryDirectory() as folder:
        whole = train(TrainConfig(corpus=[LEARNABLE], output_dir=f"{folder}/whole", **kw))
        assert whole.completed and whole.step == total
        out, resume = f"{folder}/parts", None
        for step, how in stops:
            if how == "stop_after":
                part = train(TrainConfig(corpus=[LEARNABLE], output_dir=out, stop_after=step, **kw), resume=resume)
                assert not part.completed and part.step == step
            else:
                act = (lambda: signal.raise_signal(signal.SIGINT)) if how == "signal" else _hard_kill
                with _after_step(step, act), pytest.raises(KeyboardInterrupt):
                    train(TrainConfig(corpus=[LEARNABLE], output_dir=out, **kw), resume=resume)
            resume = True
        rest = train(TrainConfig(corpus=[LEARNABLE], output_dir=out, **kw), resume=True)
        assert rest.completed and rest.step == total
        expected = _lines(Path(folder) / "whole")
        assert [r["step"] for r in expected] == list(range(1, total + 1))
        assert _lines(Path(out)) == expected  # bit for bit on the CPU, each step logged once
        a, b = _weights(Path(folder) / "whole"), _weights(Path(out))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a step's loss normalisation -----------------------------------------------------------

NO_DROPOUT = {"t5": {"dropout_rate": 0.0}, "xlnet": {"dropout": 0.0}, "transfo_xl": {"dropout": 0.0, "dropatt": 0.0},
              "albert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                         "classifier_dropout_prob": 0.0}}
OBJECTIVES = {"bert": "mlm", "esm": "mlm", "roberta": "mlm", "t5": "t5", "electra": "electra", "albert": "mlm",
              "xlnet": "plm", "transfo_xl": "clm"}
# the plain transformers class whose `labels=` loss is the mean over the batch's predicted tokens
PLAIN_LOSS = ("bert", "esm", "roberta", "t5")


@functools.lru_cache(maxsize=None)
def _model(family: str, packed: bool, token_dropout: bool = True):
    """(family, layout, a tiny pretraining model with dropout off; packed: its attention on packed
    rows, built apart from the padded one with the same weights)."""
    from protrans_cli.models import get_family
    from protrans_cli.training.data import TokenLayout

    fam = get_family(family)
    tokenizer = fam.build_tokenizer()
    overrides = NO_DROPOUT.get(family, {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    if family == "esm" and not token_dropout:
        overrides = {**overrides, "token_dropout": False}  # (what --packing asks of ESM)
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer, **overrides))
    return fam, TokenLayout.from_tokenizer(tokenizer, fam.prepare), model


@st.composite
def steps(draw):
    """(family, proteins, seed, epoch, micro-batches as lists of positions, pad multiple, packed, sop)."""
    family = draw(st.sampled_from(list(OBJECTIVES)))
    proteins = draw(st.lists(st.text(LETTERS + LETTERS.lower(), min_size=1, max_size=40), min_size=1, max_size=8))
    order = draw(st.permutations(range(len(proteins))))
    cuts = sorted(draw(st.sets(st.integers(1, len(proteins) - 1), max_size=len(proteins) - 1))) if len(proteins) > 1 \
        else []
    micro = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(proteins)])]
    packed = family in ("bert", "esm", "roberta", "electra") and draw(st.booleans())
    sop = family == "albert" and draw(st.booleans())
    return (family, proteins, draw(st.integers(0, 2**16)), draw(st.integers(0, 3)), micro,
            draw(st.sampled_from([1, 3, 8])), packed, sop)


def _step_gradient(run, micro_batches) -> tuple[dict | None, dict]:
    """train_step over `micro_batches`: (the gradient it hands the optimizer, None when it takes
    no step; its statistics)."""
    from protrans_cli.training.loop import train_step

    module = run.wrapped
    taken = {}

    class Keep:  # an optimizer that only looks at the gradient
        def step(self):
            taken.update({name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None})

        def zero_grad(self, set_to_none=True):
            module.zero_grad(set_to_none=True)

    module.zero_grad(set_to_none=True)
    stats = train_step(run, Keep(), micro_batches)
    return (taken or None), stats


def _run(family, packed, sop, pad_multiple, no_token_dropout=False):
    from protrans_cli.training import dist
    from protrans_cli.training.loop import LossModule
    from protrans_cli.training.objectives import make_objective

    fam, layout, model = _model(family, packed, token_dropout=not (packed or no_token_dropout))
    if family == "t5":
        # In float64: two paddings sum in other orders, and in float32 a pre-activation within 1e-6
        # of the ReLU's kink (T5's feed-forward; the others' GELU has none) took the other side, a
        # jump of 5e-3 in the gradient (seed 6301: ['FEKY', 'AAAAAAAA'], widths 9 and 16); in
        # float64 the same runs agree to 1e-16.
        model.double()
    config = TrainConfig(family=family, grad_clip=0.0, sop=sop, pad_multiple=pad_multiple, packing=packed)
    objective = make_objective(OBJECTIVES[family], layout, config)
    if packed:
        from protrans_cli.models import packing

        objective.packed_position_offset = fam.packed_position_offset(model.config)
        packing.use_packed_attention(model)
    return types.SimpleNamespace(config=config, info=dist.DistInfo(), layout=layout, loss_scale=None,
                                 wrapped=LossModule(model, objective), strategy="none",
                                 autocast=contextlib.nullcontext, model=model, objective=objective,
                                 compile_mode="default")


@fewer(40)
@given(step=steps())
def test_a_steps_gradient_over_any_micro_batches_is_the_whole_global_batchs(step):
    """#4: the loss of a step (every family's objective) is its summed loss over the predicted
    tokens of all its micro-batches divided by their number, so the split (gradient accumulation,
    --token-micro-batches, packing) changes nothing. Reference: the whole global batch in one
    padded forward pass, through the plain transformers model's own `labels=` loss (a mean over
    the batch's predicted tokens) where the objective is one term, else through one micro-batch of it."""
    from protrans_cli.training.data import Sample

    family, proteins, seed, epoch, micro, pad_multiple, packed, sop = step
    run = _run(family, packed, sop, pad_multiple)
    layout = run.layout
    samples = [Sample(i, epoch, layout.encode(p), seed) for i, p in enumerate(proteins)]
    split = [run.objective.collate([samples[i] for i in part]) for part in micro]
    got, stats = _step_gradient(run, split)
    reference = _run(family, False, sop, 8, no_token_dropout=packed)
    whole = reference.objective.collate(samples)
    predicted = whole["num_predicted"]
    assert sum(b["num_predicted"] for b in split) == predicted
    if not predicted and family not in ("electra",) and not sop:
        assert got is None and stats["loss"] == (0.0, 0.0)  # nothing to predict: no step
        return
    if family in PLAIN_LOSS:
        model = reference.model
        model.zero_grad(set_to_none=True)
        model.train()
        out = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"], labels=whole["labels"])
        out.loss.backward()
        out.loss = out.loss.detach()
        expected = {"model." + name: p.grad.detach().clone() for name, p in model.named_parameters()
                    if p.grad is not None}
        model.zero_grad(set_to_none=True)
        assert stats["loss"][0] / stats["loss"][1] == pytest.approx(out.loss.item(), rel=1e-5, abs=1e-6)
    else:
        expected, whole_stats = _step_gradient(reference, [whole])
        assert stats["loss"][0] / stats["loss"][1] == pytest.approx(whole_stats["loss"][0] / whole_stats["loss"][1],
                                                                    rel=1e-5, abs=1e-6)
    assert got is not None and expected is not None
    assert got.keys() == expected.keys()
    for name in expected:
        # (float32 sums: an element near zero carries the rounding of its largest terms, of the
        # tensor's scale; the fuzz profile met 1.7e-6 on an ESM bias gradient whose largest was 5.06)
        scale = max(1.0, float(expected[name].abs().max()))
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
