"""The values of the commands' choice options, in a module that imports nothing.

The command modules (protrans_cli/cli) build their options from here: `protrans fit --help` and
shell completion, which runs on every Tab press, read them without the modules that act on them
(numpy and h5py behind those: 0.1 s of a 0.2 s Tab). Those modules take them from here too.
"""

from __future__ import annotations

# embed (and predict, knn --fasta)
LONG_POLICIES = ("error", "skip", "truncate", "chunk")
INVALID_POLICIES = ("error", "skip")
# A complex is one record whose chains are separated by ':' (ColabFold's and ESMFold's input);
# --chains says what the model sees of it. ESMFold joins chains with 25 glycines.
CHAIN_POLICIES = ("error", "linker", "separate")
DEFAULT_LINKER_LENGTH = 25
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_WINDOW = 100_000  # proteins held at a time: ~60 MB of UniRef50 records, long enough sorted runs

# esm-extract --include
INCLUDES = ("mean", "per_tok", "bos", "contacts")

# label files (fit, finetune, predict, knn, project, labels)
FORMATS = ("auto", "netsurfp", "pisces", "flip", "flip_csv", "biotrainer", "deeploc", "table")

# fit's and finetune's TASK: the names of heads.tasks.TASKS, in its order
TASK_NAMES = ("ss3", "ss8", "ss3+ss8", "disorder", "ss3+ss8+disorder", "loc", "residue", "protein", "value")
DUAL_POLICIES = ("first", "skip")
# The networks a task of each kind (io.h5's PER_RESIDUE, PER_PROTEIN) can use; the first is the default.
# "linear" (the linear probe) is one affine map of each residue's row or of the per-protein vector.
ARCHITECTURES = {"per_residue": ("cnn", "linear"), "per_protein": ("fnn", "light-attention", "linear")}
ALL_ARCHITECTURES = ("cnn", "fnn", "light-attention", "linear")  # (each once: --architecture's choices)

# train --compile-mode: torch.compile's modes for the transformer blocks (reduce-overhead: CUDA graphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
