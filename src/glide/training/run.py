"""Build the Lightning Trainer from a :class:`TrainConfig`, train, export the EMA model.

Output folder ``<out_dir>/`` (``models/<name>/`` in the pipeline):

- ``model.pt`` — the final EMA weights in the :mod:`glide.models.export` format;
- ``checkpoints/{last,step-N}.ckpt`` — atomic training checkpoints (resume: ``resume=true``);
- ``mlflow_run_id`` — the run a resumed training keeps logging into;
- ``summary.json`` — final step, what stopped the run, losses, throughput and wall time;
- ``samples/step-N.png`` — sample grids from the EMA weights.

The loss curve goes to ``config.plots_file`` (CSV for ``dvc plots``). ``max_steps`` defines a
run; ``max_time`` is an opt-in cap: when it fires first the run says so on stderr and records
``stopped_by: max_time`` in the summary, the export's ``extra`` and the MLflow run's tags (the
promotion gate refuses such a truncated model unless ``promotion.allow_truncated``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, Timer, TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from glide.io import atomic_write_text
from glide.models.export import load_model, save_model
from glide.precision import Hardware, Workload, detect_hardware
from glide.precision import Timer as PrecisionTimer
from glide.precision import resolve_precision as resolve_shared
from glide.stage import StageStopped, deferred_signals
from glide.tracking import ensure_reachable, flatten_params, resolve_tracking_uri
from glide.tracking.buffer import (
    PENDING_DIR,
    BufferingClient,
    TrackingPendingError,
    quick_http_failures,
)
from glide.tracking.datasets import DataRef, link_inputs
from glide.tracking.registry import file_sha256
from glide.tracking.runs import DropMessage
from glide.tracking.store import dvc_experiment_tags, prepare_store, store_root
from glide.training.callbacks import SampleGrid, TrainMonitor
from glide.training.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_dir,
    resume_checkpoint,
    step_of,
)
from glide.training.config import TrainConfig
from glide.training.datamodule import ShardDataModule
from glide.training.modules import (
    DistillModule,
    GlideModule,
    InpaintModule,
    UpsampleDistillModule,
    build_module,
)

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
RESUME_KEY_FILE = "resume_key"  # resume_key() of the run that owns the checkpoints
STOPPED_BY_STEPS = "max_steps"  # every step ran
STOPPED_BY_TIME = "max_time"  # the opt-in time cap fired first: the model is truncated
STOPPED_EARLY = "early_stop"  # a callback set trainer.should_stop before max_steps


@dataclass
class TrainResult:
    """What a finished :func:`train` call produced."""

    model_path: Path | None
    run_id: str | None
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by: str = STOPPED_BY_STEPS


def model_options(config: TrainConfig, preset: Mapping[str, Any]) -> dict[str, Any]:
    """The release-style options of the network to train: ``preset[part]`` + overrides."""
    if config.part not in preset:
        raise KeyError(f"model preset has no {config.part!r} entry (has {sorted(preset)})")
    options = {**preset[config.part], **config.model_overrides}
    if config.kind == "inpaint":
        options["inpaint"] = True
    if config.activation_checkpointing and config.kind != "clip":
        options["use_checkpoint"] = True
    return options


def set_threads(config: TrainConfig) -> int:
    """Set torch's CPU threads (``num_threads: 0``: every core).

    The loader workers are mostly idle (the tiny base consumes ~10 images/s of the ~130/s one
    worker decodes), so compute gets every core: on the 2-core machine 2 threads trained the tiny
    base at 9.0 images/s against 6.65 with 1. Set ``num_threads`` explicitly when the loader is
    busy (large decodes) or the machine is shared: oversubscribed cores make every OpenMP barrier
    wait on a descheduled thread."""
    n = config.num_threads or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def resolve_precision(
    precision: str,
    *,
    accelerator: str = "auto",
    hardware: Hardware | None = None,
    module: GlideModule | None = None,
    timer: PrecisionTimer | None = None,
) -> str:
    """Lightning's precision for ``precision``. ``fp32`` / ``bf16`` (or Lightning's names for
    them) force either; ``auto`` times the module's network forward on a small training-shaped
    batch in float32 and in bf16 autocast on the device it will train on (the tiny base without
    ``module``; ``timer`` replaces the measurement in tests) and is ``bf16-mixed`` only where bf16
    is faster by a margin and accurate (:mod:`glide.precision`, the resolver sampling uses too);
    any other value is Lightning's own and passes through."""
    if precision in ("fp32", "bf16", "float32", "bfloat16"):
        return resolve_shared(precision).lightning
    if precision != "auto":
        return precision
    hw = hardware or detect_hardware()
    device = "cuda" if hw.cuda and accelerator in ("auto", "gpu", "cuda") else "cpu"
    workload = None if module is None else (lambda: _training_workload(module))
    home = None if module is None else next(module.model.parameters()).device
    try:
        choice = resolve_shared(precision, device, hardware=hw, workload=workload, timer=timer)
    finally:
        if module is not None:
            module.model.to(home)  # timing moved it to the training device; Lightning moves it
    log.info(
        "precision auto: %s on %s (%s; %s)", choice.lightning, device, choice.reason, hw.describe()
    )
    return choice.lightning


