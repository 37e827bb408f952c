"""SIGHUP's sorting of changed settings into applied now and needing a restart (daemon/reload.py)."""

from __future__ import annotations

from predictd.daemon.config import load_settings
from predictd.daemon.reload import changes, merged


def test_live_and_restart_settings_are_told_apart() -> None:
    old = load_settings(None)
    new = load_settings(
        None,
        log={"level": "DEBUG"},
        receive={"port": 4242, "allowed_calling_aets": ["M1"]},
        send={"destinations": [{"name": "pacs", "ae_title": "P", "host": "10.0.0.1", "port": 104}]},
        workers={"count": 2},
        models={"enabled": ["hip_arthroplasty"]},
    )
    found = changes(old, new)
    assert sorted(found.live) == ["log.level", "models.enabled", "receive.allowed_calling_aets", "send.destinations"]
    assert sorted(found.restart) == ["receive.port", "workers.count"]
    assert found.models
    assert changes(old, load_settings(None)) == changes(new, new)  # nothing changed: both empty
    running = merged(old, new, found.live)
    assert running.log.level == "DEBUG" and running.receive.allowed_calling_aets == ["M1"]
    assert running.receive.port == old.receive.port and running.workers.count == 1  # kept until a restart
    assert changes(running, new).restart == ["receive.port", "workers.count"]  # named again at the next reload
