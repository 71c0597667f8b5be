"""Every option of every schema refuses bad input before anything loads (generated, in-process).

For each field of each schema (the core groups and each paradigm's ``schemas(cfg)``, composed from a preset of
that paradigm) a bad value is fed to ``validate(cfg, machine=False)``: NaN, inf, a string where a number is
expected, -1 where the field has ``min >= 0``, 0 where it must be strictly positive (``above=0``), a number
where a list is expected, an empty list and a list of the wrong length. Each must raise ``ConfigError`` whose
message names the key, unless ACCEPTED says why not. Each preset is composed once; a case changes one key of a
copy (hundreds of cases, no subprocess per case).
"""
from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.core import schema
from experiments.core.config import ConfigError
from experiments.core.tasks import task_schemas, validate
from experiments.paradigms import get_paradigm
from tests.conftest import ROOT, run

# A preset per paradigm (and per adapter of the LM and GLUE paradigms, whose schema follows adapter.kind).
PRESETS = [("qdylora/quick",), ("qdylora/quick", "adapter=peft_lora"), ("soft/quick",), ("krona/quick",),
           ("krona/quick", "adapter=lora"), ("kngpt2/quick",), ("kngpt2/gpt2_glue",), ("sortednet/quick",),
           ("whisper/quick",), ("focl/quick",)]

# (key, case) -> why that bad-looking value is accepted. Keep it short: every entry is a hole someone chose.
ACCEPTED: dict[tuple[str, str], str] = {
    ("export.submodels", "empty"): "[] is the default and documented: export nothing (conf/export/default.yaml)",
}


@lru_cache(maxsize=None)
def composed(preset: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={preset[0]}", *preset[1:]])


def schemas_of(cfg: DictConfig) -> dict[str, type]:
    """Every (group, schema) validate checks for this config, as check_core walks the core ones ("" = the root)."""
    groups = {"": schema.RootSchema, **schema.CORE_SCHEMAS}
    optimizer = cfg.get("optimizer")
    if isinstance(optimizer, DictConfig) and all(isinstance(v, DictConfig) for v in optimizer.values()):
        del groups["optimizer"]
        groups.update({f"optimizer.{name}": schema.OptimizerSchema for name in optimizer})
    return {**groups, **task_schemas(), **get_paradigm(cfg.paradigm).schemas(cfg)}  # a paradigm's own replaces the core one


# Groups with no schema of their own in validate, and why.
UNCHECKED = {"hydra": "Hydra's own", "logger": "named factories (schema.FACTORY_GROUPS: each needs a _target_)",
             "callbacks": "named factories, as logger",
             "benchmark": "task=benchmark's options (checked there: experiments/benchmarks/)"}
# Schemas that take keys they do not name, and why.
OPEN = {"": "the root holds every group", "trainer": "any Lightning Trainer argument (checked against its signature)",
        "optimizer": "any argument of the chosen torch optimizer"}


def _admits(tp, value) -> bool:
    return schema._matches(value, tp)


def bad_values(tp, meta) -> dict[str, object]:
    """The bad values that apply to a field of type ``tp`` and rules ``meta``, by case name."""
    out: dict[str, object] = {}
    if _admits(tp, 1) or _admits(tp, 1.5):  # a number field
        out.update(nan=float("nan"), inf=float("inf"))
        if not _admits(tp, "abc"):
            out["string"] = "abc"
        if meta.get("min") is not None and meta["min"] >= 0 or meta.get("above") is not None and meta["above"] >= 0:
            out["negative"] = -1
        if meta.get("above") == 0:
            out["zero"] = 0
    if _admits(tp, []) or _admits(tp, ["x"]) or _admits(tp, [1]):  # a list field
        if not _admits(tp, 3):
            out["number"] = 3
        out["empty"] = []
        if meta.get("length") is not None:
            out["length"] = [1] * (meta["length"] + 1)
        if meta.get("min") is not None and meta["min"] >= 0 or meta.get("above") is not None and meta["above"] >= 0:
            out["negative_item"] = [-1] * (meta.get("length") or 1)
        if meta.get("above") == 0:
            out["zero_item"] = [0] * (meta.get("length") or 1)
    return out


def cases():
    seen = set()
    for preset in PRESETS:
        cfg = composed(preset)
        for group, cls in schemas_of(cfg).items():
            node = OmegaConf.select(cfg, group) if group else cfg
            if not isinstance(node, DictConfig):
                continue
            hints = typing.get_type_hints(cls)
            for field in dataclasses.fields(cls):
                key = f"{group}.{field.name}" if group else field.name
                if field.name not in node or (cls, field.name) in seen:
                    continue
                seen.add((cls, field.name))
                for case, value in bad_values(hints[field.name], field.metadata).items():
                    yield pytest.param(preset, key, case, value, id=f"{' '.join(preset)}:{key}={case}")


CASES = list(cases())


@pytest.mark.parametrize("preset, key, case, value", CASES)
def test_a_bad_value_is_refused_naming_its_key(preset, key, case, value):
    cfg = composed(preset).copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
    if (key, case) in ACCEPTED:
        validate(cfg, machine=False)  # the table stays true: an accepted value still passes
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg, machine=False)
    message = str(err.value)
    assert key in message and "\n" not in message, message


