"""Published prediction heads as protrans head directories (`protrans import-head`).

`prottrans-secstruct`: the ProtT5 secondary-structure CNN that the ProtTrans notebooks, bio_embeddings
and biocentral use (`secstruct_checkpoint.pt`, from data.bioembeddings.com/public/embeddings/
feature_models/t5/; Elnaggar et al. 2021): a `torch.save` of `{"state_dict": ..., "epoch": ...}` whose
network is the CNN `fit` builds for `ss3+ss8` (heads/cnn.py), written with Conv2d layers of
(7, 1) kernels over a trailing axis of one:

    elmo_feature_extractor.0   Conv2d(1024 -> 32, (7, 1), padding (3, 0)), then ReLU, Dropout(0.25)
    dssp3_classifier.0         Conv2d(32 -> 3, (7, 1)):  H, E, L (coil)    -> protrans ss3 H, E, C
    dssp8_classifier.0         Conv2d(32 -> 8, (7, 1)):  G, H, I, B, E, S, T, C (NetSurfP's Q8 order)
    diso_classifier.0          Conv2d(32 -> 2, (7, 1)):  disorder (left out: no protrans task)

The 8-state classifier's rows are put in protrans's ss8 order (H G I E B T S C); the weights are
otherwise the checkpoint's, so `protrans predict HEAD --fasta x.fa` (which embeds with the
recorded model, ProtT5-XL-U50's encoder in half precision unless `--model` says otherwise) gives
the notebook's predictions.

`la-location` and `la-membrane`: bio_embeddings' Light Attention models of DeepLoc (Staerk et al.
2021; `la_prott5_subcellular_localization.pt` and `la_prott5_subcellular_solubility.pt`, from
data.bioembeddings.com/public/embeddings/feature_models/light_attention/), each its own network,
the one `fit --architecture light-attention` builds (heads/light_attention.py):

    feature_convolution, attention_convolution   Conv1d(1024 -> 1024, 9, padding 4)
    linear.0, linear.3                           Linear(2048 -> 32), (Dropout, ReLU,) BatchNorm1d(32)
    output                                       Linear(32 -> 10): CM, Cyto, ER, Golgi, Lys/Vac, Mito,
                                                 Nucleus, Perox, Plastid, Extracellular (bio_embeddings'
                                                 order; put in protrans's) / Linear(32 -> 2): M, S

Each becomes a `loc` head with that one output. Checkpoints are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from protrans_cli._version import __version__
from protrans_cli.errors import (InputError, RuntimeFailure, UsageError, a_or_an, expect_path, force_option, one_of,
                                 option)

PROTTRANS_SECSTRUCT = "prottrans-secstruct"
LA_LOCATION, LA_MEMBRANE = "la-location", "la-membrane"
SOURCES = (PROTTRANS_SECSTRUCT, LA_LOCATION, LA_MEMBRANE)
# bio_embeddings' index of each location in the Light Attention location model's output
LA_LOCATIONS = ("Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus", "Lysosome/Vacuole",
                "Mitochondrion", "Nucleus", "Peroxisome", "Plastid", "Extracellular")
# The embeddings the ProtTrans CNN was trained on: ProtT5-XL-U50's encoder (the notebooks embed
# with its half-precision copy, as protrans's default model does)
DEFAULT_MODEL = "Rostlab/prot_t5_xl_half_uniref50-enc"
CHECKPOINT_SS3 = "HEC"        # its 3-state rows: H, E, L (coil, protrans's C)
CHECKPOINT_SS8 = "GHIBESTC"   # its 8-state rows


@dataclass
class ImportedHead:
    out_dir: Path
    source: str
    input_dim: int
    epoch: float | None


def import_head(checkpoint, out_dir, *, source: str = PROTTRANS_SECSTRUCT, model: str | None = None,
                force: bool = False) -> ImportedHead:
    """Write the head directory `out_dir` from the published checkpoint file `checkpoint`."""
    from protrans_cli.io.files import (check_replaceable, default_permissions, empty_folder, folder_can_be_made,
                                       input_inside, make_temporary, own_folder_output, replace_directory)

    expect_path(checkpoint, "checkpoint")
    expect_path(out_dir, "out_dir")
    one_of(source, SOURCES, "--from", keyword="source")
    if str(checkpoint) == "-":
        raise UsageError("the checkpoint is read in place: give a file, not stdin")
    checkpoint = Path(checkpoint)
    out_dir = own_folder_output(out_dir, "a head directory", "heads/prott5_ss")
    if out_dir.exists() and not empty_folder(out_dir):  # (an empty one: a workflow's made for it)
        if not force:
            raise UsageError(f"{out_dir} exists ({force_option()} replaces it)")
        if input_inside(out_dir, [checkpoint]) is not None:
            raise UsageError(f"{out_dir} holds the checkpoint {checkpoint}: {force_option()} would delete it (choose "
                             f"another {option('-o', 'out_dir')})")
        head = (out_dir / "config.json").is_file() and (out_dir / "weights.safetensors").is_file()
        check_replaceable(out_dir, "import-head", lambda entry: head)
    if model is not None:
        from protrans_cli.embed import model_attr

        # a local model directory as its absolute path, as embed records it (a relative `-m t5` was
        # looked up as the hub id "t5" by `predict --fasta` run from another folder)
        model = model_attr(model)
    state, digest = _load(checkpoint)
    if source == PROTTRANS_SECSTRUCT:
        ensemble, config, input_dim = _secstruct(state, checkpoint, digest, model or DEFAULT_MODEL)
    else:
        ensemble, config, input_dim = _light_attention(state, checkpoint, digest, model or DEFAULT_MODEL, source)
    if model is not None:  # (the family of a model -m names is not known without reading it: not recorded)
        config["embedding"].pop("family", None)
    from protrans_cli.heads.model import save_head

    folder_can_be_made(out_dir.parent)  # (a file on its way: "afile: File exists", exit 1)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary(out_dir.parent, f".{out_dir.name}.", folder=True)
    try:
        save_head(tmp, ensemble, config)
        default_permissions(tmp)  # (mkdtemp's 0700 and safetensors' 0600: fit's heads are readable by others)
        replace_directory(tmp, out_dir)
    except BaseException as exc:
        import shutil

        from protrans_cli.io.files import disk_full

        shutil.rmtree(tmp, ignore_errors=True)
        if (reason := disk_full(exc)) is not None:  # (safetensors: a traceback; an OSError: the temporary named)
            raise RuntimeFailure(f"cannot write the head: {reason}", path=str(out_dir)) from None
        raise
    epoch = config["training"].get("epoch")
    return ImportedHead(out_dir, source, input_dim, epoch)


def _load(path: Path) -> tuple[dict, str]:
    """The checkpoint's dict (weights only: no pickled code runs) and its sha256."""
    import io
    import warnings

    import torch

    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError("is a directory, expected the checkpoint file (secstruct_checkpoint.pt)",
                         path=str(path)) from None
    except FileNotFoundError:  # (as every command says it: "cannot read the checkpoint: No such file or directory")
        from protrans_cli.io.files import missing_file

        raise InputError(missing_file(path), path=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint: {exc.strerror or exc}", path=str(path)) from None
    try:
        with warnings.catch_warnings():  # (torch's note on the pickle protocol of a file it then refuses)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file, or one holding more than tensors and plain values
        raise InputError(_refusal(exc, data), path=str(path)) from None
    if not isinstance(state, dict):
        raise InputError(f"holds {a_or_an(type(state).__name__)}, not a checkpoint dict", path=str(path))
    return state, hashlib.sha256(data).hexdigest()


def _refusal(exc: BaseException, data: bytes) -> str:
    """Why torch.load(weights_only=True) refused the file, in one line. Its message's first line
    is the same for every refusal and advises re-running with weights_only=False, which "will
    likely succeed" (for a CSV or a file holding code: wrong, or what must not be done); the
    reason is further down."""
    from protrans_cli.errors import first_line

    # torch writes a zip archive (torch.save) or a bare pickle (protocol 2+ starts with 0x80)
    if not (data.startswith(b"PK") or data.startswith(b"\x80")):
        return "not a torch checkpoint (neither the zip archive torch.save writes nor a pickle)"
    text = str(exc)
    if not text.startswith("Weights only load failed"):  # (a cut zip archive: the reader's own message)
        return f"not a checkpoint torch.load reads weights-only ({first_line(exc)})"
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(boilerplate)]
    reason = " ".join(lines).replace("WeightsUnpickler error:", "").strip().rstrip(".") or first_line(exc)
    return (f"not a checkpoint torch.load reads weights-only ({reason}; objects other than tensors and "
            "plain values are refused, never run)")


