"""GRPO-family online RL: each training batch of prompts is rolled out, scored and trained on.

One `training_step` is one rollout (generation boundary): `num_generations` completions per prompt
from the injected `RolloutEngine`, rewards from the reward functions, advantages from the injected
estimator, then `num_iterations x steps_per_generation` optimizer steps on the completion tokens
(manual optimization). Checkpoints are therefore only taken at generation boundaries, so the
rollout buffer is never part of one (dynamic sampling's kept groups waiting for more draws are).
Each completion samples from `completion_seed(seed, epoch, row id, generation index)`: completions do
not depend on how prompts are split over ranks, micro-batches or engine batches. The loss is the
step's loss under any split: its normalisers (tokens, completions) are summed over all ranks first.

With an asynchronous engine (`ServerEngine(prefetch=True)`) generation runs one step ahead: each
`training_step` sends its batch's prompts to the engine and trains on the previous batch's rollout,
generated with the weights of one optimizer step earlier (the first step only sends). That rollout is
part of the checkpoint (its completions are awaited and saved), so resuming continues exactly.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_swift import tuners
from lit_swift.losses.rl import (
    AdvantageEstimator,
    GRPOAdvantage,
    GRPOLoss,
    PolicyBatch,
    PolicyLoss,
    StepSize,
    truncated_is_weights,
    zero_spread_groups,
)
from lit_swift.objectives.base import CausalLMObjective
from lit_swift.objectives.dpo import frozen_copy
from lit_swift.rewards.base import Reward, RewardSet
from lit_swift.rollout.buffer import InFlight, Rollout, gather_groups, rollout_stats, write_completions
from lit_swift.rollout.engine import Completion, Request, RolloutEngine, SamplingParams, completion_seed
from lit_swift.rollout.hf import HFEngine, completion_logps, rollout_batch


class GRPO(CausalLMObjective):
    """GRPO and its family (DAPO, Dr. GRPO, GSPO, CISPO, RLOO, REINFORCE++) by `loss` and `advantage`.

    Takes `PromptDataModule` batches; `batch_size` prompts per rank make one rollout.

    Args:
        rewards: reward functions: class_path entries (e.g. `lit_swift.rewards.verifiable.MathAccuracy`)
            or strings: a built-in name (`accuracy`, `reasoning_gym`, `format`, `cosine`, `repetition`,
            `soft_overlong`), `my_rewards.py:name` (a user file) or `package.module.name`.
        reward_weights: one weight per reward function (default 1 each).
        loss: the policy loss (`lit_swift.losses.rl.GRPOLoss` by default; `DAPOLoss`, `DrGRPOLoss`,
            `GSPOLoss`, `CISPOLoss`).
        advantage: the advantage estimator (`GRPOAdvantage` by default, with `scale_rewards`;
            `DrGRPOAdvantage`, `RLOOAdvantage`, `ReinforcePlusPlusAdvantage`).
        engine: the rollout engine (`lit_swift.rollout.hf.HFEngine`, in process, by default).
        num_generations: completions per prompt (G >= 2).
        max_completion_length: completion budget in tokens.
        temperature: sampling temperature (also divides the trainer's logits).
        top_p: nucleus sampling mass.
        top_k: top-k sampling (0 = off).
        repetition_penalty: CTRL repetition penalty at sampling (1 = off).
        beta: k3 KL penalty weight to the reference (adapters disabled for LoRA, a frozen copy for full
            tuning); 0 computes no reference.
        num_iterations: optimizer passes (mu) over each rollout; old-policy log-probs are recorded once.
        steps_per_generation: optimizer steps each rollout is split into (by prompt groups).
        mini_batch_size: completions per forward/backward (gradient accumulation inside a step).
        mask_truncated_completions: completions cut by `max_completion_length` get no loss (overlong
            filtering; the soft punishment is the `soft_overlong` reward).
        dynamic_sampling: drop groups whose rewards all agree and draw more batches until the step has
            `batch_size x world_size` groups (DAPO).
        max_draws: batches drawn at most per step with dynamic sampling (then it trains on what it has;
            an error if that is nothing).
        tis_cap: truncated importance sampling cap C: weight tokens by min(pi_train / pi_rollout, C)
            using the engine's log-probs; None disables it.
        max_grad_norm: gradient clipping (None: off). Trainer `gradient_clip_val` is not available with
            the manual optimization GRPO uses.
        log_completions_every_n_steps: append rollout samples to `completions.csv` in the log folder
            (and to a TensorBoard / W&B text table) every N rollouts; 0 disables it.
        num_logged_completions: completions written each time.
        seed: base of every completion's sampling seed.
        **kwargs: model, tuner, optimizer, scheduler and model options of `CausalLMObjective`.
    """

    def __init__(
        self,
        *args: Any,
        rewards: list[Reward | str] | None = None,
        reward_weights: list[float] | None = None,
        loss: PolicyLoss | None = None,
        advantage: AdvantageEstimator | None = None,
        engine: RolloutEngine | None = None,
        num_generations: int = 8,
        max_completion_length: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        beta: float = 0.0,
        num_iterations: int = 1,
        steps_per_generation: int = 1,
        mini_batch_size: int | None = None,
        mask_truncated_completions: bool = False,
        dynamic_sampling: bool = False,
        max_draws: int = 4,
        tis_cap: float | None = None,
        max_grad_norm: float | None = 1.0,
        log_completions_every_n_steps: int = 0,
        num_logged_completions: int = 8,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (group advantages), got {num_generations}")
        self.reward_set = RewardSet(rewards or ["accuracy"], reward_weights)
        self.loss = loss if loss is not None else GRPOLoss()
        self.advantage = advantage if advantage is not None else GRPOAdvantage()
        self.engine = engine if engine is not None else HFEngine()
        self.num_generations, self.max_completion_length = num_generations, max_completion_length
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.repetition_penalty, self.beta = repetition_penalty, beta
        self.num_iterations, self.steps_per_generation = num_iterations, steps_per_generation
        self.mini_batch_size, self.mask_truncated = mini_batch_size, mask_truncated_completions
        self.dynamic_sampling, self.max_draws, self.tis_cap = dynamic_sampling, max_draws, tis_cap
        self.max_grad_norm, self.seed = max_grad_norm, seed
        self.log_every, self.num_logged = log_completions_every_n_steps, num_logged_completions
        self.automatic_optimization = False
        self.reference: torch.nn.Module | None = None
        self.pending: list[Rollout] = []  # dynamic sampling: kept groups waiting for the step to fill
        self.in_flight: InFlight | None = None  # asynchronous engine: the batch generating now
        self.draws = 0
        self.rollouts_done = 0
        self.last_rollout: dict[str, float] = {}  # the latest rollout's stats (this rank)
        self.last_steps: list[dict[str, float]] = []  # its optimizer steps' loss metrics (this rank)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        if self.beta and not self.tuner.is_adapter:
            self.reference = frozen_copy(self.model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def on_fit_start(self) -> None:
        self.engine.sync_weights(self.model)

    on_validation_start = on_fit_start

    def teardown(self, stage: str) -> None:
        self.engine.close()

    # ----- rollout -----
    def sampling(self, greedy: bool = False) -> SamplingParams:
        encoder = getattr(self.trainer.datamodule, "encoder", None) if self._trainer else None
        stops = {*(encoder.stop_token_ids if encoder else []), self.tokenizer.eos_token_id} - {None}
        return SamplingParams(
            max_new_tokens=self.max_completion_length,
            temperature=0.0 if greedy else self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop_token_ids=tuple(sorted(stops)),
        )

    def submit(self, batch: dict[str, Any], num: int, sampling: SamplingParams) -> tuple[list, Future]:
        """Start `num` completions per prompt of `batch`: the prompts (flat, prompt-major) and a future."""
        prompts = [
            row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]
        epoch = self.current_epoch if self._trainer else 0
        requests = [
            Request(p, completion_seed(self.seed, epoch, int(row), g))
            for p, row in zip(prompts, batch["row_ids"], strict=True)
            for g in range(num)
        ]
        return [r.prompt_ids for r in requests], self.engine.submit(requests, sampling)

    def generate(self, batch: dict[str, Any], num: int, sampling: SamplingParams) -> tuple[list, list]:
        """`num` completions per prompt of `batch` (flat, prompt-major) and the prompts they continue."""
        prompts, future = self.submit(batch, num, sampling)
        return prompts, future.result()

    def score(self, batch: dict[str, Any], prompts: list, completions: list[Completion], num: int):
        """Total reward [P*G], per-function rewards and the completion texts."""
        stops = set(self.sampling().stop_token_ids)
        texts = [
            self.tokenizer.decode(
                c.token_ids[:-1] if c.finish_reason == "stop" and c.token_ids[-1] in stops else c.token_ids,
                skip_special_tokens=True,
            )
            for c in completions
        ]
        keys = sorted({k for extra in batch["extra"] for k in extra})
        columns = {k: [extra.get(k) for extra in batch["extra"] for _ in range(num)] for k in keys}
        columns["prompts"] = [self.tokenizer.decode(p) for p in prompts]
        columns["completion_ids"] = [c.token_ids for c in completions]
        columns["finish_reasons"] = [c.finish_reason for c in completions]
        total, per_function = self.reward_set.score(texts, columns)
        return total, per_function, texts, columns["prompts"]

    def rollout(self, batch: dict[str, Any], generated: tuple | None = None) -> tuple[Rollout, Tensor]:
        """Generate (unless `generated` holds the prompts and completions), score and compute advantages
        for one batch; returns the rollout and its rewards [P, G]."""
        g = self.num_generations
        prompts, completions = generated or self.generate(batch, g, self.sampling())
        total, per_function, texts, prompt_texts = self.score(batch, prompts, completions, g)
        rewards = total.view(-1, g)  # [P, G]
        advantages = self.group_advantages(rewards).flatten()  # [P*G]
        self.log_rollout(completions, rewards, per_function)
        self.maybe_write_completions(prompt_texts, texts, total)
        return Rollout(prompts, completions, advantages), rewards

    def group_advantages(self, rewards: Tensor) -> Tensor:
        """Advantages from every rank's groups (batch-level statistics see the global step). # [P, G]"""
        if self.trainer.world_size == 1 or not self.advantage.needs_batch:
            return self.advantage(rewards)
        everything, start = gather_groups(self, rewards)
        return self.advantage(everything)[start : start + rewards.shape[0]]

    # ----- training -----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generated = None
        if self.engine.asynchronous:  # send this batch, train on the one sent a step ago
            batch, generated = self.swap_in_flight(batch)
            if batch is None:
                return None
        rollout, rewards = self.rollout(batch, generated)
        if self.dynamic_sampling:
            keep = (~zero_spread_groups(rewards)).repeat_interleave(self.num_generations)
            self.pending.append(rollout.take(keep.nonzero()[:, 0].tolist()))
            self.draws += 1
            kept = self.global_sum(sum(len(r.completions) for r in self.pending)) / self.num_generations
            self.log(
                "train/dynamic_sampling/groups_dropped",
                float((~keep).sum()) / self.num_generations,
                reduce_fx="sum",
                batch_size=1,
            )
            if kept < batch["step_num_rows"] and self.draws < self.max_draws:
                return None
            self.log("train/dynamic_sampling/draws", float(self.draws), batch_size=1)
            rollout, self.pending, self.draws = Rollout.cat(self.pending), [], 0
            if kept == 0:  # skipping would loop over the data forever without an optimizer step
                raise RuntimeError(
                    f"dynamic sampling: every group of the last {self.max_draws} draws had rewards with zero "
                    "spread (all completions of each prompt scored the same), so the step has nothing to "
                    "train on. Check the rewards on a few completions (completions.csv), make the prompts "
                    "easier or the completion budget longer, or raise max_draws."
                )
        self.rollouts_done += 1
        self.update(rollout)

    def swap_in_flight(self, batch: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple | None]:
        """Send `batch` to the asynchronous engine; return the batch sent before, with its rollouts."""
        previous = self.in_flight
        self.in_flight = InFlight(batch, *self.submit(batch, self.num_generations, self.sampling()))
        return previous.result() if previous is not None else (None, None)

    def global_sum(self, value: float, op: str = "sum") -> float:
        """`value` reduced over the ranks (`sum` or `max`)."""
        if self.trainer.world_size == 1:
            return float(value)
        return float(
            self.trainer.strategy.reduce(torch.tensor(float(value), device=self.device), reduce_op=op)
        )

    def update(self, rollout: Rollout) -> None:
        """`num_iterations` passes of `steps_per_generation` optimizer steps over the rollout."""
        batch = rollout_batch(rollout.prompts, [c.token_ids for c in rollout.completions], self.engine_pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.mask_truncated:
            truncated = torch.tensor(
                [c.finish_reason == "length" for c in rollout.completions], device=self.device
            )
            batch["completion_mask"] &= ~truncated[:, None]
        extra = self.fixed_logps(batch, rollout)
        n = len(rollout.completions)
        parts = [
            range(n * s // self.steps_per_generation, n * (s + 1) // self.steps_per_generation)
            for s in range(self.steps_per_generation)
        ]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        self.last_steps = []
        for _ in range(self.num_iterations):
            for part in parts:
                self.optimizer_step_on(batch, extra, rollout.advantages.to(self.device), list(part))
                if self.max_grad_norm:
                    self.clip_gradients(
                        optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                self.engine.sync_weights(self.model)

    @property
    def engine_pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def fixed_logps(self, batch: dict[str, Tensor], rollout: Rollout) -> dict[str, Tensor | None]:
        """Old-policy (recorded once per rollout), reference and TIS weights per token. # [N, T] each"""
        reuse = self.num_iterations == 1 and self.steps_per_generation == 1 and self.tis_cap is None
        old = None if reuse else self.chunked_logps(self.model, batch)  # reuse: old = sg(current)
        ref = None
        if self.beta:
            if self.reference is not None:
                ref = self.chunked_logps(self.reference, batch)
            else:
                with tuners.adapters_disabled(self.model):
                    ref = self.chunked_logps(self.model, batch)
        weights = None
        if self.tis_cap is not None:
            engine = torch.zeros_like(old)
            for i, c in enumerate(rollout.completions):
                engine[i, : len(c.logprobs)] = torch.tensor(c.logprobs, dtype=old.dtype)
            weights = truncated_is_weights(old, engine, self.tis_cap) * batch["completion_mask"]
        return {"old": old, "ref": ref, "is_weights": weights}

    def chunked_logps(
        self, model: torch.nn.Module, batch: dict[str, Tensor], index: list[int] | None = None
    ) -> Tensor:
        index = list(range(batch["input_ids"].shape[0])) if index is None else index
        size = self.mini_batch_size or len(index) or 1
        pieces = [
            completion_logps(model, _rows(batch, index[s : s + size]), self.temperature, self.chunk_size)
            for s in range(0, len(index), size)
        ]
        return torch.cat(pieces)

    def optimizer_step_on(
        self, batch: dict[str, Tensor], extra: dict, advantages: Tensor, part: list[int]
    ) -> None:
        """Backward of one optimizer step's share on this rank, normalised by the step's global totals."""
        mask = batch["completion_mask"]
        trained = [i for i in part if bool(mask[i].any())]
        step = StepSize(
            num_tokens=self.global_sum(float(mask[part].sum())),
            num_sequences=self.global_sum(len(trained)),
            max_completion_length=self.max_completion_length,
        )
        size = self.mini_batch_size or max(len(part), 1)
        num_chunks = math.ceil(len(part) / size)
        num_chunks = int(self.global_sum(num_chunks, "max"))  # every rank runs as many backwards (DDP)
        totals: dict[str, float] = {}
        for c in range(num_chunks):
            rows = part[c * size : (c + 1) * size]
            if not rows or step.num_sequences == 0:
                # no data here: a zero loss that still reaches every trainable weight (DDP hooks)
                self.manual_backward(sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0)
                continue
            sub = _rows(batch, rows)
            logps = completion_logps(self.model, sub, self.temperature, self.chunk_size)  # [n, T]
            old, ref, weights = (
                None if t is None else t[rows] for t in (extra["old"], extra["ref"], extra["is_weights"])
            )
            policy = PolicyBatch(
                logps,
                logps.detach() if old is None else old,
                advantages[rows],
                sub["completion_mask"],
                ref,
                weights,
            )
            loss, metrics = self.loss(policy, step, self.beta)
            self.manual_backward(loss * self.trainer.world_size)  # DDP averages the ranks' gradients
            share = float(sub["completion_mask"].sum()) / max(step.num_tokens, 1.0)
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * self.trainer.world_size
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * share
        self.log_dict({f"train/{k}": v for k, v in totals.items()}, batch_size=1, prog_bar=False)
        self.last_steps.append(totals)

    # ----- validation -----
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prompts, completions = self.generate(batch, 1, self.sampling(greedy=True))
        total, per_function, _, _ = self.score(batch, prompts, completions, 1)
        n = len(completions)
        self.log("val/reward", total.mean(), prog_bar=True, batch_size=n, sync_dist=True)
        for name, values in per_function.items():
            self.log(f"val/rewards/{name}", values.mean(), batch_size=n, sync_dist=True)

    # ----- logging -----
    def log_rollout(self, completions: list[Completion], rewards: Tensor, per_function: dict) -> None:
        self.last_rollout = rollout_stats(completions, rewards, per_function)
        self.log_dict({f"train/{k}": v for k, v in self.last_rollout.items()}, batch_size=1)

    def maybe_write_completions(self, prompts: list[str], texts: list[str], rewards: Tensor) -> None:
        if not self.log_every or self.rollouts_done % self.log_every:
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a broadcast: every rank
        if self.global_rank != 0:
            return
        rows = zip(prompts, texts, rewards.tolist(), strict=True)
        table = [(self.global_step, p, t, r) for p, t, r in rows][: self.num_logged]
        write_completions(folder / "completions.csv", table, self.loggers, self.global_step)

    # ----- checkpoints -----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        in_flight = self.in_flight.state() if self.in_flight is not None else None  # awaits it
        checkpoint["grpo"] = {
            "pending": [r.state() for r in self.pending],
            "draws": self.draws,
            "rollouts_done": self.rollouts_done,
            "in_flight": in_flight,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("grpo", {})
        self.pending = [Rollout.from_state(s) for s in state.get("pending", [])]
        self.draws, self.rollouts_done = state.get("draws", 0), state.get("rollouts_done", 0)
        self.in_flight = InFlight.from_state(state["in_flight"]) if state.get("in_flight") else None


def _rows(batch: dict[str, Tensor], rows: list[int]) -> dict[str, Tensor]:
    """The batch restricted to `rows`."""
    index = torch.tensor(rows, dtype=torch.long, device=batch["input_ids"].device)
    return {k: v[index] for k, v in batch.items()}