@pytest.mark.parametrize("preset", PRESETS, ids=" ".join)
def test_every_group_has_a_closed_schema_or_a_reason(preset):
    cfg = composed(preset)
    checked = schemas_of(cfg)
    groups = [k for k in cfg if isinstance(cfg._get_node(k), DictConfig)]
    assert [g for g in groups if g not in checked and g not in UNCHECKED and g != "optimizer"] == []  # named: optimizer.<name>
    for group in [g for g in checked if g.split(".")[0] not in OPEN and OmegaConf.select(cfg, g) is not None]:
        bad = cfg.copy()
        with open_dict(bad):
            OmegaConf.update(bad, f"{group}.bogus", 1, merge=False)
        with pytest.raises(ConfigError, match=rf"^{group}.bogus "):
            validate(bad, machine=False)
    for group in ("logger", "callbacks"):  # open by name, but every entry is something to build
        bad = cfg.copy()
        with open_dict(bad):
            OmegaConf.update(bad, f"{group}.bogus", 1, merge=False)
        with pytest.raises(ConfigError, match=rf"^{group}.bogus must be a node with a _target_"):
            validate(bad, machine=False)


def test_every_accepted_entry_is_a_generated_case():
    generated = {(key, case) for _, key, case, _ in (c.values for c in CASES)}
    assert set(ACCEPTED) <= generated, set(ACCEPTED) - generated


@pytest.mark.parametrize("overrides, message", [
    (["experiment=krona/quick", "adapter.a_shape=[0,1]"], r"^adapter.a_shape\[0\] must be >= 1, got 0$"),
    (["experiment=krona/quick", "adapter.a_shape=[2,2,2]"], r"^adapter.a_shape must hold exactly 2 values, got 3"),
    (["experiment=kngpt2/quick", "distill.layer_map=[1,2]"],
     r"^distill.layer_map=\[1, 2\] has 2 entries but the student has 30 blocks; give one teacher block \(0..29\)"),
    (["experiment=kngpt2/quick", "compression=truncate", "compression.num_layers=2", "distill.layer_map=[0,30]"],
     r"^distill.layer_map\[1\]=30 is not a block of the teacher; valid: 0..29$"),
    (["experiment=soft/quick", "model=tiny_gpt2", "depth.exits=[2,5]"],  # GPT-2's n_layer, read from its config
     r"^depth.exits\[1\]=5 is beyond the model's 4 layers; valid exits: 1..4$"),
])
def test_cross_field_rules_name_the_key_and_the_valid_range(overrides, message):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        validate(cfg, machine=False)


def test_a_krona_shape_with_a_zero_is_one_error_line_through_run_py(env, tmp_path):
    proc = run(["experiment=krona/quick", "adapter.a_shape=[0,1]", f"hydra.run.dir={tmp_path / 'run'}"], env,
               timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: adapter.a_shape"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
