"""The recipe schema: frozen, typed settings with every key documented once, on its field.

Key names follow Axolotl so existing recipes keep working. Unknown keys are errors
(`extra="forbid"`); cross-field contradictions (finetune.config.contradictions) are checked in
`Settings._check`. A field that
changes the prepared data (tokens, labels, packing, dedup, the split) carries
`json_schema_extra={"affects_data": True}`; the data cache fingerprints exactly those.
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from typing_extensions import Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, to_jsonable_python

from finetune.config.contradictions import contradictions
from finetune.config.yaml_source import RecipeSource

ChatTemplateName = Literal["llama3", "chatml", "tokenizer_default", "jinja"]
# Preference-pair dataset types (finetune.data.pairs); every other type is SFT data.
PairType = Literal["chat_template.default", "chat_template.argilla_chat", "llama3.intel", "chatml.intel"]
PAIR_TYPES = ("chat_template.default", "chat_template.argilla_chat", "llama3.intel", "chatml.intel")
# TRL's pairwise DPOTrainer losses (`dpo_loss_type`); `rl: ipo` is `ipo`.
DpoLossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]
TrainOnEos = Literal["turn", "all", "last", "none"]
Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
]
Scheduler = Literal[
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "inverse_sqrt",
]


class Section(BaseModel):
    """A frozen settings block that remembers where in the recipe it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    _source: Optional[RecipeSource] = PrivateAttr(default=None)
    _path: tuple = PrivateAttr(default=())

    def where(self, field: str | int | None = None) -> str:
        """`recipe.yml:LINE` of `field` (or of this block), for error messages."""
        if self._source is None:
            return "<settings>"
        path = self._path if field is None else self._path + (field,)
        return self._source.where(path)

    def detached(self, **update: Any) -> Self:
        """A copy with `update` applied that no longer points at recipe lines (its values came from elsewhere,
        e.g. a command-line flag), so `where()` never names a line that does not hold them."""
        copy = self.model_copy(update=update)
        copy._source, copy._path = None, ()
        return copy


class DatasetSettings(Section):
    """One entry of `datasets:`."""

    path: str = Field(
        description="Local data: a .json/.jsonl/.parquet/.csv file, or a `datasets.save_to_disk` directory. "
        "Relative paths are resolved from the current directory.",
        json_schema_extra={"affects_data": True},
    )
    type: Literal[
        "chat_template", "alpaca", "completion",
        "chat_template.default", "chat_template.argilla_chat", "llama3.intel", "chatml.intel",
    ] = Field(
        "chat_template",
        description="chat_template: a list of messages per row (OpenAI or ShareGPT style); "
        "alpaca: instruction/input/output(/system) columns, rendered as one user/assistant exchange; "
        "completion: raw text, every token trained. Preference pairs (with `rl:`): "
        "chat_template.default: prompt turns at field_messages, the two replies at field_chosen/field_rejected "
        "(each a message, a list whose last message counts, or a string); chat_template.argilla_chat: "
        "field_chosen/field_rejected hold whole conversations that differ only in the last (assistant) turn; "
        "llama3.intel / chatml.intel: flat Intel/TRL rows with optional field_system, `question` (or `prompt`), "
        "and chosen/rejected strings. Pairs are rendered with the recipe's chat_template.",
        json_schema_extra={"affects_data": True},
    )
    ds_type: Optional[Literal["json", "jsonl", "parquet", "csv", "arrow"]] = Field(
        None, description="File format; inferred from the extension (or a directory = arrow) when unset.",
        json_schema_extra={"affects_data": True},
    )
    split: str = Field(
        "train", description="Split to read from a saved DatasetDict directory.",
        json_schema_extra={"affects_data": True},
    )
    field_messages: str = Field(
        "messages", description="chat_template: the column holding the list of messages.",
        json_schema_extra={"affects_data": True},
    )
    message_property_mappings: dict[str, str] = Field(
        default_factory=lambda: {"role": "role", "content": "content"},
        description="chat_template: which key of each message holds its role and its content, "
        "e.g. `{role: from, content: value}` for ShareGPT data.",
        json_schema_extra={"affects_data": True},
    )
    roles: Optional[dict[str, list[str]]] = Field(
        None,
        description="chat_template: source role names for each role, e.g. `{user: [human], assistant: [gpt]}`. "
        "Unset: system, user/human, assistant/gpt/model and tool/ipython are recognised.",
        json_schema_extra={"affects_data": True},
    )
    roles_to_train: list[str] = Field(
        default_factory=lambda: ["assistant"],
        description="chat_template: roles whose content is trained when `train_on_inputs` is false.",
        json_schema_extra={"affects_data": True},
    )
    train_on_eos: TrainOnEos = Field(
        "turn",
        description="Which end-of-turn tokens are trained: turn = after each trained turn; all = after every "
        "turn; last = after the last trained turn only; none.",
        json_schema_extra={"affects_data": True},
    )
    field_instruction: str = Field(
        "instruction", description="alpaca: the instruction column.",
        json_schema_extra={"affects_data": True},
    )
    field_input: str = Field(
        "input", description="alpaca: the optional input column (appended to the instruction).",
        json_schema_extra={"affects_data": True},
    )
    field_output: str = Field(
        "output", description="alpaca: the answer column (trained).",
        json_schema_extra={"affects_data": True},
    )
    field_system: str = Field(
        "system", description="alpaca: the optional system-prompt column.",
        json_schema_extra={"affects_data": True},
    )
    field: str = Field("text", description="completion: the text column.", json_schema_extra={"affects_data": True})
    field_chosen: str = Field(
        "chosen", description="Preference pairs: the column holding the preferred reply.",
        json_schema_extra={"affects_data": True},
    )
    field_rejected: str = Field(
        "rejected", description="Preference pairs: the column holding the dispreferred reply.",
        json_schema_extra={"affects_data": True},
    )

    @property
    def is_pairs(self) -> bool:
        """True for a preference-pair dataset type (see `type`)."""
        return self.type in PAIR_TYPES

    @property
    def role_map(self) -> dict[str, str]:
        """Source role name -> normalized role (system/user/assistant/tool)."""
        roles = self.roles or {
            "system": ["system"],
            "user": ["user", "human"],
            "assistant": ["assistant", "gpt", "model"],
            "tool": ["tool", "ipython"],
        }
        return {source: role for role, sources in roles.items() for source in sources}


