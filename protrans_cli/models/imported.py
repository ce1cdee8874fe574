"""What `protrans import-model` writes, whatever it converts (a fair-esm checkpoint: fair_esm.py;
ESM C's weights: esmc.py; a peft LoRA adapter: peft_merge.py): a model directory written beside its target, read back
through `load_model` (transformers' from_pretrained) and compared weight by weight, and only then
put in the target's place. A refused, failing or interrupted import leaves the target as it was
and no partial folder.

The weights are held once: a converted model is built with its parameters on the meta device
(`empty_parameters`: no memory, no random initialisation) and given the checkpoint's tensors
themselves (`assign`: a file torch.load maps stays mapped); it is written, each weight's digest
taken, and freed before the directory is read back and compared with the digests."""

from __future__ import annotations

from contextlib import contextmanager
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


@contextmanager
def empty_parameters():
    """Modules constructed inside hold their parameters on the meta device: no memory and no
    random initialisation for weights that `assign` replaces (buffers are made as usual: position
    ids and rotary frequencies are computed, not read)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def assign(model, weights: dict, dtype) -> tuple[list, list]:
    """`model`'s (built under empty_parameters) parameters and buffers replaced by the tensors of
    `weights` themselves, not copies (in `dtype` where a floating-point one is in another), and
    its tied weights tied again; load_state_dict's missing and unexpected names. RuntimeError for a
    tensor of another shape than the model's."""
    weights = {name: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t for name, t in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    return missing, unexpected


def left_on_meta(model) -> list[str]:
    """The names of `model`'s parameters and buffers that hold no weights (left on the meta device)."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]


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


def digest(tensor) -> tuple:
    """A weight's dtype, shape and a digest of its bytes (equal bytes: an equal weight)."""
    import hashlib

    import torch

    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return tensor.dtype, tuple(tensor.shape), hashlib.blake2b(data, digest_size=16).digest()


def digests(model, skip=lambda name: False) -> dict:
    """`model`'s weights as {name: digest}, every one but those `skip(name)` passes over and the
    computed position ids and rotary frequencies: what the model read back is compared with once
    the model is freed."""
    return {name: digest(tensor) for name, tensor in model.state_dict().items()
            if not name.endswith(("position_ids", "inv_freq")) and not skip(name)}


def write_checked(out_dir: Path, holder: list, save, *, masked_lm: bool, skip=lambda name: False,
                  hint: str = "", card=None) -> None:
    """The model in `holder` (a list of one: its last reference, which this empties) written by
    `save(model, folder)` beside `out_dir` (write_model_directory), its weights' digests taken
    and the model freed, then the folder read back through load_model and compared (read_back):
    one model in memory at a time. `card(loaded)`: the README.md model card's text, made from
    the model read back (training/card.py's import_card); a README.md of the user's own in the
    `out_dir` replaced (--force) is kept in its place."""
    import gc

    expected, dtype = {}, []

    def written(folder):
        model = holder.pop()
        save(model, folder)
        expected.update(digests(model, skip))
        dtype.append(model.dtype)
        del model
        # (with the caller's reference gone, the weights are freed here; the mapping of a file
        # torch.load mapped is held in reference cycles of torch.load's until the collector runs,
        # which might be after load_model has read the directory back: both copies at once)
        gc.collect()

    def verify(folder):
        loaded = read_back(folder, expected, dtype[0], masked_lm=masked_lm, hint=hint)
        if card is not None:
            _write_card(folder, out_dir, card, loaded)

    write_model_directory(out_dir, written, verify)


def _write_card(folder: Path, out_dir: Path, card, loaded) -> None:
    """README.md in `folder` (the directory that becomes `out_dir`): the user's own from the
    `out_dir` it replaces, kept; otherwise `card(loaded)`'s, or a warning and no card where it
    cannot be made (the model is what must not be lost)."""
    import shutil

    from protrans_cli.training.card import CARD_FILE, made_card, may_write, write_card

    own = out_dir / CARD_FILE
    if own.is_file() and not own.is_symlink() and not may_write(out_dir):
        shutil.copyfile(own, folder / CARD_FILE)
        return
    text = made_card(lambda: card(loaded), str(out_dir))
    if text is not None:
        write_card(folder, text)


def read_back(directory: Path, expected: dict, dtype, *, masked_lm: bool, hint: str = ""):
    """The written `directory` loads through load_model (in `dtype`) into the weights `expected`
    holds the digests of; RuntimeFailure naming the first that differs (`hint`: a likely cause,
    for the message). Returns what load_model loaded."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.models import load_model

    result = load_model(str(directory), masked_lm=masked_lm, dtype=dtype)
    loaded = result.model.state_dict()
    for name, wanted in expected.items():
        if (name not in loaded or digest(loaded[name].to(wanted[0])) != wanted):
            raise RuntimeFailure(f"the model read back differs in {name}{hint}", path=str(directory))
    return result
