"""The trainer: TRL's SFTTrainer fed our prepared rows, with a loss over trained tokens only.

Why a subclass (measured in scripts/bench_train.py, see docs/benchmarks.md):
- Rows arrive final (tokenized, masked, packed with restarting position_ids). SFTConfig gets
  `skip_prepare_dataset`, `packing=False`, `remove_unused_columns=False`: TRL then neither re-tokenizes,
  re-packs, truncates nor appends EOS, and `labels` are used as given. TRL's own collator would drop our
  position_ids (it rebuilds them from `seq_lengths`), so our collator is used.
- The loss: TRL's fused LM head scores *every* position off-Triton (CPU) and also computes entropy and
  top-1 for metrics. Here the backbone's final hidden states are gathered at trained positions first and
  only those go through the trained-token loss head of `finetune.model.loss` (fused by default, TRL's tiled
  `ChunkedLogProbFunction` with `loss_head: trl`; full-vocabulary logits never exist, on any device).
  The forward still goes through the (possibly DDP-wrapped) model: `logits_to_keep=1`.
- Normalisation: summed log-loss / trained tokens of the whole accumulation window (transformers'
  `num_items_in_batch`, across processes), so micro batch 1 x accumulation 4 == micro batch 4 x 1.
- TRL casts trainable parameters of a quantized base to bf16; their fp32 values from before are put back (an
  upcast alone would keep the bf16 rounding of the adapter's initialisation): `adapters.keep_trainable_values`.
- Evaluations compute what training computes and change nothing it reads: a 4-bit base is loaded so that
  bitsandbytes never repacks it for its CPU inference kernel (`finetune.model.load.keep_4bit_training_layout`).
- Under DeepSpeed ZeRO-3 the head's weight is partitioned: the loss runs as a module of the model tree that
  DeepSpeed gathers the head for, in forward and backward (`finetune.train.zero3.TrainedTokenLoss`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from finetune.log import quiet_stdout
from finetune.model.adapters import keep_trainable_values, trainable_to_fp32
from finetune.model.loss import trained_token_nll
from finetune.train.collective import all_reduce
from finetune.train.zero3 import attach_loss, init_deepspeed_comm, zero3_enabled

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments

with quiet_stdout():  # transformers prints "[INFO] Running in WANDB offline mode" as TRL imports its Trainer
    from trl import SFTTrainer


@dataclass
class TokenCounter:
    """Tokens seen in training on this process (not counting padding), and how many of them were trained."""

    tokens: int = 0
    trained_tokens: int = 0


class FinetuneTrainer(SFTTrainer):
    """SFTTrainer over prepared rows with a trained-tokens-only loss (see the module docstring)."""

    _tag_names = ["finetune", "sft"]

    def __init__(self, *args: Any, counter: TokenCounter, pad_id: int, loss_head: str = "fused",
                 **kwargs: Any) -> None:
        with keep_trainable_values(kwargs["model"]):
            super().__init__(*args, **kwargs)
        self.loss_head = loss_head
        self.counter = counter
        self.pad_id = pad_id
        self._eval_sums: list[float] = [0.0, 0.0]  # trained-token NLL and count of the running evaluation
        trainable_to_fp32(self.model)
        self.partitioned_loss = None
        if self.is_deepspeed_enabled:  # now, quietly, rather than inside train() (DeepSpeed prints as it sets up)
            init_deepspeed_comm()
        if zero3_enabled():
            self.partitioned_loss = attach_loss(self.model, self.model.get_output_embeddings(), loss_head)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # noqa: ANN001
        """As the Trainer's, but `<prefix>_loss` is per trained token over the whole split (all processes),
        not a mean of per-batch means, so it matches `finetune evaluate`."""
        self._eval_sums = [0.0, 0.0]
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        nll, count = all_reduce([float(v) for v in self._eval_sums], self.args.device)
        key = f"{metric_key_prefix}_loss"
        if count > 0 and key in output.metrics:
            output.metrics[key] = nll / count
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        labels = inputs["labels"]
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        outputs = model(**forward, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        unwrapped = self.accelerator.unwrap_model(model)
        text_config = unwrapped.config.get_text_config()
        head = unwrapped.get_output_embeddings()
        if self.partitioned_loss is not None:  # ZeRO-3: a module call, so DeepSpeed gathers the head
            nll, count = self.partitioned_loss(outputs.hidden_states[-1], labels, head, text_config)
        else:
            nll, count = trained_token_nll(outputs.hidden_states[-1], labels, head, text_config,
                                           loss_head=self.loss_head)
        denominator = count if num_items_in_batch is None else num_items_in_batch
        loss = nll / torch_clamp_min1(denominator)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients across processes
        if not model.training:
            self._eval_sums[0] += float(nll.detach())
            self._eval_sums[1] += int(count)
        if model.training:
            if "attention_mask" in inputs:
                tokens = int(inputs["attention_mask"].sum())
            else:
                tokens = int((inputs["input_ids"] != self.pad_id).sum())
            self.counter.tokens += tokens
            self.counter.trained_tokens += int(count)
            self._metrics["train"]["num_tokens"] = [self.counter.tokens]
            self._metrics["train"]["num_trained_tokens"] = [self.counter.trained_tokens]
        return (loss, outputs) if return_outputs else loss


def torch_clamp_min1(value: Any) -> Any:
    import torch

    return torch.as_tensor(value).clamp(min=1)


def build_trainer(
    model: PeftModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    args: TrainingArguments,
    collator: Callable,
    counter: TokenCounter,
    callbacks: Sequence[TrainerCallback] = (),
    early_stopping_patience: int | None,
    loss_head: str,
) -> FinetuneTrainer:
    """The FinetuneTrainer for prepared datasets, with early stopping when the recipe asks for it
    (`early_stopping_patience`); `loss_head`: the recipe's trained-token loss head (finetune.model.loss)."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    all_callbacks = list(callbacks)
    if early_stopping_patience is not None and eval_dataset is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = FinetuneTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=all_callbacks,
        counter=counter,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1,
        loss_head=loss_head,
    )
    # With disable_tqdm the Trainer prints every log dict to stdout; finetune.train.progress says it instead.
    trainer.remove_callback(PrinterCallback)
    return trainer


