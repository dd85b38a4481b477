"""Setting names, validation, the refusal to change a running cache on open, and Consul KV
parsing: one owner (``shoveling_ray.settings``) that the client, coordinator, CLI and KV
follower share. No Ray."""

from __future__ import annotations

import inspect
import os

import pytest

import shoveling_ray as sr
from shoveling_ray import settings
from shoveling_ray.actors.disk import check_max_disk
from shoveling_ray.actors.storage import check_max_memory, check_policy
from shoveling_ray.cli import build_parser
from shoveling_ray.membership.registration import CONFIG_KEYS, parse_config_value


def test_every_setting_has_a_default_a_check_and_configurable_ones_are_configure_arguments():
    assert set(settings.DEFAULTS) == {"max_memory", "eviction", "max_disk", "replicas", "http", "spill_dir"}
    assert set(settings.CONFIGURABLE) == set(settings.DEFAULTS) - {"spill_dir"}
    assert list(inspect.signature(sr.Cache.configure).parameters)[1:] == list(settings.CONFIGURABLE)
    opened = inspect.signature(sr.Cache).parameters
    assert all(name in opened for name in settings.DEFAULTS)
    # the defaults are valid values of their own settings
    assert settings.given(**settings.DEFAULTS) == settings.DEFAULTS


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("max_memory", "1GB", TypeError),
        ("max_memory", True, TypeError),
        ("max_memory", -1, ValueError),
        ("max_disk", 1.5, TypeError),
        ("eviction", "fifo", ValueError),
        ("eviction", None, ValueError),
        ("replicas", 0, ValueError),
        ("replicas", True, TypeError),
        ("http", "on", TypeError),
        ("spill_dir", 3, TypeError),
        ("colour", "red", TypeError),
    ],
)
def test_bad_values_are_refused_with_the_settings_name(name, value, error):
    with pytest.raises(error, match="colour|" + name):
        settings.given(**{name: value})


def test_good_values_come_back_checked():
    assert settings.given(max_memory=0, eviction="lru", max_disk=None, replicas=3, http=True, spill_dir="rel") == {
        "max_memory": 0, "eviction": "lru", "max_disk": None, "replicas": 3, "http": True,
        "spill_dir": os.path.abspath("rel"),
    }


def test_the_old_validator_names_are_the_settings_ones():
    assert check_max_memory is settings.check_max_memory
    assert check_max_disk is settings.check_max_disk
    assert check_policy is settings.check_eviction


def test_opening_with_the_running_values_is_fine():
    running = dict(settings.DEFAULTS, max_memory=1000, replicas=2)
    settings.refuse_changes("c", running, {"max_memory": 1000, "replicas": 2, "eviction": "spill"})
    settings.refuse_changes("c", running, {})


def test_a_different_value_names_both_and_points_to_configure():
    running = dict(settings.DEFAULTS, max_memory=1000)
    with pytest.raises(ValueError) as info:
        settings.refuse_changes("c", running, {"max_memory": 5000, "replicas": 1})
    message = str(info.value)
    assert "max_memory=1000" in message and "5000" in message
    assert "configure(max_memory=5000)" in message
    assert "replicas" not in message  # the same value is not a change


def test_a_different_spill_dir_says_to_close_the_cache():
    with pytest.raises(ValueError, match="close it to change spill_dir") as info:
        settings.refuse_changes("c", dict(settings.DEFAULTS, spill_dir="/a"), {"spill_dir": "/b"})
    assert "'/a'" in str(info.value) and "'/b'" in str(info.value) and "configure" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [("max-memory", b" 1024 ", 1024), ("max-disk", b"0", 0), ("eviction", b"spill", "spill"),
     ("http", b"on", True), ("http", b"off", False)],
)
def test_kv_values_parse(key, raw, value):
    assert settings.parse_kv(key, raw) == value
    assert parse_config_value(key, raw) == value


@pytest.mark.parametrize(("key", "raw"), [("max-memory", b"-1"), ("max-disk", b"1GB"), ("eviction", b"fifo"),
                                          ("http", b"yes"), ("replicas", b"2")])
def test_bad_kv_values_are_refused(key, raw):
    with pytest.raises(ValueError):
        settings.parse_kv(key, raw)


def test_the_kv_keys_are_the_contracts_and_the_follower_follows_them():
    assert settings.KV_KEYS == {"max_memory": "max-memory", "eviction": "eviction", "max_disk": "max-disk", "http": "http"}
    assert set(CONFIG_KEYS) == set(settings.KV_KEYS.values())
    assert set(settings.KV_KEYS) <= set(settings.CONFIGURABLE)


@pytest.mark.parametrize(("flag", "value"), [("--max-memory", "-5"), ("--eviction", "fifo"), ("--replicas", "0"),
                                             ("--replicas", "two"), ("--http", "yes")])
def test_the_cli_refuses_what_the_settings_refuse(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["config", "c", flag, value])
    assert info.value.code == 2


def test_the_cli_takes_what_the_settings_take():
    args = build_parser().parse_args(["config", "c", "--max-memory", "10", "--eviction", "lru", "--replicas", "2",
                                      "--http", "off"])
    assert (args.max_memory, args.eviction, args.replicas, args.http, args.max_disk) == (10, "lru", 2, False, None)
    assert all(hasattr(args, name) for name in settings.CONFIGURABLE)  # every setting configure changes


class Attached:
    """What ``Cache.attach`` returns, recording what ``shoveling config`` asks of it."""

    def __init__(self, name: str):
        self.name, self.configured = name, []

    def configure(self, **changes):
        self.configured.append(changes)

    def stats(self):
        return {"n1": {"limit": 10, "policy": "lru", "disk_limit": 5, "replicas": 2}}


def test_shoveling_config_changes_a_running_cache_through_configure(monkeypatch, capsys):
    from shoveling_ray import cli

    handles = []
    monkeypatch.setattr(cli.Cache, "attach", lambda name: handles.append(Attached(name)) or handles[-1])
    args = build_parser().parse_args(["config", "c", "--max-memory", "10", "--eviction", "lru", "--http", "on", "--json"])
    args.func(args)
    assert handles[0].name == "c"
    assert handles[0].configured == [{"max_memory": 10, "eviction": "lru", "http": True}]
    assert '"max_memory": 10' in capsys.readouterr().out