class SpecialTokens(Section):
    """`special_tokens:` the tokenizer's special tokens, set before training."""

    bos_token: Optional[str] = Field(
        None, description="Beginning-of-sequence token.",
        json_schema_extra={"affects_data": True},
    )
    eos_token: Optional[str] = Field(
        None, description="End-of-sequence token; for chat models the end-of-turn token (`<|eot_id|>` for Llama 3).",
        json_schema_extra={"affects_data": True},
    )
    pad_token: Optional[str] = Field(
        None, description="Padding token (`<|finetune_right_pad_id|>` for Llama 3.1).",
        json_schema_extra={"affects_data": True},
    )
    unk_token: Optional[str] = Field(None, description="Unknown-token token.", json_schema_extra={"affects_data": True})
    additional_special_tokens: list[str] = Field(
        default_factory=list, description="Further special tokens; new ones grow the embeddings.",
        json_schema_extra={"affects_data": True},
    )


class Settings(Section):
    """A whole recipe."""

    # --- model -----------------------------------------------------------------------
    base_model: str = Field(description="Hugging Face model id or local directory of the base model.")
    tokenizer_config: Optional[str] = Field(None, description="Tokenizer id or directory; defaults to base_model.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model repository.")
    load_in_4bit: bool = Field(False, description="Load the base in 4-bit NF4 with double quantization (QLoRA).")
    load_in_8bit: bool = Field(False, description="Load the base in 8-bit (LLM.int8).")
    strict: bool = Field(
        False, description="Accepted for Axolotl compatibility; finetune always rejects unknown keys."
    )
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = Field(
        None,
        description="Attention backend. flash_attention_2 needs flash-attn and a CUDA GPU, else SDPA is used "
        "with a warning. Unset: sdpa. (Deprecated spelling: `flash_attention: true`.)",
    )

    # --- data ------------------------------------------------------------------------
    chat_template: ChatTemplateName = Field(
        "tokenizer_default",
        description="llama3 | chatml | tokenizer_default (the tokenizer's own) | jinja (see chat_template_jinja).",
        json_schema_extra={"affects_data": True},
    )
    chat_template_jinja: Optional[str] = Field(
        None, description="With chat_template: jinja, the Jinja template inline or a path to a file holding it.",
        json_schema_extra={"affects_data": True},
    )
    datasets: list[DatasetSettings] = Field(min_length=1, description="Training data; several are mixed.")
    dataset_prepared_path: str = Field(
        "last_run_prepared", description="Directory for the preprocessed-data cache (see `finetune preprocess`)."
    )
    preprocess_shard_size: int = Field(
        10_000,
        gt=0,
        description="Conversations per on-disk shard while preprocessing: peak memory grows with it (about "
        "10,000 conversations of a few thousand tokens take a few hundred MB), the corpus size does not. "
        "It never changes the prepared rows, so the cache is kept when it changes.",
    )
    preprocess_workers: int = Field(
        0,
        ge=0,
        description="Processes that render and tokenize while preprocessing: 0 = auto (one per CPU core on "
        "more than 2 cores, else 1), 1 = the main process only (the tokenizer still batch-encodes on every "
        "core). Never changes the prepared rows.",
    )
    val_set_size: float = Field(
        0.0, ge=0, description="Validation split: a fraction (< 1) of conversations, or a count (>= 1).",
        json_schema_extra={"affects_data": True},
    )
    val_split: Literal["random", "newest", "contact"] = Field(
        "random",
        description="Which conversations form the val_set_size validation split. random: a seeded random "
        "sample. newest: the newest ones by each row's `start` (an ISO 8601 time, as `finetune import` writes; "
        "a time without an offset is UTC; ties: the later row in dataset order counts as newer), the honest "
        "test of how the model does on what comes next. contact: whole contacts by each row's `contact`, so "
        "no contact is both trained on and evaluated: contacts are taken in a seeded random order, each with "
        "all its conversations, when they still fit within val_set_size; if that falls short, the smallest "
        "remaining contact is added, so at least val_set_size conversations are held out. Both read the "
        "fields of every row and need val_set_size; the split is counted among the conversations kept after "
        "filler removal and dedup.",
        json_schema_extra={"affects_data": True},
    )
    dedup: bool | Literal["near"] = Field(
        False,
        description="true: remove exact duplicate conversations | near: also near-duplicates (MinHash + LSH, "
        "see dedup_threshold) | false. The first occurrence in dataset order is kept; removals are counted "
        "in the summary.",
        json_schema_extra={"affects_data": True},
    )
    dedup_threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="With dedup: near, remove a conversation whose shingle Jaccard similarity to an "
        "earlier kept one is at least this.",
        json_schema_extra={"affects_data": True},
    )
    dedup_ngram: int = Field(
        3,
        gt=0,
        description="With dedup: near, shingle size in tokens: words (lower-cased), each emoji or other "
        "symbol, a run of punctuation standing alone (`:)`, `?`), and a marker opening each turn; punctuation "
        "attached to a word is ignored, system turns are left out. Smaller catches more reworded copies.",
        json_schema_extra={"affects_data": True},
    )
    min_assistant_chars: int = Field(
        0,
        ge=0,
        description="Remove assistant turns shorter than this many characters (stripped; filler like "
        "\"ok\", \"lol\") with the user/tool turns they answer; a conversation left with no assistant "
        "turn is dropped. Both counted. 0 = off.",
        json_schema_extra={"affects_data": True},
    )
    sequence_len: int = Field(
        2048, gt=0, description="Maximum tokens per sample and per packed row.",
        json_schema_extra={"affects_data": True},
    )
    excess_length_strategy: Literal["drop", "truncate", "raise"] = Field(
        "drop", description="Samples longer than sequence_len: drop (counted) | truncate | raise.",
        json_schema_extra={"affects_data": True},
    )
    sample_packing: bool = Field(
        False, description="Pack samples into rows of at most sequence_len tokens.",
        json_schema_extra={"affects_data": True},
    )
    eval_sample_packing: Optional[bool] = Field(
        None, description="Pack the validation split too; defaults to sample_packing.",
        json_schema_extra={"affects_data": True},
    )
    pad_to_sequence_len: bool = Field(False, description="Pad every batch to exactly sequence_len tokens.")
    train_on_inputs: bool = Field(
        False, description="Train every token, not only the roles_to_train turns.",
        json_schema_extra={"affects_data": True},
    )
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens, description="Tokenizer special tokens.")

    # --- adapter ---------------------------------------------------------------------
    adapter: Optional[Literal["lora", "qlora"]] = Field(
        None, description="lora | qlora (LoRA on a 4-bit base). Unset: full fine-tuning."
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_linear: bool = Field(False, description="Put LoRA on every linear layer except lm_head.")
    lora_target_modules: Optional[list[str]] = Field(
        None, description="Module names to adapt (e.g. [q_proj, v_proj]); added to lora_target_linear's. Not the "
        "output head (lm_head): it is trained in full through lora_modules_to_save."
    )
    lora_modules_to_save: Optional[list[str]] = Field(
        None,
        description="Modules trained in full and saved with the adapter (e.g. [embed_tokens, lm_head]); "
        "needed only when new tokens are added.",
    )
    lora_model_dir: Optional[str] = Field(None, description="Continue training from this saved adapter.")
    peft_use_dora: bool = Field(False, description="Use DoRA (weight-decomposed LoRA).")
    peft_use_rslora: bool = Field(False, description="Use rank-stabilised LoRA scaling (alpha / sqrt(r)).")

    # --- training --------------------------------------------------------------------
    output_dir: str = Field("./outputs/lora-out", description="Where the adapter, checkpoints and summary go.")
    micro_batch_size: int = Field(1, gt=0, description="Rows per process per forward pass.")
    eval_batch_size: Optional[int] = Field(None, gt=0, description="Rows per eval forward; defaults to micro_batch_size.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro batches per optimizer step.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: Optional[int] = Field(None, gt=0, description="Stop after this many optimizer steps (overrides num_epochs).")
    optimizer: Optimizer = Field("adamw_torch", description="Optimizer name (transformers' names).")
    lr_scheduler: Scheduler = Field("cosine", description="Learning-rate schedule.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_ratio: Optional[float] = Field(None, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    warmup_steps: Optional[int] = Field(None, ge=0, description="Warmup in optimizer steps.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    bf16: bool | Literal["auto"] = Field("auto", description="bfloat16 compute: true | false | auto (when supported).")
    fp16: bool = Field(False, description="float16 compute with loss scaling.")
    tf32: bool = Field(False, description="Allow TF32 matmuls on Ampere+ GPUs.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (non-reentrant).")
    loss_head: Literal["fused", "trl"] = Field(
        "fused",
        description="Trained-token loss head: fused (one pass over the vocabulary, gradients kept from the forward; "
        "finetune.model.loss) | trl (TRL's tiled ChunkedLogProbFunction, recomputes logits in backward; for comparison).",
    )
    logging_steps: int = Field(1, gt=0, description="Log every this many optimizer steps.")
    evals_per_epoch: Optional[int] = Field(None, gt=0, description="Evaluations per epoch.")
    eval_steps: Optional[int] = Field(None, gt=0, description="Evaluate every this many steps.")
    saves_per_epoch: Optional[int] = Field(None, gt=0, description="Checkpoints per epoch.")
    save_steps: Optional[int] = Field(None, gt=0, description="Checkpoint every this many steps.")
    save_total_limit: Optional[int] = Field(None, gt=0, description="Keep at most this many checkpoints.")
    early_stopping_patience: Optional[int] = Field(
        None, gt=0, description="Stop after this many evaluations without improvement of eval loss."
    )
    seed: int = Field(
        42, description="Seed for shuffling, splitting, packing and initialisation.",
        json_schema_extra={"affects_data": True},
    )
    deepspeed: Optional[str] = Field(
        None, description="DeepSpeed JSON; a missing path naming a bundled config (zero2.json...) uses the bundled one."
    )

    # --- preference tuning (finetune.train.dpo) -----------------------------------------
    rl: Optional[Literal["dpo", "ipo"]] = Field(
        None,
        description="Preference tuning on chosen/rejected pairs with TRL's DPOTrainer: dpo (loss per "
        "dpo_loss_type) | ipo (the IPO loss). Needs preference datasets (see datasets[].type). The reference is "
        "the model the policy starts from: the base with the adapter disabled for a fresh adapter, or base + "
        "the `lora_model_dir` adapter when continuing an SFT run; never a second model copy.",
    )
    rl_beta: float = Field(
        0.1, gt=0, description="DPO beta: higher keeps the policy closer to the reference (IPO: tau)."
    )
    dpo_loss_type: DpoLossType = Field(
        "sigmoid",
        description="With rl: dpo, TRL's pairwise loss: sigmoid (DPO), hinge, ipo, exo_pair, nca_pair, robust, "
        "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm.",
    )
    dpo_label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="Probability that a preference label is flipped (robust DPO, conservative sigmoid); "
        "exo_pair needs it above 0.",
    )
    precompute_ref_log_probs: bool = Field(
        True,
        description="Compute the reference log-probs of every pair once, before training, and keep them next to "
        "the prepared data, keyed by the data and the reference weights: re-runs, resumes and rl_beta changes "
        "reuse them and training runs no reference forward. false: a reference forward every step.",
    )
    rl_adapter_ref_model: bool = Field(
        False,
        description="Accepted for Axolotl compatibility: false (the only value) uses the adapter-disabled "
        "model as the reference; finetune never loads a second model copy.",
    )

    # --- tracking --------------------------------------------------------------------
    wandb_project: Optional[str] = Field(None, description="Weights & Biases project; unset disables W&B.")
    wandb_entity: Optional[str] = Field(None, description="W&B team or user.")
    wandb_name: Optional[str] = Field(None, description="W&B run name.")
    wandb_watch: Optional[Literal["false", "gradients", "parameters", "all"]] = Field(
        None, description="Log gradients/parameters histograms through wandb.watch."
    )
    wandb_log_model: Optional[Literal["false", "end", "checkpoint"]] = Field(
        None, description="Upload the model as a W&B artifact at the end or at every checkpoint."
    )
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = Field(
        None, description="W&B mode; unset: online when an API key is configured, else offline."
    )

    @model_validator(mode="before")
    @classmethod
    def _false_strings(cls, data: Any) -> Any:
        # YAML `wandb_watch: false` arrives as a bool; keep the documented spelling.
        if isinstance(data, dict):
            for key in ("wandb_watch", "wandb_log_model"):
                if data.get(key) is False:
                    data = {**data, key: "false"}
        return data

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup_value(cls, value: Any) -> Any:
        if value is True or value is False or value == "near":
            return value
        raise ValueError("expected true, false or near")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        found = contradictions(self)
        if found:  # all of them in one error; the recipe loader gives each its line
            text = "; ".join(f"{key}: {message}" for key, message in found)
            raise PydanticCustomError("contradictions", "{text}", {"text": text, "found": found})
        return self

    # --- derived values ----------------------------------------------------------------
    @property
    def evals_enabled(self) -> bool:
        return self.evals_per_epoch is not None or self.eval_steps is not None

    @property
    def loss_type(self) -> str:
        """TRL's loss_type for the preference stage (rl: ipo -> ipo)."""
        return "ipo" if self.rl == "ipo" else self.dpo_loss_type

    @property
    def quantized(self) -> bool:
        """Whether the base is loaded quantized (load_in_4bit or load_in_8bit): bitsandbytes places it."""
        return self.load_in_4bit or self.load_in_8bit

    @property
    def eval_batch(self) -> int:
        """Rows per eval forward: eval_batch_size, else micro_batch_size (the one place this default lives)."""
        return self.eval_batch_size or self.micro_batch_size

    @property
    def packs_eval(self) -> bool:
        """Whether eval rows are packed: eval_sample_packing, else sample_packing."""
        return self.sample_packing if self.eval_sample_packing is None else self.eval_sample_packing

    def effective_batch(self, world_size: int) -> int:
        """Rows per optimizer step across all processes."""
        return self.micro_batch_size * self.gradient_accumulation_steps * world_size


def affects_data(field: FieldInfo) -> bool:
    """True for a field marked `json_schema_extra={"affects_data": True}`: it changes the prepared data."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("affects_data") is True


def data_values(section: BaseModel) -> dict[str, Any]:
    """The data-affecting fields of `section` as JSON values, walking nested sections and lists of them.

    The prepared-data cache fingerprints exactly this (finetune.data.cache), so a field that
    changes tokens, labels, packing, dedup or the split must carry the marker.
    """
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            nested = data_values(value)
            if nested:
                out[name] = nested
        elif isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
            out[name] = [data_values(item) for item in value]
        elif affects_data(field):
            out[name] = to_jsonable_python(value)
    return out
