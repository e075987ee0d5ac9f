"""Training the IMO adapters (docs/methods.md §5): supervised cross-entropy or DINO self-distillation.

Only the adapters (and the training head) learn; the CLIP backbone stays frozen and in eval mode. The loop is
resumable: every `save_every` steps (and at the end) it writes, atomically, a full training state
(`train_state.pt`: step, adapters, head, optimizer, DINO teacher/centre, RNG) and exports the adapter
checkpoint (`adapter.safetensors` + `adapter.json`, adapter weights only). Re-running with the same output
directory continues from the saved step; the batch order is a function of (seed, epoch) so a resumed run
sees the same batches an uninterrupted one would. A mode is an objective object (`Supervised`, `Dino`: head,
batch transform, loss, after-step update, extra saved state); `_run_steps` is the one step loop for both.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clipadapt.adapters.imo_adapter import (
    BottleneckAdapter,
    _visual,
    find_adapters,
    insert_adapters,
    save_adapter_checkpoint,
)
from clipadapt.errors import AdapterError, ConfigError
from clipadapt.fileio import atomic_open, atomic_write_json
from clipadapt.ops import l2_normalize

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"
MODES = ("supervised", "selfsup")
DEFAULT_SCALE = {"supervised": 0.03, "selfsup": 0.1}
DEFAULT_EPOCHS = {"supervised": 1, "selfsup": 10}
# fields that may change between a run and its resumption (they do not change what a step computes)
_RESUMABLE_CHANGES = {"max_steps", "save_every", "num_workers"}


@dataclass
class AdapterTrainConfig:
    """Hyper-parameters of adapter training; `None` fields take the per-mode defaults of docs/methods.md §5."""

    mode: str = "supervised"
    width: int = 64
    scale: float | None = None  # 0.03 supervised, 0.1 selfsup
    dropout: float = 0.1
    lr: float | None = None  # 8e-3 supervised; selfsup: DINO's rule 5e-4 * batch / 256
    weight_decay: float = 0.01  # AdamW's default
    batch_size: int = 128
    epochs: int | None = None  # 1 supervised, 10 selfsup
    max_steps: int | None = None  # stop after this many steps in total (overrides epochs when smaller)
    seed: int = 0
    save_every: int = 200
    num_workers: int = 0
    normalize_features: bool = True  # supervised: the linear head sees the L2-normalised image embedding
    # DINO (selfsup)
    local_crops: int = 10
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    dino_out_dim: int = 65536
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # cosine-scheduled to 1 over training

    def resolved(self) -> AdapterTrainConfig:
        """A copy with the per-mode defaults filled in, validated."""
        if self.mode not in MODES:
            raise ConfigError(f"adapter training mode must be one of {MODES}, got {self.mode!r}")
        c = AdapterTrainConfig(**asdict(self))
        c.global_crop_scale, c.local_crop_scale = tuple(c.global_crop_scale), tuple(c.local_crop_scale)
        c.scale = DEFAULT_SCALE[c.mode] if c.scale is None else float(c.scale)
        c.epochs = DEFAULT_EPOCHS[c.mode] if c.epochs is None else int(c.epochs)
        if c.lr is None:
            c.lr = 8e-3 if c.mode == "supervised" else 5e-4 * c.batch_size / 256
        for name in ("batch_size", "epochs", "save_every", "width"):
            if getattr(c, name) < 1:
                raise ConfigError(f"adapter training: {name} must be >= 1, got {getattr(c, name)}")
        if c.max_steps is not None and c.max_steps < 1:
            raise ConfigError(f"adapter training: max_steps must be >= 1, got {c.max_steps}")
        if c.mode == "selfsup" and c.local_crops < 0:
            raise ConfigError(f"adapter training: local_crops must be >= 0, got {c.local_crops}")
        return c


@dataclass
class TrainResult:
    """What a call to `train_adapters` did."""

    checkpoint: Path  # the adapter weights file
    step: int  # steps done in total (including earlier runs)
    total_steps: int
    start_step: int  # where this call started (> 0 when resumed)
    losses: list[float] = field(default_factory=list)  # per-step loss over all runs

    @property
    def complete(self) -> bool:
        return self.step >= self.total_steps


# ----------------------------------------------------------------------------------------- data
class _Transformed(Dataset):
    """(PIL, label) dataset -> (transform(PIL), label)."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return self.transform(image), int(label)


