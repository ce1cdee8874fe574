"""protrans: protein language models from FASTA to predictions.

The Python API comes first; the `protrans` command only resolves inputs, calls these functions
and formats their output. Heavy modules (torch, transformers) load on first use of the names
that need them, so `import protrans_cli` stays cheap.

    from protrans_cli import read_fasta, build_corpus, embed, load_model, train, fit, predict
    from protrans_cli import embed_sequences, build_embedder, EmbeddingsReader
    from protrans_cli import predict_sequences, predict_embeddings   # a head's predictions in memory
"""

from __future__ import annotations

import importlib
import os as _os
import time as _time

from protrans_cli._version import __version__
from protrans_cli.errors import InputError, ModelError, ProtransError, UsageError

# The process that started this one, when the package was first imported (early: a rank's first
# import). io.files.stop_with_launcher tells a launcher that died since by a parent that changed;
# a parent of PID 1 alone is no sign (torchrun is PID 1 as a container's command).
_PARENT_AT_IMPORT = _os.getppid()


# When the package was first imported, as a command starts: where the process's own start cannot be
# read (macOS, no /proc), a --time-limit counts from here (training.timelimit.process_age), not from
# the model's building, after seconds of imports and more of loading.
_IMPORTED_AT = _time.monotonic()


def _note_parent() -> None:  # (a rank forked from a process that had imported the package: its own parent)
    global _PARENT_AT_IMPORT
    _PARENT_AT_IMPORT = _os.getppid()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_note_parent)

# public name -> module that defines it (imported lazily on first access)
_LAZY = {
    "read_fasta": "protrans_cli.io.fasta",
    "normalise": "protrans_cli.residues",
    "build_corpus": "protrans_cli.corpus",
    "CorpusOptions": "protrans_cli.corpus",
    "load_model": "protrans_cli.models",
    "get_family": "protrans_cli.models",
    "FAMILIES": "protrans_cli.models",
    "embed": "protrans_cli.embed",
    "EmbedOptions": "protrans_cli.embed",
    "embed_sequences": "protrans_cli.embed",
    "build_embedder": "protrans_cli.embed",
    "EmbeddingsReader": "protrans_cli.io.h5",
    "train": "protrans_cli.training.loop",
    "TrainConfig": "protrans_cli.training.config",
    "fit": "protrans_cli.heads.fit",
    "FitConfig": "protrans_cli.heads.fit",
    "predict": "protrans_cli.heads.predict",
    "predict_sequences": "protrans_cli.heads.arrays",
    "predict_embeddings": "protrans_cli.heads.arrays",
}

__all__ = ["__version__", "ProtransError", "UsageError", "InputError", "ModelError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'protrans_cli' has no attribute {name!r}")


def __dir__():
    """The lazy exports too: tab completion on `protrans_cli.` offered none of them until used."""
    return sorted(set(globals()) | set(__all__))
