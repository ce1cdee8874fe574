"""Tasks: what a head predicts. A task = label reader output -> class indices, its outputs' class
orders, which heads can learn it (the CNN per residue; the FNN or Light Attention per protein; the
linear probe for either) and the metric it reports.

A task's `kind` is what it predicts (one label per residue, or per protein): targets, metrics
and the output format follow it. What the head *reads* follows its architecture (`input_kind`):
the CNN and Light Attention read per-residue embeddings, the FNN one vector per protein, the linear
head what its task predicts.

Built-in tasks and their label orders (the index of a letter in these tuples is the class index
stored in a head's config.json, so they must never be reordered):

    ss3      per residue  H E C                      (Q3)
    ss8      per residue  H G I E B T S C            (Q8)
    ss3+ss8  per residue  both outputs from one CNN  (Q3, Q8)
    disorder per residue  D O (disordered, ordered)  (accuracy; MCC beside it: ~6% of residues are D)
    ss3+ss8+disorder  per residue  the three outputs from one CNN, as NetSurfP's (Q3, Q8, accuracy/MCC)
    loc      per protein  10 DeepLoc locations (below) (Q10) + membrane M S (Q2; U is left out)
    residue  per residue  any one-letter labels; classes = sorted letters of the training labels
    protein  per protein  any labels; classes = sorted labels of the training set
    value    per protein  a real number (regression: FLIP's GB1, AAV, meltome...) (Spearman)

3 states from 8 (used when a file has only 8-state labels): H, G, I -> H; E, B -> E; the rest -> C.
DeepLoc's dual label `Cytoplasm-Nucleus` is counted as `Cytoplasm` by default (the choice the
bio_embeddings DeepLoc annotations made for the same 23 proteins); `dual="skip"` leaves those
proteins out of the location loss and metric instead. Adding a task is one more `Task(...)` here.

The disorder task reads NetSurfP-2.0's `disorder` column (0.0 -> D: the residue is missing from the
structure; 1.0 -> O: observed), which the other tasks take as their default mask: for it that
column is the label, so its default mask is none (default_mask_columns); `--mask-column
cb513_mask` leaves CB513's residues outside its segments out, as for any task. A
FLIP/biotrainer/table file of D/O letters reads as its `label` too.

Masks are per output (LabelRecord.mask_for): a column is never the mask of the output whose labels
it holds. ss3+ss8+disorder's ss outputs are masked by the mask columns (`disorder` by default) and
its disorder output by the others only (none by default; cb513_mask when asked), so the disorder
output learns the residues the ss outputs leave out. Its disorder labels come from NetSurfP's
column only (a file's single `label` letters are ss or disorder, not both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from protrans_cli.choices import ALL_ARCHITECTURES, ARCHITECTURES, DUAL_POLICIES
from protrans_cli.errors import InputError, UsageError, given, one_of
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE

IGNORE = -100  # target value for residues/proteins left out of loss and metrics (torch's ignore_index)

SS3 = ("H", "E", "C")
SS8 = ("H", "G", "I", "E", "B", "T", "S", "C")
DISORDER = ("D", "O")  # disordered (NetSurfP's disorder 0.0), ordered (1.0)
NOT_LABELLED = "-"  # a disorder letter for a residue left out (NetSurfP's cb513_mask 0.0)
LOCATIONS = ("Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Extracellular", "Golgi.apparatus",
             "Lysosome/Vacuole", "Mitochondrion", "Nucleus", "Peroxisome", "Plastid")
MEMBRANE = ("M", "S")
DUAL_LABELS = {"Cytoplasm-Nucleus": "Cytoplasm"}

_SS8_TO_SS3 = str.maketrans({"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "T": "C", "S": "C", "C": "C"})
# Coil is written `C` in NetSurfP and FLIP; DSSP's own `-` and some files' `L` mean the same.
_COIL_ALIASES = str.maketrans({"-": "C", "L": "C", " ": "C"})
_EIGHT_STATE_ONLY = set("GIBTS")  # letters of 8-state labels that 3-state ones never hold


def mask_for(record, output: str):
    """The residue mask of a record's `output` (None: every residue): the record's mask, or the one
    its reader made for that output (LabelRecord.output_masks: NetSurfP's disorder output, never
    masked by its own label column)."""
    masks = getattr(record, "output_masks", None) or {}
    return masks[output] if output in masks else record.mask


def _line_of(record, offset: int) -> int | None:
    """The line of a record's label letter `offset`: its own line where its labels span lines
    (a FLIP FASTA's: LabelRecord.line_of), else the record's line."""
    line_of = getattr(record, "line_of", None)
    return line_of(offset) if line_of is not None else getattr(record, "line", None)


def ss8_to_ss3(ss8: str) -> str:
    """The standard reduction: H, G, I -> H; E, B -> E; T, S, C -> C."""
    bad = set(ss8) - set(SS8)
    if bad:
        raise ValueError(f"not an 8-state letter: {''.join(sorted(bad))}")
    return ss8.translate(_SS8_TO_SS3)


@dataclass(frozen=True)
class Output:
    """One prediction the head makes: its name, class order and headline metric name."""

    name: str
    classes: tuple[str, ...]
    metric: str  # "Q3", "Q8", "Q10", "Q2", "accuracy", "Spearman"
    kind: str = "class"  # "class": one of `classes`; "value": a real number (regression)
    # Value outputs: the training targets' mean and standard deviation; the head predicts
    # z-scores (a fixed learning rate then suits any unit) and predictions are scaled back.
    scale: tuple[float, float] | None = None
    # What early stopping and the kept epoch go by on the validation set: "accuracy" (Spearman's
    # rho for a value output), or "mcc" where one class is rare (disorder: ~6% of residues are D,
    # and accuracy kept the epochs that said O everywhere)
    select: str = "accuracy"

    @property
    def is_value(self) -> bool:
        return self.kind == "value"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # PER_RESIDUE or PER_PROTEIN
    outputs: tuple[Output, ...]
    dual: str = "first"  # loc only: what to do with DeepLoc's Cytoplasm-Nucleus
    generic: bool = False  # classes come from the training labels
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    # --- labels -> class indices ---------------------------------------------------------

    def residue_targets(self, record, unlabelled: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        """(L,) int64 per output, IGNORE where the mask is 0; an output in `unlabelled` (the file
        holds no labels for it: check_label_states) is IGNORE throughout."""
        out = {}
        for output in self.outputs:
            if output.name in unlabelled:
                continue
            letters = self._residue_letters(record, output)
            # (the output's own: NetSurfP's disorder column masks ss3/ss8 and is the disorder output's labels)
            mask = mask_for(record, output.name)
            if mask is not None and len(mask) != len(letters):
                raise InputError(f"mask has {len(mask)} positions, labels {len(letters)}", record=record.id)
            index = {c: i for i, c in enumerate(output.classes)}
            raw = np.frombuffer(letters.encode("latin-1", "replace"), dtype=np.uint8)
            lookup = np.full(256, IGNORE, dtype=np.int64)
            for letter, code in index.items():
                lookup[ord(letter)] = code
            codes = lookup[raw]  # (L,)
            evaluated = np.ones(len(codes), dtype=bool) if mask is None else mask
            if output.name == "disorder":
                evaluated = evaluated & (raw != ord(NOT_LABELLED))
            at = np.flatnonzero((codes == IGNORE) & evaluated)[:50]
            bad = {letters[i] for i in at}
            if bad:
                known = "".join(output.classes) + (f", or 8-state {''.join(SS8)}" if output.name == "ss3" else "")
                # (a FASTA of sequences given as --labels reads as FLIP: its residues as labels)
                hint = ("; if the file holds sequences, not labels, give it to embed, and the labels to --labels"
                        if len(bad) >= 4 and bad <= set("ACDEFGHIKLMNPQRSTVWYXUZOB") else "")
                if bad <= set("01") and set(letters) <= set("01"):  # (FLIP's mask.fasta given for sampled.fasta)
                    hint = ("; the file holds a 0/1 mask (FLIP's mask.fasta): give it with --mask, and the labels "
                            "to --labels")
                raise InputError(f"label letter(s) {''.join(sorted(bad))!r} are not {output.name} classes "
                                 f"({known}){hint}", record=record.id, line=_line_of(record, int(at[0])))
            codes[~evaluated] = IGNORE
            out[output.name] = codes
        length = len(next(iter(out.values()))) if out else 0
        return {o.name: out[o.name] if o.name in out else np.full(length, IGNORE, dtype=np.int64)
                for o in self.outputs}

    def check_label_states(self, records, path: str, *, evaluating: bool = False) -> frozenset[str]:
        """ss8 from files whose records carry generic `label` letters (FLIP, biotrainer): a
        file whose letters are all H, E and C holds 3-state labels, which ss8 cannot use. Decided
        for the file, not per record: a protein of helix and coil alone (CB513 has three) has
        8-state labels that look 3-state on their own. Returns the outputs the file has no labels
        for: scoring (`evaluating`) an ss3+ss8 head on 3-state labels scores ss3 and leaves ss8
        with nothing to evaluate; training on them, or an ss8 head, is refused."""
        if "ss8" not in self.output_names:
            return frozenset()
        generic = [r.labels["label"] for r in records if "ss8" not in r.labels and "label" in r.labels]
        three_state = bool(generic) and not any(set(letters.upper()) & _EIGHT_STATE_ONLY for letters in generic)
        # a CSV with a 3-state column only (NetSurfP's dssp3, PISCES' sst3, no dssp8/sst8)
        columns = bool(records) and all("ss3" in r.labels and "ss8" not in r.labels for r in records)
        if three_state or columns:
            if evaluating and "ss3" in self.output_names and (columns or len(generic) == len(records)):
                return frozenset({"ss8"})
            held = "a 3-state column only (no 8-state one)" if columns else "3-state labels only (H, E, C)"
            raise InputError(f"holds {held}; {self.name} needs 8-state labels ({''.join(SS8)})", path=path)
        return frozenset()

    def _residue_letters(self, record, output: Output) -> str:
        labels = record.labels
        if output.name == "ss3":
            if "ss3" in labels:
                return labels["ss3"].upper().translate(_COIL_ALIASES)
            if "ss8" in labels:
                # (a letter that is no 8-state one, DSSP 4's P say, is left for the class check, which
                # names it, the record and its line: ss8_to_ss3 raised a ValueError traceback)
                return labels["ss8"].upper().translate(_COIL_ALIASES).translate(_SS8_TO_SS3)
            if "label" in labels:
                letters = labels["label"].upper().translate(_COIL_ALIASES)
                if set(letters) <= set(SS3):
                    return letters
                if set(letters) <= set(SS8):
                    return ss8_to_ss3(letters)
                # the class check reports the letters that are neither (not the 8-state ones)
                return letters.translate(_SS8_TO_SS3)
        elif output.name == "ss8":
            source = labels.get("ss8", labels.get("label"))
            if source is not None:
                # (whether generic `label` letters are 8-state is decided for the whole file:
                # check_label_states)
                return source.upper().translate(_COIL_ALIASES)
        elif output.name == "label":
            if "label" in labels:
                return labels["label"]
        elif output.name == "disorder":
            if "disorder" in getattr(record, "unreadable", {}):
                # (a NetSurfP disorder column with a value that is not 0 or 1: refused where it is read
                # as labels, not where the column is neither mask nor label)
                raise record.unreadable["disorder"]
            # (beside ss outputs, a file's one `label` column is theirs: not disorder letters too)
            source = labels.get("disorder", labels.get("label") if len(self.outputs) == 1 else None)
            if source is not None:
                return source.upper()
            # (a PISCES CSV, or a NetSurfP CSV without its disorder column)
            reads = ("a NetSurfP CSV's disorder column, or D/O letters in a FLIP, biotrainer or table file"
                     if len(self.outputs) == 1 else "them from a NetSurfP CSV's disorder column")
            raise InputError(f"has no disorder labels (it has {', '.join(labels) or 'none'}): the {self.name} task "
                             f"reads {reads}", record=record.id, line=record.line)
        raise InputError(f"has no labels for {output.name} (it has {', '.join(labels) or 'none'})",
                         record=record.id, line=record.line)

    def protein_targets(self, record) -> dict[str, int | float]:
        """Class index per output (IGNORE: left out); value outputs a float (NaN: left out)."""
        out = {}
        for output in self.outputs:
            if output.is_value:
                out[output.name] = _as_value(self._protein_label(record, output), record)
                continue
            value = self._protein_label(record, output)
            # An empty label (FLIP CSV's empty target) is no label, as for the value task: it
            # became a class named '' that the unlabelled proteins were trained and scored on.
            if value is None or not value.strip():
                out[output.name] = IGNORE
                continue
            try:
                out[output.name] = output.classes.index(value)
            except ValueError:
                whose = ("; a generic head's classes are those of its training labels: one it never saw "
                         "cannot be predicted or scored" if self.generic else "")
                if self.generic and _numeric(value):
                    whose += "; numbers as labels: the value task regresses them (protrans fit value)"
                shown = repr(value)
                if len(value) > 20 and set(value) <= set("ACDEFGHIKLMNPQRSTVWYXUZOB"):
                    # a sequence read as a label (the FASTA `protrans labels` writes, given as
                    # --labels): the whole sequence was printed as the unknown class
                    shown = f"{value[:12]!r}... ({len(value)} residue letters)"
                    whose += "; if the file holds sequences, not labels, give it to embed, and the labels to --labels"
                # (a generic head's classes may be hundreds: the message is one line to read)
                listed = ", ".join(output.classes[:_LISTED]) + (
                    f" and {len(output.classes) - _LISTED:,} more" if len(output.classes) > _LISTED else "")
                raise InputError(f"label {shown} is not a {output.name} class ({listed}{whose})",
                                 record=record.id, line=record.line) from None
        return out

    def _protein_label(self, record, output: Output) -> str | None:
        labels = record.labels
        if output.name == "loc":
            value = labels.get("loc", labels.get("label"))
            if value is None:
                raise InputError("has no location label", record=record.id, line=record.line)
            if value in DUAL_LABELS:
                return DUAL_LABELS[value] if self.dual == "first" else None
            return value
        if output.name == "membrane":
            value = labels.get("membrane")
            return None if value in (None, "U") else value  # U = unknown: not a third class
        if "label" not in labels:
            raise InputError(f"has no labels for {output.name}", record=record.id, line=record.line)
        return labels["label"]

    # --- generic tasks -------------------------------------------------------------------

    def with_classes_from(self, records) -> "Task":
        """A generic task with its classes discovered from the training labels (sorted)."""
        if not self.generic:
            return self
        seen: set[str] = set()
        for record in records:
            value = record.labels.get("label")
            if value is None:
                held = sorted(record.labels)
                readers = [name for name, task in TASKS.items()
                           if not task.generic and held and {o.name for o in task.outputs} <= set(held)]
                which = ", ".join(readers[:-1]) + " or " + readers[-1] if len(readers) > 1 else "".join(readers)
                raise InputError(f"has no plain labels for the {self.name} task (it holds {', '.join(held) or 'none'}"
                                 + (f": the {which} task reads them" if readers else "") + ")", record=record.id)
            if self.kind == PER_RESIDUE:
                # (a ':' between a complex's chains is no class; a mask has a position for each
                # residue, or for each letter and ':' of the labels: labels._mask_bits)
                letters = value if record.mask is None or len(record.mask) == len(value) else value.replace(":", "")
                if record.mask is not None:
                    letters = "".join(c for c, m in zip(letters, record.mask) if m)
                seen.update(letters.replace(":", ""))
            elif value.strip():  # an empty label is no label (protein_targets leaves it out)
                seen.add(value)
        if len(seen) < 2:
            raise InputError(f"the training labels hold {len(seen)} class(es); a classifier needs at least 2")
        if self.kind == PER_PROTEIN and numbers_as_classes(seen):
            # (a FLIP CSV's fitness or melting point given to `fit protein`: each number became a
            # class, and the first validation number it never saw stopped the fit)
            from protrans_cli import console

            numbers = sum(not missing_number(v) for v in seen)
            console.warn(f"the training labels are {numbers:,} distinct numbers, each a class of its own: "
                         "the value task regresses a number (protrans fit value)")
        output = replace(self.outputs[0], classes=tuple(sorted(seen)))
        return replace(self, outputs=(output,))

    def with_scale_from(self, targets: dict[str, np.ndarray]) -> "Task":
        """Value outputs get the mean and standard deviation of their training targets."""
        outputs = []
        for output in self.outputs:
            if output.is_value:
                values = np.asarray(targets[output.name], dtype=np.float64)
                values = values[~np.isnan(values)]
                # (one value told by the values, not by their deviation: 0.35 seven times has
                # a standard deviation of 5.6e-17 in floating point, which became the scale)
                if len(values) < 2 or np.ptp(values) == 0:
                    raise InputError(f"the training targets of {output.name} need at least two different values")
                output = replace(output, scale=(float(values.mean()), float(values.std())))
            outputs.append(output)
        return replace(self, outputs=tuple(outputs))

    def to_json(self) -> dict:
        data = asdict(self)
        data["outputs"] = [{k: v for k, v in asdict(o).items() if k != "select" or v != "accuracy"}
                           for o in self.outputs]  # (heads of other tasks: config.json as before)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Task":
        outputs = tuple(Output(o["name"], tuple(o["classes"]), o["metric"], o.get("kind", "class"),
                               tuple(o["scale"]) if o.get("scale") else None, o.get("select", "accuracy"))
                        for o in data["outputs"])
        return cls(data["name"], data["kind"], outputs, data.get("dual", "first"), data.get("generic", False),
                   tuple(data.get("notes", ())))


_O_SS3 = Output("ss3", SS3, "Q3")
_O_SS8 = Output("ss8", SS8, "Q8")
_O_DISORDER = Output("disorder", DISORDER, "accuracy", select="mcc")

TASKS: dict[str, Task] = {
    "ss3": Task("ss3", PER_RESIDUE, (_O_SS3,)),
    "ss8": Task("ss8", PER_RESIDUE, (_O_SS8,)),
    "ss3+ss8": Task("ss3+ss8", PER_RESIDUE, (_O_SS3, _O_SS8)),
    "disorder": Task("disorder", PER_RESIDUE, (_O_DISORDER,)),
    "ss3+ss8+disorder": Task("ss3+ss8+disorder", PER_RESIDUE, (_O_SS3, _O_SS8, _O_DISORDER)),
    "loc": Task("loc", PER_PROTEIN, (Output("loc", LOCATIONS, "Q10"), Output("membrane", MEMBRANE, "Q2"))),
    "residue": Task("residue", PER_RESIDUE, (Output("label", (), "accuracy"),), generic=True),
    "protein": Task("protein", PER_PROTEIN, (Output("label", (), "accuracy"),), generic=True),
    "value": Task("value", PER_PROTEIN, (Output("value", (), "Spearman", kind="value"),)),
}


_LISTED = 20  # classes an error lists before "and N more"

DEFAULT_MASK_COLUMNS = ("disorder",)  # (FitConfig's and FinetuneConfig's mask_columns: the task's default)


def default_mask_columns(task_name: str) -> tuple[str, ...]:
    """The NetSurfP columns a task is masked by unless told: `disorder` (the residues observed in the
    structure, what ProtTrans evaluated on), none for the disorder task, whose labels that column holds."""
    return () if task_name == "disorder" else DEFAULT_MASK_COLUMNS


def resolve_mask_columns(task_name: str, columns: tuple[str, ...], *, given: bool = True,
                         flag: str = "--mask-column") -> tuple[str, ...]:
    """The mask columns a fit of `task_name` uses: the task's default for DEFAULT_MASK_COLUMNS when
    not `given` (the CLI's default, or FitConfig's); the disorder task refuses its own label column."""
    if task_name != "disorder":
        return columns
    if not given and tuple(columns) == DEFAULT_MASK_COLUMNS:
        return default_mask_columns(task_name)
    if "disorder" in columns:
        raise UsageError(f"{flag} disorder: the disorder column is the disorder task's label, not a mask "
                         "(its default mask is none; --mask-column cb513_mask is one it takes)")
    return columns


# A missing number as the tools that write label tables write it: pandas (NaN, <NA>, None),
# R's write.csv (NA), spreadsheets and SQL exports (N/A, NULL). R's NA was "not a number" (exit 1).
MISSING_NUMBERS = frozenset({"", "nan", "na", "n/a", "<na>", "none", "null"})


def missing_number(text) -> bool:
    """A regression label that says "no value": the protein is left out of loss and metrics."""
    return str(text).strip().lower() in MISSING_NUMBERS


def numbers_as_classes(labels) -> bool:
    """Labels that are many distinct non-integer numbers (a FLIP CSV's fitness, a melting point):
    each would be a class of its own, which fit's protein task and knn's scores warn of. A `nan`
    among them (a missing number, as str() writes it) does not make them words: it hid the warning."""
    labels = {v for v in labels if not missing_number(v)}
    return len(labels) > _LISTED and all(_numeric(v) for v in labels) and not all(float(v).is_integer() for v in labels)


def _numeric(label: str) -> bool:
    """A label that reads as a finite number."""
    try:
        return bool(np.isfinite(float(label)))
    except ValueError:
        return False


def _as_value(label, record) -> float:
    """A regression label: a number; empty, `nan` or `NA` (MISSING_NUMBERS) leaves the protein out
    of loss and metrics."""
    text = str(label).strip()
    if missing_number(text):
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"label {text!r} is not a number (the value task is a regression)",
                         record=record.id, line=record.line) from None
    if not np.isfinite(value):
        raise InputError(f"label {text!r} is not a finite number", record=record.id, line=record.line)
    return value


_READS_RESIDUES = frozenset({"cnn", "light-attention"})  # (and "linear" for a per-residue task)
DEFAULT_KERNELS = {"cnn": 7, "light-attention": 9}  # (the FNN and the linear head have none: null in their config)
# The FitConfig fields another kind of head takes, which a head of this architecture does not
# read (fit's CLI warns when they are given; a --resume does not compare them). The linear head's
# depend on what it reads: unused_options.
UNUSED_OPTIONS = {"fnn": ("max_residues", "kernel"), "cnn": ("batch_size", "standardise"),
                  "light-attention": ("batch_size", "standardise")}
_LINEAR_UNUSED = {PER_RESIDUE: ("batch_size", "standardise", "kernel", "hidden", "dropout"),
                  PER_PROTEIN: ("max_residues", "kernel", "hidden", "dropout")}


def unused_options(task: Task | str, architecture: str) -> tuple[str, ...]:
    """The FitConfig fields a head of `architecture` for `task` (a Task or its name) does not read."""
    if architecture == "linear":
        kind = task.kind if isinstance(task, Task) else TASKS[task].kind
        return _LINEAR_UNUSED[kind]
    return UNUSED_OPTIONS.get(architecture, ())


def architecture_for(task: Task, architecture: str | None = None) -> str:
    """`architecture` checked against the task's kind, or that kind's default (None: a head
    written before heads recorded one, or a fit that did not choose)."""
    allowed = ARCHITECTURES[task.kind]
    if architecture is None:
        return allowed[0]
    if architecture not in allowed:
        if architecture in ALL_ARCHITECTURES:
            what = "per-residue" if task.kind == PER_RESIDUE else "per-protein"
            raise UsageError(f"{given('--architecture', 'architecture', architecture)}: {task.name} is a {what} "
                             "task, whose head is "
                             + " or ".join(allowed) + (" (light-attention and fnn are for per-protein tasks)"
                                                       if task.kind == PER_RESIDUE else ""))
        one_of(architecture, ALL_ARCHITECTURES, "--architecture",
               keyword="architecture")
    return architecture


def input_kind(task: Task, architecture: str | None = None) -> str:
    """What a head of `architecture` for `task` reads: PER_RESIDUE (the CNN, Light Attention,
    which pools the residues itself) or PER_PROTEIN (the FNN, on a mean-pooled vector); the
    linear head reads what its task predicts (each residue's row, or the per-protein vector)."""
    architecture = architecture_for(task, architecture)
    if architecture == "linear":
        return task.kind
    return PER_RESIDUE if architecture in _READS_RESIDUES else PER_PROTEIN


def warn_unused_dual(name: str) -> None:
    """A warning for --dual given to a task without DeepLoc's location output (ss3, value, a
    generic protein task ...): it changed nothing, without a word."""
    from protrans_cli import console

    if "loc" not in get_task(name).output_names:
        console.warn(f"--dual does nothing for {name} (DeepLoc's dual location label, per protein): ignored")


def get_task(name: str, *, dual: str = "first") -> Task:
    one_of(name, TASKS, "task")  # (fit's TASK, FitConfig.task)
    one_of(dual, DUAL_POLICIES, "--dual", keyword="dual")
    task = TASKS[name]
    return replace(task, dual=dual) if task.kind == PER_PROTEIN else task
