"""Where option defaults still live outside the yaml: for every preset, the schema fields its composed config
does not set (the code then reads the schema's default through ``schema.options``, or a built object keeps its
class's own default: a sampler's constructor, a library's argument), and
the fields whose composed value differs from the schema's declared default.

    python experiments/scripts/schema_audit.py            # one line per (group, schema, field), with the papers

A development aid for making the schemas the one source of defaults; it loads no model.
"""
from __future__ import annotations

import collections
import dataclasses
import sys

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from experiments import paradigms
from experiments.core.config import CONF_DIR
from experiments.core.schema import CORE_SCHEMAS


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def audit() -> tuple[dict, dict]:
    presets = sorted(str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
                     for p in (CONF_DIR / "experiment").rglob("*.yaml"))
    missing: dict = collections.defaultdict(set)
    differ: dict = collections.defaultdict(set)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for preset in presets:
            cfg = compose("config", overrides=[f"experiment={preset}"])
            schemas = {**CORE_SCHEMAS, **paradigms.get_paradigm(cfg.paradigm).schemas(cfg)}
            for group, schema in schemas.items():
                node = OmegaConf.select(cfg, group)
                if not isinstance(node, DictConfig):
                    continue
                values = OmegaConf.to_container(node, resolve=False)
                for field in dataclasses.fields(schema):
                    key = (group, schema.__name__, field.name)
                    if field.name not in values:
                        missing[key].add(preset.split("/")[0])
                    elif values[field.name] != _default(field):
                        differ[key].add(repr(values[field.name]))
    return missing, differ


def main() -> int:
    missing, differ = audit()
    print(f"{len(missing)} schema fields not set by some preset's composed config (group, schema, field: papers)")
    for (group, schema, name), papers in sorted(missing.items()):
        print(f"  {group}.{name} ({schema}): {', '.join(sorted(papers))}")
    print(f"{len(differ)} fields whose composed value differs from the schema default somewhere")
    for (group, schema, name), values in sorted(differ.items()):
        print(f"  {group}.{name} ({schema}): {', '.join(sorted(values))[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