def _training_workload(module: GlideModule) -> Workload:
    """The module's network with a training-shaped batch (at most 8 rows: the ratio of bf16 to
    float32 speed, not the step time, is what is measured)."""
    data = module.config.data
    return Workload.for_network(
        module.model,
        batch=max(1, min(data.batch_size, 8)),
        image_size=data.crop_size or data.image_size,
        variant=f"train {module.kind}",
    )


class _BufferedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger writing through a :class:`BufferingClient`: training goes on
    when the tracking server stops answering (see :mod:`glide.tracking.buffer`)."""

    _buffer: BufferingClient | None = None

    @property
    def experiment(self) -> Any:
        inner = MLFlowLogger.experiment.fget(self)  # type: ignore[attr-defined]
        if rank_zero_only.rank != 0:
            return inner
        if self._buffer is None:
            self._buffer = BufferingClient(inner)
        return self._buffer

    def finalize(self, status: str = "success") -> None:
        # Lightning's own finalize reads the run first, which a dead server would turn into a
        # crash at the end of a finished training.
        if not self._initialized:
            return
        names = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}
        self.experiment.set_terminated(self.run_id, names.get(status, status))


def _mlflow_logger(
    config: TrainConfig,
    *,
    root: Path,
    experiment: str,
    tracking_uri: str | None,
    run_id: str | None,
) -> Any:
    uri = resolve_tracking_uri(root, tracking_uri)
    ensure_reachable(uri)  # fail before any work when a tracking server is down
    prepare_store(uri, experiment, root=root)  # schema and experiment: once, under a lock
    return _BufferedMLFlowLogger(
        experiment_name=experiment,
        run_name=f"train_{config.name}",
        tracking_uri=uri,
        tags={**dvc_experiment_tags(), "stage": f"train_{config.name}", "kind": config.kind},
        run_id=run_id,
        log_model=False,
    )


class _DropLightningTips(DropMessage):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" advertisements."""

    def __init__(self) -> None:
        super().__init__("💡 Tip:")


# The loggers behind Lightning's rank_zero_info (the standalone and the umbrella package).
_LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def quiet_lightning() -> None:
    """Silence Lightning's product tips (nothing our users can act on); every other message and
    warning stays. Idempotent."""
    for name in _LIGHTNING_INFO_LOGGERS:
        log_ = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in log_.filters):
            log_.addFilter(_DropLightningTips())


