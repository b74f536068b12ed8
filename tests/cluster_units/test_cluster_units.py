"""Pure helpers of the SSH layer: quoting per shell, SFTP paths, version and cause parsing."""

from __future__ import annotations

import shlex

import pytest

from papycluster.cluster import deploy, shell
from papycluster.cluster.hosts import HostConfig
from papycluster.cluster.remote import parse_result, render
from papycluster.cluster.shell import quote_command, sftp_path
from papycluster.cluster.ssh import RunResult


def test_sh_quoting_round_trips_and_expands_home():
    argv = ["/opt/my python/bin/python3", "-", "it's"]
    assert shlex.split(quote_command(argv, "sh")) == argv
    assert quote_command(["~/py/bin/python3", "-"], "sh") == '"$HOME"/py/bin/python3 -'


def test_powershell_and_cmd_quoting():
    assert quote_command([r"C:\Program Files\Python312\python.exe", "-"], "powershell") == \
        r"& 'C:\Program Files\Python312\python.exe' '-'"
    assert quote_command(["C:\\it's\\python.exe"], "powershell") == "& 'C:\\it''s\\python.exe'"
    assert quote_command([r"C:\Program Files\Python312\python.exe", "-"], "cmd") == \
        r'"C:\Program Files\Python312\python.exe" -'
    assert quote_command(["python", "-"], "cmd") == "python -"


def test_sftp_paths():
    assert sftp_path(r"C:\Users\lab\.cache\x.zip", "windows") == "/C:/Users/lab/.cache/x.zip"
    assert sftp_path("/home/lab/x.zip", "linux") == "/home/lab/x.zip"


@pytest.mark.parametrize("text, version", [
    ("Python 3.6.15", (3, 6, 15)), ("Python 2.7.18\n", (2, 7, 18)), ("Python 3.12", (3, 12)),
    ("bash: python: command not found", None)])
def test_version_parsing(text, version):
    assert deploy.parse_version(text) == version


@pytest.mark.parametrize("code, err, missing", [
    (127, "sh: 1: python3: not found", True),
    (9009, "'python' is not recognized as an internal or external command", True),
    (1, "python : The term 'python' is not recognized as the name of a cmdlet", True),
    (1, "SyntaxError: invalid syntax", False)])
def test_no_python_detection(code, err, missing):
    assert deploy.no_python(HostConfig("h", "a"), RunResult(code, "", err)) is missing


def test_render_inlines_config_safely():
    config = {"check": {"bundle": "C:\\x\\'\"", "agent_port": 1}}
    text = render("launch", config)
    namespace: dict = {}
    exec(text.split("\n\ndef main")[0], namespace)  # the preludes and CONFIG only
    assert namespace["CONFIG"] == config
    assert parse_result('noise\nPAPYCLUSTER-RESULT {"ok": true}\n') == {"ok": True}
    assert parse_result("Traceback ...") is None


def test_shell_choice():
    assert shell.login_shell(HostConfig("h", "a"), "linux") == "sh"
    assert shell.login_shell(HostConfig("h", "a"), "windows") == "cmd"
    assert shell.login_shell(HostConfig("h", "a", shell="powershell"), "windows") == "powershell"
    assert shell.via_file("powershell") and not shell.via_file("cmd")


@pytest.mark.parametrize("path, spelled", [
    ("~/.cache/papycluster/0.1.0-ab.zip", ".cache/papycluster/0.1.0-ab.zip"),
    ("~\\cache\\x.zip", "cache/x.zip"),
    ("/srv/cache/x.zip", "/srv/cache/x.zip"),
    (r"C:\cache\x.zip", "/C:/cache/x.zip"),
    ("~lab/cache/x.zip", None),  # another user's home: only Python expands it
    ("%LOCALAPPDATA%\\x.zip", None),
    ("$HOME/x.zip", None)])
def test_sftp_spelling_of_the_bundle_path(path, spelled):
    """Where SFTP looks for the cached bundle; None leaves it to the launch script."""
    assert shell.sftp_spelling(path) == spelled