# --- callbacks ------------------------------------------------------------------------------


def peak_memory_bytes() -> int:
    """Peak accelerator memory allocated (CUDA), else the process's peak resident set size."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def summarize(log_history: Sequence[Mapping[str, Any]], *, steps: int, tokens: int, trained_tokens: int,
              wall_s: float, peak_memory: int) -> dict[str, Any]:
    """The run summary from the trainer's log history and counters (pure)."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e.get("epoch"), e["eval_loss"]) for e in log_history if "eval_loss" in e]
    rate = (lambda n: n / wall_s if wall_s > 0 else None)
    return {
        "steps": steps,
        "tokens": tokens,
        "trained_tokens": trained_tokens,
        "tokens_per_s": rate(tokens),
        "trained_tokens_per_s": rate(trained_tokens),
        "train_loss": train[-1][1] if train else None,
        "first_train_loss": train[0][1] if train else None,
        "eval_loss": evals[-1][2] if evals else None,
        "eval_losses": [{"step": s, "epoch": ep, "eval_loss": v} for s, ep, v in evals],
        "wall_s": wall_s,
        "peak_memory_bytes": peak_memory,
    }


def write_loss_plot(log_history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Train and eval loss against optimizer step, as a PNG (matplotlib's Agg canvas; no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and math.isfinite(e["loss"])]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if train:
        axes.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        axes.plot(*zip(*evals), "o-", label="eval loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (per trained token)")
    axes.grid(alpha=0.3)
    if train or evals:
        axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, format="png")
    tmp.replace(path)


def summary_callbacks(counter: TokenCounter, output_dir: Path) -> list[Any]:
    """Callbacks computing the run summary (at the end) and writing `loss.png` (at each checkpoint and the end)."""
    from transformers import TrainerCallback

    class RunSummaryCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.summary: dict[str, Any] | None = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.started = time.perf_counter()
            counter.tokens = counter.trained_tokens = 0

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            wall = time.perf_counter() - self.started
            tokens, trained = all_reduce([counter.tokens, counter.trained_tokens], args.device)
            self.summary = summarize(state.log_history, steps=state.global_step, tokens=tokens,
                                     trained_tokens=trained, wall_s=wall, peak_memory=peak_memory_bytes())
            # run_training writes it after the adapter is saved: its presence means "finished".

    class LossPlotCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                write_loss_plot(state.log_history, output_dir / "loss.png")

        on_train_end = on_save

    return [RunSummaryCallback(), LossPlotCallback()]
