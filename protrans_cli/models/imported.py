"""What `protrans import-model` writes, whatever it converts (a fair-esm checkpoint: fair_esm.py;
ESM C's weights: esmc.py; a peft LoRA adapter: peft_merge.py): a model directory written beside its target, read back
through `load_model` (transformers' from_pretrained) and compared weight by weight, and only then
put in the target's place. A refused, failing or interrupted import leaves the target as it was
and no partial folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protrans_cli.errors import UsageError, expect_path, force_option, option


@dataclass
class ImportedModel:
    """What an import of a checkpoint wrote (the command's summary line: `describe`)."""

    out_dir: Path
    kind: str          # ESM-2, ESM-1b, ESM-1v, ESM C
    layers: int
    dim: int
    heads: int
    contact_head: bool | None = None  # None: a kind that has none (ESM C)


def describe(imported: ImportedModel) -> str:
    head = "" if imported.contact_head is None else f", contact head: {'yes' if imported.contact_head else 'no'}"
    return (f"imported {imported.kind} ({imported.layers} layers, {imported.dim} dimensions, {imported.heads} "
            f"heads{head}) into {imported.out_dir}")


def hub_file(repo: str, filename: str) -> str | None:
    """The path of a hub repository's file in the local Hugging Face cache, or None (not there, or
    a cache that cannot be read: where to convert from is advice, never an error of its own)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001 - see above
        return None
    return path if isinstance(path, str) else None


def model_output(out_dir, source: Path, what: str, example: str, force: bool) -> Path:
    """`out_dir` checked as a model directory to write from `source` (the `what`: "checkpoint",
    "adapter"): an existing one needs `force`, and may not hold the source; another folder's
    contents are never deleted. `example`: a directory name for the messages."""
    from protrans_cli.io.files import check_replaceable, empty_folder, input_inside, own_folder_output

    out_dir = own_folder_output(out_dir, "a model directory", example)
    if out_dir.exists() and not empty_folder(out_dir):
        if not force:
            raise UsageError(f"{out_dir} exists ({force_option()} replaces it)")
        if input_inside(out_dir, [source]) is not None:
            raise UsageError(f"{out_dir} holds the {what} {source}: {force_option()} would delete it (choose "
                             f"another {option('-o', 'out_dir')})")
        model_dir = (out_dir / "config.json").is_file()
        check_replaceable(out_dir, "import-model", lambda entry: model_dir)
    return out_dir


def checkpoint_output(checkpoint, out_dir, example: str, force: bool) -> tuple[Path, Path]:
    """A checkpoint file's path (read in place: not stdin) and `out_dir` checked (model_output)."""
    expect_path(checkpoint, "checkpoint")
    expect_path(out_dir, "out_dir")
    if str(checkpoint) == "-":
        raise UsageError("the checkpoint is read in place: give a file, not stdin")
    checkpoint = Path(checkpoint)
    return checkpoint, model_output(out_dir, checkpoint, "checkpoint", example, force)


def write_model_directory(out_dir: Path, save, verify) -> None:
    """`save(folder)` into a new folder beside `out_dir`, `verify(folder)`, then the folder takes
    `out_dir`'s place; removed on any failure (a full disk: one line)."""
    import shutil

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import default_permissions, disk_full, folder_can_be_made, make_temporary, \
        replace_directory
    from protrans_cli.models import _quiet_transformers

    folder_can_be_made(out_dir.parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.partial.", "", folder=True)
    try:
        with _quiet_transformers():  # (its "Writing model shards" bar, unless protrans shows bars)
            save(tmp)
        verify(tmp)
        default_permissions(tmp)
        replace_directory(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (reason := disk_full(exc)) is not None:
            raise RuntimeFailure(f"cannot write the model: {reason}", path=str(out_dir)) from None
        raise


def read_back(directory: Path, model, *, masked_lm: bool, skip=lambda name: False, hint: str = "") -> None:
    """The written `directory` loads through load_model into `model`'s weights, every one of them
    but those `skip(name)` passes over (position ids and rotary frequencies are computed, not
    weights); RuntimeFailure naming the first that differs (`hint`: a likely cause, for the message)."""
    import torch

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.models import load_model

    loaded = load_model(str(directory), masked_lm=masked_lm, dtype=model.dtype).model.state_dict()
    for name, tensor in model.state_dict().items():
        if name.endswith(("position_ids", "inv_freq")) or skip(name):
            continue
        if name not in loaded or not torch.equal(loaded[name].to(tensor.dtype), tensor):
            raise RuntimeFailure(f"the model read back differs in {name}{hint}", path=str(directory))
