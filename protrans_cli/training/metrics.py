"""The run's log: `metrics.jsonl` (one JSON object per logging step, rank 0) and its loss curve,
and the statistics summed between two logging steps."""

from __future__ import annotations

import json
import os
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


WANDB_RUN_FILE = "wandb_run.json"  # RUN/wandb_run.json: the W&B run this directory logs to


def _read_wandb_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / WANDB_RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # (none, or damaged: a new W&B run)
        return None
    if not (isinstance(record, dict) and isinstance(record.get("id"), str)
            and isinstance(record.get("last_step"), int)):
        return None
    return record


def _write_wandb_record(run_dir: Path, record: dict) -> None:
    from protrans_cli.io.files import atomic_output

    with atomic_output(Path(run_dir) / WANDB_RUN_FILE) as out:
        out.write((json.dumps(record, indent=1) + "\n").encode())


def _new_wandb_id() -> str:
    """A run id as W&B makes them: 8 characters of [a-z0-9]."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbLog:
    """metrics.jsonl's lines logged to Weights & Biases (rank 0, `--wandb`), with the names the
    TensorBoard scalars have (`train/loss`, ..., `eval/loss`) at the line's step. The W&B run is
    started with the first line (a run that fails before it leaves nothing), its files under
    RUN/wandb/ (unless WANDB_DIR says elsewhere), and its id kept in RUN/wandb_run.json with the
    last step it was sent, so that `--resume` continues the same W&B run. W&B refuses a step that
    goes back: a run resumed from a checkpoint older than the last step W&B has, or after a run
    without --wandb went back there, starts a new W&B run, named NAME-resumed-STEP, and sends it
    metrics.jsonl's lines up to its checkpoint first: each W&B run holds one uninterrupted
    curve. Any failure of W&B (not logged in, the network) is a warning, after which training goes
    on without it."""

    def __init__(self, run_dir: Path, start_step: int, *, project: str, name: str, config: dict,
                 earlier: list[dict] | None = None):
        self.run_dir, self.start_step, self.project, self.config = Path(run_dir), start_step, project, config
        self.run = None
        self.failed = False
        record = _read_wandb_record(self.run_dir)
        same = (start_step > 0 and record is not None and record.get("project") == project
                and not record.get("abandoned") and record["last_step"] <= start_step)
        if same:
            # (the lines metrics.jsonl has that W&B was not sent: a resume without --wandb between)
            self.id, self.name, self.notes = record["id"], record.get("name") or name, None
            self.replay = [row for row in earlier or () if record["last_step"] < row.get("step", 0) <= start_step]
        else:
            self.id, self.name, self.notes = _new_wandb_id(), name, None
            self.replay = [row for row in earlier or () if row.get("step", 0) <= start_step] if start_step else []
            if start_step and record is not None:
                self.name = f"{name}-resumed-{start_step}"
                self.notes = (f"resumed from step {start_step} of {run_dir}; W&B run {record['id']} had steps after it "
                              f"(up to {record['last_step']}) that this run trains again: its lines up to step "
                              f"{start_step} are metrics.jsonl's")
        self.last_step = record["last_step"] if same else 0

    @property
    def folder(self) -> Path:
        return Path(os.environ.get("WANDB_DIR") or self.run_dir) / "wandb"

    def _warn(self, what: str, exc: BaseException) -> None:
        from protrans_cli import console

        self.failed = True
        said = (str(exc).strip().splitlines() or [""])[0]
        console.warn(f"--wandb: {what} failed ({type(exc).__name__}{': ' + said if said else ''}): training goes on "
                     "without W&B (metrics.jsonl has every line)")

    def _open(self) -> bool:
        if self.run is not None or self.failed:
            return self.run is not None
        try:
            import wandb

            kw = {} if os.environ.get("WANDB_DIR") else {"dir": str(self.run_dir)}
            self.run = wandb.init(project=self.project, name=self.name, id=self.id, resume="allow",
                                  config=self.config, notes=self.notes, **kw)
            if self.run is None:  # (WANDB_MODE=disabled returns a run that logs nothing; None from a stub)
                raise RuntimeError("wandb.init returned no run")
        except Exception as exc:  # (not logged in, no network, a bad WANDB_* setting)
            self._warn("wandb.init", exc)
            self.run = None
            return False
        self.record_step(max(self.last_step, max((r["step"] for r in self.replay), default=0)))
        for row in self.replay:
            self._log(row)
        self.replay = []
        return self.run is not None

    def record_step(self, step: int) -> None:
        """Written before the line is sent: a W&B run that was sent step N is never resumed
        from an earlier checkpoint (W&B would refuse its steps)."""
        self.last_step = max(self.last_step, step)
        _write_wandb_record(self.run_dir, {"id": self.id, "name": self.name, "project": self.project,
                                           "last_step": self.last_step})

    def _log(self, record: dict) -> None:
        values = {TensorBoardLog.tag(k): v for k, v in record.items()
                  if k not in ("step", "phase") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        try:
            self.run.log(values, step=record["step"])
        except Exception as exc:
            self._warn(f"logging step {record['step']}", exc)
            self.finish(1)

    def add(self, record: dict) -> None:
        if not self._open():
            return
        self.record_step(record["step"])
        self._log(record)

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                self._warn("wandb.finish", exc)


def open_wandb(run_dir: Path, step: int, config, run_config: dict, metrics_path: Path) -> WandbLog | None:
    """The run's WandbLog (config.wandb: --wandb), starting at `step`, its W&B config
    `run_config`. Without --wandb, a W&B run that was sent steps after `step` is marked
    abandoned in RUN/wandb_run.json: a later run with --wandb starts a new one."""
    run_dir = Path(run_dir)
    if not config.wandb:
        record = _read_wandb_record(run_dir)
        if record is not None and record["last_step"] > step and not record.get("abandoned"):
            _write_wandb_record(run_dir, {**record, "abandoned": True})
        return None
    project = config.wandb_project or os.environ.get("WANDB_PROJECT") or "protrans"
    name = config.wandb_name or run_dir.resolve().name
    earlier = read_metrics(metrics_path) if step and Path(metrics_path).is_file() else []
    return WandbLog(run_dir, step, project=project, name=name, config=run_config, earlier=earlier)


def wandb_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def require_wandb() -> None:
    """--wandb without the package: a usage error before any model is built."""
    if not wandb_installed():
        from protrans_cli.errors import UsageError

        raise UsageError("--wandb needs the wandb package, which is not installed: pip install wandb "
                         "(or protrans[wandb]; or leave --wandb out: metrics.jsonl has the same lines)")


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
