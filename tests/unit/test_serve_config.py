"""serve_apps/ranking.yaml is a config `serve deploy` accepts, names what the builder builds, and
a change of user_config.pinned_version reconfigures replicas in place (Serve's own rules)."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_apps" / "ranking.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def builder():
    from ray._common.utils import import_attr

    sys.path.insert(0, str(ROOT))
    try:
        return import_attr(yaml.safe_load(CONFIG.read_text())["applications"][0]["import_path"])
    finally:
        sys.path.remove(str(ROOT))


def _ranker(config: dict) -> dict:
    (app,) = config["applications"]
    (deployment,) = app["deployments"]
    return deployment


def test_serve_deploy_schema_accepts_it(config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == (
        "ranking",
        "/",
        "serve_apps.ranking:build_app",
    )
    (deployment,) = app.deployments
    assert deployment.name == "Ranker"
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options.model_dump(exclude_unset=True) == {"num_cpus": 0.5}
    assert deployment.user_config == {"pinned_version": None}
    assert deployment.max_ongoing_requests >= app.args["max_batch_size"]


def _unknown_keys(model: type[pydantic.BaseModel], data: object, where: str = "") -> list[str]:
    """Keys of ``data`` that are not fields of ``model`` (recursively through nested models).

    Serve's schemas ignore unknown keys, so a misspelt option would be dropped silently."""
    if not isinstance(data, dict):
        return []
    unknown = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(f"{where}{key}")
            continue
        for candidate in _models_in(field.annotation):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    unknown += _unknown_keys(candidate, item, f"{where}{key}[{i}].")
            else:
                unknown += _unknown_keys(candidate, value, f"{where}{key}.")
    return unknown


def _models_in(annotation: object) -> list[type[pydantic.BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_key_is_a_known_serve_option(config):
    from ray.serve.schema import ServeDeploySchema

    assert _unknown_keys(ServeDeploySchema, config) == []


def test_a_misspelt_option_is_caught(config):
    from ray.serve.schema import ServeDeploySchema

    bad = copy.deepcopy(config)
    _ranker(bad)["num_replica"] = 3
    _ranker(bad)["ray_actor_options"]["num_cpu"] = 1
    assert _unknown_keys(ServeDeploySchema, bad) == [
        "applications[0].deployments[0].ray_actor_options.num_cpu",
        "applications[0].deployments[0].num_replica",
    ]


def test_builder_builds_the_deployment_the_config_names(config, builder):
    from ray.serve.deployment import Application

    (app_config,) = config["applications"]
    app = builder(app_config["args"])
    assert isinstance(app, Application)
    deployment = app._bound_deployment
    assert deployment.name == _ranker(config)["name"]
    assert set(_ranker(config)["user_config"]) <= set(deployment.user_config)
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        builder({**app_config["args"], "bogus": 1})


def test_autoscaling_example_is_valid_when_uncommented(config):
    """The commented autoscaling block, swapped in for num_replicas, is a valid config."""
    from ray.serve.schema import ServeDeploySchema

    text = CONFIG.read_text()
    block = re.search(
        r"^[ \t]*# >>> autoscaling example\n(.*?)\n[ \t]*# <<< autoscaling example",
        text,
        re.S | re.M,
    )
    assert block, "autoscaling example markers missing from ranking.yaml"
    uncommented = re.sub(r"^(\s*)# ", r"\1", block.group(1), flags=re.M)
    enabled = text.replace("        num_replicas: 2\n", "", 1).replace(block.group(0), uncommented)
    schema = ServeDeploySchema.model_validate(yaml.safe_load(enabled))
    deployment = schema.applications[0].deployments[0]
    assert deployment.num_replicas == "auto"
    assert deployment.autoscaling_config["min_replicas"] == 1
    assert deployment.autoscaling_config["max_replicas"] == 8
    assert deployment.autoscaling_config["target_ongoing_requests"] == 8


def _version(app_config: dict):
    """Serve's DeploymentVersion of the Ranker for an application config, as `serve deploy`
    computes it (code version from import path, runtime_env and args)."""
    from ray.serve._private.config import DeploymentConfig
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve._private.version import DeploymentVersion
    from ray.serve.schema import ServeApplicationSchema

    schema = ServeApplicationSchema.model_validate(app_config)
    (deployment,) = schema.deployments
    return DeploymentVersion(
        get_app_code_version(schema),
        DeploymentConfig(num_replicas=deployment.num_replicas, user_config=deployment.user_config),
        deployment.ray_actor_options.model_dump(exclude_unset=True),
    )


def test_pinning_a_version_reconfigures_in_place(config):
    """Rollback by editing user_config.pinned_version and deploying again: Serve calls
    reconfigure() on the running replicas and does not restart them."""
    (before,) = config["applications"]
    pinned = copy.deepcopy(before)
    _ranker({"applications": [pinned]})["user_config"]["pinned_version"] = 3
    old, new = _version(before), _version(pinned)
    assert not old.requires_actor_restart(new)
    assert old.requires_actor_reconfigure(new)


def test_changing_args_restarts_replicas(config):
    """The contrast: a new registry path is new code for Serve (a rolling restart)."""
    (before,) = config["applications"]
    moved = copy.deepcopy(before)
    moved["args"]["registry"] = "/elsewhere/registry"
    assert _version(before).requires_actor_restart(_version(moved))


def test_access_log_reaches_the_deployments_logging_config(config, builder):
    """``args.access_log`` is Ray Serve's per-replica access log switch (on unless turned off)."""
    (app_config,) = config["applications"]
    on = builder(app_config["args"])._bound_deployment.logging_config
    off = builder({**app_config["args"], "access_log": False})._bound_deployment.logging_config
    assert on["enable_access_log"] is True and off["enable_access_log"] is False
    assert {k: v for k, v in on.items() if k != "enable_access_log"} == {
        k: v for k, v in off.items() if k != "enable_access_log"
    }


def test_yaml_keeps_the_builders_replica_environment(config):
    """The YAML's ray_actor_options replace the builder's, so the user-code thread switch the
    builder puts in the replicas' runtime_env must come from the application's runtime_env."""
    from freshrank.serving.app import SEPARATE_THREAD_ENV, RankingAppConfig, replica_actor_options

    (app_config,) = config["applications"]
    built = replica_actor_options(RankingAppConfig(**app_config["args"]))
    assert built["runtime_env"]["env_vars"] == {SEPARATE_THREAD_ENV: "0"}
    assert "runtime_env" not in _ranker(config)["ray_actor_options"]
    assert app_config["runtime_env"]["env_vars"][SEPARATE_THREAD_ENV] == "0"
    off = RankingAppConfig(**app_config["args"], user_code_on_event_loop=False)
    assert replica_actor_options(off) == {"num_cpus": off.replica_cpus}
