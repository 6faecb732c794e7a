"""Every default stated once: the Python definitions are the config groups' defaults.

Hydra composes ``mtl/conf/train.yaml``; the groups whose defaults belong to code are not YAML files but
structured configs registered here in Hydra's ConfigStore (the fairseq way):

* ``optim/adamw`` and ``trainer/default``: the fields of :class:`mtl.training.trainer.TrainerSettings`.
* ``data/default``: :class:`mtl.data.loading.DataSettings`; ``model/default``: :class:`mtl.models.multitask.ModelSettings`.
* ``loss/<name>`` (the task losses of ``mtl.losses``), ``balancer/<name>`` and ``sampler/<name>``: one node per registered class, its options and defaults read
  from the class's constructor signature (so ``build_balancer("uncertainty", tasks)`` in Python and
  ``balancer=uncertainty`` on the command line build the same object).

The nodes are typed, so ``trainer.max_steps=abc`` or ``balancer.lrr=1`` fail at composition, before any
data is read, naming the key. Presets (``encoder/``, ``tasks/``, ``experiment/``, ``logger/``) stay YAML; the
``model/`` presets (``model=scalar_mix``, ``model=lora``, ...) are YAML files on top of ``model/default``
(``defaults: [default, _self_]``).
:func:`register_configs` runs before Hydra composes (``mtl-train``; tests composing by hand call it).
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Iterable
from dataclasses import MISSING, Field, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from mtl.registry import constructor_params

#: constructor arguments that the run supplies, not the config, per registry
RUN_SUPPLIED = {
    "balancer": frozenset({"task_names"}),
    "sampler": frozenset({"task_sizes", "seed"}),
    "loss": frozenset({"num_labels", "class_counts"}),
}
_registered = False


def _plain_type(tp: Any) -> Any:
    """``tp`` if OmegaConf can validate it as a field type, else ``Any``."""
    try:
        OmegaConf.structured(make_dataclass("_Probe", [("x", tp, field(default=MISSING))]))
    except Exception:  # noqa: BLE001 - unions, callables, tensors, ...: not validated by OmegaConf
        return Any
    return tp


def _default_field(value: Any) -> Field:
    if isinstance(value, list | dict | set | tuple):  # mutable defaults: a fresh copy per node
        value = list(value) if isinstance(value, set | tuple) else value
        return field(default_factory=lambda v=value: copy.deepcopy(v))
    return field(default=value)


def options_of(cls: type, supplied: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(name, type, default)`` of each config-settable constructor argument of ``cls`` (``MISSING``: required),
    as :func:`mtl.registry.constructor_params` finds them; the type is the declaring ``__init__``'s annotation."""
    out = []
    for param, init in constructor_params(cls, supplied):
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated: untyped
            hints = {}
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        out.append((param.name, _plain_type(hints.get(param.name, Any)), default))
    return out


def node_for_class(kind: str, name: str, cls: type) -> type:
    """A dataclass for ``<kind>=<name>``: ``name`` plus the class's constructor options with their defaults."""
    specs: list[Any] = [("name", str, field(default=name))]
    for opt, tp, default in options_of(cls, RUN_SUPPLIED[kind]):
        specs.append((opt, tp, field(default=MISSING) if default is MISSING else _default_field(default)))
    return make_dataclass(f"{cls.__name__}Config", specs)


def group_node(settings_cls: type, keys: Iterable[str], title: str) -> type:
    """A dataclass holding ``keys`` of the dataclass ``settings_cls``, with the same types and defaults."""
    wanted = set(keys)
    specs = []
    for f in fields(settings_cls):
        if f.name not in wanted:
            continue
        tp = _plain_type(typing.get_type_hints(settings_cls)[f.name])
        if f.default is not MISSING:
            specs.append((f.name, tp, field(default=f.default)))
        else:
            specs.append((f.name, tp, field(default_factory=f.default_factory)))  # type: ignore[arg-type]
    return make_dataclass(title, specs)


def model_node(settings_cls: type) -> Any:
    """The ``model/default`` node: :class:`mtl.models.multitask.ModelSettings`, its ``heads`` open to new keys so
    that ``model.heads.<task>.kind=bilstm`` works without a ``+`` (the model refuses unknown tasks and keys)."""
    node = OmegaConf.structured(settings_cls)
    OmegaConf.set_struct(node.heads, False)
    return node


def register_configs() -> None:
    """Register the code-defined groups in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from mtl.balancers import BALANCERS
    from mtl.data.loading import DataSettings
    from mtl.evaluation.decision import RULES, DecisionSettings
    from mtl.losses import LOSSES
    from mtl.models.multitask import ModelSettings
    from mtl.samplers import SAMPLERS
    from mtl.training.trainer import OPTIM_KEYS, TrainerSettings

    cs = ConfigStore.instance()
    trainer_keys = [f.name for f in fields(TrainerSettings) if f.name not in OPTIM_KEYS]
    optim_node = group_node(TrainerSettings, OPTIM_KEYS, "OptimConfig")
    cs.store(group="optim", name="adamw", node=optim_node)
    cs.store(group="optim", name="adafactor", node=optim_node(optimizer="adafactor"))  # the same keys
    cs.store(group="trainer", name="default", node=group_node(TrainerSettings, trainer_keys, "TrainerConfig"))
    cs.store(group="data", name="default", node=DataSettings)
    cs.store(group="model", name="default", node=model_node(ModelSettings))
    for name in BALANCERS.names():
        cs.store(group="balancer", name=name, node=node_for_class("balancer", name, BALANCERS.get(name)))
    for name in SAMPLERS.names():
        cs.store(group="sampler", name=name, node=node_for_class("sampler", name, SAMPLERS.get(name)))
    for name in LOSSES.names():
        cs.store(group="loss", name=name, node=node_for_class("loss", name, LOSSES.get(name)))
    for rule in RULES:  # decision=<rule>: the same settings, the rule preset
        cs.store(group="decision", name=rule, node=DecisionSettings(rule=rule))
    _registered = True


def default_node(group: str, name: str) -> dict[str, Any]:
    """The registered node ``<group>/<name>`` as a plain dict (its defaults), e.g. for tests and docs."""
    register_configs()
    node = ConfigStore.instance().load(f"{group}/{name}.yaml").node
    out = OmegaConf.to_container(node, resolve=False)
    assert isinstance(out, dict)
    return out


def group_options(group: str) -> list[str]:
    """Every option of a config group: the YAML files in ``mtl/conf/<group>/`` and the registered nodes."""
    from importlib.resources import files

    register_configs()
    names = {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)} if _has_group(group) else set()
    folder = files("mtl.conf").joinpath(group)
    if folder.is_dir():
        names |= {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
    return sorted(names)


def _has_group(group: str) -> bool:
    try:
        ConfigStore.instance().list(group)
    except OSError:
        return False
    return True


def compose_train(overrides: Iterable[str] = (), return_hydra_config: bool = False) -> Any:
    """The ``train`` config with ``overrides``, as ``mtl-train`` composes it (no Hydra app, no run directory):
    what scripts and notebooks build a run from, e.g. ``run(compose_train(["experiment=quickstart"]), "out")``."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module(config_module="mtl.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