def build_trainer(
    config: TrainConfig,
    *,
    logger: Any,
    callbacks: list[pl.Callback],
    module: GlideModule | None = None,
) -> pl.Trainer:
    """A Trainer with atomic checkpoints every ``checkpoint_every`` steps that trains
    ``max_steps`` steps (``max_time`` > 0: an opt-in time cap, see :func:`stop_reason`);
    ``precision: auto`` times ``module``'s network (:func:`resolve_precision`)."""
    quiet_lightning()
    ckpt = ModelCheckpoint(
        dirpath=checkpoint_dir(config.out_dir),
        filename="step-{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every,
        save_top_k=config.keep_checkpoints,
        monitor="step",
        mode="max",
        save_last=True,
        save_on_train_epoch_end=False,
    )
    cbs: list[pl.Callback] = [ckpt, *callbacks]
    if config.progress:
        cbs.append(TQDMProgressBar(refresh_rate=max(1, config.log_every // 2)))
    val = config.val_every > 0 and config.data.val_batches > 0
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=resolve_precision(  # type: ignore[arg-type]
            config.precision, accelerator=config.accelerator, module=module
        ),
        max_steps=config.max_steps,
        max_time=timedelta(seconds=config.max_time) if config.max_time > 0 else None,
        logger=logger,
        callbacks=cbs,
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=config.optim.grad_clip or None,
        accumulate_grad_batches=config.accumulate_grad_batches,
        log_every_n_steps=config.log_every,
        val_check_interval=config.val_every if val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=config.data.val_batches if val else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        default_root_dir=config.out_dir,
        use_distributed_sampler=False,  # the shard stream splits data across ranks itself
    )


def stop_reason(trainer: pl.Trainer, max_steps: int) -> str:
    """Why ``trainer.fit`` returned: :data:`STOPPED_BY_STEPS` when ``max_steps`` were trained,
    :data:`STOPPED_BY_TIME` when Lightning's ``max_time`` Timer ran out first (its elapsed time
    includes the runs a resume continues), else :data:`STOPPED_EARLY`."""
    if trainer.global_step >= max_steps:
        return STOPPED_BY_STEPS
    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            remaining = callback.time_remaining()
            if remaining is not None and remaining <= 0:
                return STOPPED_BY_TIME
    return STOPPED_EARLY


class _StopRequest:
    """The callback a stop signal calls during ``fit``: the trainer finishes the step it is in
    (``should_stop``) instead of being torn mid-update."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer
        self.signum: int | None = None

    def __call__(self, signum: int) -> None:
        self.signum = self.signum or signum
        self.trainer.should_stop = True


def _mark_killed(logger: Any, trainer: pl.Trainer) -> None:
    """The MLflow run of a stopped training ends ``KILLED`` (Lightning leaves it ``FINISHED``
    or ``FAILED``); a store that cannot be reached is reported, not raised."""
    if not trainer.is_global_zero:
        return
    try:
        logger.experiment.set_terminated(str(logger.run_id), "KILLED")
    except Exception as exc:
        print(f"warning: could not mark MLflow run {logger.run_id} KILLED: {exc}", file=sys.stderr)


def _reset_outputs(config: TrainConfig) -> None:
    out = Path(config.out_dir)
    for sub in ("checkpoints", "samples"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("model.pt", "summary.json", RUN_ID_FILE, RESUME_KEY_FILE):
        (out / name).unlink(missing_ok=True)
    Path(config.plots_file).unlink(missing_ok=True)


# Keys that change how a run is watched or stored, not the weights it trains.
_OPERATIONAL_KEYS = (
    "resume", "max_time", "progress", "num_threads", "log_every", "checkpoint_every",
    "keep_checkpoints", "log_mlflow_model", "sample",
)  # fmt: skip


def resume_key(
    config: TrainConfig, *, root: Path, inputs: Sequence[tuple[DataRef, str]] = ()
) -> str:
    """A digest of what determines the trained weights: the config (less
    :data:`_OPERATIONAL_KEYS`), the shards' digests and the inpainting init model's bytes.
    ``resume: auto`` continues a checkpoint only under the same key."""
    what: dict[str, Any] = dataclasses.asdict(config)
    for name in _OPERATIONAL_KEYS:
        what.pop(name, None)
    what["inputs"] = sorted(f"{ref.name}@{ref.digest}" for ref, _ in inputs)
    init = root / config.inpaint.init_from if config.inpaint.init_from else None
    if config.kind == "inpaint" and init is not None and init.is_file():
        what["init_from_sha256"] = file_sha256(init)
    teacher = root / config.distill.teacher
    if config.kind == "distill" and teacher.is_file():
        what["teacher_sha256"] = file_sha256(teacher)
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _resume_from(config: TrainConfig, key: str) -> Path | None:
    """The checkpoint this run continues from (``None``: start at step 0).

    ``resume: true`` takes the newest intact checkpoint; ``auto`` does too, but only for a run
    of the same :func:`resume_key` that has not finished (no ``summary.json``): a stopped
    ``dvc repro`` continues, a changed config starts over. Damaged checkpoints are skipped
    with a warning; when every one is damaged the run stops rather than silently restart."""
    out = Path(config.out_dir)
    if config.resume is False:
        return None
    if config.resume == "auto":
        key_file = out / RESUME_KEY_FILE
        same = key_file.is_file() and key_file.read_text().strip() == key
        if not same or (out / "summary.json").is_file():
            return None
    path, skipped = resume_checkpoint(out)
    name = f"train_{config.name}"
    for line in skipped:
        print(f"{name}: warning: {line}", file=sys.stderr, flush=True)
    if path is None and skipped:
        raise CheckpointError(
            f"{name}: every checkpoint in {checkpoint_dir(out)} is damaged; delete that folder "
            "(or set train.resume=false) to train from step 0"
        )
    if path is not None:
        # Only a step-N file can follow a damaged last.ckpt: its name holds the step.
        how = f" (step {step_of(path)[0]}, the newest intact checkpoint)" if skipped else ""
        print(f"{name}: resuming from {path}{how}", file=sys.stderr, flush=True)
    return path


def _load_base(
    config: TrainConfig, root: Path, rel: str, why: str, *, kind: str = "base"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An exported model a run starts from (inpainting) or learns from (distillation): it must
    be a ``kind`` model and predict what this run's ``parametrization`` says (``why`` if not)."""
    model, meta = load_model(root / rel)
    if meta["kind"] != kind:
        raise ValueError(
            f"{rel} is a {meta['kind']} model, not a{'n' * (kind[0] in 'aeiou')} {kind}"
        )
    param = (meta.get("diffusion") or {}).get("parametrization", "eps")
    if param != config.parametrization:
        raise ValueError(
            f"{rel} predicts {param!r} but train.parametrization is "
            f"{config.parametrization!r}: {why}"
        )
    return model, meta


def _load_teacher(config: TrainConfig, root: Path) -> torch.nn.Module:
    """The exported model a distillation run learns from (checked against the config)."""
    d = config.distill
    why = "the student must keep the teacher's"
    if config.part == "upsample":  # unguided: any upsampler teaches a progressive round
        if d.mode != "progressive":
            raise ValueError(
                "train.part=upsample distils progressively (train.distill.mode=progressive): "
                "the upsampler is sampled unguided, there is no guidance to distil"
            )
        return _load_base(config, root, d.teacher, why, kind="upsample")[0]
    teacher, meta = _load_base(config, root, d.teacher, why)
    weighted = bool((meta.get("options") or {}).get("guidance_embed"))
    if weighted != (d.mode == "progressive"):
        wanted = "a guidance-distilled base" if d.mode == "progressive" else "a base"
        raise ValueError(
            f"train.distill.mode={d.mode} needs {wanted} as its teacher; {d.teacher} is not one"
        )
    return teacher


def _export_kind(config: TrainConfig) -> str:
    """What a run exports: a distilled base (with ``guidance_embed``) or upsampler is sampled
    like the model it was distilled from."""
    if config.kind != "distill":
        return config.kind
    return "upsample" if config.part == "upsample" else "base"


def _export(
    config: TrainConfig, module: GlideModule, *, step: int, extra: Mapping[str, Any]
) -> Path:
    data = config.data
    d = config.distill
    # A progressive student samples on the grid it learned: recorded for `glide sample` & co.
    progressive = config.kind == "distill" and d.mode == "progressive"
    hint = {"sampler": f"pd-{d.steps}"} if progressive else {}
    return save_model(
        Path(config.out_dir) / "model.pt",
        module.ema.model,
        kind=_export_kind(config),
        options={k: v for k, v in module.options.items() if k != "use_checkpoint"},
        tokenizer={"name": data.tokenizer, "path": data.tokenizer_path},
        diffusion={
            "steps": config.diffusion_steps,
            "noise_schedule": config.noise_schedule,
            "parametrization": config.parametrization,
        }
        if config.kind != "clip"
        else {},
        extra={"step": step, "name": config.name, "image_size": data.image_size, **hint, **extra},
    )


def train(
    config: TrainConfig,
    preset: Mapping[str, Any],
    *,
    root: str | Path = ".",
    experiment: str = "glide",
    tracking_uri: str | None = None,
    params: Mapping[str, Any] | None = None,
    extra_callbacks: list[pl.Callback] | None = None,
    inputs: Sequence[tuple[DataRef, str]] = (),
) -> TrainResult:
    """Train ``config.kind`` on the shards; export the EMA model; log everything to MLflow.

    ``preset`` is a model preset dict (``glide.models.load_preset``); ``params`` (the composed
    Hydra config) are logged flattened as the run's parameters; ``inputs`` (dataset, context)
    as its dataset inputs, linked to the prepare run that made them. ``config.resume`` (see
    :func:`_resume_from`) continues from a checkpoint in the same MLflow run. MLflow writes that
    fail (a tracking server gone) are buffered; see :mod:`glide.tracking.buffer`.
    """
    with quick_http_failures():
        return _train(
            config,
            preset,
            root=Path(root),
            experiment=experiment,
            tracking_uri=tracking_uri,
            params=params,
            extra_callbacks=extra_callbacks,
            inputs=inputs,
        )


def _train(
    config: TrainConfig,
    preset: Mapping[str, Any],
    *,
    root: Path,
    experiment: str,
    tracking_uri: str | None,
    params: Mapping[str, Any] | None,
    extra_callbacks: list[pl.Callback] | None,
    inputs: Sequence[tuple[DataRef, str]],
) -> TrainResult:
    start = time.perf_counter()
    out = Path(config.out_dir)
    key = resume_key(config, root=root, inputs=inputs)
    ckpt_path = _resume_from(config, key)
    resuming = ckpt_path is not None or config.resume is True
    run_id_file = out / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if resuming and run_id_file.is_file() else None
    if not resuming:
        _reset_outputs(config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESUME_KEY_FILE, key + "\n")

    pl.seed_everything(config.seed, workers=True, verbose=False)
    set_threads(config)
    options = model_options(config, preset)
    if int(options["image_size"]) != config.data.image_size:
        raise ValueError(
            f"train.data.image_size is {config.data.image_size} but the {config.preset} "
            f"preset's {config.part} model is {options['image_size']} px: set "
            f"train.data.image_size={options['image_size']} (and for the upsampler "
            "train.data.low_res_size)"
        )
    module = build_module(config, options)
    if isinstance(module, InpaintModule) and config.inpaint.init_from and ckpt_path is None:
        base, _ = _load_base(
            config, root, config.inpaint.init_from, "the inpainting fine-tune must keep the base's"
        )
        widened = module.init_from_base(base.state_dict())
        log.info(
            "inpainting initialised from %s (zero-initialised: %s)",
            config.inpaint.init_from,
            widened,
        )
    if isinstance(module, DistillModule | UpsampleDistillModule):
        module.set_teacher(_load_teacher(config, root), init_student=ckpt_path is None)
    datamodule = ShardDataModule(config.data, seed=config.seed)

    logger = _mlflow_logger(
        config, root=root, experiment=experiment, tracking_uri=tracking_uri, run_id=run_id
    )
    monitor = TrainMonitor(config.plots_file, every=config.log_every)
    grid = SampleGrid(out, every=config.sample.every)
    trainer = build_trainer(
        config, logger=logger, callbacks=[monitor, grid, *(extra_callbacks or [])], module=module
    )
    if trainer.is_global_zero:
        if run_id is None and params is not None:
            logger.log_hyperparams(flatten_params(params))
        atomic_write_text(run_id_file, str(logger.run_id) + "\n")
        if inputs:
            link_inputs(logger.experiment, str(logger.run_id), inputs)

    with warnings.catch_warnings():
        # The EMA copy is a submodule kept in eval mode on purpose (EMA.train); Lightning's
        # "modules in eval mode" warning would only mislead users.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        # Lightning's own data-loader code (utilities/_pytree.py) builds torch's deprecated
        # LeafSpec; the FutureWarning is addressed to Lightning, not to our users.
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        # Resuming a max_time-capped run without the cap (what the truncation line advises)
        # leaves the checkpoint's Timer state unused: nothing to add, as the warning suggests.
        warnings.filterwarnings(
            "ignore", message=r".*Please add the following callbacks: \['Timer'\]"
        )
        # A resumed run writes into its own checkpoint folder on purpose.
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        stop = _StopRequest(trainer)
        with deferred_signals(stop):
            try:
                trainer.fit(
                    module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None
                )
            except SIGTERMException:  # Lightning's own SIGTERM path: raised after a whole step
                stop.signum = stop.signum or signal.SIGTERM
    step = trainer.global_step
    stopped_by = stop_reason(trainer, config.max_steps)
    # A final checkpoint at the last step, so `resume` after completion is a no-op (and after a
    # stop signal, so `dvc repro` continues from the last whole step).
    last = checkpoint_dir(out) / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)  # full state
    if stop.signum is not None:
        _mark_killed(logger, trainer)
        print(
            f"train_{config.name}: stopped by {StageStopped(stop.signum).signal_name} at step "
            f"{step} of {config.max_steps}; checkpoint {last}: `dvc repro` (train.resume=auto) "
            "or train.resume=true continues from it",
            file=sys.stderr,
            flush=True,
        )
        raise StageStopped(stop.signum)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return TrainResult(None, None, step, metrics, seconds, stopped_by)

    run_id = str(logger.run_id)
    # Lightning's own "Time limit reached" log line is easy to miss; a truncated model is not.
    where = f"at step {step} of {config.max_steps} (the model is truncated"
    if stopped_by == STOPPED_BY_TIME:
        print(
            f"train_{config.name}: stopped by max_time={config.max_time:g}s {where}; "
            "set train.max_time=0 to train every step)",
            file=sys.stderr,
            flush=True,
        )
    elif stopped_by == STOPPED_EARLY:
        print(f"train_{config.name}: stopped early {where})", file=sys.stderr, flush=True)
    stop = {"stopped_by": stopped_by, "max_steps": config.max_steps, "max_time": config.max_time}
    summary = {
        "step": step,
        **stop,
        "seconds": round(seconds, 1),
        "metrics": {k: round(v, 6) for k, v in sorted(metrics.items())},
        "last_logged": monitor.last_row,
        "run_id": run_id,
    }
    model_path = _export(
        config, module, step=step, extra={"run_id": run_id, **stop, **summary["metrics"]}
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    client = logger.experiment
    # Tags, not params: a resumed run (same MLflow run) overwrites them with its own outcome.
    tags = {"stopped_by": stopped_by, "steps_done": step, "max_steps": config.max_steps}
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    client.log_artifact(run_id, str(model_path), "export")
    client.log_artifact(run_id, str(out / "summary.json"), "export")
    if Path(config.plots_file).is_file():
        client.log_artifact(run_id, config.plots_file, "plots")
    deferred = []
    if config.log_mlflow_model:
        if client.flush():
            _log_mlflow_model(model_path, run_id=run_id, tracking_uri=logger._tracking_uri)
        else:  # the server is down: replay logs the model from the export
            deferred.append({"op": "log_model", "run_id": run_id, "model_file": str(model_path)})
    if not client.flush() or deferred:
        _save_pending(client, deferred, root=root, stage=f"train_{config.name}", run_id=run_id)
    return TrainResult(model_path, run_id, step, metrics, seconds, stopped_by)


def _save_pending(
    client: BufferingClient, deferred: list[dict[str, Any]], *, root: Path, stage: str, run_id: str
) -> None:
    """Every output is written; the MLflow writes the server did not take go to a file, and the
    stage fails with the command that replays them."""
    path = store_root(root) / PENDING_DIR / f"{stage}-{run_id}.json"
    what = client.describe_pending()
    client.save_pending(path, deferred)
    raise TrackingPendingError(
        f"the MLflow server {client.tracking_uri} stopped answering ({client.last_error}); "
        f"outputs and checkpoints are written, the run's last writes ({what}) are kept in "
        f"{path}: once the server is back, run `glide replay {path}`, then `dvc commit {stage}`"
    )


def _log_mlflow_model(model_file: Path, *, run_id: str, tracking_uri: str) -> None:
    """The export (the EMA network) as the run's MLflow logged model ``model``
    (``runs:/<run_id>/model``), what the registry registers (``models:/glide-<name>@champion``):
    a ``python_function`` model holding ``model.pt``, nothing pickled
    (:mod:`glide.tracking.mlflow_model`)."""
    import mlflow

    from glide.tracking.mlflow_model import log_export_model
    from glide.tracking.store import RetryLocked

    client = RetryLocked(mlflow.MlflowClient(tracking_uri=tracking_uri))
    log_export_model(client, run_id=run_id, model_file=model_file)
