"""EvomergePathForCausalLM: an evomerge layer path on transformers' own decoder layers.

Written by `evomerge export` into every path checkpoint (see configuration_evomerge_path.py
for what the path is). The stored layers are transformers' Llama / Mistral / Qwen2 decoder
layers, built from the base model's config; hop `t` runs layer `input_layers[t]` on the hidden
state times `input_scales[t]`, with a key-value cache slot of its own (a layer visited twice
keeps two caches), so generation with the cache equals generation without it.

Load it with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`; without
`trust_remote_code` transformers refuses the unknown model type `evomerge_path` instead of
running the stored layers in order. Written for transformers 5 (checked with 5.24: logits
equal `evomerge inspect logits` to ~1e-6 in float32).
"""

import copy

import torch
from torch import nn
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_evomerge_path import EvomergePathConfig

if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(
        f"this evomerge path checkpoint needs transformers >= 5 (found {transformers.__version__})"
    )


def _family(base_model_type):
    """(config class, decoder layer class, RMSNorm class, rotary embedding class)."""
    if base_model_type == "llama":
        from transformers.models.llama import configuration_llama as c, modeling_llama as m

        return c.LlamaConfig, m.LlamaDecoderLayer, m.LlamaRMSNorm, m.LlamaRotaryEmbedding
    if base_model_type == "mistral":
        from transformers.models.mistral import configuration_mistral as c, modeling_mistral as m

        return c.MistralConfig, m.MistralDecoderLayer, m.MistralRMSNorm, m.MistralRotaryEmbedding
    if base_model_type == "qwen2":
        from transformers.models.qwen2 import configuration_qwen2 as c, modeling_qwen2 as m

        return c.Qwen2Config, m.Qwen2DecoderLayer, m.Qwen2RMSNorm, m.Qwen2RotaryEmbedding
    raise ValueError(f"evomerge path checkpoint: unsupported base_model_type {base_model_type!r}")


def _layer_type(base_config, j):
    types = getattr(base_config, "layer_types", None)
    if types is not None:
        return types[j]
    return "sliding_attention" if getattr(base_config, "sliding_window", None) is not None else "full_attention"


class EvomergePathPreTrainedModel(PreTrainedModel):
    config: EvomergePathConfig
    config_class = EvomergePathConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class EvomergePathModel(EvomergePathPreTrainedModel):
    """Embeddings, the stored layers, the final norm; `forward` runs the hops."""

    def __init__(self, config):
        super().__init__(config)
        config_class, layer_class, norm_class, rotary_class = _family(config.base_model_type)
        # The base model's config builds the layers exactly as its own model class would.
        self.base_config = config_class(**config.base_config_dict())
        self.base_config._attn_implementation = config._attn_implementation
        base = self.base_config
        self.embed_tokens = nn.Embedding(base.vocab_size, base.hidden_size, base.pad_token_id)
        self.layers = nn.ModuleList([layer_class(base, j) for j in range(base.num_hidden_layers)])
        self.norm = norm_class(base.hidden_size, eps=base.rms_norm_eps)
        self.rotary_emb = rotary_class(config=self.base_config)
        # One cache slot per hop: the cache is sized by a view of the base config with a layer
        # per hop, each of the type of the layer it runs.
        self.hop_config = copy.deepcopy(self.base_config)
        self.hop_config.num_hidden_layers = config.num_hops
        if getattr(self.base_config, "layer_types", None) is not None:
            self.hop_config.layer_types = [_layer_type(self.base_config, j) for j in config.input_layers]
        self.gradient_checkpointing = False
        self.post_init()

    def _hop_cache(self, cache, use_cache):
        if not use_cache:
            return cache
        if cache is None:
            return DynamicCache(config=self.hop_config)
        n = len(getattr(cache, "layers", []))
        if n != self.config.num_hops:
            # generate() sizes its cache by the stored layers; a path needs one slot per hop.
            if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
                return DynamicCache(config=self.hop_config)
            raise ValueError(
                f"this path has {self.config.num_hops} hops, each with its own cache slot, but the cache "
                f"has {n} layers; pass no cache (or an empty DynamicCache) and one is made"
            )
        return cache

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", self.base_config.use_cache)
        # Follow set_attn_implementation() and from_pretrained(attn_implementation=...).
        self.base_config._attn_implementation = self.config._attn_implementation
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = self._hop_cache(cache, use_cache)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)

        if isinstance(attention_mask, dict):
            masks = attention_mask
        else:
            mask_kwargs = {
                "config": self.base_config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "cache": cache,
                "position_ids": position_ids,
            }
            masks = {"full_attention": create_causal_mask(**mask_kwargs)}
            hop_types = {_layer_type(self.base_config, j) for j in self.config.input_layers}
            if "sliding_attention" in hop_types:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for hop, (j, scale) in enumerate(zip(self.config.input_layers, self.config.input_scales)):
            layer = self.layers[j]
            # The hop's own cache slot (the layer may run at several hops).
            layer.self_attn.layer_idx = hop
            if scale != 1.0:
                hidden_states = hidden_states * scale
            hidden_states = layer(
                hidden_states,
                attention_mask=masks[_layer_type(self.base_config, j)],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class EvomergePathForCausalLM(EvomergePathPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = EvomergePathModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:, :]
        else:
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


__all__ = ["EvomergePathForCausalLM", "EvomergePathModel", "EvomergePathPreTrainedModel"]