_SHAPES = {"elmo_feature_extractor.0.weight": ("hidden", "dim", 7, 1), "elmo_feature_extractor.0.bias": ("hidden",),
           "dssp3_classifier.0.weight": (3, "hidden", 7, 1), "dssp3_classifier.0.bias": (3,),
           "dssp8_classifier.0.weight": (8, "hidden", 7, 1), "dssp8_classifier.0.bias": (8,)}


def _secstruct(state: dict, path: Path, digest: str, model: str):
    import torch

    from protrans_cli.heads.cnn import ResidueCNN
    from protrans_cli.heads.model import Ensemble, head_format
    from protrans_cli.heads.tasks import SS3, SS8, get_task

    weights = _state_dict(state, path)
    missing = [k for k in _SHAPES if not isinstance(weights.get(k), torch.Tensor)]
    if missing:
        raise InputError(f"not the ProtTrans secondary-structure CNN: no tensor {missing[0]} (its state_dict holds "
                         f"{', '.join(sorted(map(str, weights))[:6]) or 'nothing'})", path=str(path))
    first = weights["elmo_feature_extractor.0.weight"]
    sizes = {"hidden": first.shape[0], "dim": first.shape[1] if first.dim() > 1 else 0}
    for key, shape in _SHAPES.items():
        want = tuple(sizes.get(s, s) if isinstance(s, str) else s for s in shape)
        if tuple(weights[key].shape) != want:
            raise InputError(f"not the ProtTrans secondary-structure CNN: {key} has shape "
                             f"{tuple(weights[key].shape)}, expected {want}", path=str(path))
    hidden, dim = sizes["hidden"], sizes["dim"]
    task = get_task("ss3+ss8")
    head = ResidueCNN(dim, {"ss3": len(SS3), "ss8": len(SS8)}, hidden=hidden, kernel=7, dropout=0.25).float()
    rows3 = [CHECKPOINT_SS3.index(c) for c in SS3]  # protrans's class i <- the checkpoint's row
    rows8 = [CHECKPOINT_SS8.index(c) for c in SS8]
    with torch.no_grad():
        head.features.weight.copy_(weights["elmo_feature_extractor.0.weight"][..., 0].float())
        head.features.bias.copy_(weights["elmo_feature_extractor.0.bias"].float())
        for name, key, rows in (("ss3", "dssp3_classifier.0", rows3), ("ss8", "dssp8_classifier.0", rows8)):
            head.heads[name].weight.copy_(weights[f"{key}.weight"][rows][..., 0].float())
            head.heads[name].bias.copy_(weights[f"{key}.bias"][rows].float())
    if not all(torch.isfinite(p).all() for p in head.parameters()):
        raise InputError("holds NaN or infinite weights", path=str(path))
    epoch = _epoch(state)
    config = {
        "format": "protrans-head", "format_version": head_format("cnn"), "protrans_version": __version__,
        "task": task.to_json(), "kind": task.kind, "architecture": "cnn", "input_dim": int(dim),
        "embedding": {"model": model, "family": "t5", "layers": [-1], "embedding_dim": int(dim), "input_prefix": ""},
        "layer": -1, "ensemble": 1, "seeds": [0],
        "hyperparameters": {"hidden": int(hidden), "kernel": 7, "dropout": 0.25},
        "training": {"imported_from": str(path.resolve()), "source": PROTTRANS_SECSTRUCT, "sha256": digest,
                     "epoch": epoch,
                     "notes": ["the ProtTrans secondary-structure CNN (trained on NetSurfP-2.0's training set with "
                               "ProtT5-XL-U50 embeddings); its disorder output is not imported"]},
        "config": {"task": "ss3+ss8", "layer": -1},
    }
    return Ensemble([head.eval()], task).eval(), config, int(dim)


