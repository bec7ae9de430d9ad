"""The BERT family: bidirectional encoders pretrained by masked LM (+ NSP), fine-tuned to classify or tag."""

from models.bert import data, hf, model
from zoo.config import OptimConfig
from zoo.family import Family, HFMapping

FAMILY = Family(
    name="bert", Config=model.Config, presets=model.PRESETS, Model=model.Model,
    # BERT's AdamW settings (weight decay 0.01, beta2 0.999, eps 1e-6), at a peak rate for small models
    train_defaults={"optim": OptimConfig(learning_rate=5e-4, weight_decay=0.01, b2=0.999, eps=1e-6)},
    validate=model.validate, reserved_ids=lambda cfg: len(data.SPECIAL_NAMES), init_batch=model.init_batch,
    init_params=model.init_params, loss_sums=model.loss_sums, logits=model.logits,
    flops_per_token=model.flops_per_token, row_maker=data.row_maker,
    hf=HFMapping(model_types=hf.HF_MODEL_TYPES, config_from_hf=hf.config_from_hf, config_to_hf=hf.config_to_hf,
                 params_from_hf=hf.params_from_hf, params_to_hf=hf.params_to_hf),
    summarize=model.summarize,
)
