"""Pure logic of the ``packages`` key: the hosts file, the wheel tags for a host, pip's
arguments, and which modules travel by value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

import papycluster
from papycluster.cluster import packages
from papycluster.cluster.errors import HostsFileError
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.remote import parse_result, render
from papycluster.engine import shipping

DEBIAN = {"version": [3, 11, 2], "implementation": "cpython", "os": "linux",
          "machine": "x86_64", "libc": ["glibc", "2.36"], "mac": "", "abiflags": "",
          "platform": "linux-x86_64"}


def test_cluster_and_host_packages_add_up_and_bad_ones_are_named():
    config = parse_hosts('[cluster]\npackages = ["numpy==2.*"]\n[defaults]\nworkers = 1\n'
                         '[[host]]\nname = "a"\naddress = "x"\npackages = ["six"]\n'
                         '[[host]]\nname = "b"\naddress = "y"\n', "h.toml")
    assert [h.packages for h in config.hosts] == [["numpy==2.*", "six"], ["numpy==2.*"]]
    with pytest.raises(HostsFileError, match=r"line 4.*'packages'.*must be a list"):
        parse_hosts('[[host]]\nname = "a"\naddress = "x"\npackages = "numpy"\n', "h.toml")
    with pytest.raises(HostsFileError, match="requirement string, not 3"):
        parse_hosts('[[host]]\nname = "a"\naddress = "x"\npackages = [3]\n', "h.toml")


def test_platform_tags_of_a_glibc_host_and_pip_arguments():
    tags = packages.platforms(DEBIAN)
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_16_x86_64" not in tags
    args = packages.pip_arguments(["numpy==2.*"], DEBIAN, "/tmp/d")
    assert args[-2:] == ["--", "numpy==2.*"]
    for pair in (["--python-version", "3.11"], ["--abi", "cp311"], ["--abi", "abi3"],
                 ["--implementation", "cp"], ["--platform", "manylinux_2_28_x86_64"]):
        assert any(args[i:i + 2] == pair for i in range(len(args))), pair
    assert "--only-binary=:all:" in args
    assert packages.platforms({**DEBIAN, "os": "windows", "machine": "amd64"}) == [
        "win_amd64"]
    mac = packages.platforms({**DEBIAN, "os": "darwin", "machine": "arm64", "mac": "14.2"})
    assert mac[0] == "macosx_14_2_arm64" and "macosx_11_0_arm64" in mac
    assert "Python 3.11 (cpython) on linux x86_64, glibc 2.36" == packages.describe(DEBIAN)


def test_the_platform_script_reports_this_python():
    done = subprocess.run([sys.executable, "-"], input=render("platform_tags", {}),
                          capture_output=True, text=True, timeout=30)
    found = parse_result(done.stdout)
    assert found["version"][:2] == list(sys.version_info[:2])
    assert found["os"] == sys.platform.replace("win32", "windows")
    assert json.dumps(found)


def test_which_modules_travel_by_value(tmp_path):
    assert shipping.is_installed(json.__file__)  # the standard library
    assert shipping.is_installed(pytest.__file__)  # site-packages
    assert shipping.is_installed(papycluster.__file__)
    assert shipping.is_installed(os.path.join(sysconfig.get_paths()["purelib"], "x.py"))
    assert shipping.is_installed("/usr/lib/python3/dist-packages/yaml/__init__.py")
    assert not shipping.is_installed(str(tmp_path / "mymodule.py"))
