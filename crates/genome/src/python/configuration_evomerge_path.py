"""Configuration of an evomerge path checkpoint (written by `evomerge export`).

A path checkpoint stores the decoder layers a layer path uses, once each, as
`model.layers.{j}`, and runs them in the order `input_layers` gives, scaling the
input of hop `t` by `input_scales[t]` (the data-flow merge of Sakana's
"Evolutionary Optimization of Model Merging Recipes"):

    h = embed(x)
    for j, s in zip(input_layers, input_scales):
        h = layers[j](h * s)
    logits = lm_head(norm(h))

Every other key is the config of the model the layers come from; its model type is
`base_model_type` (llama, mistral or qwen2). Load with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.
"""

from transformers import PretrainedConfig

BASE_MODEL_TYPES = ("llama", "mistral", "qwen2")

# Keys of the path, not of the base model's config.
PATH_KEYS = (
    "base_model_type",
    "base_architectures",
    "num_hops",
    "input_layers",
    "input_scales",
    "auto_map",
    "architectures",
    "model_type",
)


class EvomergePathConfig(PretrainedConfig):
    model_type = "evomerge_path"

    def __init__(
        self,
        base_model_type="llama",
        base_architectures=None,
        input_layers=None,
        input_scales=None,
        num_hops=None,
        **kwargs,
    ):
        if base_model_type not in BASE_MODEL_TYPES:
            raise ValueError(
                f"evomerge path checkpoint: base_model_type {base_model_type!r} is not one of {BASE_MODEL_TYPES}"
            )
        input_layers = [int(j) for j in (input_layers or [])]
        input_scales = [float(s) for s in (input_scales if input_scales is not None else [1.0] * len(input_layers))]
        if len(input_layers) != len(input_scales):
            raise ValueError(
                f"evomerge path checkpoint: {len(input_layers)} input_layers but {len(input_scales)} input_scales"
            )
        if num_hops is not None and int(num_hops) != len(input_layers):
            raise ValueError(f"evomerge path checkpoint: num_hops is {num_hops} but there are {len(input_layers)} hops")
        self.base_model_type = base_model_type
        self.base_architectures = base_architectures
        self.input_layers = input_layers
        self.input_scales = input_scales
        self.num_hops = len(input_layers)
        super().__init__(**kwargs)
        stored = getattr(self, "num_hidden_layers", None)
        if stored is not None and any(not 0 <= j < stored for j in input_layers):
            raise ValueError(
                f"evomerge path checkpoint: input_layers {input_layers} name layers outside the {stored} stored ones"
            )

    def base_config_dict(self):
        """The config of the base model (every key but the path's), as a dict."""
        d = {k: v for k, v in self.to_dict().items() if k not in PATH_KEYS}
        if self.base_architectures is not None:
            d["architectures"] = self.base_architectures
        return d
