"""Optimizers (AdamW, LAMB, Adafactor) and the learning-rate schedule (warmup, then decay).

AdamW is the default with ESM-2's settings (betas 0.9/0.98, eps 1e-8, weight decay 0.01).
LAMB (You et al. 2019) is what ProtBert/ProtAlbert used for their very large batches; it is
written here (small) because torch has none. Adafactor (ProtT5) is written here too: the
transformers and torch ones fail under FSDP (see `Adafactor`).
Biases and normalisation weights (1-D parameters) get no weight decay, and under LAMB no trust ratio.
"""

from __future__ import annotations

import math

import torch

from protrans_cli.errors import UsageError


def _loss_of(closure):
    """The loss a step's closure recomputes (torch's optimizer protocol), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam's update rescaled per parameter tensor by ||w|| / ||update|| (the trust ratio).

    A group with `layer_adaptation=False` takes plain Adam steps (with its weight decay), as the
    LAMB of BERT's and ALBERT's code (which ProtBert and ProtAlbert were trained with) does for
    the parameters excluded from weight decay: biases and normalisation weights. With the ratio,
    a bias that starts at zero moved by lr x ||update|| once, then by lr x its own tiny norm:
    it stayed near zero for thousands of steps."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, layer_adaptation=True):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      layer_adaptation=layer_adaptation))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _loss_of(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** step)
                v_hat = v / (1 - beta2 ** step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p.float(), alpha=group["weight_decay"])
                # (a group saved by an earlier version has no such key: it resumes as it was trained)
                if not group.get("layer_adaptation", True):
                    p.add_(update.to(p.dtype), alpha=-group["lr"])
                    continue
                w_norm = p.float().norm()
                u_norm = update.norm()
                # A layer whose weights or update are zero takes a plain Adam step.
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


def _settled(t: torch.Tensor) -> torch.Tensor:
    """A sum or norm over a dimension that FSDP shards is, as a DTensor, a pending reduction
    (a "partial" placement) that in-place arithmetic refuses: made whole (replicated) here.
    A plain tensor, or a DTensor reduced within each shard, is returned as it is."""
    placements = getattr(t, "placements", None)
    if placements is None or not any(pl.is_partial() for pl in placements):
        return t
    from torch.distributed.tensor import Replicate

    return t.redistribute(t.device_mesh, [Replicate() if pl.is_partial() else pl for pl in placements])


def _laid_out_as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` laid out as the parameter `like` across ranks: DTensor's propagation may leave an
    update computed from replicated statistics replicated (a one-row matrix, whose row FSDP
    puts on one rank), and the in-place step on the sharded weight then refused it."""
    placements = getattr(like, "placements", None)
    if placements is None or tuple(getattr(t, "placements", ())) == tuple(placements):
        return t
    return t.redistribute(like.device_mesh, placements)


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer & Stern 2018), as ProtT5 was trained with it, under an external
    learning rate (our schedule): no relative step size, no parameter scaling, no first moment,
    second moments of matrices factored into row and column means, decay rate -0.8, 1e-30 added
    to squared gradients, each update clipped to RMS 1, decoupled weight decay.

    transformers' `Adafactor(scale_parameter=False, relative_step=False, warmup_init=False)`
    computes the same numbers (a test compares them), but it and torch's own stop at the first
    step under FSDP: their in-place updates of the factored statistics mix plain tensors with
    FSDP's sharded parameters (DTensors), or update a pending reduction in place. Here every
    statistic is a DTensor laid out as its reduction leaves it (the row means sharded as the
    rows, the column means replicated), so each rank keeps only its rows' share."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0, eps=1e-30, clip_threshold=1.0, decay_rate=-0.8):
        if lr < 0:
            raise ValueError(f"lr must not be negative, got {lr}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, eps=eps, clip_threshold=clip_threshold,
                                      decay_rate=decay_rate))

    def load_state_dict(self, state_dict) -> None:
        """Also a state saved by transformers' Adafactor (protrans used it before): the same
        statistics under the same names, its `eps` a pair (the squared-gradient one first) and
        its step a number; resumed as it was, the pair and the number failed at the first step."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if isinstance(group.get("eps"), (tuple, list)):
                group["eps"] = group["eps"][0]
            for key in ("scale_parameter", "relative_step", "warmup_init", "beta1"):
                group.pop(key, None)
        for state in self.state.values():
            if "step" in state and not torch.is_tensor(state["step"]):
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
            state.pop("RMS", None)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _loss_of(closure)
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                squared = grad * grad + group["eps"]
                factored = grad.dim() >= 2
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros_like(_settled(squared.mean(dim=-1)))
                        state["exp_avg_sq_col"] = torch.zeros_like(_settled(squared.mean(dim=-2)))
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(squared)
                state["step"] += 1
                beta2 = 1.0 - state["step"].item() ** group["decay_rate"]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2).add_(_settled(squared.mean(dim=-1)), alpha=1.0 - beta2)
                    col.mul_(beta2).add_(_settled(squared.mean(dim=-2)), alpha=1.0 - beta2)
                    row_factor = (row / _settled(row.mean(dim=-1, keepdim=True))).rsqrt().unsqueeze(-1)
                    update = row_factor * col.unsqueeze(-2).rsqrt() * grad
                else:
                    v = state["exp_avg_sq"]
                    v.mul_(beta2).add_(squared, alpha=1.0 - beta2)
                    update = v.rsqrt() * grad
                rms = _settled(update.norm()) / update.numel() ** 0.5
                update = _laid_out_as(update / (rms / group["clip_threshold"]).clamp(min=1.0) * lr, p)
                weights = p if p.dtype == torch.float32 else p.float()
                if group["weight_decay"]:
                    weights.add_(weights, alpha=-group["weight_decay"] * lr)
                weights.sub_(update)
                if weights is not p:
                    p.copy_(weights)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():  # (tied weights appear once: parameters() yields a shared one once)
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "adamw":
        fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps,
                                 **({"fused": True} if fused else {}))
    if config.optimizer == "lamb":
        groups[1]["layer_adaptation"] = False  # biases and norms: Adam's steps (see Lamb)
        return Lamb(groups, lr=config.lr, betas=betas, eps=config.adam_eps)
    if config.optimizer == "adafactor":
        return Adafactor(groups, lr=config.lr)
    raise UsageError(f"unknown optimizer {config.optimizer!r}")


class LRLambda:
    """Multiplier of the peak lr at a step: linear warmup, then linear/cosine/inverse-sqrt decay,
    none (constant), or warmup-stable-decay (wsd, wsd_sqrt): the peak held until the last
    `decay_fraction` of the steps, which decay to `min_ratio` (linearly, or as 1 - sqrt(progress)),
    so that a run can be lengthened or branched from a checkpoint before its decay.
    `decay_steps` (linear, cosine): the step at which their decay reaches `min_ratio`, held after
    it (ESM-2: step 450,000 of 500,000); None: the last step, one step after it.

    A class (not a closure) so that the scheduler's state_dict can be saved and restored.
    """

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float,
                 decay_fraction: float = 0.2, decay_steps: int | None = None):
        self.schedule = schedule
        self.warmup_steps = max(0, warmup_steps)
        self.total_steps = max(1, total_steps)
        self.min_ratio = min_ratio
        self.decay_fraction = decay_fraction
        self.decay_steps = decay_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "inverse_sqrt":
            return math.sqrt(max(1, self.warmup_steps)) / math.sqrt(max(step + 1, 1))
        if self.schedule in ("wsd", "wsd_sqrt"):
            # The decay: the last decay_fraction of the run (at least one step, never into the
            # warmup), from the peak at its first step to the floor one step after the last, as
            # linear's and cosine's.
            decay = min(max(1, round(self.decay_fraction * self.total_steps)),
                        max(1, self.total_steps - self.warmup_steps))
            start = self.total_steps - decay
            if step <= start:
                return 1.0
            progress = min(1.0, (step - start) / decay)
            fall = progress if self.schedule == "wsd" else math.sqrt(progress)
            return 1.0 - (1.0 - self.min_ratio) * fall
        # (a lambda restored from a checkpoint written before decay_steps has none: the whole run)
        end = getattr(self, "decay_steps", None)
        span = max(1, (self.total_steps if end is None else end) - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "linear":
            return 1.0 - (1.0 - self.min_ratio) * progress
        if self.schedule == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise UsageError(f"unknown schedule {self.schedule!r}")


def build_scheduler(optimizer, config, total_steps: int):
    fn = LRLambda(config.schedule, config.resolved_warmup_steps, total_steps, config.min_lr_ratio,
                  config.decay_fraction, config.decay_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class LossScale:
    """Dynamic loss scaling for float16 autocast (`--precision fp16`, and `auto` on a GPU without
    bfloat16 such as a V100 or T4). float16 holds nothing below about 6e-8, where many gradients
    of a deep model lie: the loss is multiplied by `scale` before the backward pass and the
    gradients divided by it before clipping and the update. A step whose gradient overflowed (not
    finite) is skipped and the scale halved; after `interval` applied steps in a row it doubles.
    This is what torch.amp.GradScaler does, decided here from the step's one gradient-norm
    synchronisation (the same on every rank, under DDP and FSDP alike), with a state of plain
    numbers that checkpoints keep, so that a resumed run scales as the uninterrupted one.
    A gradient still not finite at a scale of 1 is not an overflow: the run has diverged."""

    def __init__(self, scale: float = 2.0 ** 16, interval: int = 2000):
        self.scale = scale
        self.interval = interval
        self.good_steps = 0  # applied steps since the scale last changed

    def unscale_(self, parameters) -> None:
        """Divide the gradients by the scale (in place)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        try:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        except (RuntimeError, NotImplementedError):  # a tensor type without foreach kernels
            for grad in grads:
                grad.mul_(1.0 / self.scale)

    def update(self, finite: bool) -> bool:
        """After a step's gradient norm is known: True to apply the step, False to skip it (an
        overflow: the scale halves). Raises nothing; `diverged` tells a hopeless gradient."""
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.interval:
                self.scale *= 2.0
                self.good_steps = 0
            return True
        self.scale /= 2.0
        self.good_steps = 0
        return False

    @property
    def diverged(self) -> bool:
        return self.scale < 1.0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "interval": self.interval}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.interval = int(state.get("interval", self.interval))
