"""The chain of origins of a model protrans wrote: a run of `protrans train --init-from` began
with another model (train_config.json's resolved `init_from`), a `protrans finetune` output
(OUT/model, beside OUT/finetune.json) with the model it fine-tuned (finetune.json's `model`), a
LoRA adapter merged by `protrans import-model` with its base (config.json's MERGED_KEY).
What a model learned in training (its contact head, the lengths of protein it saw whole) is
known by following the chain back to where it ends: a run pretrained from scratch, or a
published model (a hub id, a folder protrans did not write). Used by contacts (an untrained
contact head) and embed, generate, variants, perplexity (the longest protein seen in training)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

# how many `--init-from`/finetune steps back a chain is followed (a cycle of folders ends there)
ORIGINS_FOLLOWED = 16

TRAINED_FURTHER = "trained further by protrans train"
FINETUNED = "fine-tuned by protrans finetune"
MERGED = "merged with a LoRA adapter by protrans import-model"
# config.json's key where `import-model ADAPTER` records the base the adapter was merged into
# (a local base by its absolute path): the merged model's contact head is the base's
MERGED_KEY = "protrans_merged_into"


@dataclass(frozen=True)
class Step:
    """One model of a chain. `written`: protrans trained it (protrans_version in its config.json);
    `how`/`origin`: how and from what it began (None, None: from scratch, or not written by
    protrans); `train_config`: its train_config.json, where it has one."""

    folder: Path
    written: bool
    how: str | None = None
    origin: str | None = None
    train_config: dict | None = None


def _read_json(path: Path):
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def finetuned_from(target: Path) -> str | None:
    """The model that the `protrans finetune` output `target` (OUT/model, beside OUT/finetune.json)
    was fine-tuned from, or None."""
    data = _read_json(Path(target).parent / "finetune.json")
    if Path(target).name == "model" and isinstance(data, dict) and data.get("format") == "protrans-finetune":
        return str(data.get("model") or "an unrecorded model")
    return None


def step_of(target: Path) -> Step | None:
    """What the model folder `target` records of its beginning; None where it is not a model
    folder (no readable config.json: a hub id, a missing path)."""
    target = Path(target)
    config = _read_json(target / "config.json")
    if not isinstance(config, dict):
        return None
    train_config = _read_json(target / "train_config.json")
    train_config = train_config if isinstance(train_config, dict) else None
    if "protrans_version" not in config:
        return Step(target, False, train_config=train_config)
    if (origin := finetuned_from(target)):
        return Step(target, True, FINETUNED, origin, train_config)
    given = train_config.get("init_from") if train_config else None
    if not given:
        if isinstance(config.get(MERGED_KEY), str) and config[MERGED_KEY]:
            return Step(target, True, MERGED, config[MERGED_KEY], train_config)
        return Step(target, True, train_config=train_config)
    resolved = train_config.get("resolved")
    # (the absolute path train_config.json records beside init_from as given, read from the
    # directory train ran in)
    origin = (resolved.get("init_from") if isinstance(resolved, dict) else None) or given
    return Step(target, True, TRAINED_FURTHER, str(origin), train_config)


def chain_of_origins(target: Path) -> list[Step]:
    """The models from `target` back to where its training began, `target` first. The last step
    is a run from scratch (written, no origin), a model protrans did not write (not written), or
    a step whose origin is not followed (`origin` set: a hub id, a folder no longer there, or
    ORIGINS_FOLLOWED steps reached). Empty where `target` is no model folder."""
    chain: list[Step] = []
    step = step_of(Path(target))
    while step is not None:
        chain.append(step)
        if step.origin is None or len(chain) > ORIGINS_FOLLOWED or not Path(step.origin).is_dir():
            break
        step = step_of(Path(step.origin))
    return chain


def from_scratch(chain: list[Step]) -> bool:
    """Whether `chain` ends at a run protrans pretrained from scratch (and so nothing of a
    published model came into the first model)."""
    return bool(chain) and chain[-1].written and chain[-1].origin is None
