from pathlib import Path

import pytest

from ray_jobs.config import ConfigError, FacesynthConfig, flatten, load_config, parse_override, to_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_and_preset_load():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert isinstance(cfg, FacesynthConfig)
    assert cfg.prepare.source == "toy"
    assert cfg.prepare.toy.verify_pairs >= 3000


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset):
    load_config(CONFIGS / preset)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["prepare.toy.num_identities=12", "run.name=abc", "ray.task_cpus=1",
                             "mlflow.enabled=false"])
    assert cfg.prepare.toy.num_identities == 12
    assert cfg.run.name == "abc"
    assert cfg.ray.task_cpus == 1.0 and isinstance(cfg.ray.task_cpus, float)
    assert cfg.mlflow.enabled is False
    assert load_config(None, ["train_fr.lr=1e-4"]).train_fr.lr == 1e-4  # YAML reads 1e-4 as a string
    # untouched keys keep their defaults inside a partially overridden section
    assert cfg.prepare.toy.min_images == FacesynthConfig().prepare.toy.min_images


def test_unknown_key_names_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["prepare.toy.num_identites=3"])
    msg = str(exc.value)
    assert "prepare.toy.num_identites" in msg and "num_identities" in msg and "verify_pairs" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'bogus'.*valid keys: run, ray"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize("override,key", [("prepare.toy.num_identities=many", "prepare.toy.num_identities"),
                                          ("mlflow.enabled=3", "mlflow.enabled"),
                                          ("ray.task_cpus=true", "ray.task_cpus"),
                                          ("run.name=[1,2]", "run.name"),
                                          ("prepare.toy=5", "prepare.toy")])
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="not found.*tiny"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_flatten_round_trip():
    flat = flatten(to_dict(FacesynthConfig()))
    assert flat["prepare.toy.num_identities"] == FacesynthConfig().prepare.toy.num_identities
