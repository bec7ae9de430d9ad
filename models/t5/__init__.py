"""The T5 family: encoder-decoder transformers for span corruption, prefix LM and any text-to-text task."""

import functools

from models.t5 import data, hf, model
from zoo import decode
from zoo.config import OptimConfig
from zoo.family import Family, HFMapping

FAMILY = Family(
    name="t5", Config=model.Config, presets=model.PRESETS, Model=model.Model,
    # Adafactor with T5's inverse-square-root schedule, as T5X trains it: on t5-tiny (200 steps of the
    # builtin corpus) validation loss 5.44 against AdamW's 5.68 (lr 3e-3, cosine to 0.3; BENCHMARKS.md)
    train_defaults={"optim": OptimConfig(name="adafactor", schedule="rsqrt", learning_rate=1e-2, warmup_steps=50,
                                         weight_decay=0.01)},
    validate=model.validate, reserved_ids=lambda cfg: cfg.num_sentinels, init_batch=model.init_batch,
    init_params=model.init_params, loss_sums=model.loss_sums, logits=model.logits,
    flops_per_token=model.flops_per_token, row_maker=data.row_maker,
    hf=HFMapping(model_types=hf.HF_MODEL_TYPES, config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
                 params_from_hf=hf.params_from_hf, params_to_hf=hf.params_to_hf),
    sample_prompts=data.sample_prompts,
    generate=functools.partial(decode.generate_text, encoder_decoder=True),
    generation_metrics=model.generation_metrics,
)
