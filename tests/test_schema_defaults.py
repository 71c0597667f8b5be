"""Schemas and yaml files tell one story: every schema names the group file that holds its defaults
(``yaml = "<group>/<option>"``, ``<file>:<node>`` for a node inside a paradigm file); each field's default
equals that file's value (an interpolation such as ``${data.batch_size}`` is derived, declared where it
points), every key of the file is a field, and every field is in it, or in the file named for it in
``elsewhere`` (an option only some choices have: a hub dataset's columns, a random model's architecture), or
``written`` (filled in by the run). A schema that cannot name one file says why in NO_FILE."""
import ast
import dataclasses

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import paradigms
from experiments.core.schema import CORE_SCHEMAS
from tests.conftest import ROOT

CONF = ROOT / "conf"
NO_FILE = {
    "OptimizerSchema": "open: the optimizer's own arguments (the _target_'s defaults); each conf/optimizer file sets its own",
}


def _load(ref: str) -> dict:
    """A group file's keys after its own defaults list (``lora_svd`` on ``lora``), or one node of a file."""
    path, _, node = ref.partition(":")
    group, _, name = path.partition("/")
    raw = OmegaConf.load(CONF / group / f"{name}.yaml")
    merged = OmegaConf.create({})
    for parent in raw.get("defaults") or []:
        if isinstance(parent, str) and parent != "_self_":
            merged = OmegaConf.merge(merged, _load(f"{group}/{parent}"))
    merged = OmegaConf.merge(merged, {k: v for k, v in OmegaConf.to_container(raw).items() if k != "defaults"})
    out = OmegaConf.to_container(merged, resolve=False)
    return out[node] if node else out


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _all_schemas() -> dict[str, type]:
    from modules.adapters.krona import KronAOptions
    from modules.adapters.lora import NestedLoRAOptions, PeftLoRAOptions
    from modules.adapters import NoOptions
    from experiments.benchmarks.kronecker import KroneckerBenchmarkSchema
    from experiments.benchmarks.lora import BenchmarkModelSchema, BenchmarkQuantizationSchema, LoraBenchmarkSchema

    found = {s.__qualname__ + "@" + s.__module__: s for s in
             (*CORE_SCHEMAS.values(), NoOptions, NestedLoRAOptions, PeftLoRAOptions, KronAOptions,
              LoraBenchmarkSchema, BenchmarkModelSchema, BenchmarkQuantizationSchema, KroneckerBenchmarkSchema)}
    presets = [str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").glob("*/*quick*.yaml")]
    presets.append("kngpt2/gpt2_glue")  # the distill_glue paradigm has no quick preset
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for preset in presets:
            cfg = compose("config", overrides=[f"experiment={preset}"])
            for schema in paradigms.get_paradigm(cfg.paradigm).schemas(cfg).values():
                found[schema.__qualname__ + "@" + schema.__module__] = schema
    return found


SCHEMAS = _all_schemas()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_schemas_defaults_are_its_yaml_files_values(name):
    schema = SCHEMAS[name]
    if schema.__qualname__ in NO_FILE:
        assert not hasattr(schema, "yaml")
        return
    assert hasattr(schema, "yaml"), f"{name} names no yaml file of its defaults (yaml = '<group>/<option>')"
    fields = {f.name: f for f in dataclasses.fields(schema)}
    written = set(getattr(schema, "written", ()))
    files = {None: _load(schema.yaml), **{key: _load(ref) for key, ref in getattr(schema, "elsewhere", {}).items()}}
    base = files[None]
    unknown = [k for k in base if k not in fields and not k.startswith("_")]
    assert not unknown, f"{schema.yaml} sets {unknown}, which {name} does not declare"
    wrong = []
    for key, field in fields.items():
        if key in written:
            continue
        source = schema.elsewhere[key] if key in getattr(schema, "elsewhere", {}) else schema.yaml
        values = files.get(key, base)
        if key not in values:
            wrong.append(f"{key} is in no yaml file ({source})")
        elif key not in getattr(schema, "elsewhere", {}) and not (isinstance(values[key], str) and "${" in values[key]) \
                and values[key] != _default(field):
            wrong.append(f"{key}: schema default {_default(field)!r}, {source} says {values[key]!r}")
    # an interpolated value (``${data.batch_size}``) is derived from another option, declared where it points
    assert not wrong, f"{name}: " + "; ".join(wrong)


def _calls_with_a_default(path):
    """(line, call) of every ``get(cfg, key, default)`` and ``cfg....get("key", default)`` in a source file."""

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "get" and (len(node.args) > 2 or node.keywords):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(func, ast.Attribute) and func.attr == "get" and len(node.args) == 2 \
                and ast.unparse(func.value).startswith(("cfg", "self.cfg")) \
                and isinstance(node.args[0], ast.Constant) and not (
                    isinstance(node.args[1], ast.Constant) and node.args[1].value is None):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_option_has_a_default_outside_its_schema():
    """The code reads an option through its schema (``schema.options(cfg, group, Schema).field``) or plainly
    (``get(cfg, key)``, None where absent): a second default at a call site is what once let the yaml, the
    schema and the code disagree. ``get`` takes no default at all; this catches the other spellings."""
    offending = [f"{path.relative_to(ROOT)}:{line}: {src}" for path in sorted((ROOT / "experiments").rglob("*.py"))
                 for line, src in _calls_with_a_default(path)]
    assert not offending, "option defaults outside a schema:\n" + "\n".join(offending)


def test_options_fill_what_a_config_leaves_out_from_the_schema():
    from omegaconf import OmegaConf

    from experiments.core.schema import LatencySchema, options

    cfg = OmegaConf.create({"latency": {"repeats": 7, "device": "${oc.env:NO_SUCH_VAR,cpu}"}})
    got = options(cfg, "latency", LatencySchema)
    assert (got.repeats, got.device) == (7, "cpu")  # set (and resolved)
    assert (got.batch_size, got.warmup) == (LatencySchema.batch_size, LatencySchema.warmup) == (1, 3)  # the schema's
    assert options(OmegaConf.create({}), "latency", LatencySchema) == LatencySchema()  # no group: every default


# Dotted string reads a paradigm keeps, and why (every other option is read as a typed schema object).
STRING_READS = {("lm.py", "adapter.kind"): "the key that chooses the adapter group's schema"}


def test_paradigms_read_group_options_as_typed_objects():
    """In experiments/paradigms/, ``get(cfg, "<group>.<key>")`` is how an option was once read as a bare string; a
    paradigm now reads ``options(cfg, group, Schema).key`` (type, range and default from the schema)."""
    offending = []
    for path in sorted((ROOT / "experiments" / "paradigms").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get" \
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Constant) \
                    and "." in str(node.args[1].value) and (path.name, node.args[1].value) not in STRING_READS:
                offending.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not offending, "string reads of group options:\n" + "\n".join(offending)
