"""Properties of train's settings, for every value of a kind (Hypothesis; see
docs/development.md): a config file written as JSON or as TOML reads back to the same settings
as the run saved them, flags replace exactly the settings they name, a phase reads back from
what messages and saved configs write of it, Slurm's wall-time formats read as Slurm reads them,
and the advice for a batch size that does not divide is advice that works."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protrans_cli.errors import UsageError  # noqa: E402
from protrans_cli.training.config import Phase, TrainConfig, grad_accum_steps  # noqa: E402
from protrans_cli.training.timelimit import parse_duration  # noqa: E402

positive = st.integers(min_value=1, max_value=10**6)
# paths as people name corpora: no shell pattern characters (a pattern is expanded on reading)
path_text = st.text(st.characters(blacklist_characters="*?[]\x00", blacklist_categories=("Cs",)),
                    min_size=1, max_size=20).filter(lambda p: p.strip() and p != "-")
finite = st.floats(min_value=1e-9, max_value=1e3, allow_nan=False, allow_infinity=False)
json_scalar = st.one_of(st.booleans(), st.integers(-10**6, 10**6), finite, st.text(max_size=10))


@st.composite
def phases(draw):
    return Phase(draw(st.integers(8, 4096)), draw(positive), draw(st.none() | positive),
                 draw(st.none() | positive))


@st.composite
def configs(draw):
    """Train settings as a user sets them: any subset of the plain ones, lists, a table of model
    overrides, and phases or a single length and step count (not both: refused)."""
    chosen = {}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {
        "family": st.sampled_from(["bert", "t5", "albert", "electra", "xlnet", "transfo_xl", "esm", "roberta"]),
        "preset": st.sampled_from(["tiny", "small", "base"]),
        "corpus": st.lists(path_text, min_size=1, max_size=3),
        "val_corpus": st.lists(path_text, max_size=2),
        "output_dir": path_text,
        "global_batch_size": positive, "micro_batch_size": positive, "bucket_batches": positive,
        "pad_multiple": positive, "num_workers": st.integers(0, 8),
        "packing": st.booleans(), "token_micro_batches": st.booleans(), "sample_clusters": st.booleans(),
        "mask_prob": st.floats(0.01, 0.9), "lr": finite, "weight_decay": st.floats(0, 1),
        "adam_beta2": st.floats(0.5, 0.999), "warmup_steps": st.integers(0, 10**5),
        "schedule": st.sampled_from(["linear", "cosine", "inverse_sqrt"]),
        "optimizer": st.sampled_from(["adamw", "lamb", "adafactor"]),
        "seed": st.integers(0, 2**64 - 1), "precision": st.sampled_from(["auto", "fp32", "bf16"]),
        "compile": st.booleans(), "log_every": positive, "save_every": positive, "keep_last": positive,
        "keep_best": st.booleans(), "dist_timeout": st.sampled_from(["30m", "1h", "0:45:00"]),
        "model_overrides": st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), json_scalar,
                                           max_size=4),
    }
    for name, strategy in values.items():
        assert name in fields, name
        if draw(st.booleans()):
            chosen[name] = draw(strategy)
    if draw(st.booleans()):
        chosen["phases"] = draw(st.lists(phases(), min_size=1, max_size=3))
    else:
        for name, strategy in (("max_length", st.integers(8, 4096)), ("num_steps", positive)):
            if draw(st.booleans()):
                chosen[name] = draw(strategy)
    return chosen


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash and quote escaped, control characters (DEL too) as \\uXXXX."""
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else
                         "\\" + c if c in '"\\' else c for c in text) + '"'


