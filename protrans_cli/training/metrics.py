"""The run's log: `metrics.jsonl` (one JSON object per logging step, rank 0) and its loss curve,
and the statistics summed between two logging steps."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from protrans_cli.errors import InputError, RuntimeFailure
from protrans_cli.io.files import disk_full
from protrans_cli.training import dist


class Accumulator:
    """Sums (numerator, denominator) statistics between logging steps, then reduces over ranks."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}
        self.grad_norm = 0.0
        self.steps = 0
        self.norm_steps = 0  # steps applied (with a gradient norm): not fp16's overflows, nor steps with nothing to predict
        self.tokens = 0

    def add(self, stats: dict) -> None:
        for name, value in stats.items():
            if name == "grad_norm":
                self.grad_norm += value
                self.norm_steps += 1
            elif name == "tokens":
                self.tokens += value
            else:
                acc = self.sums.setdefault(name, [0.0, 0.0])
                acc[0] += value[0]
                acc[1] += value[1]
        self.steps += 1

    def _summed(self) -> tuple[list[str], list[float]]:
        """The statistics summed over ranks (a collective): names, then their values."""
        names = sorted(self.sums)
        flat = [x for n in names for x in self.sums[n]] + [float(self.tokens)]
        return names, dist.all_reduce_sum(torch.tensor(flat, dtype=torch.float64,
                                                        device=dist.info().device)).tolist()

    def reduce(self) -> dict:
        names, t = self._summed()
        # null where nothing was counted (an interval of fp16 steps that all overflowed has no loss)
        out = {n: t[2 * i] / t[2 * i + 1] if t[2 * i + 1] else None for i, n in enumerate(names)}
        out["grad_norm"] = self.grad_norm / self.norm_steps if self.norm_steps else None
        out["tokens"] = t[-1]
        self.__init__()
        return out

    def state(self) -> dict:
        """What a checkpoint keeps of the interval under way (summed over ranks; not reset)."""
        names, t = self._summed()
        return {"sums": {n: [t[2 * i], t[2 * i + 1]] for i, n in enumerate(names)}, "tokens": t[-1],
                "grad_norm": self.grad_norm, "steps": self.steps, "norm_steps": self.norm_steps}

    def load(self, state: dict) -> None:
        """Rank 0 takes the saved sums of all ranks; the others start from zero."""
        self.sums = {n: list(v) for n, v in state["sums"].items()}
        self.tokens, self.grad_norm, self.steps = state["tokens"], state["grad_norm"], state["steps"]
        self.norm_steps = state.get("norm_steps", self.steps)  # (checkpoints from before fp16)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget what was logged after the checkpoint (it will be logged again)."""
    if not path.exists():
        return
    keep = [json.dumps(row) for row in read_metrics(path) if row.get("step", 0) <= step]
    from protrans_cli.io.files import atomic_output

    with atomic_output(path) as out:
        out.write("".join(line + "\n" for line in keep).encode())


def append_metrics(path: Path, record: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except FileNotFoundError:  # (it said "metrics.jsonl: No such file or directory")
        raise RuntimeFailure("the run directory was removed or moved during the run",
                             path=str(Path(path).parent)) from None
    except OSError as exc:
        if (reason := disk_full(exc)) is None:
            raise
        # (a write's error names no file: the line said "No space left on device" alone; a line
        # cut short is left out when the file is read, and --resume rewrites the file)
        raise RuntimeFailure(f"cannot append step {record.get('step')}'s line: {reason}", path=str(path)) from None


class TensorBoardLog:
    """metrics.jsonl's lines as TensorBoard scalars in RUN/tensorboard/ (rank 0, `--tensorboard`):
    `train/loss`, `train/lr`, ... and `eval/loss`, each line flushed as it is written. A run from
    step N hides the events earlier runs logged after it (TensorBoard's purge step, N + 1), as
    metrics.jsonl drops their lines: the curves are the uninterrupted run's. The folder is made
    with the first line: a run that fails before it leaves nothing (its directory is removed)."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        # (the package: checked by build_run's require_tensorboard, or open_tensorboard)
        self.folder, self.start_step, self.writer = Path(run_dir) / "tensorboard", start_step, None

    @staticmethod
    def tag(name: str) -> str:
        return "eval/" + name[len("eval_"):] if name.startswith("eval_") else "train/" + name

    def _open(self) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=self.start_step + 1)

    def hide_later(self) -> None:
        """Hide now what earlier runs logged after this run's start, where they left events: left
        to the first line, they stayed on view for good where that line came after the next
        checkpoint (another --log-every, a stop before it)."""
        if self.folder.is_dir():
            self._open()
            self.writer.flush()

    def add(self, record: dict) -> None:
        self._open()
        for name, value in record.items():
            if name not in ("step", "phase") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(self.tag(name), value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard(run_dir: Path, step: int, wanted: bool) -> TensorBoardLog | None:
    """The run's TensorBoardLog (`wanted`: --tensorboard), starting at `step`. Without
    --tensorboard, the events earlier runs logged after `step` are hidden all the same where
    there are any (a later run with it would not hide those before its own start)."""
    board = TensorBoardLog(run_dir, step)
    if not wanted and not (board.folder.is_dir() and tensorboard_installed()):
        return None
    board.hide_later()
    if wanted:
        return board
    board.close()
    return None


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def require_tensorboard() -> None:
    """--tensorboard without the package: a usage error before any model is built."""
    if not tensorboard_installed():
        from protrans_cli.errors import UsageError

        raise UsageError("--tensorboard needs the tensorboard package, which is not installed: "
                         "pip install tensorboard (or leave --tensorboard out: metrics.jsonl has the same lines)")


def read_metrics(path) -> list[dict]:
    """The lines of metrics.jsonl. A last line cut short (a full disk or a power cut while it was
    appended: the one file written in place) is left out; a damaged line elsewhere is an error."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise InputError(f"line {number} is not JSON (a damaged metrics file)", path=str(path)) from None
    return rows


def plot_metrics(metrics_path: Path, png: Path) -> None:
    """Loss (and eval loss) against step, as a PNG."""
    if not Path(metrics_path).exists():
        return
    # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched a notebook's backend
    # (its plots stopped showing), and pyplot's figure list is shared with the caller's threads.
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per predicted token")
    if train or evals:  # (an fp16 run whose every step overflowed has no loss to show)
        ax.legend()
    fig.tight_layout()
    # Through a fresh temporary (mkstemp), renamed over the PNG: a fixed `.loss_curve.png.tmp.png`
    # was written through any link planted under that name.
    from protrans_cli.io.files import atomic_output

    with atomic_output(png) as out:
        fig.savefig(out, dpi=100, format="png")
