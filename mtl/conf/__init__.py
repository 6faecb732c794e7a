"""The shipped Hydra configs (``train.yaml`` and one folder per config group), found as ``pkg://mtl.conf``.

The groups whose defaults live in code (``optim``, ``trainer``, ``data``, ``model``, ``balancer/<name>``,
``sampler/<name>``) are not YAML files here (the ``model/`` presets are, each extending ``model/default``):
:mod:`mtl.config` registers them in Hydra's ConfigStore, which ``mtl-train`` does before composing. Compose
by hand (``hydra.compose``) after calling :func:`mtl.config.register_configs`.
"""
