"""``tuna train``: build the stage module, the data module and Lightning's Trainer from one config, fit,
and export a Hugging Face folder that plain transformers reloads."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from tuna.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, TrainerConfig
from tuna.errors import TunaError

log = logging.getLogger(__name__)


def _strategy(tc: TrainerConfig, model_ref: str) -> Any:
    if tc.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=_decoder_layer_classes(model_ref), state_dict_type="full",
                            sharding_strategy="FULL_SHARD")
    if tc.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise TunaError("trainer.strategy=deepspeed needs the optional extra: pip install 'tuna[deepspeed]'") from None
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(stage=tc.deepspeed_stage)
    if tc.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo" if tc.accelerator == "cpu" else None)
    return tc.strategy


def _decoder_layer_classes(model_ref: str) -> set[type]:
    """The transformer block classes FSDP wraps one by one (from the architecture's ``_no_split_modules``)."""
    import importlib

    import transformers
    from transformers import AutoConfig

    from tuna.models import TINY_NAME, resolve

    if model_ref == TINY_NAME:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return {LlamaDecoderLayer}
    cfg = AutoConfig.from_pretrained(resolve(model_ref))
    classes = set()
    for arch in cfg.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is None:
            continue
        mod = importlib.import_module(cls.__module__)
        for name in getattr(cls, "_no_split_modules", None) or []:
            if hasattr(mod, name):
                classes.add(getattr(mod, name))
    if not classes:
        raise TunaError(f"cannot find the decoder layer class of {model_ref!r} for FSDP wrapping")
    return classes


def run_training(stage: str, cfg: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """Train one stage; returns the exported HF folder (or the out_dir when export is off).

    ``callbacks`` are extra Lightning callbacks (tests use them to interrupt a run)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from tuna.data import RankedCandidatesDataModule
    from tuna.losses import mle_settings, required_candidate_fields
    from tuna.models import load_tokenizer
    from tuna.precision import resolve_precision
    from tuna.stages import stage_spec
    from tuna.stages.base import TunaModule

    spec = stage_spec(stage)
    for message in (
        r".*isinstance\(treespec, LeafSpec\).*",  # torch deprecation inside Lightning's own code
        r"Total length of .* across ranks is zero",  # no validation file: nothing to validate, as asked
        r"`is_gradient_checkpointing` is deprecated",  # peft (LoRA) reads transformers' old name; tuna uses the new one
    ):
        warnings.filterwarnings("ignore", message=message)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    loss_cfg = spec.loss(cfg.loss)
    required = required_candidate_fields(loss_cfg)
    reads_batch_floats = bool(required) or loss_cfg.ties == "skip"
    if reads_batch_floats and cfg.trainer.precision == "bf16-true":
        # Lightning's *-true precisions cast every floating tensor of a batch, ranker scores and reference log-probs too
        raise TunaError(f"trainer.precision={cfg.trainer.precision} would round the ranker scores and reference log-probs "
                        f"that loss.objective={loss_cfg.objective} (ties={loss_cfg.ties}) reads; use bf16-mixed",
                        field="trainer.precision")
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    dm = RankedCandidatesDataModule(cfg.data, tokenizer, mode=spec.data_mode,
                                    with_gold=mle_settings(loss_cfg)[1] == "gold", seed=cfg.seed,
                                    require={f: f"loss.objective={loss_cfg.objective}" for f in required})
    module = TunaModule(cfg.model, loss_cfg, cfg.optim, tokenizer=tokenizer, nonfinite=cfg.trainer.nonfinite, stage=stage)

    tc = cfg.trainer
    callbacks = [*(callbacks or []), _logs_before_checkpoints()]
    ckpt_dir = out / "checkpoints"
    # last.ckpt links to the newest step checkpoint: one copy of weights + optimizer state (~12 bytes/param) on disk
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step:06d}", save_last="link", save_top_k=1,
                                     every_n_train_steps=tc.checkpoint_every_n_steps or None,
                                     save_on_train_epoch_end=True))
    trainer = L.Trainer(
        accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes, strategy=_strategy(tc, cfg.model.name_or_path),
        precision=resolve_precision(tc.precision, tc.accelerator), max_epochs=tc.max_epochs, max_steps=tc.max_steps,
        accumulate_grad_batches=tc.accumulate_grad_batches, gradient_clip_val=tc.gradient_clip_val,
        log_every_n_steps=tc.log_every_n_steps, val_check_interval=tc.val_check_interval,
        logger=TensorBoardLogger(save_dir=str(out), name="tensorboard", version=""), callbacks=callbacks,
        use_distributed_sampler=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_progress_bar=os.environ.get("TUNA_PROGRESS", "1") != "0",
    )
    ckpt_path = None
    if cfg.resume == "auto":
        last = ckpt_dir / "last.ckpt"
        ckpt_path = str(last) if last.exists() else None
    elif cfg.resume:
        if not Path(cfg.resume).exists():
            raise TunaError("checkpoint to resume from does not exist", path=cfg.resume, field="resume")
        ckpt_path = cfg.resume
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    t0 = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except Exception as e:
        if is_out_of_memory(e):
            raise TunaError(oom_advice(cfg, e, step=trainer.global_step, ckpt_dir=ckpt_dir)) from None
        raise
    wall = time.time() - t0
    result = out
    if cfg.export:
        result = export_stage_model(trainer, module, tokenizer, out / "hf", cfg.trainer.strategy)
    if trainer.is_global_zero:
        summary = {"stage": stage, "wall_s": round(wall, 2), "global_step": trainer.global_step, "world_size": trainer.world_size,
                   "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
                   "hf_dir": str(out / "hf") if cfg.export else None}
        from tuna.records import atomic_write_json

        atomic_write_json(out / "train_summary.json", summary)
        log.info("trained %s in %.1fs: %s", stage, wall, json.dumps(summary["metrics"]))
    return result


def _logs_before_checkpoints() -> Any:
    """A callback: the metrics of every step a checkpoint covers are on disk before the checkpoint is.

    Lightning writes a step's checkpoint (``on_train_batch_end``) before it logs that step's metrics, and
    TensorBoard buffers events for up to two minutes: a run killed after a checkpoint and resumed from it would
    leave a hole in its curves. So before each checkpoint is written, the step's pending metrics are logged (the
    same values Lightning logs a moment later, at the same step) and the loggers are flushed."""
    from lightning.pytorch.callbacks import Callback

    class LogsBeforeCheckpoints(Callback):
        logged_step: int | None = None

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            conn = getattr(trainer, "_logger_connector", None)
            try:  # Lightning internals: if they change, fall back to flushing what was logged
                step = trainer.fit_loop.epoch_loop._batches_that_stepped
                if (trainer.training and conn is not None and conn._first_loop_iter is not None and conn.should_update_logs
                        and step != self.logged_step):  # once per step (last.ckpt and step-*.ckpt both get here)
                    conn.log_metrics(conn.metrics["log"])
                    self.logged_step = step
            except Exception as e:  # noqa: BLE001
                log.debug("could not log the pending step metrics before a checkpoint: %s", e)
            for lg in trainer.loggers:
                lg.save()

    return LogsBeforeCheckpoints()


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA/MPS/CPU allocator failure (``torch.OutOfMemoryError`` or a RuntimeError saying "out of memory")."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    if oom_types and isinstance(e, oom_types):
        return True
    return isinstance(e, (RuntimeError, MemoryError)) and (isinstance(e, MemoryError) or "out of memory" in str(e).lower())


def oom_advice(cfg: TrainConfig, e: BaseException, *, step: int, ckpt_dir: Path) -> str:
    """One line: what ran out, the settings that set the memory use, and the knobs that lower it."""
    d, m, t = cfg.data, cfg.model, cfg.trainer
    tips = []
    if d.batch_size > 1:
        half = max(1, d.batch_size // 2)
        tips.append(f"a smaller micro-batch (--data.batch_size {half} --trainer.accumulate_grad_batches "
                    f"{t.accumulate_grad_batches * (d.batch_size // half)} keeps the effective batch)")
    if not m.gradient_checkpointing:
        tips.append("--model.gradient_checkpointing true")
    if m.lora is None:
        tips.append("LoRA adapters (--model.lora.r 16)")
    if t.precision in ("32-true", "auto"):
        tips.append("--trainer.precision bf16-mixed")
    tips.append(f"a shorter --data.max_length (now {d.max_length})")
    if d.num_candidates is None:
        tips.append("fewer candidates per record (--data.num_candidates)")
    if m.logprob_mode in ("full", "chunked"):
        tips.append("--model.logprob_mode packed")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    resume = (f"A re-run resumes from the last checkpoint in {ckpt_dir}." if t.checkpoint_every_n_steps
              else "(trainer.checkpoint_every_n_steps > 0 makes a re-run resume mid-epoch.)")
    return (f"out of memory in training at step {step} (data.batch_size={d.batch_size} records with all their candidates, "
            f"data.max_length={d.max_length}, trainer.precision={t.precision}, model.gradient_checkpointing="
            f"{str(m.gradient_checkpointing).lower()}, model.lora={'on' if m.lora else 'off'}): try " + "; ".join(tips)
            + f". {resume} ({type(e).__name__}: {first})")


def export_stage_model(trainer: Any, module: Any, tokenizer: Any, out_dir: Path, strategy: str) -> Path:
    """Gather the full weights (FSDP: full state dict on rank 0) and ``save_pretrained`` them."""
    from tuna.models import export_hf, set_activation_checkpointing

    if strategy == "fsdp":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(module.model, StateDictType.FULL_STATE_DICT, cfg):
            state = module.model.state_dict()
        if trainer.is_global_zero:
            from tuna.models import load_model

            plain = load_model(module.model_cfg.name_or_path, tokenizer=tokenizer)
            plain.load_state_dict(state, strict=False)
            export_hf(plain, tokenizer, out_dir)
    elif trainer.is_global_zero:
        model = module.model
        if module.model_cfg.gradient_checkpointing:
            set_activation_checkpointing(model, False)
        model.config.use_cache = True
        export_hf(model, tokenizer, out_dir)
    trainer.strategy.barrier()
    return out_dir


# ----------------------------------------------------------------------------------------------- the command


def train_command(stage: str) -> Any:
    """`tuna train <stage>`: one command path for every stage, its defaults read from the stage's spec."""
    from tuna.stages import stage_spec

    spec = stage_spec(stage)
    d = spec.train_config()

    def command(model: ModelConfig = d.model, data: DataConfig = d.data, loss: LossConfig = d.loss,
                optim: OptimConfig = d.optim, trainer: TrainerConfig = d.trainer, out_dir: str = d.out_dir,
                seed: int = d.seed, resume: str | None = d.resume, export: bool = d.export) -> str:
        return str(run_training(stage, TrainConfig(model=model, data=data, loss=loss, optim=optim, trainer=trainer,
                                                   out_dir=out_dir, seed=seed, resume=resume, export=export)))

    command.__name__ = command.__qualname__ = f"train_{stage.replace('-', '_')}"
    command.__doc__ = f"""{spec.summary}

    Args:
        model: The student (the model the stage starts from).
        data: Records and tokenisation ({'gold or ranked records' if spec.data_mode == 'sft' else 'ranked sets'}).
        loss: Loss knobs{' (SFT uses only the MLE term)' if spec.data_mode == 'sft' else ': the objective and its knobs'}.
        optim: AdamW and the LR schedule (stage default: LR {spec.lr:g}).
        trainer: Lightning Trainer settings.
        out_dir: Where checkpoints, TensorBoard logs and the exported model (out_dir/hf) go.
        seed: Global seed.
        resume: auto | a checkpoint path | null.
        export: Write a save_pretrained folder at the end.
    """
    return command


def commands() -> dict[str, Any]:
    from tuna.stages import STAGES

    return {"train": {name: train_command(name) for name in STAGES}}
