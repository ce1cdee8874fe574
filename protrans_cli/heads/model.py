"""A head on disk and in memory: build the network a task needs, average an ensemble, save and load.

A head directory holds `config.json` (task with its label orders, architecture, input dimension,
embedding model, hyper-parameters, members' seeds) and `weights.safetensors` (every member's tensors,
prefixed `members.<i>.`). Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protrans_cli.errors import InputError, ModelError, UsageError, first_line
from protrans_cli.heads.cnn import ResidueCNN
from protrans_cli.heads.fnn import ProteinFNN
from protrans_cli.heads.light_attention import LightAttention
from protrans_cli.heads.linear import LinearHead
from protrans_cli.heads.tasks import ARCHITECTURES, Task, architecture_for, input_kind, unused_options
from protrans_cli.io.h5 import PER_RESIDUE

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
# The newest head format this protrans reads. A head records the oldest format that can read it:
# 1 for CNN and FNN heads (as every head before), 2 for a Light Attention head, which a
# protrans of format 1 would build as an FNN (it knows no `architecture`) and fail on obscurely:
# it refuses format 2 instead, "a later protrans wrote it: upgrade protrans".
# A linear head is format 3: a protrans of format 2 knows no "linear" and says the config is unreadable.
FORMAT_VERSION = 3
_FORMATS = {"cnn": 1, "fnn": 1, "light-attention": 2, "linear": 3}
_MAX_OUTPUT_NAME = 64  # (a task's outputs: ss3, ss8, loc, membrane, label, value)


def head_format(architecture: str) -> int:
    """The format_version a head of `architecture` is written with (the oldest that reads it)."""
    return _FORMATS[architecture]


_NETWORK = ("hidden", "kernel", "dropout")  # (build_head's sizes, as config.json's hyperparameters record them)


def network_hyperparameters(task: Task, architecture: str, *, hidden, kernel, dropout) -> dict:
    """hidden, kernel and dropout as a head's config.json records them: null where the head of
    `architecture` has none (a linear head has none of them, an FNN no kernel). Heads recorded the
    option's value (a linear head its unused `"hidden": 32, "kernel": 7`, an FNN `"kernel": 7`),
    as if the network had them; those heads are read as before (load_head builds a network from
    the values its architecture takes). Null rather than left out: a protrans of the same
    format_version before this reads every key, and builds these heads with null as well."""
    given = {"hidden": hidden, "kernel": kernel, "dropout": dropout}
    unused = set(unused_options(task, architecture))
    return {name: None if name in unused else given[name] for name in _NETWORK}


def build_head(task: Task, input_dim: int, *, architecture: str | None = None, hidden: int = 32, kernel: int = 7,
               dropout: float = 0.25) -> nn.Module:
    """A new head, float32 whatever torch's default dtype (heads are float32 everywhere).
    `architecture` None: the task's default (the CNN per residue, the FNN per protein). The linear
    head takes none of hidden, kernel, dropout."""
    outputs = {o.name: 1 if o.is_value else len(o.classes) for o in task.outputs}
    architecture = architecture_for(task, architecture)
    if architecture == "cnn":
        return ResidueCNN(input_dim, outputs, hidden=hidden, kernel=kernel, dropout=dropout).float()
    if architecture == "linear":
        return LinearHead(input_dim, outputs, per_residue=task.kind == PER_RESIDUE).float()
    if architecture == "light-attention":
        return LightAttention(input_dim, outputs, hidden=hidden, kernel=kernel, dropout=dropout).float()
    return ProteinFNN(input_dim, outputs, hidden=hidden, dropout=dropout).float()


def head_architecture(config: dict, task: Task | None = None) -> str:
    """The architecture a head's config.json records; heads written before it was recorded are
    their task's default (a CNN per residue, an FNN per protein)."""
    task = task or Task.from_json(config["task"])
    recorded = config.get("architecture")
    try:
        return architecture_for(task, recorded)
    except UsageError:  # (a hand-edited config: load_head and head_embed_options say it is unreadable)
        raise ValueError(f"architecture {recorded!r} is not one of {', '.join(ARCHITECTURES[task.kind])} "
                         f"(a {task.kind} task)") from None


def head_input_kind(config: dict, task: Task | None = None) -> str:
    """What a head reads (PER_RESIDUE or PER_PROTEIN), from its config.json: a Light Attention
    head of a per-protein task reads per-residue embeddings."""
    task = task or Task.from_json(config["task"])
    return input_kind(task, head_architecture(config, task))


