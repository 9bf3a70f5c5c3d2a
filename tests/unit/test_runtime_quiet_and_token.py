"""How freshrank starts or joins Ray: an owner-only token file, Ray's driver lines routed to a
file, Ray's output kept off the terminal on request, single-node mode for a loopback address."""

from __future__ import annotations

import logging
import os
import stat
import sys

import pytest

from freshrank.ops import runtime


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    os.umask(old := os.umask(0o022))  # the usual umask, restored below
    yield tmp_path
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ray_itself_writes_the_token_with_the_umask_and_we_make_it_owner_only(home):
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()  # what ray.init / `ray get-auth-token --generate` do
    token = home / ".ray" / "auth_token"
    assert mode(token) == 0o644  # the fault: every local user can read it
    content = token.read_text()
    assert runtime.secure_auth_token() == token
    assert mode(token) == 0o600 and mode(token.parent) == 0o700
    assert token.read_text() == content  # tightened, not replaced


def test_a_missing_token_is_created_owner_only(home):
    token = runtime.secure_auth_token()
    assert token == home / ".ray" / "auth_token"
    assert mode(token) == 0o600 and mode(token.parent) == 0o700
    assert len(token.read_text()) >= 32
    before = token.read_text()
    assert runtime.secure_auth_token() == token and token.read_text() == before  # kept


def test_token_path_and_env_token_are_respected(home, monkeypatch):
    custom = home / "secrets" / "ray-token"
    custom.parent.mkdir()
    custom.write_text("abc")
    os.chmod(custom, 0o664)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(custom))
    assert runtime.secure_auth_token() == custom and mode(custom) == 0o600
    assert mode(custom.parent) == 0o755  # not ~/.ray: its directory is the user's business

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert runtime.secure_auth_token() is None
    assert not (home / ".ray" / "auth_token").exists()  # nothing written beside the env token


@pytest.fixture
def ray_loggers():
    """Put Ray's loggers back as they were (routing changes process-wide state)."""
    import ray.serve  # noqa: F401  (its logger exists before the snapshot)

    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    saved = {n: list(logging.getLogger(n).handlers) for n in names}
    yield
    for name, handlers in saved.items():
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if h not in handlers:
                logger.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in logger.handlers:
                logger.addHandler(h)


def test_ray_driver_lines_go_to_the_file_not_the_terminal(tmp_path, capsys, ray_loggers):
    logger = logging.getLogger("ray.freshrank_test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        target = tmp_path / "logs" / "ray-driver.log"
        assert runtime.route_ray_driver_logs(target) == str(target)
        runtime.route_ray_driver_logs(target)  # idempotent: one file handler, not two
        logger.info("Started a local Ray instance")
        assert handler not in logger.handlers
        files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
        assert len(files) == 1
        files[0].flush()
        assert target.read_text().count("Started a local Ray instance") == 1
        assert "Started a local Ray instance" not in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)


def test_joining_a_loopback_address_uses_single_node_mode(monkeypatch, home):
    import ray
    from ray._private import ray_constants

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_init(**kwargs):
        seen.update(kwargs, env=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
        seen["cluster"] = ray_constants.ENABLE_RAY_CLUSTER
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(Stop):
        runtime.init_ray(address="10.1.2.3:6379", log_to_driver=False)
    assert seen["env"] is None and seen["cluster"] is True  # a real cluster: left alone
    assert seen["log_to_driver"] is False
    with pytest.raises(Stop):
        runtime.init_ray(address="127.0.0.1:6379")
    assert seen["env"] == "0" and seen["cluster"] is False and seen["log_to_driver"] is True
    assert mode(home / ".ray" / "auth_token") == 0o600  # made owner-only before joining