class _ResumableBatches(torch.utils.data.Sampler):
    """Batches of indices for steps [start, stop): epoch e is `randperm(n)` seeded with (seed, e)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.per_epoch = math.ceil(n / batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, None
        for step in range(self.start, self.stop):
            e, b = divmod(step, self.per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                epoch, perm = e, torch.randperm(self.n, generator=g)
            yield perm[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def _preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(_visual(model), "preprocess_cfg", None)
    if not cfg:
        raise ConfigError("the model's visual tower has no open_clip preprocess_cfg; pass `preprocess=` explicitly")
    return dict(cfg)


def eval_transform(model: nn.Module) -> Callable:
    """The encoder's own preprocessing (resize, crop, CLIP mean/std) from open_clip's preprocess_cfg."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = _preprocess_cfg(model)
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items()
                                               if k in PreprocessCfg.__dataclass_fields__}), is_train=False)


class MultiCrop:
    """DINO's multi-crop: 2 global + `local_crops` local views, normalised with CLIP's mean/std.

    open_clip ViTs have a fixed positional embedding, so local crops are resized to the full input size
    (DINO uses 96 px); they differ from global crops by their smaller area (`local_crop_scale`).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *, local_crops: int = 10,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4)):
        from torchvision import transforms as T

        kernel = max(3, (size // 10) | 1)
        jitter = [T.RandomHorizontalFlip(), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                  T.RandomGrayscale(p=0.2)]
        finish = [T.ToTensor(), T.Normalize(mean, std)]

        def blur(p: float):
            return T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)

        crop = lambda scale: T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)  # noqa: E731
        self.global1 = T.Compose([crop(global_scale), *jitter, blur(1.0), *finish])
        self.global2 = T.Compose([crop(global_scale), *jitter, blur(0.1), T.RandomSolarize(128, p=0.2), *finish])
        self.local = T.Compose([crop(local_scale), *jitter, blur(0.5), *finish])
        self.local_crops = local_crops

    def __call__(self, image) -> list[Tensor]:
        image = image.convert("RGB")
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.local_crops)]


def multicrop_transform(model: nn.Module, config: AdapterTrainConfig) -> MultiCrop:
    cfg = _preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else int(cfg["size"][0])
    return MultiCrop(size, cfg["mean"], cfg["std"], local_crops=config.local_crops,
                     global_scale=config.global_crop_scale, local_scale=config.local_crop_scale)


# ----------------------------------------------------------------------------------------- DINO pieces
class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2-normalise -> cosine against `out_dim` normalised prototypes (DINO's head)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck_dim) * bottleneck_dim ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(l2_normalize(self.mlp(x)), l2_normalize(self.prototypes))


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, *, student_temp: float, teacher_temp: float) -> Tensor:
    """Cross-entropy of sharpened, centred teacher targets (2 global views) vs every other student view.

    student (V, B, K) logits, teacher (G, B, K) logits for the first G student views; mean over (g, v != g) pairs.
    """
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for g in range(teacher.shape[0]):
        for v in range(student.shape[0]):
            if v != g:
                total = total + (-targets[g] * log_probs[v]).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


# ----------------------------------------------------------------------------------------- state I/O
def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save streamed into a temp file that is fsynced and renamed over `path` (the ~270 MB training state
    is never held as one bytes object); a failure leaves the previous state file as it was."""
    with atomic_open(path) as f:
        writer = _WriteErrors(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as e:  # torch reports a failed write ("unexpected pos ...") without its OSError
            if writer.error is None:
                raise
            raise writer.error from e


class _WriteErrors:
    """A file for torch.save that remembers the OSError of a failed write (ENOSPC), which torch replaces by a
    RuntimeError."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _config_dict(config: AdapterTrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["global_crop_scale"], d["local_crop_scale"] = list(d["global_crop_scale"]), list(d["local_crop_scale"])
    return d


def _check_resumable(saved: dict[str, Any], now: dict[str, Any], state_path: Path) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in _RESUMABLE_CHANGES and saved.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise AdapterError(
            f"{state_path} was written by a training run with other settings ({shown}); "
            "resume with the same settings, or choose a new output directory"
        )


# ----------------------------------------------------------------------------------------- model parts
def _set_train_modes(model: nn.Module, adapters: list[BottleneckAdapter], training: bool) -> None:
    model.eval()  # the frozen backbone always runs in eval mode
    for a in adapters:
        a.train(training)


# ----------------------------------------------------------------------------------------- objectives
class Supervised:
    """Cross-entropy of a linear head on the image embedding (L2-normalised with `normalize_features`); batches
    through `preprocess` (default: the encoder's eval transform). Nothing beyond the head and the steps to save."""

    def __init__(self, c: AdapterTrainConfig, dataset: Dataset, num_classes: int | None):
        self.c, self.num_classes = c, num_classes or _num_classes(dataset)

    def head(self, embed_dim: int) -> nn.Module:
        return nn.Linear(embed_dim, self.num_classes)

    def transform(self, model: nn.Module, preprocess: Callable | None) -> Callable:
        return preprocess or eval_transform(model)

    def start(self, state: _Run, adapters: list[BottleneckAdapter], saved: dict[str, Any] | None) -> None:
        """Set up (or restore from `saved`) what the objective keeps between steps: nothing here."""

    def loss(self, state: _Run, images: Tensor, labels: Tensor) -> tuple[Tensor, Any]:
        feats = _visual(state.model)(images.to(state.device)).float()
        logits = state.head(l2_normalize(feats) if self.c.normalize_features else feats)
        return F.cross_entropy(logits, labels.to(state.device)), None

    def after_step(self, state: _Run, aux: Any) -> None:
        """Nothing moves after the optimiser step."""

    def state(self) -> dict[str, Tensor]:
        """Entries of train_state.pt beyond the common ones: none."""
        return {}


class Dino:
    """DINO self-distillation: projection head, multi-crop views; the teacher (an EMA of adapters and head) sees the
    two global views, the student every view; after each step the teacher and the centre move (EMA)."""

    def __init__(self, c: AdapterTrainConfig, dataset: Dataset, num_classes: int | None):
        self.c, self.num_classes = c, num_classes

    def head(self, embed_dim: int) -> nn.Module:
        return DINOHead(embed_dim, self.c.dino_out_dim, self.c.dino_hidden_dim, self.c.dino_bottleneck_dim)

    def transform(self, model: nn.Module, preprocess: Callable | None) -> Callable:
        return multicrop_transform(model, self.c)

    def start(self, state: _Run, adapters: list[BottleneckAdapter], saved: dict[str, Any] | None) -> None:
        """The teacher starts as a copy of the student, the centre at zero (or both as saved)."""
        self.adapters = adapters  # switched to eval mode while the teacher runs
        if saved is not None:
            self.teacher = {k: v.to(state.device) for k, v in saved.get("teacher", {}).items()}
            self.center = saved["center"].to(state.device) if "center" in saved else None
        else:
            self.teacher = {k: v.detach().clone() for k, v in _teacher_source(state.params, state.head).items()}
            self.center = torch.zeros(self.c.dino_out_dim, device=state.device)

    def loss(self, state: _Run, images: list[Tensor], labels: Tensor) -> tuple[Tensor, Any]:
        """DINO loss of the student's views against the teacher's outputs on the 2 global views (returned too)."""
        from torch.func import functional_call

        visual = _visual(state.model)
        views = [v.to(state.device) for v in images]
        b = views[0].shape[0]
        student = state.head(visual(torch.cat(views)).float()).view(len(views), b, -1)
        with torch.no_grad():
            for a in self.adapters:
                a.eval()  # the teacher runs without dropout
            t_visual = {k[len("visual."):]: v for k, v in self.teacher.items() if k.startswith("visual.")}
            t_head = {k[len("head."):]: v for k, v in self.teacher.items() if k.startswith("head.")}
            feats = functional_call(visual, t_visual, (torch.cat(views[:2]),)).float()
            teacher_out = functional_call(state.head, t_head, (feats,)).view(2, b, -1)
            for a in self.adapters:
                a.train()
        c = self.c
        loss = dino_loss(student, teacher_out, self.center, student_temp=c.student_temp, teacher_temp=c.teacher_temp)
        return loss, teacher_out

    @torch.no_grad()
    def after_step(self, state: _Run, teacher_out: Tensor) -> None:
        """EMA of the student into the teacher (momentum on DINO's cosine schedule from m0 to 1 over the planned
        steps), EMA of the teacher outputs' mean into the centre."""
        c = self.c
        m = 1 - (1 - c.teacher_momentum) * (math.cos(math.pi * state.step / state.planned) + 1) / 2
        for k, v in _teacher_source(state.params, state.head).items():
            self.teacher[k].mul_(m).add_(v.detach(), alpha=1 - m)
        self.center.mul_(c.center_momentum).add_(teacher_out.float().mean(dim=(0, 1)), alpha=1 - c.center_momentum)

    def state(self) -> dict[str, Tensor]:
        return {"teacher": {k: v.cpu() for k, v in self.teacher.items()}, "center": self.center.cpu()}


OBJECTIVES = {"supervised": Supervised, "selfsup": Dino}


# ----------------------------------------------------------------------------------------- a run
@dataclass
class _Run:
    """One call's training: the model and its objective, what the steps change and a resume restores (adapters in
    the model, head, optimizer, step, losses), and where the checkpoints go."""

    model: nn.Module
    objective: Supervised | Dino
    c: AdapterTrainConfig
    out_dir: Path
    device: torch.device
    planned: int  # the schedule's horizon (drives the DINO teacher momentum)
    total: int  # steps in all (max_steps may stop before `planned`)
    params: dict[str, nn.Parameter]
    head: nn.Module
    optimizer: torch.optim.Optimizer
    meta: dict[str, Any]  # written into the adapter checkpoint's JSON
    losses: list[float] = field(default_factory=list)
    step: int = 0

    def restore(self, saved: dict[str, Any]) -> None:
        """Adapters, head, optimizer, step and losses from a saved training state."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(saved["adapters"][name])
        self.head.load_state_dict(saved["head"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step, self.losses = int(saved["step"]), list(saved["losses"])

    def save(self) -> Path:
        """Write the resumable state at `step` (atomically, RNG states last) and export the adapter checkpoint;
        returns its weights file."""
        _atomic_torch_save({"config": _config_dict(self.c), "step": self.step, "losses": self.losses,
                            "adapters": {k: v.detach().cpu() for k, v in self.params.items()},
                            "head": {k: v.cpu() for k, v in self.head.state_dict().items()},
                            "optimizer": self.optimizer.state_dict(), "rng": _rng_state(self.device),
                            **self.objective.state()}, self.out_dir / STATE_FILE)
        meta = {**self.meta, "steps": self.step, "complete": self.step >= self.total}
        return save_adapter_checkpoint(self.out_dir, self.model, meta)

    def train_step(self, images: Tensor | list[Tensor], labels: Tensor, amp: Callable) -> None:
        """One optimiser step on one batch, then the objective's after-step update (DINO: teacher, centre)."""
        with amp():
            loss, aux = self.objective.loss(self, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.objective.after_step(self, aux)
        self.losses.append(float(loss.detach()))


def train_adapters(
    model: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    config: AdapterTrainConfig | None = None,
    num_classes: int | None = None,
    preprocess: Callable | None = None,
    model_name: str | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Train IMO adapters in `model` (an open_clip CLIP model, on its device) on `dataset` (ds[i] -> (PIL, int)).

    Inserts adapters when the model has none. Supervised mode needs the number of classes (`num_classes`, or
    `dataset.classnames` / `dataset.labels`). `preprocess` (default: the encoder's own eval transform) is used
    for supervised batches; selfsup builds DINO multi-crops with the same mean/std. `extra_config` (model id,
    dataset spec, ...) is written into the checkpoint's JSON. Resumes from `out_dir/train_state.pt` if present.
    """
    c = (config or AdapterTrainConfig()).resolved()
    if len(dataset) == 0:
        raise ConfigError("adapter training: the dataset is empty")
    objective = OBJECTIVES[c.mode](c, dataset, num_classes)
    run, adapters, saved = _start_run(model, dataset, Path(out_dir), c, objective, preprocess, model_name, extra_config)
    loader = DataLoader(_Transformed(dataset, objective.transform(model, preprocess)), num_workers=c.num_workers,
                        batch_sampler=_ResumableBatches(len(dataset), c.batch_size, c.seed, run.step, run.total),
                        pin_memory=run.device.type == "cuda")
    start = run.step
    weights = run.save() if start == 0 else run.out_dir / "adapter.safetensors"
    if start >= run.total:
        log.info("adapter training in %s is already complete (%d steps)", run.out_dir, run.total)
        return TrainResult(weights, start, run.total, start, run.losses)
    _set_train_modes(model, adapters, True)
    batches = iter(loader)  # creating it draws from the global RNG: restore the saved state only after
    if saved is not None:
        _set_rng_state(saved["rng"], run.device)
    try:
        weights = _run_steps(run, batches, autocast_dtype, progress) or weights
    finally:
        _set_train_modes(model, adapters, False)
    atomic_write_json(run.out_dir / LOG_FILE, {"mode": c.mode, "total_steps": run.total, "steps": len(run.losses),
                                               "loss": run.losses})
    return TrainResult(weights, run.step, run.total, start, run.losses)


def _start_run(model: nn.Module, dataset: Dataset, out_dir: Path, c: AdapterTrainConfig, objective: Supervised | Dino,
               preprocess: Callable | None, model_name: str | None, extra_config: dict[str, Any] | None
               ) -> tuple[_Run, list[BottleneckAdapter], dict[str, Any] | None]:
    """Seed (fresh run) or load the saved state, insert the adapters, build the head and AdamW over both, restore
    a saved run; (run, adapters, saved state or None). In this order: the global RNG draws are part of the format."""
    device = next(model.parameters()).device
    planned, total = _schedule(len(dataset), c)
    saved = _saved_state_or_seed(out_dir / STATE_FILE, c)
    adapters = _ensure_adapters(model, c, model_name)
    embed_dim = int(getattr(_visual(model), "output_dim", 0)) or _probe_dim(model, dataset, preprocess)
    head = objective.head(embed_dim).to(device)
    params = {n: p for n, p in _visual(model).named_parameters() if ".imo_adapter." in f".{n}"}
    optimizer = torch.optim.AdamW([*params.values(), *head.parameters()], lr=c.lr, weight_decay=c.weight_decay)
    meta = {**(extra_config or {}), "mode": c.mode, "training": _config_dict(c), "total_steps": total,
            "num_classes": objective.num_classes, "num_train_images": len(dataset)}
    run = _Run(model, objective, c, out_dir, device, planned, total, params, head, optimizer, meta)
    if saved is not None:
        run.restore(saved)
        log.info("resuming adapter training from step %d of %d (%s)", run.step, total, out_dir / STATE_FILE)
    objective.start(run, adapters, saved)
    return run, adapters, saved


def _run_steps(run: _Run, batches: Iterator, autocast_dtype: torch.dtype | None, progress: bool) -> Path | None:
    """Every optimiser step of this call, a checkpoint every `save_every` steps and at the end; returns the last
    adapter weights file written (None: none)."""
    from tqdm.auto import tqdm

    amp = (lambda: torch.autocast(run.device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    weights = None
    with tqdm(total=run.total, initial=run.step, desc=f"adapter {run.c.mode}", disable=not progress,
              unit="step") as bar:
        for images, labels in batches:
            run.train_step(images, labels, amp)
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.4f}")
            if run.step % run.c.save_every == 0 or run.step == run.total:
                weights = run.save()
    return weights


# ----------------------------------------------------------------------------------------- setting up a run
def _schedule(n: int, c: AdapterTrainConfig) -> tuple[int, int]:
    """(planned, total) steps: `planned` is the schedule's horizon (epochs of full batches, it drives the
    teacher momentum); `max_steps` only stops earlier."""
    planned = math.ceil(n / c.batch_size) * c.epochs
    total = planned if c.max_steps is None else min(c.max_steps, planned)
    return planned, total


def _saved_state_or_seed(state_path: Path, c: AdapterTrainConfig) -> dict[str, Any] | None:
    """The saved state to resume from (checked against `c`), or None after seeding the global RNG with `c.seed`
    for a fresh run (adapter and head initialisation draw from it)."""
    if not state_path.is_file():
        torch.manual_seed(c.seed)
        return None
    saved = _load_state(state_path)
    _check_resumable(saved["config"], _config_dict(c), state_path)
    return saved


def _ensure_adapters(model: nn.Module, c: AdapterTrainConfig, model_name: str | None) -> list[BottleneckAdapter]:
    """The model's adapters, inserted with `c`'s width/scale/dropout when it has none; ConfigError when the
    existing ones have another width or scale."""
    adapters = find_adapters(model) or insert_adapters(
        model, width=c.width, scale=c.scale, dropout=c.dropout, model_name=model_name
    )
    if adapters[0].width != c.width or adapters[0].scale != c.scale:
        raise ConfigError(
            f"the model already has adapters of width {adapters[0].width}, scale {adapters[0].scale}; "
            f"training asked for width {c.width}, scale {c.scale}"
        )
    return adapters


def _load_state(state_path: Path) -> dict[str, Any]:
    """The saved training state; AdapterError naming the file when torch cannot read it."""
    try:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
        raise AdapterError(
            f"{state_path}: resumable training state is unreadable ({type(e).__name__}: {e}); "
            "delete it to start over, or choose a new output directory"
        ) from e
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise AdapterError(f"{state_path}: not a clipadapt adapter training state (no 'config'); delete it to "
                           "start over")
    return saved


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    """CPU (and CUDA, on a CUDA device) RNG states: dropout and augmentations draw from them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _num_classes(dataset: Dataset) -> int:
    if getattr(dataset, "classnames", None):
        return len(dataset.classnames)
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels):
        return int(max(labels)) + 1
    raise ConfigError("supervised adapter training needs the number of classes: pass num_classes= "
                      "or a dataset with .classnames or .labels")


def _probe_dim(model: nn.Module, dataset: Dataset, preprocess: Callable | None) -> int:
    image, _ = dataset[0]
    x = (preprocess or eval_transform(model))(image).unsqueeze(0).to(next(model.parameters()).device)
    with torch.no_grad():
        return int(_visual(model)(x).shape[-1])


def _teacher_source(params: dict[str, nn.Parameter], head: nn.Module) -> dict[str, Tensor]:
    return {**{f"visual.{k}": v for k, v in params.items()}, **{f"head.{k}": v for k, v in head.named_parameters()}}
