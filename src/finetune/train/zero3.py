"""DeepSpeed ZeRO-3: what finetune does differently when parameters are partitioned across processes.

Under ZeRO-3 every parameter (the frozen base too) lives on the process that owns its slice; DeepSpeed gathers a
module's parameters in the module's forward (and again for its backward) and frees them afterwards.

- Loading: the trainer arguments are built before the model (`finetune.train.run`), so transformers sees the
  DeepSpeed config and creates a non-quantized model inside `deepspeed.zero.Init`: rank 0 reads the checkpoint and
  every parameter is partitioned as it is loaded. transformers does not do that for a quantized model (it builds
  it on the meta device and loads it whole, on the CPU: ZeRO-3 refuses a device_map); `partition_quantized` then
  partitions it before the DeepSpeed engine exists, one parameter at a time, so the engine never moves the whole
  4-bit model onto a GPU. The NF4 weights are stored in the compute dtype (`bnb_4bit_quant_storage`), so ZeRO-3
  partitions them like any other tensor; their quantization constants (absmax, codes) stay whole on every process.
- The loss: finetune's trained-token loss reads the output embedding's weight outside the head's own forward.
  `TrainedTokenLoss` is that loss as a module in the model tree, with the head's parameters registered as its
  DeepSpeed *external parameters* (`deepspeed.zero.register_external_parameter`): DeepSpeed gathers them for the
  loss's forward and again for its backward, so a trained lm_head (`lora_modules_to_save`) receives its full
  gradient while gathered and DeepSpeed reduce-scatters it as it does for every other parameter.
- Evaluating: bitsandbytes would repack a gathered 4-bit weight in place for its CPU inference kernel during an
  evaluation, and the partition could then no longer be saved; a model loaded for training never takes that path
  (`finetune.model.load.keep_4bit_training_layout`).
- Saving: transformers' Trainer gathers the trainable parameters (stage3_gather_16bit_weights_on_model_save) and
  peft writes the usual adapter files; checkpoints also hold DeepSpeed's partitioned optimizer state.

Refused (`check_zero3`): an 8-bit base (bitsandbytes' Int8Params keep their scales on the parameter object, which
ZeRO-3 partitioning loses), and DoRA on a 4-bit base when running on the CPU (peft's CPU dequantization path
replaces the partitioned weight with a new parameter, `peft.utils.integrations.dequantize_module_weight`).
"""

from __future__ import annotations

from typing import Any

import torch

from finetune.config.settings import Settings
from finetune.errors import RecipeError
from finetune.log import quiet_stdout
from finetune.model.loss import trained_token_nll

LOSS_MODULE_NAME = "finetune_trained_token_loss"


def zero3_enabled() -> bool:
    """Whether the trainer arguments built in this process asked for ZeRO-3 (transformers' global switch)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def check_zero3(settings: Settings, *, cpu: bool) -> None:
    """Refuse the combinations ZeRO-3 cannot train correctly (see the module docstring), at their recipe lines."""
    # an 8-bit base is refused earlier, with the config (finetune.config.deepspeed)
    if cpu and settings.load_in_4bit and settings.adapter and settings.peft_use_dora:
        raise RecipeError(
            f"{settings.where('peft_use_dora')}: DoRA on a 4-bit base under ZeRO-3 does not run on the CPU (peft's "
            "CPU dequantization replaces the partitioned weight); use a GPU, plain LoRA, a non-quantized base, "
            "or zero2.json"
        )


def init_deepspeed_comm() -> None:
    """Let DeepSpeed wrap the process group the worker set up, before anything partitions: its config reads the world
    size from it (transformers' `zero.Init` while loading, `partition_quantized`). Idempotent; the trainer calls it for
    every DeepSpeed stage, so its console line is dropped there too."""
    import deepspeed

    with quiet_stdout():  # on the CPU: "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"
        deepspeed.init_distributed()


def partition_quantized(model: Any) -> None:
    """Partition an already-loaded (quantized) model across the processes, then move what ZeRO-3 leaves in place
    (buffers, 4-bit quantization constants) to this process's device. Called before the DeepSpeed engine is built."""
    import deepspeed
    from transformers.integrations import deepspeed_config

    deepspeed.zero.Init(module=model, config_dict_or_path=deepspeed_config())
    from deepspeed.accelerator import get_accelerator

    device = torch.device(get_accelerator().current_device_name())
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            state.to(device)  # in place: absmax, code and the nested double-quant state


class TrainedTokenLoss(torch.nn.Module):
    """`finetune.model.loss.trained_token_nll` as a module of the model tree (see the module docstring)."""

    def __init__(self, loss_head: str) -> None:
        super().__init__()
        self.loss_head = loss_head

    def forward(self, hidden: Any, labels: Any, head: Any, text_config: Any) -> tuple[Any, Any]:
        return trained_token_nll(hidden, labels, head, text_config, loss_head=self.loss_head)


def attach_loss(model: Any, head: Any, loss_head: str) -> TrainedTokenLoss:
    """Add a TrainedTokenLoss to `model` (before the DeepSpeed engine wraps it) and register the parameters of
    `head` (the output embedding, or the trained copy that peft's modules_to_save puts in its place) with it."""
    import deepspeed

    loss = TrainedTokenLoss(loss_head)
    model.add_module(LOSS_MODULE_NAME, loss)
    for param in (head.weight, getattr(head, "bias", None)):
        if param is not None:
            deepspeed.zero.register_external_parameter(loss, param)
    return loss
