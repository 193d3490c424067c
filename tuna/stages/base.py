"""The LightningModule shared by all three stages: forward over N candidates, the objective (the Tuna loss by
default, ``loss.objective``), logging."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from tuna.config import ModelConfig, OptimConfig
from tuna.errors import TunaError
from tuna.forward import response_token_logprobs
from tuna.losses import LossConfig, LossOutput, mle_settings, objective_loss, pair_accuracy, tie_groups


class TunaModule(L.LightningModule):
    """Student + objective, for every stage (what differs between stages is in ``tuna.stages.STAGES``)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        optim_cfg: OptimConfig,
        *,
        tokenizer: Any = None,
        model: Any = None,
        nonfinite: str = "stop",
        stage: str = "prob-rank",
    ):
        super().__init__()
        self.model_cfg, self.loss_cfg, self.optim_cfg = model_cfg, loss_cfg, optim_cfg
        self.tokenizer = tokenizer
        self.model = model
        self.nonfinite = nonfinite
        self._t0: float | None = None
        self._skipped = 0
        """Batches skipped for a non-finite loss (trainer.nonfinite=skip), logged as train/skipped_batches."""
        self.save_hyperparameters(
            {"model": vars(model_cfg) | {"lora": vars(model_cfg.lora) if model_cfg.lora else None},
             "loss": vars(loss_cfg) | dict(zip(("mle_weight", "mle_target"), mle_settings(loss_cfg))),  # as trained
             "optim": vars(optim_cfg), "stage": stage}
        )

    # ------------------------------------------------------------------------------------------- model

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from tuna.models import load_model

        self.model = load_model(self.model_cfg.name_or_path, dtype=self.model_cfg.dtype, tokenizer=self.tokenizer,
                                attn_implementation=self.model_cfg.attn_implementation)
        self._prepare_model()

    def _prepare_model(self) -> None:
        if self.model_cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        if self.model_cfg.lora is not None:
            from peft import LoraConfig as PeftLora
            from peft import get_peft_model

            lc = self.model_cfg.lora
            self.model = get_peft_model(self.model, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                             target_modules=lc.target_modules, task_type="CAUSAL_LM"))
            if self.model_cfg.gradient_checkpointing:
                self.model.enable_input_require_grads()

    # ------------------------------------------------------------------------------------------- steps

    def compute(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        logps, mask = response_token_logprobs(self.model, batch, mode=self.model_cfg.logprob_mode)
        return objective_loss(logps, mask, batch["rank_mask"], batch.get("gold_mask"), self.loss_cfg,
                              rank_scores=batch.get("rank_scores"), ref_logps=batch.get("ref_logps"))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        out = self.compute(batch)
        if not torch.isfinite(out.loss):
            ids = batch.get("ids")
            msg = (f"non-finite loss ({out.loss.item()}: rank={out.rank.item()}, mle={out.mle.item()}) at step "
                   f"{self.global_step}, batch {batch_idx}, records {ids}")
            if self.nonfinite == "skip":
                self.print(f"tuna: skipping batch: {msg}")
                self._skipped += 1
                # Log this batch's own (non-finite) values: Lightning would otherwise log the previous batch's
                # values again at this step, a loss that was never computed.
                self._log_step(batch, out)
                return None
            raise TunaError(msg + " (set trainer.nonfinite=skip to skip such batches)")
        self._log_step(batch, out)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.compute(batch)
        n = batch["input_ids"].shape[0]
        metrics = {"val/loss": out.loss, "val/loss_rank": out.rank, "val/loss_mle": out.mle}
        metrics.update(objective_metrics(out, "val", batch.get("rank_scores")))
        self.log_dict(metrics, batch_size=n, sync_dist=True)

    def _log_step(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        n = batch["input_ids"].shape[0]
        metrics = {"train/loss": out.loss.detach(), "train/loss_rank": out.rank.detach(), "train/loss_mle": out.mle.detach()}
        metrics.update(objective_metrics(out, "train", batch.get("rank_scores")))
        real = batch["num_real_tokens"].float()
        slots = batch["num_slot_tokens"].float()
        metrics["train/padding_share"] = 1.0 - real / slots.clamp_min(1.0)
        if self.nonfinite == "skip":
            metrics["train/skipped_batches"] = float(self._skipped)  # running count, logged every step
        self.log_dict(metrics, batch_size=n, on_step=True, prog_bar=False)
        self.log("loss", out.loss.detach(), prog_bar=True, batch_size=n, logger=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tuna_skipped_batches"] = self._skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._skipped = int(checkpoint.get("tuna_skipped_batches", 0))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after backward and the optimizer step: tokens/s of the whole training step
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        real = float(batch["num_real_tokens"])
        slots = float(batch["num_slot_tokens"])
        self.log_dict({"train/tokens_per_s": real / dt, "train/slot_tokens_per_s": slots / dt}, on_step=True,
                      batch_size=batch["input_ids"].shape[0])

    # ------------------------------------------------------------------------------------------- optim

    def configure_optimizers(self):
        # The released code's schedules: Hugging Face Trainer's (train_tuna.sh --lr_scheduler_type cosine
        # --warmup_steps 2), from transformers itself. Warm-up is linear from 0, so the first step has LR 0.
        from transformers import (
            get_constant_schedule_with_warmup,
            get_cosine_schedule_with_warmup,
            get_linear_schedule_with_warmup,
        )

        oc = self.optim_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer is not None else 1
        warm = max(0, oc.warmup_steps)
        if oc.schedule == "cosine":
            sched = get_cosine_schedule_with_warmup(opt, warm, total)
        elif oc.schedule == "linear":
            sched = get_linear_schedule_with_warmup(opt, warm, total)
        else:
            sched = get_constant_schedule_with_warmup(opt, warm)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def objective_metrics(out: LossOutput, split: str, rank_scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The metrics every objective logs alike: ``pair_acc`` (share of the compared pairs that the student's
    length-normalised log-likelihood orders like the ranking), ``score_rank{k}`` (its mean at rank k), ``tie_share``
    (share of candidate pairs the ranker scored equal), and for objectives with their own reward (DPO, IPO)
    ``reward_acc`` and ``reward_rank{k}``."""
    scores = out.scores.detach()
    metrics: dict[str, torch.Tensor] = {}
    n = scores.shape[1]
    if n > 1:
        metrics[f"{split}/pair_acc"] = pair_accuracy(scores, out.rank_mask, out.pairs)
        if out.rewards is not None:
            metrics[f"{split}/reward_acc"] = pair_accuracy(out.rewards.detach(), out.rank_mask, out.pairs)
        if rank_scores is not None:
            groups = tie_groups(rank_scores[:, :n], out.rank_mask, "skip")
            real = torch.triu(out.rank_mask[:, :, None] & out.rank_mask[:, None, :], diagonal=1)
            tied = real & (groups[:, :, None] == groups[:, None, :])
            metrics[f"{split}/tie_share"] = tied.sum().float() / real.sum().clamp_min(1).float()
    for k in range(n):
        valid = out.rank_mask[:, k]
        if valid.any():
            metrics[f"{split}/score_rank{k}"] = scores[valid, k].mean()
            if out.rewards is not None:
                metrics[f"{split}/reward_rank{k}"] = out.rewards.detach()[valid, k].mean()
    return metrics
