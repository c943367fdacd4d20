"""fitvision.models: the model registry, the shared model interface, init and transfer helpers.

    create_model(name, num_classes=10, in_channels=3, width=1.0, **options)
    list_models() / model_table() / register_model
    param_groups(model, wd, body_lr_mult=1.0) / freeze(model, train_bn=True) / unfreeze(model)
    kaiming_init(model) / lsuv_init(model, batch)
"""

from fitvision.models.base import ImageClassifier
from fitvision.models.groups import final_layer_name, freeze, head_module, param_groups, unfreeze, unwrap
from fitvision.models.init import kaiming_init, lsuv_init
from fitvision.models.registry import count_params, create_model, list_models, model_table, register_model

__all__ = [
    "ImageClassifier",
    "count_params",
    "create_model",
    "final_layer_name",
    "freeze",
    "head_module",
    "kaiming_init",
    "list_models",
    "lsuv_init",
    "model_table",
    "param_groups",
    "register_model",
    "unfreeze",
    "unwrap",
]