class Ensemble(nn.Module):
    """Members trained from different seeds; the prediction is their mean class probability
    (or, for a value output, their mean value, scaled back from z-scores with `task`'s scale)."""

    def __init__(self, members: list[nn.Module], task: Task | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.scales = {o.name: o.scale for o in (task.outputs if task else ()) if o.is_value}

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """{output: (B, L, C) or (B, C)} mean softmax over members; value outputs (B, 1) values."""
        total: dict[str, torch.Tensor] = {}
        for member in self.members:
            for name, logits in member(x, mask).items():
                if name in self.scales:
                    mean, std = self.scales[name]
                    probs = logits.float() * std + mean
                else:
                    probs = torch.softmax(logits.float(), dim=-1)
                total[name] = total[name] + probs if name in total else probs
        return {name: p / len(self.members) for name, p in total.items()}


def save_head(directory: Path, ensemble: Ensemble, config: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in ensemble.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in a random order (a Rust HashMap),
    # so with two keys a refit with the same seed gave equal weights in a file of other bytes.
    # The task is in config.json.
    save_file(state, str(directory / WEIGHTS), metadata={"format": "protrans-head"})
    (directory / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


def _check_claims(config: dict, task: Task) -> None:
    """What predict reads from a head's config besides the network: the embedding it was trained
    on (an object; its `layers` whole numbers), its layer (a whole number), and for a per-residue
    head one character per class (the letters it writes). A hand-edited config got tracebacks."""
    version = config.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):  # (said "a later protrans wrote it" of "1")
        raise TypeError(f"format_version {version!r} is not a whole number")
    if version > FORMAT_VERSION:
        # (a head of a later protrans, whose fields this one may read wrongly, loaded without a word)
        raise ValueError(f"format_version {version!r}: this protrans reads heads of formats up to {FORMAT_VERSION} "
                         "(a later protrans wrote it: upgrade protrans)")
    for output in task.outputs:
        # (predict --metrics names files after them, DIR/<labels>.<output>.png: a hand-made "x/y"
        # wrote into a folder, a NUL byte was a traceback, 300 letters "File name too long")
        name = output.name
        if not (isinstance(name, str) and 0 < len(name) <= _MAX_OUTPUT_NAME and name.isprintable()
                and not name.startswith(".") and "/" not in name and "\\" not in name):
            raise ValueError(f"output name {str(name)[:40]!r} is not a name a file can take (printable, no / or \\, "
                             f"not starting with '.', {_MAX_OUTPUT_NAME} characters at most)")
        if len(set(output.classes)) != len(output.classes):
            # (predict wrote a CSV with two columns of one name, and its letters could not be told apart)
            raise ValueError(f"output {output.name!r} names a class twice: {list(output.classes)[:12]}")
    embedding = config.get("embedding", {})
    if not isinstance(embedding, dict):
        raise TypeError(f"'embedding' is {type(embedding).__name__}, not an object")
    for value in [config.get("layer", -1), *np.atleast_1d(embedding.get("layers", [])).tolist()]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"layer {value!r} is not a whole number")
    if not isinstance(config["hyperparameters"], dict):
        raise TypeError(f"'hyperparameters' is {type(config['hyperparameters']).__name__}, not an object")
    for name in ("hidden", "kernel"):
        value = config["hyperparameters"].get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} {value!r} is not a positive whole number")
    if task.kind == PER_RESIDUE:
        for output in task.outputs:
            if not output.is_value and not all(len(c) == 1 and c.isascii() and c.isprintable() for c in output.classes):
                raise ValueError(f"output {output.name!r}: per-residue classes are single letters, got "
                                 f"{list(output.classes)[:5]}")