def _epoch(state: dict) -> float | None:
    """The checkpoint's `epoch`, where it records a number."""
    epoch = state.get("epoch")
    return float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def _state_dict(state: dict, path: Path) -> dict:
    weights = state.get("state_dict", state.get("model_state_dict", state))
    if not isinstance(weights, dict):
        raise InputError("its state_dict is not a dict of tensors", path=str(path))
    return weights


def _light_attention(state: dict, path: Path, digest: str, model: str, source: str):
    import torch

    from protrans_cli.heads.light_attention import LightAttention
    from protrans_cli.heads.model import Ensemble, head_format
    from protrans_cli.heads.tasks import LOCATIONS, MEMBRANE, get_task

    weights = _state_dict(state, path)
    what = "bio_embeddings' Light Attention model"
    needed = ("feature_convolution.weight", "feature_convolution.bias", "attention_convolution.weight",
              "attention_convolution.bias", "linear.0.weight", "linear.0.bias", "linear.3.weight", "linear.3.bias",
              "linear.3.running_mean", "linear.3.running_var", "output.weight", "output.bias")
    missing = [k for k in needed if not isinstance(weights.get(k), torch.Tensor)]
    if missing:
        raise InputError(f"not {what}: no tensor {missing[0]} (its state_dict holds "
                         f"{', '.join(sorted(map(str, weights))[:6]) or 'nothing'})", path=str(path))
    conv = weights["feature_convolution.weight"]
    if conv.dim() != 3 or conv.shape[0] != conv.shape[1] or conv.shape[2] % 2 != 1:
        raise InputError(f"not {what}: feature_convolution.weight has shape {tuple(conv.shape)}, expected "
                         "(D, D, odd kernel)", path=str(path))
    dim, kernel = int(conv.shape[0]), int(conv.shape[2])
    hidden = int(weights["linear.0.weight"].shape[0])
    name, classes, order = (("loc", LOCATIONS, [LA_LOCATIONS.index(c) for c in LOCATIONS]) if source == LA_LOCATION
                            else ("membrane", MEMBRANE, [0, 1]))
    expected = {"attention_convolution.weight": (dim, dim, kernel), "attention_convolution.bias": (dim,),
                "feature_convolution.bias": (dim,), "linear.0.weight": (hidden, 2 * dim), "linear.0.bias": (hidden,),
                "linear.3.weight": (hidden,), "linear.3.bias": (hidden,), "linear.3.running_mean": (hidden,),
                "linear.3.running_var": (hidden,), "output.weight": (len(classes), hidden),
                "output.bias": (len(classes),)}
    for key, want in expected.items():
        if tuple(weights[key].shape) != want:
            hint = (f" (the {LA_MEMBRANE if source == LA_LOCATION else LA_LOCATION} model? give --from it)"
                    if key.startswith("output") else "")
            raise InputError(f"not {what} for {source}: {key} has shape {tuple(weights[key].shape)}, expected "
                             f"{want}{hint}", path=str(path))
    base = get_task("loc")
    task = type(base)(base.name, base.kind, tuple(o for o in base.outputs if o.name == name), base.dual,
                      base.generic, base.notes)
    head = LightAttention(dim, {name: len(classes)}, hidden=hidden, kernel=kernel, dropout=0.25).float()
    with torch.no_grad():
        head.features.weight.copy_(conv.float())
        head.features.bias.copy_(weights["feature_convolution.bias"].float())
        head.attention.weight.copy_(weights["attention_convolution.weight"].float())
        head.attention.bias.copy_(weights["attention_convolution.bias"].float())
        head.linear.weight.copy_(weights["linear.0.weight"].float())
        head.linear.bias.copy_(weights["linear.0.bias"].float())
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(head.norm, attr).copy_(weights[f"linear.3.{attr}"].float())
        head.heads[name].weight.copy_(weights["output.weight"][order].float())
        head.heads[name].bias.copy_(weights["output.bias"][order].float())
    if not all(torch.isfinite(t).all() for t in head.state_dict().values()):
        raise InputError("holds NaN or infinite weights", path=str(path))
    epoch = _epoch(state)
    config = {
        "format": "protrans-head", "format_version": head_format("light-attention"), "protrans_version": __version__,
        "task": task.to_json(), "kind": task.kind, "architecture": "light-attention", "input_dim": dim,
        "embedding": {"model": model, "family": "t5", "layers": [-1], "embedding_dim": dim, "input_prefix": ""},
        "layer": -1, "ensemble": 1, "seeds": [0],
        "hyperparameters": {"hidden": hidden, "kernel": kernel, "dropout": 0.25},
        "training": {"imported_from": str(path.resolve()), "source": source, "sha256": digest, "epoch": epoch,
                     "notes": [f"bio_embeddings' Light Attention {name} model (DeepLoc, ProtT5-XL-U50 embeddings; "
                               "Staerk et al. 2021)"]},
        "config": {"task": "loc", "layer": -1},
    }
    return Ensemble([head.eval()], task).eval(), config, dim


def describe(imported: ImportedHead) -> str:
    epoch = f", epoch {imported.epoch:g}" if imported.epoch is not None else ""
    return f"import-head: {imported.source} ({imported.input_dim}-d input{epoch}) into {imported.out_dir}"
