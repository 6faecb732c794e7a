"""mtl: config-driven multi-task fine-tuning of one shared pretrained encoder."""

__version__ = "0.1.0"
