"""The MoSEs adapter, usable alone like a peft tuner: config, layer (the math), masks, model."""

from moses.adapter.config import MoSEsConfig
from moses.adapter.layer import MoSEsLayer, TaskContext
from moses.adapter.model import MoSEsModel, get_moses_model

__all__ = ["MoSEsConfig", "MoSEsLayer", "MoSEsModel", "TaskContext", "get_moses_model"]