def load_head(directory) -> tuple[Ensemble, Task, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    directory = Path(directory)
    if not directory.exists():  # (as every command names a missing input; a dangling link says where it led)
        from protrans_cli.io.files import missing_file

        raise InputError(missing_file(directory), path=str(directory))
    if directory.is_file():
        # (predict's HEAD given the embeddings file, the two swapped: click's "Directory 'e.h5' is a file")
        from protrans_cli.io.files import starts_like_hdf5

        what = "an HDF5 file (such as embed writes)" if starts_like_hdf5(directory) else "a file"
        raise InputError(f"{what}, not a head directory: a head is the folder `protrans fit`, `finetune` or "
                         "`import-head` writes (embeddings go to --embeddings)", path=str(directory))
    if not (directory / CONFIG).is_file():
        raise InputError(f"not a head directory (no {CONFIG}){_other_directory(directory)}", path=str(directory))
    if (language_model := _language_model_type(directory)) is not None:
        # (a model directory, a train run or one of its checkpoints: "head has no
        # weights.safetensors" said the head was damaged, not that it was the wrong folder)
        raise InputError(f"a language model directory ({language_model}), not a prediction head: a head is what "
                         f"`protrans fit`, `finetune` or `import-head` writes; embed with this model "
                         f"(protrans embed FASTA -m {directory}) and fit a head on its embeddings",
                         path=str(directory))
    weights = directory / WEIGHTS
    if weights.exists() and not weights.is_file():  # (a link to /dev/zero was read until the memory ran out)
        raise ModelError("cannot read the head's weights (not a regular file: a folder, device, FIFO or socket, "
                         "or a link to one)", path=str(weights))
    try:
        # read by Python (a head is small): safetensors' own file call opens the name's UTF-8
        # spelling, and a head in a folder whose name is not UTF-8 could not be read back
        state = load_safetensors(weights.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"head has no {WEIGHTS}", path=str(directory)) from None
    except (SafetensorError, OSError) as exc:  # truncated by an interrupted copy, or not safetensors at all
        raise ModelError(f"cannot read the head's weights ({first_line(exc)})",
                         path=str(directory / WEIGHTS)) from None
    # The sizes in config.json are only claims (a head directory may come from anywhere): the
    # network was built from them before the weights were compared, so `"hidden": 2000000000`
    # allocated 168 GB and `"ensemble": 10**9` built members for ever. The members are counted
    # in the weights first, then built on the meta device (no memory) and take the weights' own
    # tensors: a size that does not fit the weights is refused below, having cost nothing.
    stored = len({key.split(".")[1] for key in state if key.startswith("members.")})
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        task = Task.from_json(config["task"])
        hp = config["hyperparameters"]
        _check_claims(config, task)
        architecture = head_architecture(config, task)
        if config["ensemble"] != stored:
            raise ModelError(f"the head's config says {config['ensemble']!r} ensemble members, its weights hold "
                             f"{stored}", path=str(directory))
        # (on the meta device the layers' initialisation draws nothing from the caller's
        # generator either: predict moved a notebook's seeded torch RNG along)
        with torch.device("meta"):
            # (what the architecture takes, which must be there; a value recorded for what it has
            # not, as heads did, is not read)
            unused = set(unused_options(task, architecture))
            sizes = {name: hp[name] for name in _NETWORK if name not in unused}
            members = [build_head(task, config["input_dim"], architecture=architecture, **sizes)
                       for _ in range(stored)]
    except RecursionError:  # thousands of nested brackets: a traceback from the JSON parser
        raise ModelError("head config is unreadable (nested too deeply)", path=str(directory / CONFIG)) from None
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:  # (a negative kernel: RuntimeError)
        raise ModelError(f"head config is incomplete or unreadable ({first_line(exc)})",
                         path=str(directory / CONFIG)) from None
    ensemble = Ensemble(members, task)
    try:
        ensemble.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # a header, then the keys
        raise ModelError(f"weights do not fit the head's config ({(lines[1:] or lines or ['?'])[0]})",
                         path=str(directory / WEIGHTS)) from None
    ensemble.eval()
    if (beside := moved_finetune_model(directory, config)) is not None:
        config["embedding"]["model"] = beside  # (what --embeddings made with it are compared with)
    return ensemble, task, config


def _language_model_type(directory: Path) -> str | None:
    """The model_type of a transformers model directory's config.json (no head's config has one
    and every head's has a `task`), or None where the directory may be a head."""
    from protrans_cli.io.files import json_object

    config = json_object(directory / CONFIG)
    if "task" in config or not isinstance(config.get("model_type"), str):
        return None
    return f"{config['model_type']} model"


def _other_directory(directory: Path) -> str:
    """For a folder without config.json: where the head is when it is a finetune output (OUT/head)
    or what it is when it is a train run's checkpoints folder; '' otherwise."""
    if (directory / "head" / CONFIG).is_file():
        return f"; it is a finetune output: its head is {directory / 'head'}"
    if directory.name == "checkpoints" and any(directory.glob("step_*/training_state.pt")):
        return "; it is a training run's checkpoints folder (language models, not heads)"
    return ""


def moved_finetune_model(directory, config: dict) -> str | None:
    """For a head `protrans finetune` wrote (OUT/head, recording OUT/model as an absolute path)
    whose recorded model is gone: the model beside the head, OUT having been moved whole; else None."""
    embedding = config.get("embedding")
    if not isinstance(embedding, dict) or not embedding.get("finetuned_from") or not embedding.get("model") \
            or Path(str(embedding["model"])).exists():
        return None
    beside = Path(directory).absolute().parent / "model"
    return str(beside) if (beside / "config.json").is_file() else None
