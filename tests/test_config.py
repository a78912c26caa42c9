"""Every default is defined once: the library's dataclasses hold them, the Hydra schemas take
them from there, and the YAML presets that restate a default agree with it."""

import dataclasses
import enum
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nstyle import fastnet, losses, optimize, train, transfer
from nstyle.cli import app, schema


def _value(v):
    return v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)


def _compose(name, overrides=()):
    schema.register()
    with initialize_config_dir(config_dir=str(app.conf_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_stylize_schema_defaults_are_the_library_defaults():
    s = schema.StylizeSchema()
    lib_loss, lib_optim, lib_run = losses.PerceptualLoss(), optimize.OptimConfig(), transfer.TransferSettings()
    for f in ("alpha", "beta", "tv_weight", "content_layers", "style_layers"):
        assert _value(getattr(s.loss, f)) == _value(getattr(lib_loss, f)), f
    assert s.network.pooling.value == lib_loss.pooling and s.network.arch == lib_run.arch
    for f in ("lr", "memory", "max_linesearch_steps", "project"):
        assert getattr(s.optim, f) == getattr(lib_optim, f), f
    assert (s.optim.name.value, s.optim.linesearch.value) == (lib_optim.name, lib_optim.linesearch)
    assert s.steps == lib_optim.steps == lib_run.stage_steps[-1]
    assert (s.content, s.style, s.size, s.seed, s.init) == (
        lib_run.content,
        lib_run.styles[0],
        lib_run.sizes[-1],
        lib_run.seed,
        lib_run.init,
    )
    # the composed default run is exactly the library's default settings
    cfg = _compose("config")
    assert schema.stylize_settings(cfg) == lib_run


def test_train_schema_defaults_are_the_library_defaults():
    s = schema.TrainSchema()
    lib = {f.name: f.default for f in dataclasses.fields(train.TrainConfig)}
    for f in dataclasses.fields(schema.TrainSchema):
        if f.name in ("net", "loss", "optim"):
            continue
        assert _value(getattr(s, f.name)) == _value(lib[f.name]), f.name
    for sub, cls in (("net", fastnet.FastNetConfig), ("loss", train.TrainLoss), ("optim", train.LRSchedule)):
        for f in dataclasses.fields(getattr(s, sub)):
            assert _value(getattr(getattr(s, sub), f.name)) == _value(getattr(cls(), f.name)), f"{sub}.{f.name}"
    # composing with the two required inputs gives the library's defaults for everything else
    cfg = _compose("train", ["style=builtin:coffee", "data=photos"])
    assert schema.train_settings(cfg) == train.TrainConfig(style="builtin:coffee", data="photos")


@pytest.mark.parametrize("group, name", [("loss", "paper"), ("optim", "lbfgs"), ("network", "vgg19")])
def test_default_group_files_restate_the_library_defaults(group, name):
    """conf/<group>/<name>.yaml documents the defaults it selects: it must not drift from them."""
    text = OmegaConf.load(app.conf_dir() / group / f"{name}.yaml")
    node = getattr(schema.StylizeSchema(), group)
    for key, value in OmegaConf.to_container(text).items():
        assert _value(getattr(node, key)) == value, f"{group}/{name}.yaml: {key}"


def test_unknown_keys_are_refused_also_when_added_with_plus():
    for extra in ("+stylse=x", "++loss.gama=1", "+optim.foo=1"):
        with pytest.raises(schema.UserError, match="unknown key"):
            schema.stylize_settings(_compose("config", [extra]))
    with pytest.raises(schema.UserError, match="unknown key 'net.depth'"):
        schema.train_settings(_compose("train", ["style=a.jpg", "data=d", "+net.depth=3"]))


def test_weights_are_checked_as_typed():
    typed = schema.Typed.from_overrides(["loss.beta=-1e3"])
    with pytest.raises(schema.UserError, match=r"loss.beta must be a finite number >= 0, got -1e3$"):
        schema.stylize_settings(_compose("config", ["loss.beta=-1e3"]), typed)
    with pytest.raises(schema.UserError, match="loss.alpha must be a finite number >= 0, got nan"):
        schema.stylize_settings(_compose("config", ["loss.alpha=nan"]))
    with pytest.raises(schema.UserError, match="loss.content_weight must be a finite number >= 0, got inf"):
        schema.train_settings(_compose("train", ["style=a.jpg", "data=d", "loss.content_weight=inf"]))


def test_train_style_list_normalisation_and_output_keys():
    cfg = schema.train_settings(_compose("train", ["style=[a.jpg,b.jpg]", "data=d", "net.output=tanh"]))
    assert cfg.styles == ("a.jpg", "b.jpg") and cfg.net.output == "tanh"
    assert schema.train_settings(_compose("train", ["style=a.jpg", "data=d"])).styles == ("a.jpg",)
    for override, words in [
        ("style=[a.jpg,a.jpg]", "names an image twice"),
        ("net.output=sigmoid", "unknown output 'sigmoid'"),
    ]:
        args = [override] if override.startswith("style=") else ["style=a.jpg", override]
        with pytest.raises(schema.UserError, match=re.escape(words)):
            schema.train_settings(_compose("train", [*args, "data=d"]))
