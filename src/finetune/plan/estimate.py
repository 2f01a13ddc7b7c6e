"""`finetune plan`: will this recipe fit on the GPUs? A per-GPU peak-memory estimate, itemised, from config.json alone.

No torch import: shapes come from `finetune.model.shapes` (the model's local `config.json`, the Hugging Face
cache, else built-in Llama 3.1 8B / 70B shapes). It mirrors what finetune's training really does with dtypes
(finetune.model.load / adapters, finetune.train.trainer) and what DeepSpeed 0.19's ZeRO-1/2 optimizer allocates:

- frozen base in the compute dtype; NF4 = 4 bits/weight + uint8 absmax per 64-block + fp32 absmax per 256 blocks
  (double quant) + per-tensor codes; embeddings, lm_head and norms are not quantized. Norms of a quantized base are
  upcast to fp32 (finetune.model.adapters.prepare_quantized_base); embed_tokens/lm_head are NOT (peft's
  prepare_model_for_kbit_training would upcast them, +2 x 1 GiB for 8B).
- every trainable tensor (LoRA A/B, DoRA magnitudes, modules_to_save copies) in fp32, gradients in fp32 too.
  Under DeepSpeed with bf16/fp16 the engine casts every float parameter to bf16/fp16 and keeps fp32 master
  weights for its partition; gradients accumulate in bf16 (DeepSpeed's grad_accum_dtype default with ZeRO).
- ZeRO-1 partitions optimizer states (+ fp32 master weights); ZeRO-2 also gradients; ZeRO-3 also parameters
  (modelled in finetune.plan.zero3, with the host RAM that CPU offload needs).
  With contiguous_gradients (DeepSpeed's default) every process allocates reduce_bucket_size-element gradient
  buckets, two of them with overlap_comm (deepspeed/runtime/zero/stage_1_and_2.py `setup_buckets`).
- activations under gradient checkpointing: every layer's input is kept, one layer is recomputed at a time.
- the loss: finetune's trainer projects only trained positions through its fused head (`loss_head: fused`, 64-row
  fp32 logit blocks) or TRL's ChunkedLogProbFunction (`loss_head: trl`, 32768-column
  vocabulary tiles, 4096-token chunks); full-vocabulary logits never exist.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Sequence

from finetune.config.deepspeed import bundled_deepspeed_dir, resolve_deepspeed
from finetune.config.settings import Settings, SpecialTokens
from finetune.errors import RecipeError
from finetune.model.loss import ROW_CHUNK, VOCAB_TILE
from finetune.model.shapes import BUILTIN_NAMES, LLAMA31_SPECIAL_TOKENS, NF4_BLOCK, NF4_BLOCK2, ModelShapes, model_shapes
from finetune.plan.items import DS_DEFAULT_BUCKET, EIGHT_BIT_OPTIMIZERS, GIB, MIB, Item, ZeroConfig, nf4_bytes, optimizer_bytes
from finetune.plan.zero3 import zero3_items

TOKEN_CHUNK = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
# Overheads not visible to torch.cuda.max_memory_allocated (sources: nvidia-smi of PyTorch processes on Ampere with
# CUDA 12 lazy loading: 0.3-0.6 GiB for context + cuBLAS workspace; NCCL's per-peer buffers ~0.2-0.3 GiB; the
# caching allocator's reserved-minus-allocated is typically 5-15% of the peak without expandable_segments).
CUDA_CONTEXT = 512 * MIB
NCCL_BUFFERS = 256 * MIB
FRAGMENTATION = 0.10
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    change: str
    peak_bytes: int  # estimate with this change alone
    cumulative_bytes: int  # with this and every suggestion above it
    fits: bool  # with this change alone
    cumulative_fits: bool = False  # this and every suggestion above it make a fitting setup
    cumulative_host_bytes: int = 0  # host RAM that setup needs (ZeRO-3 offload, loading)


@dataclass(frozen=True)
class MemoryPlan:
    shapes: ModelShapes
    world_size: int
    gpu_memory_bytes: int
    zero_stage: int
    deepspeed: str | None
    items: tuple[Item, ...]
    counts: dict[str, int]
    notes: tuple[str, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    host_items: tuple[Item, ...] = ()  # CPU RAM per machine (ZeRO-3 offload and loading); phase 'host' or 'load'

    @property
    def host_bytes(self) -> int:
        """Host RAM the run needs on a machine: the larger of loading and training (offloaded state)."""
        return max((sum(i.bytes for i in self.host_items if i.phase == p) for p in ("host", "load")), default=0)

    def phase_bytes(self, phase: str) -> int:
        return sum(i.bytes for i in self.items if i.phase == phase)

    @property
    def peak_bytes(self) -> int:
        """always + max(fwd/bwd + max(layer, loss), step)."""
        return self.phase_bytes("always") + _transient_peak(self.items)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.gpu_memory_bytes

    def get(self, prefix: str) -> int:
        """Summed bytes of the items whose name starts with `prefix`."""
        return sum(i.bytes for i in self.items if i.name.startswith(prefix))


def zero_config(settings: Settings, hidden_size: int, path: Path | None = None) -> ZeroConfig:
    """The recipe's DeepSpeed ZeRO settings (the JSON it resolves to, bundled configs included), or `path`'s."""
    if settings.deepspeed is None and path is None:
        return ZeroConfig()
    # Resolved exactly as `finetune train` does (bundled stand-ins, ZeRO-3 refusal); never guessed from a name.
    path = path or resolve_deepspeed(settings)[0]
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")).get("zero_optimization") or {}
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{settings.where('deepspeed')}: cannot read the DeepSpeed config {path}: {exc}") from None
    stage = int(data.get("stage", 0))
    bucket = data.get("reduce_bucket_size", DS_DEFAULT_BUCKET)
    bucket = hidden_size * hidden_size if bucket == "auto" else int(float(bucket))  # transformers fills "auto" so
    offload = (data.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    offload_param = (data.get("offload_param") or {}).get("device", "none") not in ("none", None)

    def count(key: str, default: int, auto: int) -> int:
        value = data.get(key, default)
        return auto if value == "auto" else int(float(value))

    return ZeroConfig(stage, str(path), bool(data.get("overlap_comm", stage == 3)),
                      bool(data.get("contiguous_gradients", True)), bucket, offload,
                      offload_param=offload_param,
                      prefetch_bucket_size=count("stage3_prefetch_bucket_size", 50_000_000, int(0.9 * hidden_size**2)),
                      persistence_threshold=count("stage3_param_persistence_threshold", 100_000, 10 * hidden_size),
                      max_live_parameters=count("stage3_max_live_parameters", 1_000_000_000, 1_000_000_000))


def plan_memory(settings: Settings, *, world_size: int, gpu_memory_bytes: int = 24 * GIB,
                shapes: ModelShapes | None = None, loss_head: str = "chunked", suggest: bool = True) -> MemoryPlan:
    """Per-GPU peak memory of training `settings` on `world_size` processes, itemised, with a verdict.

    `loss_head`: 'chunked' (finetune's trainer) or 'full' (full-vocabulary logits, as a plain HF/TRL loss).
    When it does not fit, `suggestions` lists cheaper-first changes with their new estimates.
    """
    if world_size < 1:
        raise RecipeError(f"world size must be at least 1 (got {world_size})")
    shapes = shapes or model_shapes(settings.base_model, settings.where("base_model"))
    zero = zero_config(settings, shapes.hidden_size)
    plan = _estimate(settings, world_size, gpu_memory_bytes, shapes, zero, loss_head)
    if suggest and not plan.fits:
        plan = replace(plan, suggestions=tuple(_suggestions(settings, plan, zero, loss_head)))
    return plan


def _estimate(s: Settings, world: int, budget: int, sh: ModelShapes, zero: ZeroConfig, loss_head: str) -> MemoryPlan:
    half = s.fp16 or s.bf16 in (True, "auto")  # bf16: auto = bf16 on any GPU that has it (Ampere and newer)
    a = 2 if half else 4  # activation / compute bytes
    ds = zero.stage > 0
    L, H, V, n = sh.num_hidden_layers, sh.hidden_size, sh.vocab_size, world
    items: list[Item] = []
    notes: list[str] = [zero.note] if zero.note else []

    # -- trainable tensors: name -> list of per-tensor numels ----------------------------------------------------
    linears = sh.linears()
    targets = set(LLAMA_LINEARS) if s.lora_target_linear else set()
    targets |= set(s.lora_target_modules or ())
    unknown = sorted(t for t in targets if t not in linears and t != "lm_head")
    if unknown:
        notes.append(f"lora_target_modules {', '.join(unknown)}: not a Llama linear layer; not counted")
    adapted = {t: linears[t] for t in sorted(targets) if t in linears} if s.adapter else {}
    lora, dora, saved = [], [], []
    for _, (fan_in, fan_out) in adapted.items():
        lora += [s.lora_r * fan_in, fan_out * s.lora_r] * L
        dora += [fan_out] * L if s.peft_use_dora else []
    if s.adapter and "lm_head" in targets:
        lora += [s.lora_r * H, V * s.lora_r]
        dora += [V] if s.peft_use_dora else []
    mts = [m for m in (s.lora_modules_to_save or ()) if s.adapter]
    for module in mts:
        if module in ("embed_tokens", "lm_head"):
            saved.append(sh.embedding_params)
        else:
            notes.append(f"lora_modules_to_save {module}: unknown module; not counted")
    full = [sh.total_params] if not s.adapter else []
    tensors = lora + dora + saved + full
    trainable = sum(tensors)
    counts = {"total_params": sh.total_params, "trainable_params": trainable, "lora_params": sum(lora),
              "dora_magnitude_params": sum(dora), "modules_to_save_params": sum(saved)}

    # -- frozen base ------------------------------------------------------------------------------------------------
    quantized = L * sh.layer_linear_params
    rest = sh.total_params - quantized  # embeddings, lm_head, norms
    norms = (2 * L + 1) * H
    if not s.adapter:
        base = 0  # the whole model is trainable: counted below
    elif s.load_in_4bit:
        per_tensor = [i * o for i, o in linears.values()]
        nf4 = L * sum(nf4_bytes(x) for x in per_tensor)
        items.append(Item("base weights: NF4 linears (+ double-quant constants)", nf4,
                          note=f"{quantized / 1e9:.2f} B weights x 0.5 B + absmax uint8/64 + fp32/{NF4_BLOCK * NF4_BLOCK2}"))
        base = nf4
    elif s.load_in_8bit:
        int8 = L * sum(i * o + 4 * o for i, o in linears.values())
        items.append(Item("base weights: int8 linears (+ fp32 row scales)", int8, note="LLM.int8"))
        base = int8
    else:
        items.append(Item("base weights: linears (frozen)", quantized * a, note=f"{'bf16' if a == 2 else 'fp32'}"))
        base = quantized * a
    if s.adapter:
        norm_bytes = 4 if (s.load_in_4bit or s.load_in_8bit) and not (ds and half) else a
        items.append(Item("base weights: embeddings, lm_head, norms", (rest - norms) * a + norms * norm_bytes,
                          note="not quantized; finetune does not upcast embed/lm_head (peft's kbit prep would)"))
    del base

    # -- trainable params, gradients, optimizer ------------------------------------------------------------------
    host: list[Item] = []
    if zero.stage == 3:
        items = [i for i in items if not i.name.startswith("base weights")]
        gpu3, host, notes3 = zero3_items(s, sh, zero, n, a, half, tensors)
        items += gpu3
        notes += notes3
    else:
        items += _trainable_items(s, zero, n, ds, half, trainable, tensors, counts)
    p_bytes = 2 if ds and half else 4

    # -- activations ---------------------------------------------------------------------------------------------
    items += _activations(s, sh, a, ds and half, adapted, p_bytes, n, loss_head, notes)

    # -- overheads -----------------------------------------------------------------------------------------------
    allocated = sum(i.bytes for i in items if i.phase == "always") + _transient_peak(items)
    items.append(Item("allocator fragmentation", int(FRAGMENTATION * allocated), note=f"{FRAGMENTATION:.0%} of allocated"))
    items.append(Item("CUDA context + cuBLAS workspace", CUDA_CONTEXT, note="outside max_memory_allocated"))
    if n > 1:
        items.append(Item("NCCL communication buffers", NCCL_BUFFERS, note="per process"))
    return MemoryPlan(sh, n, budget, zero.stage, zero.path, tuple(items), counts, tuple(notes),
                      host_items=tuple(host))


def _trainable_items(s: Settings, zero: ZeroConfig, n: int, ds: bool, half: bool, trainable: int, tensors: list[int],
                     counts: dict[str, int]) -> list[Item]:
    """Trainable params, gradients and optimizer states without ZeRO-3 (DDP, ZeRO-1, ZeRO-2)."""
    items: list[Item] = []
    if ds and half:  # the engine casts parameters to bf16/fp16, keeps fp32 master weights for its partition
        g_bytes = 2
        items.append(Item("trainable params (bf16 in the DeepSpeed engine)", trainable * 2,
                          note=_split(counts)))
        if not zero.offload_optimizer:
            items.append(Item("DeepSpeed fp32 master weights (partition)", math.ceil(trainable / n) * 4,
                              note=f"4 B x trainable / {n}"))
    else:
        g_bytes = 4
        items.append(Item("trainable params (fp32)", trainable * 4, note=_split(counts)))
    if zero.stage >= 2:
        items.append(Item("gradients (partition, ZeRO-2)", math.ceil(trainable / n) * g_bytes, note=f"/ {n} processes"))
    elif zero.stage == 1:
        items.append(Item("gradients (full, ZeRO-1 keeps them)", trainable * g_bytes, note="bf16, every process"))
        if zero.contiguous_gradients:
            items.append(Item("gradients (reduced partition)", math.ceil(trainable / n) * g_bytes, note=f"/ {n}"))
    else:
        items.append(Item("gradients", trainable * g_bytes, note="same dtype as the params"))
        if n > 1:
            items.append(Item("DDP gradient buckets", trainable * g_bytes, note="gradient_as_bucket_view=False copies"))
    if ds and zero.contiguous_gradients:
        buckets = 2 if zero.overlap_comm else 1
        items.append(Item("DeepSpeed gradient buckets", buckets * zero.reduce_bucket_size * g_bytes,
                          note=f"{buckets} x reduce_bucket_size {zero.reduce_bucket_size:,} elements"))
    opt, opt_note = optimizer_bytes(s.optimizer, tensors, ds=ds)
    if ds:
        opt = math.ceil(opt / n)
        opt_note += f", / {n} processes"
    if zero.offload_optimizer:
        opt_note = "offloaded to CPU (offload_optimizer)"
        opt = 0
    items.append(Item(f"optimizer states ({s.optimizer})", opt, note=opt_note))
    if ds and half and not zero.offload_optimizer:
        items.append(Item("fp32 gradient partition at step", math.ceil(trainable / n) * 4, "step", "DeepSpeed"))
    if s.optimizer == "adamw_torch":
        items.append(Item("optimizer step temporaries", math.ceil(trainable / (n if ds else 1)) * 4, "step",
                          "foreach AdamW: sqrt(exp_avg_sq) copy"))
    return items


def _transient_peak(items: Sequence[Item]) -> int:
    phase = {p: sum(i.bytes for i in items if i.phase == p) for p in ("fwd/bwd", "layer", "loss", "step")}
    return max(phase["fwd/bwd"] + max(phase["layer"], phase["loss"]), phase["step"])


def _split(counts: dict[str, int]) -> str:
    parts = [(counts["lora_params"], "LoRA"), (counts["dora_magnitude_params"], "DoRA magnitudes"),
             (counts["modules_to_save_params"], "modules_to_save")]
    shown = [f"{c / 1e6:,.1f} M {label}" for c, label in parts if c]
    return " + ".join(shown) or f"{counts['trainable_params'] / 1e9:.2f} B (full fine-tuning)"


def _activations(s: Settings, sh: ModelShapes, a: int, ds_half: bool, adapted: dict, p_bytes: int, n: int,
                 loss_head: str, notes: list[str]) -> list[Item]:
    mbs, S = s.micro_batch_size, s.sequence_len
    T, L, H, I, V = mbs * S, sh.num_hidden_layers, sh.hidden_size, sh.intermediate_size, sh.vocab_size
    hq, kv, nh = sh.num_attention_heads * sh.head_dim, sh.num_key_value_heads * sh.head_dim, sh.num_attention_heads
    attn = s.attn_implementation or "sdpa"
    packed = s.sample_packing
    quant = s.load_in_4bit or s.load_in_8bit
    o = 4 if (quant and s.adapter and not ds_half and a == 2) else a  # fp32 norm weights -> fp32 norm output
    norm = 2 * T * (4 * H + 4 + o * H + (a * H if o != a else 0))
    attention = a * T * (2 * hq + 2 * kv) + a * T * hq + 4 * T * nh + a * T * 2 * H  # q,k(rope), v, out, lse, o, residual
    if attn == "sdpa" and packed and sh.num_key_value_heads != nh:
        attention += 2 * a * T * hq  # a block-diagonal mask makes transformers repeat_kv (no enable_gqa)
    if attn == "eager":
        attention += (4 + 2 * a) * mbs * nh * S * S
    mlp = 4 * a * T * I
    adapter = 0
    for name, (fan_in, fan_out) in adapted.items():
        x_bytes = o if name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") else a
        adapter += (x_bytes * T * fan_in + T * fan_in) if s.lora_dropout > 0 else 0  # dropout copy + mask
        adapter += a * T * s.lora_r + (2 * a * T * fan_out if s.peft_use_dora else 0)
    backward = a * T * (3 * I + 2 * H)
    items = []
    if s.gradient_checkpointing:
        items.append(Item("activations: checkpointed layer inputs", L * a * T * H, "fwd/bwd", f"{L} x seq x hidden"))
        scope, times, kept = "one layer recomputed", 1, "layer"
    else:
        scope, times, kept = f"all {L} layers", L, "fwd/bwd"
        notes.append("no gradient checkpointing: every layer's activations stay alive until backward")
    attn_note = {"eager": "eager: heads x seq^2 scores", "sdpa": "SDPA: no seq^2 term", "flash_attention_2": "flash: no seq^2 term"}
    items += [Item(f"activations: {scope}: attention + norms", times * (attention + norm), kept, attn_note[attn]),
              Item(f"activations: {scope}: MLP", times * mlp, kept, f"4 x seq x {I} (gate, up, act, product)")]
    if adapter:
        items.append(Item(f"activations: {scope}: LoRA/DoRA", times * adapter, kept,
                          "dropout input copies, A outputs" + (", DoRA base/lora results" if s.peft_use_dora else "")))
    items.append(Item("activations: backward gradient buffers", backward, "layer", "grads of MLP intermediates"))
    if attn == "sdpa" and packed:
        items.append(Item("attention mask (packed rows, SDPA)", mbs * S * S, "fwd/bwd", "block-diagonal bool mask"))
    if s.peft_use_dora and adapted:
        e = p_bytes if not ds_half else 2
        fan_in, fan_out = max(adapted.values(), key=lambda io: e * io[0] ** 2 + 4 * a * io[0] * io[1])
        items.append(Item("DoRA weight-norm transient", e * fan_in**2 + 4 * a * fan_in * fan_out, "layer",
                          f"eye({fan_in}) + dequantized/LoRA/merged {fan_out}x{fan_in}"))
    head_trainable = "lm_head" in (s.lora_modules_to_save or ()) and bool(s.adapter) or not s.adapter
    if loss_head == "full":
        items.append(Item("logits + loss (full vocabulary)", a * T * V + 3 * 4 * T * V, "loss",
                          "logits, fp32 upcast, log-softmax, grad"))
    elif s.loss_head == "fused":
        # finetune.model.loss.fused_nll: gathered rows, one fp32 row-block of logits, the hidden-state gradient kept from
        # the forward, per-token losses; an fp32 weight gradient when the head is trained.
        head = o * T * H + 4 * min(T, ROW_CHUNK) * V + 4 * T * H + 3 * 4 * T
        head += 4 * V * H if head_trainable else 0
        items.append(Item("loss head (fused, trained positions)", head, "loss",
                          f"{ROW_CHUNK}-row fp32 logit blocks, gradients in the forward"
                          + (", fp32 lm_head grad" if head_trainable else "")))
    else:
        head = o * T * H + a * min(T, TOKEN_CHUNK) * VOCAB_TILE + 4 * T * H + 7 * 4 * T + 4 * mbs * V
        head += 4 * V * H if head_trainable else 0  # ChunkedLogProbFunction's fp32 grad_weight for a trained lm_head
        head += a * VOCAB_TILE * H if (head_trainable and p_bytes != a) else 0
        items.append(Item("loss head (chunked, trained positions)", head, "loss",
                          "32768-column tiles" + (", fp32 lm_head grad" if head_trainable else "")))
    return items


def _suggestions(s: Settings, plan: MemoryPlan, zero: ZeroConfig, loss_head: str) -> list[Suggestion]:
    """Every applicable change, cheapest first, with its estimate alone and together with the ones above it."""
    steps: list[tuple[str, dict, ZeroConfig | None]] = []
    if s.lora_modules_to_save and s.adapter and _tokens_exist(s.special_tokens, s.base_model, s.tokenizer_config) is not False:
        steps.append(("drop lora_modules_to_save (the special tokens already exist in the vocabulary)",
                      {"lora_modules_to_save": None}, None))
    if zero.stage == 1 and plan.world_size > 1:
        zero2 = zero_config(s, plan.shapes.hidden_size, bundled_deepspeed_dir() / "zero2.json")
        steps.append(("deepspeed: zero2.json instead of ZeRO-1 (partitions gradients too)", {}, zero2))
    if s.optimizer not in EIGHT_BIT_OPTIMIZERS:
        steps.append(("optimizer: adamw_bnb_8bit", {"optimizer": "adamw_bnb_8bit"}, None))
    if not s.gradient_checkpointing:
        steps.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}, None))
    if s.micro_batch_size > 1:
        mbs = s.micro_batch_size // 2
        steps.append((f"micro_batch_size: {mbs}, gradient_accumulation_steps: {s.gradient_accumulation_steps * 2} "
                      "(same effective batch)", {"micro_batch_size": mbs,
                                                  "gradient_accumulation_steps": s.gradient_accumulation_steps * 2}, None))
    if zero.stage < 3 and plan.world_size > 1 and not s.load_in_8bit:
        zero3 = zero_config(s, plan.shapes.hidden_size, bundled_deepspeed_dir() / "zero3.json")
        steps.append(("deepspeed: zero3.json (partitions the base model across the GPUs too)",
                      {"deepspeed": "zero3.json"}, zero3))
    if plan.world_size > 1 and not s.load_in_8bit and not (zero.offload_param and zero.offload_optimizer):
        offload = zero_config(s, plan.shapes.hidden_size, bundled_deepspeed_dir() / "zero3_offload.json")
        steps.append(("deepspeed: zero3_offload.json (parameters and optimizer in CPU RAM; slower steps)",
                      {"deepspeed": "zero3_offload.json"}, offload))
    length = s.sequence_len
    while length > 512:
        length //= 2
        steps.append((f"sequence_len: {length}", {"sequence_len": length}, None))
    out: list[Suggestion] = []
    cumulative, cum_zero = {}, zero
    for change, update, new_zero in steps:
        alone = _estimate(s.model_copy(update=update), plan.world_size, plan.gpu_memory_bytes, plan.shapes,
                          new_zero or zero, loss_head)
        cumulative.update(update)
        cum_zero = new_zero or cum_zero
        together = _estimate(s.model_copy(update=cumulative), plan.world_size, plan.gpu_memory_bytes, plan.shapes,
                             cum_zero, loss_head)
        out.append(Suggestion(change, alone.peak_bytes, together.peak_bytes, alone.fits, together.fits,
                              together.host_bytes))
    return out


def _tokens_exist(special: SpecialTokens, base_model: str, tokenizer_config: str | None) -> bool | None:
    """Whether every special token of the recipe is already in the base vocabulary (None: unknown)."""
    tokens = [t for t in (special.bos_token, special.eos_token, special.pad_token, special.unk_token,
                          *special.additional_special_tokens) if t]
    if base_model in BUILTIN_NAMES:
        return all(t in LLAMA31_SPECIAL_TOKENS for t in tokens)
    config = Path(tokenizer_config or base_model).expanduser() / "tokenizer_config.json"
    if not config.is_file():
        return None
    added = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
    known = {entry.get("content") for entry in added.values()}
    return all(t in known for t in tokens) if known else None
