"""Service images, checked without Docker: what the Dockerfiles copy exists, the entrypoint module
exists, the image runs as a non-root user, the runtime stage has no build tools and suits a
read-only root file system."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from parley_deploy import dockerfiles

ROOT = dockerfiles.ROOT
DOCKERFILES = dockerfiles.service_dockerfiles()
CHART_RUN_AS_USER = 10001


def landed(service: str) -> bool:
    """The service's own code is on this branch (not only its Dockerfile)."""
    return (ROOT / "services" / service / "pyproject.toml").exists()


def service_ids() -> list[str]:
    return sorted(DOCKERFILES)


@pytest.fixture(params=service_ids())
def service(request: pytest.FixtureRequest) -> str:
    return request.param


def parsed(service: str) -> list[dockerfiles.Stage]:
    return dockerfiles.stages(DOCKERFILES[service].read_text())


def test_every_service_directory_has_a_dockerfile() -> None:
    services = {p.name for p in (ROOT / "services").iterdir() if p.is_dir()} if (ROOT / "services").exists() else set()
    assert services, "no services/ directories"
    assert services == set(DOCKERFILES), f"services without a Dockerfile: {sorted(services - set(DOCKERFILES))}"


def test_dockerfile_is_the_rendered_template(service: str) -> None:
    assert DOCKERFILES[service].read_text() == dockerfiles.render(service), (
        f"services/{service}/Dockerfile differs from docker/service.Dockerfile.template; change the template "
        f"(or SERVICE_OVERRIDES) and run `python -m parley_deploy.dockerfiles render {service} --force`"
    )


def test_dockerfile_is_multi_stage_and_installs_from_the_lock_file(service: str) -> None:
    stages = parsed(service)
    assert len(stages) >= 2, "builder and runtime stages"
    builder = stages[0]
    runs = " ".join(i.args for i in builder.all("RUN"))
    package = f"parley-{service}"
    assert re.search(rf"uv sync --frozen --no-dev --no-editable --package {package}\b", runs), runs
    copied = {src for c in dockerfiles.copies(builder) for src in c.sources}
    assert "uv.lock" in copied and "pyproject.toml" in copied


def test_dockerfile_copy_sources_exist(service: str) -> None:
    own = f"services/{service}/"
    missing = []
    for stage in parsed(service):
        for copy in dockerfiles.copies(stage):
            if copy.from_stage is not None:
                continue
            for source in copy.sources:
                if source.startswith(own) and not landed(service):
                    continue  # checked by test_dockerfile_copies_its_own_service once the service lands
                if not glob.glob(str(ROOT / source)):
                    missing.append(f"line {copy.line}: {source}")
    assert not missing, f"COPY sources missing from the repository: {missing}"


def test_dockerfile_copies_its_own_service(service: str) -> None:
    if not landed(service):
        pytest.skip(f"services/{service} has only its Dockerfile on this branch")
    own = [s for st in parsed(service) for c in dockerfiles.copies(st) if c.from_stage is None for s in c.sources]
    assert f"services/{service}/pyproject.toml" in own and f"services/{service}/" in own
    for source in own:
        assert glob.glob(str(ROOT / source)), source


def test_dockerfile_copies_every_workspace_library_the_service_needs(service: str) -> None:
    if not landed(service):
        pytest.skip(f"services/{service} has only its Dockerfile on this branch")
    members = {}
    for pyproject in (ROOT / "libs").glob("*/pyproject.toml"):
        members[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    needed: set[str] = set()
    todo = [ROOT / "services" / service / "pyproject.toml"]
    while todo:
        project = tomllib.loads(todo.pop().read_text())["project"]
        for dep in project.get("dependencies", []):
            name = re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]
            if name in members and name not in needed:
                needed.add(name)
                todo.append(members[name] / "pyproject.toml")
    copied = {s.rstrip("/") for st in parsed(service) for c in dockerfiles.copies(st) for s in c.sources}
    for name in needed:
        rel = members[name].relative_to(ROOT).as_posix()
        assert rel in copied, f"{service} depends on {name}: the Dockerfile must COPY {rel}/"


def test_entrypoint_module_exists(service: str) -> None:
    runtime = parsed(service)[-1]
    module = dockerfiles.entrypoint_module(runtime)
    assert module == "parley_" + service.replace("-", "_")
    if not dockerfiles.runnable(service):
        pytest.skip(f"services/{service} does not register a parley.services entry point yet")
    assert (ROOT / "services" / service / "src" / module / "__main__.py").exists()


def test_image_runs_as_the_charts_non_root_user(service: str) -> None:
    user = dockerfiles.final_user(parsed(service)[-1])
    assert user is not None, "the runtime stage sets no USER (it would run as root)"
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    assert int(uid) == CHART_RUN_AS_USER, "the chart's securityContext runs as this uid"


def test_runtime_stage_has_no_build_tools(service: str) -> None:
    runtime = parsed(service)[-1]
    runs = " ".join(i.args for i in runtime.all("RUN"))
    assert not re.search(r"\b(uv|pip install|apt-get install|apk add|gcc|make)\b", runs), runs
    assert "pip uninstall" in runs, "pip, setuptools and wheel are removed from the runtime image"
    for copy in dockerfiles.copies(runtime):
        assert copy.from_stage == "builder", f"line {copy.line}: the runtime stage copies only the built venv"


def test_image_suits_a_read_only_root_file_system(service: str) -> None:
    builder, runtime = parsed(service)[0], parsed(service)[-1]
    builder_env = " ".join(i.args for i in builder.all("ENV"))
    runtime_env = " ".join(i.args for i in runtime.all("ENV"))
    assert "UV_COMPILE_BYTECODE=1" in builder_env, "bytecode compiled at build time"
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime_env
    assert "HOME=/tmp" in runtime_env and "TMPDIR=/tmp" in runtime_env


def test_make_images_builds_every_service_image() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "images", "IMAGE_TAG=test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for service in DOCKERFILES:
        assert re.search(rf"docker build .*-f services/{service}/Dockerfile .*-t \S+/{service}:test \.", out), out


def test_dockerignore_keeps_local_environments_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".tools", ".git"} <= ignored


def test_rendering_a_dockerfile_names_the_service_three_ways() -> None:
    text = dockerfiles.render("channel-gateway")
    assert "--package parley-channel-gateway" in text
    assert '"-m", "parley_channel_gateway"' in text
    assert "COPY services/channel-gateway/ services/channel-gateway/" in text
    assert "EXPOSE 8080 50051 9100" in text
    assert Path(dockerfiles.TEMPLATE).exists()
