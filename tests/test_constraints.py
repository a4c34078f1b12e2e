"""The constraints files agree with pyproject.toml: `make lock` was run after the last dependency change."""

import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(path) -> dict[str, list[tuple[str, Requirement]]]:
    """name -> [(version, requirement)] of every `name==version ; marker` line of a constraints file."""
    found: dict[str, list] = {}
    for line in (ROOT / path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "-")):
            req = Requirement(line)
            (version,) = [s.version for s in req.specifier if s.operator == "=="]
            found.setdefault(canonicalize_name(req.name), []).append((version, req))
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    extra_reqs = [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return [Requirement(r) for r in PROJECT["dependencies"] + extra_reqs]


@pytest.mark.parametrize("path, extras, environment", [
    ("constraints/cpu.txt", ("dev",), {}),  # this machine's
    ("constraints/vllm.txt", ("dev", "vllm"), {"sys_platform": "linux", "platform_machine": "x86_64",
                                               "platform_system": "Linux"}),
])
def test_every_dependency_is_pinned_inside_its_range(path, extras, environment):
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7", **environment}
    locked = pins(path)
    for req in requirements(extras):
        versions = [v for v, r in locked.get(canonicalize_name(req.name), []) if r.marker is None or r.marker.evaluate(env)]
        assert versions, f"{req.name} is not in {path}: run `make lock`"
        assert all(req.specifier.contains(v, prereleases=True) for v in versions), \
            f"{path} pins {req.name}=={versions} outside pyproject.toml's {req}: run `make lock`"


def test_torch_is_pinned_in_one_place():
    (torch,) = [line for line in (ROOT / "constraints/torch.txt").read_text().splitlines() if line.startswith("torch")]
    version = torch.split("==")[1]
    for path in ("constraints/cpu.txt", "constraints/vllm.txt"):
        assert [v for v, _ in pins(path)["torch"]] == [version]
    mentions = [path.name for path in (ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "environment.yml")
                if f"torch=={version}" in path.read_text()]
    assert not mentions, f"torch=={version} is also named in {mentions}"
