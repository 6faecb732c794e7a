"""The balancer registry and layout: names, configs, options, one source of defaults, documentation."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import mtl.balancers
from mtl.balancers import BALANCERS, balancer_options, build_balancer
from mtl.config import default_node
from tests.balancer_helpers import inp_for, make, rand_jac

LOSS_LEVEL = [
    "equal", "static", "log_loss", "initial_loss", "uncertainty", "dwa", "dtp", "rlw", "famo", "imtl_l",
    "gls", "stch", "go4align", "igb",
]
GRAMIAN_LEVEL = [
    "mgda",
    "mgda_ub",
    "pcgrad",
    "cagrad",
    "imtl",
    "gradvac",
    "nash_mtl",
    "aligned_mtl",
    "primary_auxiliary",
    "gradnorm",
    "grad_norm_normalized",
    "db_mtl",
    "upgrad",
    "dualproj",
    "fairgrad",
    "conflictfree",
    "excess_mtl",
    "torchjd",
]
#: not a weighting of the task gradients: the update from the gradients themselves (mtl.balancers.aggregator)
AGGREGATORS = ["graddrop", "moco"]
FAMILIES = ("loss", "gramian", "aggregator")


def _family(cls) -> str:
    from mtl.balancers.aggregator import Aggregator

    return "aggregator" if issubclass(cls, Aggregator) else "gramian" if cls.needs_gramian else "loss"


def test_importing_the_package_registers_every_method() -> None:
    ours = [n for n in BALANCERS.names() if BALANCERS.get(n).__module__.startswith("mtl.")]  # tests add their own
    assert sorted(LOSS_LEVEL + GRAMIAN_LEVEL + AGGREGATORS) == ours
    lists = {"loss": LOSS_LEVEL, "gramian": GRAMIAN_LEVEL, "aggregator": AGGREGATORS}
    for name in ours:
        cls = BALANCERS.get(name)
        family = _family(cls)
        assert cls.__module__.startswith(f"mtl.balancers.{family}."), (name, cls.__module__)
        assert name in lists[family]
        assert not cls.needs_gradients or cls.needs_gramian, name  # reading gradients: a gradient-level method


def test_aggregators_flags_and_sources():
    for name in AGGREGATORS:
        cls = BALANCERS.get(name)
        assert cls.needs_gramian and cls.needs_gradients
    assert BALANCERS.get("excess_mtl").needs_gradients  # a weighting that keeps per-coordinate statistics
    assert make("graddrop", 2).source == "representation"
    assert make("graddrop", 2, source="parameters").source == "parameters"
    assert make("moco", 2).source == "parameters"
    with pytest.raises(ValueError, match="source=parameters"):
        make("moco", 2, source="representation")


def test_registry_names_and_flags():
    for name in ["mgda", "mgda_ub", "pcgrad", "cagrad", "imtl", "gradvac", "nash_mtl", "aligned_mtl",
                 "primary_auxiliary", "upgrad", "dualproj", "fairgrad", "conflictfree", "torchjd"]:
        assert name in BALANCERS
        cls = BALANCERS.get(name)
        assert cls.needs_gramian, name
    assert make("mgda", 2).source == "parameters"
    assert make("mgda_ub", 2).source == "representation"
    assert make("pcgrad", 2).source == "representation"
    assert make("mgda", 2, source="representation").source == "representation"
    assert make("mgda", 2, source=None).source == "parameters"  # None: the class's default_source


@pytest.mark.parametrize("name", ["log_loss", "initial_loss", "grad_norm_normalized", "uncertainty", "gradnorm",
                                  "dwa", "dtp", "rlw", "famo", "equal", "static", "imtl_l",
                                  "gls", "stch", "db_mtl", "go4align", "igb"])
def test_config_files_build(name: str) -> None:
    cfg = default_node("balancer", name)  # what `balancer=<name>` composes
    assert cfg.pop("name") == name
    b = build_balancer(name, ["a", "b", "c"], **cfg)
    assert b.registry_name == name


@pytest.mark.parametrize("name", ["mgda", "mgda_ub", "pcgrad", "cagrad", "imtl", "gradvac", "nash_mtl",
                                  "aligned_mtl", "primary_auxiliary", "upgrad", "dualproj", "fairgrad",
                                  "conflictfree", "torchjd"])
def test_gramian_config_files_build(name):
    cfg = default_node("balancer", name)  # what `balancer=<name>` composes
    assert cfg.pop("name") == name
    if name == "primary_auxiliary":
        assert cfg["primary"] is None
        cfg["primary"] = "b"
    bal = build_balancer(name, ["a", "b", "c"], **cfg)
    w = bal.compute(inp_for(rand_jac(3, 5, 0) @ rand_jac(3, 5, 0).T))
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("name", ["excess_mtl", *AGGREGATORS])
def test_gradient_reading_config_files_build(name):
    cfg = default_node("balancer", name)  # what `balancer=<name>` composes
    assert cfg.pop("name") == name
    bal = build_balancer(name, ["a", "b", "c"], **cfg)
    jac = rand_jac(3, 5, 0)
    w = bal.compute(inp_for(jac @ jac.T, tasks=["a", "b", "c"], gradients=jac))
    assert w.shape == (3,) and torch.isfinite(w).all()


@pytest.mark.parametrize("name", sorted(LOSS_LEVEL + GRAMIAN_LEVEL + AGGREGATORS))
def test_python_defaults_are_the_config_defaults(name: str) -> None:
    """One source of defaults: every key of the config node has the constructor's default value."""
    cfg = default_node("balancer", name)
    cfg.pop("name")
    cls = BALANCERS.get(name)
    defaults = balancer_options(cls)
    assert set(cfg) <= set(defaults), sorted(set(cfg) - set(defaults))
    for key, value in cfg.items():
        assert defaults[key] == value, (name, key, defaults[key], value)


