"""chat.internals: the versions Slipstream's patches and private imports were written for,
checked at start-up (a system check, and chatsite.server before it patches anything).

The environment is faked by replacing ``importlib.metadata.version``: what an upgraded (or
removed) package looks like to the guard, without installing one."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from chat import internals
from tests.support.daphne_server import REPO

real_version = importlib.metadata.version


def versions(**fake: str | None) -> Callable[[str], str]:
    """``importlib.metadata.version`` with ``fake``'s packages (``_`` for ``-``) at other
    versions; None: not installed."""
    fake = {name.replace("_", "-"): value for name, value in fake.items()}

    def version(package: str) -> str:
        if package not in fake:
            return real_version(package)
        found = fake[package]
        if found is None:
            raise importlib.metadata.PackageNotFoundError(package)
        return found

    return version


def guard_errors() -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks() if m.id == internals.CHECK_ID]


def test_every_package_is_at_the_version_its_patches_were_written_for() -> None:
    assert internals.changed() == []
    assert guard_errors() == []
    internals.verify()  # returns


def test_another_version_fails_the_system_check_naming_the_package_and_its_patches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", versions(Twisted="27.1.0"))
    [error] = guard_errors()
    assert error.level == checks.ERROR
    assert error.msg.startswith("Twisted 27.1.0 is installed")
    assert "written for Twisted 26.10.0" in error.msg
    for patch in ("write_at_once", "plain_twisted_http", "no_twisted_access_log", "Drain"):
        assert f"chatsite.server.{patch} (" in error.msg
    assert "chatsite.server.no_form_parsing" not in error.msg  # daphne's, not Twisted's
    # manage.py check (and runserver, migrate: the release step) stops on it.
    with pytest.raises(SystemCheckError, match=r"Twisted 27\.1\.0"):
        call_command("check")


def test_an_older_version_and_a_missing_package_fail_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", versions(Django="5.2.18", httpcore=None))
    errors = guard_errors()
    assert [e.msg.split(",")[0] for e in errors] == [
        "Django 5.2.18 is installed",
        "httpcore is not installed",
    ]
    assert "chat.middleware.OnLoop" in errors[0].msg
    assert "chat.relay.transport (imports httpcore._backends.base" in errors[1].msg


def test_every_pinned_package_has_its_leans_and_every_lean_names_code_that_exists() -> None:
    assert {lean.package for lean in internals.LEANS} == set(internals.PINNED)
    for lean in internals.LEANS:
        module_name, _, name = lean.where.rpartition(".")
        try:
            module = importlib.import_module(lean.where)
        except ImportError:
            module = importlib.import_module(module_name)
            assert hasattr(module, name), lean.where


def test_daphne_does_not_start_when_a_package_it_patches_changed() -> None:
    # --help would make daphne print its usage and exit 0: the guard must stop it first.
    code = (
        "import importlib.metadata as m; real = m.version\n"
        "m.version = lambda p: '4.3.0' if p == 'daphne' else real(p)\n"
        "from chatsite import server; server.main(['--help'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(f"{internals.CHECK_ID}: daphne 4.3.0 is installed")
    assert "chatsite.server.no_form_parsing" in result.stderr
    assert "Traceback" not in result.stderr
    assert "usage:" not in result.stdout
