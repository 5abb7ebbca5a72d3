"""The TQR model: a Hugging Face backbone with a Q head, a Gaussian reward head and reward weights.

Index convention (docs/method.md, decision 1). For a token sequence x_0..x_{L-1} (for encoder-decoder
backbones: the decoder sequence, starting with the decoder start token), column i of every output is the
transition (state x_{0..i}, action x_{i+1}), i = 0..L-2:

- the Q value comes from the hidden state h_i (the state), evaluated at the taken token x_{i+1};
- the reward q_phi(R | x_{0..i+1}) comes from h_{i+1}, the first hidden state that has seen the action.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from .data.collator import unpack_index
from .errors import ConfigError
from .ops import Q_KERNELS, pretrained_q_values

TQR_CONFIG_NAME = "tqr_config.json"
TQR_HEADS_NAME = "tqr_heads.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
ADAPTER_CONFIG_NAME = "adapter_config.json"  # PEFT's: a directory holding a backbone's adapter, not its weights


@dataclass
class TQRConfig:
    """What the heads on top of the backbone are. Saved as tqr_config.json beside the backbone's files."""

    pretrained_q: bool = field(
        default=True, metadata={"help": "Q from the backbone's LM head (Eq. 12). False: a fresh linear Q head ('w/o ptq')."}
    )
    alpha: float = field(default=1.0, metadata={"help": "alpha in Q = log softmax(alpha * softmax(logits)) (Eq. 12)."})
    use_reward_weights: bool = field(
        default=True, metadata={"help": "Attention-derived reward weights w_t (Eq. 11). False: 'w/o rwt', w_t = 1."}
    )
    rescale_reward_weights: bool = field(
        default=True, metadata={"help": "Multiply w_t by the number of valid positions, so uniform weights are 1."}
    )
    log_std_min: float = field(default=-5.0, metadata={"help": "Lower clamp of the reward head's log sigma."})
    log_std_max: float = field(default=2.0, metadata={"help": "Upper clamp of the reward head's log sigma."})
    q_chunk_size: int | None = field(
        default=None, metadata={"help": "Rows per chunk in the vocabulary-sized Q computation (None: the op's default)."}
    )
    q_kernel: str = field(
        default="torch",
        metadata={"help": "Q computation: torch, triton (fused kernels) or auto (triton on CUDA when installed). "
                  "triton and auto are opt-in until the kernels have been run on a GPU (docs/performance.md)."},
    )
    scoring: str = field(
        default="last",
        metadata={"help": "The sequence score the model was trained to rank by (AVAConfig.scoring): scoring and "
                  "evaluation use it first. Models saved before it existed ranked by last."},
    )

    def __post_init__(self) -> None:
        if not self.log_std_min < self.log_std_max:
            raise ConfigError(f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if self.q_chunk_size is not None and self.q_chunk_size < 1:
            raise ConfigError(f"q_chunk_size must be None or >= 1, got {self.q_chunk_size}")
        if self.q_kernel not in Q_KERNELS:
            raise ConfigError(f"unknown q_kernel '{self.q_kernel}'; expected one of {list(Q_KERNELS)}")


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in at least float32: bf16/fp16 outputs are upcast for the loss, float64 ones stay float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


@dataclass
class TQROutput:
    """Per-action outputs, all [B, T] with T = sequence length - 1 (see the module docstring)."""

    q_values: torch.Tensor
    reward_mean: torch.Tensor
    reward_log_std: torch.Tensor
    reward_weights: torch.Tensor
    mask: torch.Tensor


def _attention_column_sums(queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                           row_mask: torch.Tensor) -> torch.Tensor:
    """sum over the (valid) query rows given of softmax_t(q_i . k_t / sqrt(d)) over the valid columns t: [B, T]."""
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
    return (scores.softmax(-1) * row_mask[:, :, None]).sum(1)  # invalid query rows contribute nothing


class RewardWeights(nn.Module):
    """Eq. 11, as in the Preference Transformer: one single-head, non-causal attention layer over the valid
    positions; w_t is the mean over (valid) query rows of softmax_t(q_i . k_t / sqrt(d)).

    Memory is linear in T: the [B, T, T] attention is never whole. Query rows go in chunks of at most
    ``chunk_elements`` scores (each row's softmax lies inside its chunk), and each chunk is recomputed in the
    backward (activation checkpointing) instead of keeping its scores."""

    def __init__(self, hidden_size: int, chunk_elements: int = 2**24):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.chunk_elements = chunk_elements  # 64 MiB of float32 scores per chunk (128 MiB in float64)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
        # Half-precision activations are upcast for the softmax; float64 stays float64 (as the reward head's).
        queries, keys = upcast(self.query(hidden)), upcast(self.key(hidden))
        batch, length = mask.shape
        rows = max(1, self.chunk_elements // max(1, batch * length))
        if rows >= length:  # one chunk: nothing to save by recomputing it
            sums = _attention_column_sums(queries, keys, mask, mask)
        else:
            checkpointed = torch.is_grad_enabled() and (queries.requires_grad or keys.requires_grad)
            sums = 0
            for start in range(0, length, rows):
                chunk = (queries[:, start:start + rows], keys, mask, mask[:, start:start + rows])
                sums = sums + (torch.utils.checkpoint.checkpoint(_attention_column_sums, *chunk, use_reentrant=False)
                               if checkpointed else _attention_column_sums(*chunk))
        counts = mask.sum(-1, keepdim=True).clamp(min=1)
        weights = sums / counts * mask  # column mean over valid rows; sums to 1 over valid columns
        return weights * counts if rescale else weights


def _lm_head_projection(backbone: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(weight, bias, hidden scale) such that logits = linear(scale * h, weight, bias) equals the backbone's own
    logits (tested per architecture). Covers the quirks of the supported families."""
    config = backbone.config
    if getattr(config, "final_logit_softcapping", None) is not None:
        raise ConfigError("backbones with final_logit_softcapping (Gemma 2) are not supported yet")
    head = backbone.get_output_embeddings()
    bias = head.bias
    final_bias = getattr(backbone, "final_logits_bias", None)  # BART-style buffer added to the logits
    if final_bias is not None:
        bias = final_bias.view(-1) if bias is None else bias + final_bias.view(-1)
    scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere multiplies logits by logit_scale
    if getattr(config, "scale_decoder_outputs", False):  # T5 with tied embeddings rescales the decoder output
        scale *= config.d_model**-0.5
    return head.weight, bias, scale


def zero3_gathered(params):
    """Context in which DeepSpeed ZeRO-3 parameters among ``params`` hold their full values (ZeRO-3 keeps each
    as an empty shard outside its own module's forward); a null context without ZeRO-3."""
    shards = [p for p in params if getattr(p, "ds_status", None) is not None and p.ds_status.name != "AVAILABLE"]
    if not shards:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(shards, modifier_rank=None)


def run_as_forward(module: nn.Module, function, *args, **kwargs):
    """``function(*args, **kwargs)`` run as ``module``'s forward, inside the hooks wrappers put on the module.

    The Q op reads the LM head's weight rather than calling the head. DeepSpeed ZeRO-3 and FSDP2 (when the head
    is its own FSDP unit) make a module's parameters whole only in hooks, before its forward and again before
    its backward, so the op runs as the head's forward: the weight is whole in both passes and its gradient is
    reduced as the head's own."""
    own = module.__dict__.get("forward")
    module.forward = function
    try:
        return module(*args, **kwargs)
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def is_peft_model(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a PEFT wrapper (``peft.PeftModel``) around a Hugging Face model."""
    return hasattr(backbone, "get_base_model") and hasattr(backbone, "peft_config")


def unwrapped(backbone: nn.Module) -> PreTrainedModel:
    """The Hugging Face model under a PEFT wrapper (its adapters are injected in place, so they stay active), or
    ``backbone`` itself. A PeftModel's own ``base_model`` is PEFT's tuner, not the transformer body."""
    return backbone.get_base_model() if is_peft_model(backbone) else backbone


def supports_padding_free(backbone: PreTrainedModel) -> bool:
    """Whether a causal LM keeps sequences packed in one row apart given only their position ids: two short
    sequences, packed and alone, must give the same hidden states. Architectures that ignore position ids
    for masking would silently attend across sequences, so this is checked, not assumed."""
    backbone = unwrapped(backbone)
    if backbone.config.is_encoder_decoder:
        return False
    lengths = (5, 3)
    tokens = torch.arange(sum(lengths), device=backbone.device) % backbone.config.get_text_config().vocab_size
    positions = torch.cat([torch.arange(n, device=backbone.device) for n in lengths])
    was_training = backbone.training
    backbone.eval()
    try:  # under ZeRO-3 the whole backbone is gathered for these two tiny forwards, once
        with torch.no_grad(), zero3_gathered(backbone.parameters()):
            packed = backbone.base_model(input_ids=tokens[None], position_ids=positions[None], use_cache=False)
            alone = [backbone.base_model(input_ids=part[None], use_cache=False) for part in tokens.split(lengths)]
    except TypeError:  # a forward without position_ids (or use_cache) cannot be packed
        return False
    finally:
        backbone.train(was_training)
    expected = torch.cat([out.last_hidden_state[0] for out in alone]).float()
    error = (packed.last_hidden_state[0].float() - expected).abs().max() / expected.abs().max().clamp(min=1e-6)
    return bool(error < 1e-2)  # a leak across sequences changes the second one by O(1); bf16 rounding is ~1e-3


def check_quantization(quantization_config) -> None:
    """bitsandbytes quantisation (``--load_in_4bit/--load_in_8bit``) runs on CUDA GPUs only: refuse it elsewhere."""
    if quantization_config is not None and not torch.cuda.is_available():
        raise ConfigError("load_in_4bit/load_in_8bit quantise with bitsandbytes, which needs a CUDA GPU; none is available")


def _load_backbone(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """The causal LM or encoder-decoder at ``name_or_path``, loaded with the Auto class its config names."""
    check_quantization(kwargs.get("quantization_config"))
    if kwargs.get("quantization_config") is not None:  # bitsandbytes quantises while placing on this process's GPU
        from accelerate import PartialState

        kwargs.setdefault("device_map", {"": PartialState().local_process_index})
    config_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
    try:
        backbone_config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    except (OSError, ValueError) as exc:  # not a model directory, an unknown hub id, no network, ...
        raise ConfigError(f"cannot load a model from '{name_or_path}': {exc}") from exc
    auto_class = AutoModelForSeq2SeqLM if backbone_config.is_encoder_decoder else AutoModelForCausalLM
    return auto_class.from_pretrained(name_or_path, **kwargs)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (full sizes under DeepSpeed ZeRO-3, whose shards are empty here)."""
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return {"trainable_params": sum(n for n, grad in sizes if grad), "total_params": sum(n for n, _ in sizes)}


class TQRModel(nn.Module):
    """Transformer + Q head + Gaussian reward head + reward weights over any causal LM or encoder-decoder."""

    def __init__(self, backbone: PreTrainedModel, config: TQRConfig | None = None):
        super().__init__()
        self.backbone = backbone  # a Hugging Face model, or a PEFT wrapper around one (``add_adapter``)
        self.tqr_config = config or TQRConfig()
        backbone = unwrapped(backbone)
        self.is_encoder_decoder = bool(backbone.config.is_encoder_decoder)
        hidden_size = backbone.config.get_text_config().hidden_size
        head_weight = backbone.get_output_embeddings().weight
        vocab_size = getattr(head_weight, "ds_shape", head_weight.shape)[0]  # ZeRO-3 keeps an empty shard
        # Two outputs per position: reward_mean and reward_log_std. Zero init starts at the prior N(0, 1).
        self.reward_head = nn.Linear(hidden_size, 2)
        nn.init.zeros_(self.reward_head.weight)
        nn.init.zeros_(self.reward_head.bias)
        self.reward_weights = RewardWeights(hidden_size) if self.tqr_config.use_reward_weights else None
        self.q_head = None if self.tqr_config.pretrained_q else nn.Linear(hidden_size, vocab_size)
        # The heads take the backbone's dtype, as a Hugging Face score head does; DeepSpeed's bf16 (whose ZeRO-3
        # creates the backbone in bf16) needs one dtype throughout.
        for head in (self.reward_head, self.reward_weights, self.q_head):
            if head is not None:
                head.to(head_weight.dtype)
        # FSDP's transformer-based auto-wrap looks for the block classes here, as on a PreTrainedModel.
        self._no_split_modules = getattr(backbone, "_no_split_modules", None)

    # -- construction and persistence -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, config: TQRConfig | None = None, **backbone_kwargs: Any) -> "TQRModel":
        """Load a saved TQR model (a directory with tqr_config.json), or wrap a plain backbone (hub id or path)
        with fresh heads described by ``config``. A directory holding a PEFT adapter (adapter_config.json, as saved
        after training with ``peft_config``) loads the base model it names, then the adapter (trainable), then the
        heads. ``backbone_kwargs`` go to the backbone's ``from_pretrained`` (dtype, attn_implementation, revision,
        trust_remote_code, quantization_config, ...)."""
        tqr_config_path = os.path.join(name_or_path, TQR_CONFIG_NAME)
        saved = os.path.isfile(tqr_config_path)
        if saved:
            with open(tqr_config_path) as handle:
                config = TQRConfig(**json.load(handle))
        if os.path.isfile(os.path.join(name_or_path, ADAPTER_CONFIG_NAME)):
            from peft import PeftConfig, PeftModel

            adapter = PeftConfig.from_pretrained(name_or_path)
            if not adapter.base_model_name_or_path:
                raise ConfigError(f"{name_or_path}/{ADAPTER_CONFIG_NAME} names no base model to load the adapter onto")
            if adapter.revision:
                backbone_kwargs.setdefault("revision", adapter.revision)
            base = _load_backbone(adapter.base_model_name_or_path, **backbone_kwargs)
            model = cls(PeftModel.from_pretrained(base, name_or_path, is_trainable=True), config)
        else:
            model = cls(_load_backbone(name_or_path, **backbone_kwargs), config)
        if saved:
            model.load_heads(name_or_path)
        return model

    def add_adapter(self, peft_config) -> None:
        """Wrap the backbone in a PEFT adapter (``peft.get_peft_model``, which freezes the backbone's own weights);
        the heads stay trainable. The adapter records the backbone's path as its base, so a saved model reloads."""
        from peft import get_peft_model

        if is_peft_model(self.backbone):
            raise ConfigError("the backbone already carries a PEFT adapter; merge it first (`avalign merge`)")
        name = self.backbone.name_or_path
        if not name:
            raise ConfigError("peft_config needs a backbone loaded from a directory or hub id (the adapter records it "
                              "as its base model); save a backbone built from a config first")
        if os.path.isdir(name):  # an absolute path reloads from any working directory
            self.backbone.name_or_path = self.backbone.config._name_or_path = os.path.abspath(name)
        self.backbone = get_peft_model(self.backbone, peft_config)

    def merge_and_unload(self) -> "TQRModel":
        """Fold a PEFT adapter into the backbone's weights (a plain Hugging Face model again); no-op without one."""
        if is_peft_model(self.backbone):
            self.backbone = self.backbone.merge_and_unload()
        return self

    def load_heads(self, directory: str) -> None:
        state = load_file(os.path.join(directory, TQR_HEADS_NAME))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ConfigError(f"{directory}: head weights do not match the config (missing {missing}, unexpected {unexpected})")

    def save_pretrained(self, directory: str, state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        """The backbone in its own Hugging Face format (loadable alone by AutoModelFor*), plus the heads.

        Written to a temporary directory beside ``directory`` first, then moved in (the whole directory when it is
        new; else file by file, with tqr_config.json removed first and written last): a save that fails leaves
        the earlier model intact, and one interrupted while moving leaves no tqr_config.json, which the loaders
        refuse, instead of a new backbone beside old heads.

        ``state_dict``: the full model's weights when they live elsewhere (gathered from FSDP or DeepSpeed shards
        by the Trainer); by default this module's own."""
        directory = os.path.abspath(directory)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.saving-", dir=os.path.dirname(directory))
        try:
            state_dict = self.state_dict() if state_dict is None else state_dict
            prefix = "backbone."
            backbone_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            self.backbone.save_pretrained(staging, state_dict=backbone_state, **kwargs)
            heads = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith(prefix)}
            save_file(heads, os.path.join(staging, TQR_HEADS_NAME))
            with open(os.path.join(staging, TQR_CONFIG_NAME), "w") as handle:
                json.dump(asdict(self.tqr_config), handle, indent=2)
            if not os.path.exists(directory):
                os.rename(staging, directory)
                return
            new = sorted(os.listdir(staging), key=lambda name: name == TQR_CONFIG_NAME)  # the config last
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, TQR_CONFIG_NAME))
            for name in os.listdir(directory):  # weight files of an earlier save that this one does not write
                if name not in new and name.startswith(("model", "pytorch_model")) and name.endswith(_WEIGHT_SUFFIXES):
                    os.remove(os.path.join(directory, name))
            for name in new:
                os.replace(os.path.join(staging, name), os.path.join(directory, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # Activation checkpointing under the names transformers keeps (Trainer calls these); the heads are cheap.
    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        unwrapped(self.backbone).activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self) -> None:
        unwrapped(self.backbone).activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return unwrapped(self.backbone).is_activation_checkpointing

    # -- forward -----------------------------------------------------------------------------------------
    def sequence_hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states [B, L, H] of the sequence the actions live in (decoder side for encoder-decoders)."""
        backbone = unwrapped(self.backbone)
        if self.is_encoder_decoder:
            encoder_out = backbone.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
            return backbone.get_decoder()(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                encoder_hidden_states=encoder_out.last_hidden_state,
                encoder_attention_mask=attention_mask,
            ).last_hidden_state
        base = backbone.base_model
        positions = {}
        if attention_mask is not None and "position_ids" in inspect.signature(base.forward).parameters:
            # Positions start at a row's first real token, so a left-padded row is embedded as the same row padded
            # right; a right-padded batch gets exactly the default positions 0..L-1.
            leading_padding = (attention_mask.long().cumsum(-1) == 0).sum(-1, keepdim=True)
            positions["position_ids"] = (torch.arange(attention_mask.shape[-1], device=attention_mask.device)
                                         - leading_padding).clamp(min=0)
        return base(input_ids=input_ids, attention_mask=attention_mask, **positions).last_hidden_state

    def _packed_hidden_states(self, input_ids, position_ids, completion_mask):
        """Backbone over a packed row, then (hidden, tokens, token mask, completion mask) unpacked to [S, L_max]."""
        if self.is_encoder_decoder:
            raise ConfigError("padding-free batches need a causal LM; encoder-decoders take padded batches")
        body = unwrapped(self.backbone).base_model
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        index, valid = unpack_index(position_ids)
        return hidden[0, index], input_ids[0, index], valid.long(), completion_mask[0, index] * valid

    def q_projection(self) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        if self.q_head is not None:
            return self.q_head.weight, self.q_head.bias, 1.0
        return _lm_head_projection(unwrapped(self.backbone))

    def _taken_q_values(self, state_hidden: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Eq. 12 at the given [N] positions. Runs as the Q head's forward (``run_as_forward``), where a sharding
        wrapper has made the head's weight whole, so the weight is read here and not before."""
        weight, bias, scale = self.q_projection()
        return pretrained_q_values(
            state_hidden * scale if scale != 1.0 else state_hidden, weight, bias, actions, self.tqr_config.alpha,
            chunk_size=self.tqr_config.q_chunk_size, kernel=self.tqr_config.q_kernel,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        completion_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        with_q: bool = True,
    ) -> TQROutput:
        """``completion_mask`` marks response tokens of the action sequence (``decoder_input_ids`` for
        encoder-decoders, else ``input_ids``); only transitions whose action is a response token are valid.
        ``position_ids`` without ``attention_mask``: a padding-free [1, total] row of sequences packed end to end
        (``data.collator.collate_packed``); the backbone runs on the packed row and the outputs come back
        [sequences, max length - 1] as for the padded batch.
        ``with_q=False`` skips the vocabulary-sized Q computation (reward scoring needs none; q_values are 0)."""
        if completion_mask is None:
            raise ConfigError("TQRModel.forward needs completion_mask (1 on response tokens)")
        if position_ids is not None and attention_mask is None:
            hidden, tokens, token_mask, completion_mask = self._packed_hidden_states(input_ids, position_ids, completion_mask)
        else:
            tokens = decoder_input_ids if self.is_encoder_decoder else input_ids
            token_mask = decoder_attention_mask if self.is_encoder_decoder else attention_mask
            if token_mask is None:
                token_mask = torch.ones_like(tokens)
            hidden = self.sequence_hidden_states(input_ids, attention_mask, decoder_input_ids, token_mask)
        mask = (completion_mask[:, 1:] * token_mask[:, 1:]).bool()
        state_hidden, next_hidden = hidden[:, :-1], hidden[:, 1:]

        q_values = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
        if with_q:  # Q only at positions that enter the loss: gathered before the vocabulary-sized projection
            head = self.q_head if self.q_head is not None else unwrapped(self.backbone).get_output_embeddings()
            q_flat = run_as_forward(head, self._taken_q_values, state_hidden[mask], tokens[:, 1:][mask])
            q_values = q_values.to(q_flat.dtype).masked_scatter(mask, q_flat)

        reward = upcast(self.reward_head(next_hidden))
        reward_mean = reward[..., 0].contiguous()  # a copy: FSDP2 warns of outputs that are views
        reward_log_std = reward[..., 1].clamp(self.tqr_config.log_std_min, self.tqr_config.log_std_max)
        if self.reward_weights is not None:
            weights = self.reward_weights(next_hidden, mask, self.tqr_config.rescale_reward_weights)
        else:
            weights = mask.to(reward.dtype)
        return TQROutput(q_values, reward_mean, reward_log_std, weights, mask)
