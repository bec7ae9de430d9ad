"""The GPT family: decoder-only causal language models (GPT-2 and a Llama-style modern variant)."""

import functools

from models.gpt import data, hf, model
from zoo import decode
from zoo.family import Family, HFMapping

FAMILY = Family(
    name="gpt", Config=model.Config, presets=model.PRESETS, Model=model.Model, train_defaults={},
    validate=model.validate, reserved_ids=lambda cfg: 0, init_batch=model.init_batch,
    init_params=model.init_params, loss_sums=model.loss_sums, logits=model.logits,
    flops_per_token=model.flops_per_token, row_maker=data.row_maker,
    hf=HFMapping(model_types=hf.HF_MODEL_TYPES, config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
                 params_from_hf=hf.params_from_hf, params_to_hf=hf.params_to_hf),
    sample_prompts=data.sample_prompts,
    generate=functools.partial(decode.generate_text, encoder_decoder=False),
    preset_defaults=model.PRESET_DEFAULTS,
)