def _toml(settings: dict) -> str:
    """What a user writes: top-level keys, a [model_overrides] table, [[phases]] tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items()
             if k not in ("model_overrides", "phases") and v is not None]
    if settings.get("model_overrides"):
        lines.append("[model_overrides]")
        lines += [f"{_toml_string(k)} = {_toml_value(v)}" for k, v in settings["model_overrides"].items()]
    for phase in settings.get("phases", []):
        lines.append("[[phases]]")
        lines += [f"{f.name} = {getattr(phase, f.name)}" for f in dataclasses.fields(Phase)
                  if getattr(phase, f.name) is not None]
    return "\n".join(lines) + "\n"


@given(configs())
def test_a_config_file_reads_back_as_the_run_saves_it_in_json_and_toml(settings):
    given_cfg = TrainConfig(**settings)
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp, "c.toml")
        toml.write_text(_toml(settings), encoding="utf-8")
        from_toml = TrainConfig.from_file(toml)
        given_json = Path(tmp, "given.json")
        given_json.write_text(json.dumps({k: ([dataclasses.asdict(p) for p in v] if k == "phases" else v)
                                          for k, v in settings.items()}), encoding="utf-8")
        from_json = TrainConfig.from_file(given_json)
        # what the run writes into its directory, read back (a template, or --resume's record)
        given_cfg.save(Path(tmp, "train_config.json"), resolved={"precision": "fp32"})
        saved = TrainConfig.from_file(Path(tmp, "train_config.json"))
    assert from_toml == given_cfg
    assert from_json == given_cfg
    assert saved == given_cfg


@given(configs(), configs())
def test_flags_replace_exactly_the_settings_they_name(file_settings, flag_settings):
    # (a flag naming another family resets a file's objective: none is set here)
    flags = {k: v for k, v in flag_settings.items() if k not in ("phases", "max_length", "num_steps")}
    base = TrainConfig(**file_settings)
    out = base.override(**flags)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":
            assert out.model_overrides == {**base.model_overrides, **flags.get("model_overrides", {})}
        elif f.name in flags and flags[f.name] != []:
            assert getattr(out, f.name) == flags[f.name], f.name
        else:
            assert getattr(out, f.name) == getattr(base, f.name), f.name


@given(phases(), positive)
def test_a_phase_reads_back_from_what_is_written_of_it(phase, run_global):
    """Phase.spec (how messages and --phase show a phase) parses back to the phase, with the
    run's global batch filled in where only a micro-batch size was given."""
    resolved = Phase(phase.max_length, phase.num_steps, phase.global_batch_size or run_global,
                     phase.micro_batch_size or 1)
    back = Phase.parse(phase.spec(resolved))
    expected = dataclasses.replace(phase, global_batch_size=resolved.global_batch_size) \
        if phase.micro_batch_size is not None else phase
    assert back == expected


def _slurm_seconds(days, hours, minutes, seconds, form) -> tuple[str, int]:
    """Slurm's --time forms (sbatch(1)) and the seconds Slurm reads in each, written here apart
    from protrans's parser."""
    if form == "M:SS":
        return f"{minutes}:{seconds:02d}", minutes * 60 + seconds
    if form == "H:MM:SS":
        return f"{hours}:{minutes:02d}:{seconds:02d}", hours * 3600 + minutes * 60 + seconds
    if form == "D-H":
        return f"{days}-{hours}", days * 86400 + hours * 3600
    if form == "D-H:MM":
        return f"{days}-{hours}:{minutes:02d}", days * 86400 + hours * 3600 + minutes * 60
    return (f"{days}-{hours}:{minutes:02d}:{seconds:02d}",
            days * 86400 + hours * 3600 + minutes * 60 + seconds)


@given(st.integers(0, 364), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59),
       st.sampled_from(["M:SS", "H:MM:SS", "D-H", "D-H:MM", "D-H:MM:SS"]))
@example(0, 0, 30, 0, "M:SS")  # "30:00": half an hour, as Slurm reads it (not 30 hours)
def test_slurm_wall_times_read_as_slurm_reads_them(days, hours, minutes, seconds, form):
    text, expected = _slurm_seconds(days, hours, minutes, seconds, form)
    if expected == 0:
        with pytest.raises(ValueError, match="more than 0"):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected
        assert parse_duration(f" {text.upper()} ") == expected


@given(st.integers(0, 400), st.integers(0, 30), st.integers(0, 200), st.integers(0, 5000))
@example(365, 0, 0, 0)
@example(365, 0, 0, 1)  # the longest a run may ask for, and a second more
def test_durations_with_units_add_up(days, hours, minutes, seconds):
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if not text or total == 0:
        with pytest.raises(ValueError):
            parse_duration(text or "0")
    elif total > 365 * 86400:
        with pytest.raises(ValueError, match="at most 365 days"):
            parse_duration(text)
    else:
        assert parse_duration(text) == total


@given(st.integers(1, 4096), st.integers(1, 256), st.integers(1, 64))
@example(64, 3, 4)
def test_a_batch_that_does_not_divide_gets_advice_that_works(global_batch, micro, world):
    if global_batch % (micro * world) == 0:
        assert grad_accum_steps(global_batch, micro, world) * micro * world == global_batch
        return
    with pytest.raises(UsageError) as info:
        grad_accum_steps(global_batch, micro, world)
    message = str(info.value)
    assert f"global batch size {global_batch} is not divisible by micro batch size {micro} x {world}" in message
    if global_batch % world:
        assert f"use a number of processes that divides {global_batch}" in message
    else:
        suggested = int(re.search(r"e\.g\. (\d+)", message).group(1))
        # the suggestion fits: it divides each rank's share, is no larger than the micro-batch
        # asked for (memory), and is the largest such
        assert suggested <= micro and global_batch % (suggested * world) == 0
        assert grad_accum_steps(global_batch, suggested, world) * suggested * world == global_batch
        assert not any((global_batch // world) % d == 0 for d in range(suggested + 1, micro + 1))
