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
from tuna.losses import LossConfig, LossOutput, mle_settings, objective_loss
from tuna.metrics import ObjectiveMetrics, counted_pairs
from tuna.models import set_activation_checkpointing


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
        self.train_metrics = ObjectiveMetrics()
        self.val_metrics = ObjectiveMetrics()
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

    def on_fit_start(self) -> None:
        # from_pretrained returns a model in eval mode and Lightning keeps each submodule's mode: train it as trained
        self.model.train()

    def _prepare_model(self) -> None:
        if self.model_cfg.gradient_checkpointing:
            set_activation_checkpointing(self.model, True)
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
        if not out.loss.requires_grad:
            # Nothing to learn here: e.g. ranking only (no MLE term) on a batch whose candidates all tie (a verifier
            # scored them equal, ties skipped). Alone, skip the step; under DDP every rank must join the all-reduce,
            # so send zero gradients through the scores instead.
            if self.trainer.world_size == 1:
                return None
            return out.loss + 0.0 * out.scores.sum()
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.compute(batch)
        n = batch["input_ids"].shape[0]
        self.log_dict({"val/loss": out.loss, "val/loss_rank": out.rank, "val/loss_mle": out.mle}, batch_size=n, sync_dist=True)
        # Every rank updates and logs the same metrics on every batch: their epoch values are synchronised across ranks.
        m, rank_scores = self.val_metrics, batch.get("rank_scores")
        pairs = counted_pairs(out, rank_scores)
        m.pair_acc.update(out.scores, pairs)
        self.log("val/pair_acc", m.pair_acc, on_step=False, on_epoch=True)
        if out.rewards is not None:
            m.reward_acc.update(out.rewards, pairs)
            self.log("val/reward_acc", m.reward_acc, on_step=False, on_epoch=True)
            m.reward_rank.update(out.rewards, out.rank_mask)
        if rank_scores is not None:
            m.tie_share.update(rank_scores[:, : out.rank_mask.shape[1]], out.rank_mask)
            self.log("val/tie_share", m.tie_share, on_step=False, on_epoch=True)
        m.score_rank.update(out.scores, out.rank_mask)

    def on_validation_epoch_end(self) -> None:
        # the per-position means are one vector metric each, logged position by position (synchronised by compute())
        for name, metric in (("score_rank", self.val_metrics.score_rank), ("reward_rank", self.val_metrics.reward_rank)):
            if metric.update_called:
                for k, value in enumerate(metric.compute().reshape(-1)):
                    self.log(f"val/{name}{k}", value)
            metric.reset()

    def _log_step(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        n = batch["input_ids"].shape[0]
        metrics = {"train/loss": out.loss.detach(), "train/loss_rank": out.rank.detach(), "train/loss_mle": out.mle.detach()}
        real = batch["num_real_tokens"].float()
        slots = batch["num_slot_tokens"].float()
        metrics["train/padding_share"] = 1.0 - real / slots.clamp_min(1.0)
        if self.nonfinite == "skip":
            metrics["train/skipped_batches"] = float(self._skipped)  # running count, logged every step
        self.log_dict(metrics, batch_size=n, on_step=True, prog_bar=False)
        self.log("loss", out.loss.detach(), prog_bar=True, batch_size=n, logger=False)
        self._log_train_ranking(out, batch.get("rank_scores"))

    def _log_train_ranking(self, out: LossOutput, rank_scores: torch.Tensor | None) -> None:
        """This batch's values (``Metric.forward``); a step without a counted pair logs no pair accuracy."""
        m = self.train_metrics
        pairs = counted_pairs(out, rank_scores)
        if bool(pairs.any()):
            m.pair_acc(out.scores, pairs)
            self.log("train/pair_acc", m.pair_acc, on_step=True, on_epoch=False)
            if out.rewards is not None:
                m.reward_acc(out.rewards, pairs)
                self.log("train/reward_acc", m.reward_acc, on_step=True, on_epoch=False)
        if rank_scores is not None and out.rank_mask.shape[1] > 1:
            m.tie_share(rank_scores[:, : out.rank_mask.shape[1]], out.rank_mask)
            self.log("train/tie_share", m.tie_share, on_step=True, on_epoch=False)
        for name, metric, values in (("score_rank", m.score_rank, out.scores), ("reward_rank", m.reward_rank, out.rewards)):
            if values is not None:
                for k, value in enumerate(metric(values, out.rank_mask).reshape(-1)):  # torchmetrics squeezes [1]
                    self.log(f"train/{name}{k}", value, on_step=True, batch_size=out.rank_mask.shape[0])

    def on_train_epoch_end(self) -> None:
        self.train_metrics.score_rank.reset()  # logged per step only: the running sums are not needed
        self.train_metrics.reward_rank.reset()

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