def test_unknown_kwarg_is_an_error() -> None:
    with pytest.raises(TypeError):
        build_balancer("dwa", ["a", "b", "c"], temprature=2.0)


@pytest.mark.parametrize(
    ("name", "kwargs", "bad", "accepted"),
    [
        ("uncertainty", {"lrr": 1}, "lrr", ["lr", "regularizer_coef", "source"]),
        ("mgda", {"normalisation": "l2"}, "normalisation", ["normalization", "max_iter", "tol", "polish", "source"]),
        ("gradnorm", {"alhpa": 1.0}, "alhpa", ["alpha", "lr", "min_weight", "eps", "source"]),
    ],
)
def test_misspelled_option_is_named_with_the_accepted_ones(name, kwargs, bad, accepted) -> None:
    with pytest.raises(TypeError) as exc:
        build_balancer(name, ["a", "b"], **kwargs)
    assert f"[{bad!r}]" in str(exc.value)
    assert str(accepted) in str(exc.value)


def _method_modules() -> list[str]:
    out = []
    for family in FAMILIES:
        pkg = importlib.import_module(f"mtl.balancers.{family}")
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name not in ("base", "linalg") and not info.name.startswith("_"):
                out.append(f"mtl.balancers.{family}.{info.name}")
    return out


def test_one_module_per_method() -> None:
    ours = [n for n in BALANCERS.names() if BALANCERS.get(n).__module__.startswith("mtl.")]  # tests add their own
    modules = {BALANCERS.get(n).__module__ for n in ours}
    assert sorted(modules) == sorted(_method_modules())
    assert len(modules) == len(ours)


@pytest.mark.parametrize("module", _method_modules())
def test_method_module_documents_paper_formula_knobs_and_deviations(module: str) -> None:
    doc = inspect.getdoc(importlib.import_module(module)) or ""
    assert "Knobs" in doc, module
    assert "Deviations from" in doc, module
    assert "Formula" in doc or "formula" in doc, module
    assert "Paper" in doc or "paper" in doc, module


def test_package_exports() -> None:
    for name in ("BALANCERS", "Balancer", "BalanceInput", "register_balancer", "build_balancer"):
        assert hasattr(mtl.balancers, name)
