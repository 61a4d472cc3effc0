"""The Dockerfiles under images/ follow the house rules, agree with each other and with the code.

No Docker engine runs here, so the images are checked as text by `dockerlint` (parsed the way
BuildKit reads a Dockerfile). Every rule is also fed a broken Dockerfile, to show it catches what
it claims to catch. The build context is checked too: the allowlist beside each Dockerfile sends
what its COPY instructions need, and the wheel builds from exactly what the builder stage copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from kubemaas.cli import SUBCOMMANDS
from kubemaas_operator.builders import GRPC_PORT, METRICS_PORT, SERVER_UID
from tests.unit.images import dockerlint
from tests.unit.images.dockerlint import Dockerfile, ImageSpec, Problem, lint, parse

ROOT = Path(__file__).resolve().parents[3]
IMAGES_DIR = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SERVER = ImageSpec("serve", frozenset({8001, 8002}))
TRAINER = ImageSpec("train", frozenset({29500}))
IMAGES: dict[str, ImageSpec] = {
    "operator/Dockerfile": ImageSpec("operator"),
    "server/Dockerfile.cpu": SERVER,
    "server/Dockerfile.cuda": ImageSpec(SERVER.subcommand, SERVER.ports, cuda=True),
    "trainer/Dockerfile.cpu": TRAINER,
    "trainer/Dockerfile.cuda": ImageSpec(TRAINER.subcommand, TRAINER.ports, cuda=True),
}


def read(name: str) -> str:
    return (IMAGES_DIR / name).read_text()


def load(name: str) -> Dockerfile:
    return parse(read(name))


def image_of(name: str) -> str:
    """`server/Dockerfile.cuda` -> `server`."""
    return name.split("/", 1)[0]


each_image = pytest.mark.parametrize("name", sorted(IMAGES))


def test_every_dockerfile_under_images_is_one_of_the_known_images() -> None:
    found = {
        str(path.relative_to(IMAGES_DIR))
        for path in IMAGES_DIR.rglob("Dockerfile*")
        if not path.name.endswith(".dockerignore")
    }
    assert found == set(IMAGES)


# ---------------------------------------------------------------------------------------------------
# Each image, rule by rule


@each_image
def test_the_image_breaks_no_rule(name: str) -> None:
    assert [str(p) for p in lint(read(name), IMAGES[name])] == []


@each_image
def test_every_base_image_is_pinned_to_an_exact_version(name: str) -> None:
    df = load(name)
    assert dockerlint.check_pinned_bases(df, IMAGES[name]) == []
    assert all(
        re.search(r":\d+\.\d+\.\d+", stage.base) or df.stage_named(stage.base, stage.index)
        for stage in df.stages
    )


@each_image
def test_the_image_is_built_in_one_stage_and_shipped_from_another(name: str) -> None:
    df = load(name)
    assert dockerlint.check_multi_stage(df, IMAGES[name]) == []
    copied_from = {copy.flags.get("from") for copy in df.final.all("COPY")}
    assert "builder" in copied_from and df.stage_named("builder", df.final.index) is not None
    # Nothing is built or downloaded where the image ships: no pip in the final stage.
    assert not [call for run in df.final.all("RUN") for call in dockerlint.pip_calls(run.args)]


@each_image
def test_the_image_runs_as_the_uid_the_operator_runs_pods_as_with_a_passwd_entry(name: str) -> None:
    df = load(name)
    assert dockerlint.check_non_root(df, IMAGES[name]) == []
    user = dockerlint.effective(df, df.final, "USER")
    assert user is not None and user.args == f"{SERVER_UID}:{SERVER_UID}"
    # A passwd entry for that uid, so getpass.getuser() (torch's caches use it) has an answer.
    scripts = " ".join(run.args for run in df.final.all("RUN"))
    assert f"useradd --system --uid {SERVER_UID} --gid {SERVER_UID}" in scripts
    assert f"groupadd --system --gid {SERVER_UID}" in scripts


@each_image
def test_the_entrypoint_is_kubemaas_in_exec_form(name: str) -> None:
    assert dockerlint.check_entrypoint(load(name), IMAGES[name]) == []


@each_image
def test_cmd_runs_the_subcommand_the_image_is_for(name: str) -> None:
    df = load(name)
    assert dockerlint.check_cmd(df, IMAGES[name]) == []
    assert IMAGES[name].subcommand in SUBCOMMANDS


def test_the_server_cmd_serves_models_on_all_interfaces_as_the_server_cli_reads_it() -> None:
    from kubemaas_server.cli import build_parser

    for name in ("server/Dockerfile.cpu", "server/Dockerfile.cuda"):
        cmd = dockerlint.effective_cmd(load(name), load(name).final)
        assert cmd is not None
        words = cmd.exec_form()
        assert words == ["serve", "--model-repository", "/models", "--host", "0.0.0.0"]
        args = build_parser().parse_args(words[1:])
        assert (str(args.model_repository), args.host) == ("/models", "0.0.0.0")
        assert (args.grpc_port, args.metrics_port) == (GRPC_PORT, METRICS_PORT)


def test_the_operator_cmd_parses_with_the_operator_cli() -> None:
    from kubemaas_operator.cli import parser

    cmd = dockerlint.effective_cmd(load("operator/Dockerfile"), load("operator/Dockerfile").final)
    assert cmd is not None and cmd.exec_form() == ["operator"]
    parser().parse_args([])


@pytest.mark.parametrize("name", ["trainer/Dockerfile.cpu", "trainer/Dockerfile.cuda"])
def test_the_trainer_cmd_prints_the_launcher_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kubemaas_trainer.launcher import build_parser

    cmd = dockerlint.effective_cmd(load(name), load(name).final)
    assert cmd is not None
    words = cmd.exec_form()
    assert words == ["train", "--help"]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(words[1:])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kubemaas train")


@pytest.mark.parametrize("name", ["server/Dockerfile.cpu", "server/Dockerfile.cuda"])
def test_the_server_exposes_the_grpc_and_metrics_ports_the_operator_probes(name: str) -> None:
    df = load(name)
    assert dockerlint.check_expose(df, IMAGES[name]) == []
    assert dockerlint.exposed_ports(df, df.final) == {8001, 8002} == {GRPC_PORT, METRICS_PORT}


@each_image
def test_nothing_is_added_from_a_remote_url(name: str) -> None:
    assert dockerlint.check_remote_add(load(name), IMAGES[name]) == []


@each_image
def test_pip_leaves_no_cache_in_any_layer(name: str) -> None:
    df = load(name)
    assert dockerlint.check_pip_cache(df, IMAGES[name]) == []
    assert list(dockerlint.pip_calls_in(df)), "the image installs nothing with pip?"


@each_image
def test_every_package_pip_installs_by_name_is_pinned_torch_included(name: str) -> None:
    df = load(name)
    assert dockerlint.check_pip_pins(df, IMAGES[name]) == []
    pins = {
        named
        for _, call in dockerlint.pip_calls_in(df)
        for named in map(dockerlint.requirement_name, call.requirements())
        if named is not None
    }
    assert ("pip", "==26.3") in pins
    if image_of(name) != "operator":
        assert ("torch", "==2.15.0") in pins


def test_the_operator_image_never_installs_torch() -> None:
    df = load("operator/Dockerfile")
    assert dockerlint.torch_installs(df) == []
    words = [word for _, call in dockerlint.pip_calls_in(df) for word in call.words]
    assert not [word for word in words if "[torch]" in word]


@each_image
def test_cuda_variants_ship_on_nvidia_cuda_and_cpu_variants_do_not(name: str) -> None:
    df = load(name)
    assert dockerlint.check_cuda_base(df, IMAGES[name]) == []
    assert df.root_image(df.final).startswith("nvidia/cuda:") == IMAGES[name].cuda


@each_image
def test_torch_comes_from_the_index_that_matches_the_variant(name: str) -> None:
    df = load(name)
    assert dockerlint.check_torch_index(df, IMAGES[name]) == []
    urls = {
        call.options().get("--index-url")
        for _, call in dockerlint.torch_installs(df)
        if call.options().get("--index-url")
    }
    if image_of(name) != "operator":
        assert urls == (set() if IMAGES[name].cuda else {dockerlint.PYTORCH_CPU_INDEX})


@each_image
def test_the_runtime_environment_suits_a_read_only_root_filesystem(name: str) -> None:
    df = load(name)
    assert dockerlint.check_env(df, IMAGES[name]) == []
    env, _ = dockerlint.final_env(df)
    assert env["HOME"] == "/tmp"
    assert env["PATH"].startswith("/opt/venv/bin:")
    if image_of(name) != "operator":
        assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/tmp/")


@each_image
def test_the_final_stage_sets_a_workdir(name: str) -> None:
    df = load(name)
    assert dockerlint.check_workdir(df, IMAGES[name]) == []
    workdir = dockerlint.effective(df, df.final, "WORKDIR")
    assert workdir is not None and workdir.args == "/app"


@each_image
def test_oci_labels_name_the_image_the_project_version_and_the_source(name: str) -> None:
    df = load(name)
    assert dockerlint.check_labels(df, IMAGES[name]) == []
    labels = dockerlint.final_labels(df)
    assert labels["org.opencontainers.image.title"] == f"kubemaas-{image_of(name)}"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.source"] == "https://github.com/kubemaas/kubemaas"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.base.name"].endswith("/" + df.root_image(df.final))


# ---------------------------------------------------------------------------------------------------
# The images agree with each other


def python_versions(text: str) -> set[str]:
    """Every Python version a Dockerfile names: python image tags and `uv python install|find`."""
    df = parse(text)
    versions: set[str] = set()
    for stage in df.stages:
        repository, tag, _ = dockerlint.split_image(stage.base)
        if repository in ("python", "docker.io/library/python") and tag:
            versions.add(tag.split("-", 1)[0])
        for run in stage.all("RUN"):
            versions.update(re.findall(r"\buv python (?:install|find) (\d[\w.]*)", run.args))
    return versions


def test_one_python_version_in_every_image_and_pyproject_accepts_it() -> None:
    per_image = {name: python_versions(read(name)) for name in IMAGES}
    (version,) = set().union(*per_image.values())
    assert per_image == {name: {version} for name in IMAGES}
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_the_cuda_images_install_their_python_because_their_base_has_none() -> None:
    for name in ("server/Dockerfile.cuda", "trainer/Dockerfile.cuda"):
        df = load(name)
        copied = {dockerlint.copy_sources(copy)[1] for copy in df.final.all("COPY")}
        assert {"/opt/python", "/opt/venv"} <= copied
        assert any("uv python install" in run.args for run in df.stages[df.final.index - 1].all("RUN"))


def test_one_pip_one_torch_and_one_cuda_base_across_images() -> None:
    pins: dict[str, set[str]] = {}
    for name in IMAGES:
        for _, call in dockerlint.pip_calls_in(load(name)):
            for named in map(dockerlint.requirement_name, call.requirements()):
                if named is not None:
                    pins.setdefault(named[0], set()).add(named[1])
    assert {package: len(versions) for package, versions in pins.items()} == dict.fromkeys(pins, 1)
    (torch_extra,) = PYPROJECT["project"]["optional-dependencies"]["torch"]
    assert Version(pins["torch"].pop().lstrip("=")) in SpecifierSet(torch_extra.removeprefix("torch"))
    cuda_bases = {load(name).root_image(load(name).final) for name, spec in IMAGES.items() if spec.cuda}
    assert len(cuda_bases) == 1


def test_the_trainer_images_carry_the_examples_under_app() -> None:
    for name in ("trainer/Dockerfile.cpu", "trainer/Dockerfile.cuda"):
        copies = [
            dockerlint.copy_sources(copy) for copy in load(name).final.all("COPY") if "from" not in copy.flags
        ]
        assert copies == [(["examples/"], "/app/examples/")]
    assert (ROOT / "examples" / "train_regressor.py").is_file()  # /app/examples/train_regressor.py


# ---------------------------------------------------------------------------------------------------
# The build context


def context_files(patterns: list[dockerlint.IgnorePattern]) -> list[str]:
    """The tracked files a `docker build ... .` from the repository root sends."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True)
    return [path for path in listed.stdout.splitlines() if not dockerlint.is_ignored(path, patterns)]


def copied_files(source: str, files: list[str]) -> list[str]:
    folder = source.strip("/").removeprefix("./")
    return [path for path in files if path == folder or path.startswith(folder + "/")]


@each_image
def test_the_ignore_file_beside_the_dockerfile_sends_what_every_copy_needs_and_no_more(name: str) -> None:
    ignore = IMAGES_DIR / f"{name}.dockerignore"
    assert ignore.read_text() == (IMAGES_DIR / "server/Dockerfile.cpu.dockerignore").read_text()
    files = context_files(dockerlint.ignore_patterns(ignore.read_text()))
    df = load(name)
    for stage in df.stages:
        for copy in stage.all("COPY"):
            if "from" not in copy.flags:
                sources, _ = dockerlint.copy_sources(copy)
                for source in sources:
                    assert copied_files(source, files), f"line {copy.line}: COPY {source} gets nothing"
    assert {path.split("/", 1)[0] for path in files} == {
        "pyproject.toml",
        "README.md",
        "kubemaas",
        "server",
        "operator",
        "trainer",
        "cluster",
        "examples",
    }


def materialize_builder_sources(df: Dockerfile, files: list[str], into: Path) -> Path:
    """Lay out what the stage that runs `pip wheel` copies in, as its COPY instructions would."""
    (stage,) = [s for s in df.stages if any("pip wheel" in run.args for run in s.all("RUN"))]
    workdir = dockerlint.effective(df, stage, "WORKDIR")
    assert workdir is not None
    for copy in stage.all("COPY"):
        sources, dest = dockerlint.copy_sources(copy)
        target = into / (dest if dest.startswith("/") else f"{workdir.args}/{dest}").lstrip("/")
        for source in sources:
            for path in copied_files(source, files):
                relative = (
                    Path(path).name if path == source.strip("/") else path[len(source.strip("/")) + 1 :]
                )
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / path, target / relative)
    return into / workdir.args.lstrip("/")


@pytest.fixture(scope="module")
def wheels_by_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[frozenset[str], Path]:
    return {}


@each_image
def test_the_wheel_builds_from_exactly_what_the_builder_stage_copies(
    name: str, tmp_path: Path, wheels_by_layout: dict[frozenset[str], Path]
) -> None:
    ignore = (IMAGES_DIR / f"{name}.dockerignore").read_text()
    source = materialize_builder_sources(
        load(name), context_files(dockerlint.ignore_patterns(ignore)), tmp_path
    )
    layout = frozenset(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    if layout not in wheels_by_layout:  # the images copy the same sources: build each layout once
        out = tmp_path / "dist"
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
            check=True,
            capture_output=True,
        )
        (wheels_by_layout[layout],) = out.glob("kubemaas-*.whl")
    built = wheels_by_layout[layout]
    assert built.name == f"kubemaas-{PYPROJECT['project']['version']}-py3-none-any.whl"
    names = zipfile.ZipFile(built).namelist()
    top_level = {n.split("/", 1)[0] for n in names if "/" in n and not n.startswith("kubemaas-")}
    assert top_level == {
        "kubemaas",
        "kubemaas_server",
        "kubemaas_operator",
        "kubemaas_trainer",
        "kubemaas_cluster",
    }
    assert "kubemaas_cluster/assets/kwok.yaml" in names  # package data travels too


# ---------------------------------------------------------------------------------------------------
# The linter catches what it claims to (each case breaks one rule of an otherwise clean file)

GOOD = """\
# syntax=docker/dockerfile:1
FROM python:3.11.15-slim-bookworm AS builder
RUN python -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.15.0
FROM python:3.11.15-slim-bookworm
LABEL org.opencontainers.image.source="https://example.invalid/src" \\
      org.opencontainers.image.title="t" \\
      org.opencontainers.image.version="0.1.0"
COPY --from=builder /opt/venv /opt/venv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /app
USER 65532:65532
EXPOSE 8001 8002
ENTRYPOINT ["kubemaas"]
CMD ["serve", "--model-repository", "/models"]
"""
CUDA_GOOD = GOOD.replace(
    "FROM python:3.11.15-slim-bookworm\n", "FROM nvidia/cuda:13.2.0-cudnn-runtime-ubuntu22.04\n"
).replace("--index-url https://download.pytorch.org/whl/cpu ", "")
CUDA_SERVER = ImageSpec("serve", frozenset({8001, 8002}), cuda=True)


def mutate(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_clean_examples_break_no_rule() -> None:
    assert lint(GOOD, SERVER) == []
    assert lint(CUDA_GOOD, CUDA_SERVER) == []


BROKEN = [
    # pinned-base
    pytest.param(
        "FROM python:3.11.15-slim-bookworm AS", "FROM python AS", "pinned-base", "no tag", id="untagged"
    ),
    pytest.param("3.11.15-slim-bookworm AS", "latest AS", "pinned-base", "'latest'", id="latest"),
    pytest.param(
        "3.11.15-slim-bookworm AS", "3.11-slim AS", "pinned-base", "not an exact version", id="floating-tag"
    ),
    pytest.param(
        "FROM python:3.11.15-slim-bookworm AS builder",
        "ARG PY\nFROM python:${PY} AS builder",
        "pinned-base",
        "variable",
        id="arg-without-default",
    ),
    pytest.param(
        "COPY --from=builder",
        "COPY --from=ghcr.io/astral-sh/uv:latest /uv /uv\nCOPY --from=builder",
        "pinned-base",
        "'latest'",
        id="copy-from-image",
    ),
    pytest.param(
        "COPY --from=builder",
        "COPY --from=runtime",
        "pinned-base",
        "names no earlier stage",
        id="copy-from-unknown-stage",
    ),
    # non-root
    pytest.param("USER 65532:65532\n", "", "non-root", "runs as root", id="no-user"),
    pytest.param("USER 65532:65532", "USER root", "non-root", "not numeric", id="named-root"),
    pytest.param("USER 65532:65532", "USER kubemaas", "non-root", "not numeric", id="named-user"),
    pytest.param("USER 65532:65532", "USER 0", "non-root", "uid 0 is root", id="uid-0"),
    pytest.param("USER 65532:65532", "USER 65532:0", "non-root", "gid 0 is root", id="gid-0"),
    # entrypoint
    pytest.param(
        'ENTRYPOINT ["kubemaas"]',
        "ENTRYPOINT kubemaas",
        "entrypoint",
        "shell form",
        id="entrypoint-shell-form",
    ),
    pytest.param(
        'ENTRYPOINT ["kubemaas"]',
        'ENTRYPOINT ["python", "-m", "kubemaas"]',
        "entrypoint",
        "is not",
        id="entrypoint-other",
    ),
    pytest.param('ENTRYPOINT ["kubemaas"]\n', "", "entrypoint", "no ENTRYPOINT", id="entrypoint-missing"),
    # cmd
    pytest.param('CMD ["serve",', 'CMD ["operator",', "cmd", "not 'serve'", id="cmd-other-subcommand"),
    pytest.param(
        'CMD ["serve", "--model-repository", "/models"]',
        "CMD serve --model-repository /models",
        "cmd",
        "shell form",
        id="cmd-shell-form",
    ),
    pytest.param('CMD ["serve", "--model-repository", "/models"]\n', "", "cmd", "no CMD", id="cmd-missing"),
    # expose
    pytest.param("EXPOSE 8001 8002", "EXPOSE 8001", "expose", "[8002]", id="metrics-port-missing"),
    pytest.param("EXPOSE 8001 8002", "EXPOSE 8001 8002/udp", "expose", "[8002]", id="udp-is-not-grpc"),
    # remote-add
    pytest.param(
        "WORKDIR /app",
        "ADD https://example.invalid/tool.tgz /opt/\nWORKDIR /app",
        "remote-add",
        "remote source",
        id="add-url",
    ),
    pytest.param(
        "WORKDIR /app",
        "ADD git@github.com:kubemaas/kubemaas.git /src\nWORKDIR /app",
        "remote-add",
        "remote source",
        id="add-git",
    ),
    # pip-cache
    pytest.param(
        "/opt/venv/bin/pip install --no-cache-dir",
        "/opt/venv/bin/pip install",
        "pip-cache",
        "--no-cache-dir",
        id="pip-cache",
    ),
    pytest.param(
        "RUN python -m venv /opt/venv",
        "RUN python -m pip install --no-cache-dir pip==26.3 && python3 -m pip install uv==0.13.9\nRUN python -m venv /opt/venv",
        "pip-cache",
        "--no-cache-dir",
        id="python-m-pip-after-and",
    ),
    pytest.param(
        "RUN python -m venv /opt/venv",
        "RUN pip wheel -w /dist .\nRUN python -m venv /opt/venv",
        "pip-cache",
        "pip wheel",
        id="pip-wheel",
    ),
    pytest.param(
        "RUN python -m venv /opt/venv",
        "RUN <<EOF\nset -e\npip3 install build==1.6.1\nEOF\nRUN python -m venv /opt/venv",
        "pip-cache",
        "--no-cache-dir",
        id="pip-in-heredoc",
    ),
    # pip-pins
    pytest.param("torch==2.15.0", "torch", "pip-pins", "torch is not pinned", id="torch-unpinned"),
    pytest.param("torch==2.15.0", "torch>=2.6", "pip-pins", "torch is not pinned", id="torch-floor"),
    pytest.param("torch==2.15.0", "torch==2.15.*", "pip-pins", "torch is not pinned", id="torch-wildcard"),
    pytest.param(
        "torch==2.15.0", "torch==2.15.0 --upgrade pip", "pip-pins", "pip is not pinned", id="pip-upgrade"
    ),
    # cuda-base (as a CPU image)
    pytest.param(
        "FROM python:3.11.15-slim-bookworm\n",
        "FROM nvidia/cuda:13.2.0-cudnn-runtime-ubuntu22.04\n",
        "cuda-base",
        "CPU variant",
        id="cpu-on-cuda-base",
    ),
    # torch-index (as a CPU image)
    pytest.param(
        "--index-url https://download.pytorch.org/whl/cpu ",
        "",
        "torch-index",
        "from PyPI",
        id="cpu-torch-from-pypi",
    ),
    pytest.param(
        "--index-url https://download.pytorch.org/whl/cpu ",
        "--extra-index-url https://download.pytorch.org/whl/cpu ",
        "torch-index",
        "from PyPI",
        id="cpu-index-as-extra",
    ),
    pytest.param(
        "torch==2.15.0\n",
        "torch==2.15.0\nRUN /opt/venv/bin/pip install --no-cache-dir torch==2.14.0\n",
        "torch-index",
        "from PyPI",
        id="later-install-other-version",
    ),
    pytest.param(
        "torch==2.15.0\n",
        "torch==2.15.0\nRUN /opt/venv/bin/pip install -U --no-cache-dir torch==2.15.0\n",
        "torch-index",
        "from PyPI",
        id="later-upgrade",
    ),
    # env
    pytest.param(" PYTHONUNBUFFERED=1", "", "env", "PYTHONUNBUFFERED=1", id="unbuffered-missing"),
    pytest.param(
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONDONTWRITEBYTECODE=0",
        "env",
        "PYTHONDONTWRITEBYTECODE=1",
        id="bytecode-written",
    ),
    pytest.param(" HOME=/tmp", "", "env", "HOME is not set", id="home-missing"),
    pytest.param("HOME=/tmp", "HOME=/home/app", "env", "outside /tmp", id="home-outside-tmp"),
    pytest.param(
        "HOME=/tmp", "HOME=/tmp XDG_CACHE_HOME=/var/cache", "env", "XDG_CACHE_HOME", id="cache-outside-tmp"
    ),
    pytest.param(
        "HOME=/tmp",
        "HOME=/tmp TORCHINDUCTOR_CACHE_DIR=/tmpfoo",
        "env",
        "TORCHINDUCTOR_CACHE_DIR",
        id="tmp-prefix-is-not-tmp",
    ),
    # workdir
    pytest.param("WORKDIR /app\n", "", "workdir", "no WORKDIR", id="workdir-missing"),
    # labels
    pytest.param(
        ' \\\n      org.opencontainers.image.version="0.1.0"',
        "",
        "labels",
        "org.opencontainers.image.version",
        id="version-label-missing",
    ),
]


@pytest.mark.parametrize(("old", "new", "rule", "message"), BROKEN)
def test_the_linter_reports_a_broken_rule(old: str, new: str, rule: str, message: str) -> None:
    problems = lint(mutate(old, new), SERVER)
    assert problems, "nothing reported"
    assert {p.rule for p in problems} == {rule}, problems
    assert any(message in p.message for p in problems), problems


def test_the_linter_reports_a_single_stage_image() -> None:
    builder = GOOD[
        GOOD.index("FROM python:3.11.15-slim-bookworm AS builder") : GOOD.index(
            "FROM python:3.11.15-slim-bookworm\n"
        )
    ]
    single = mutate("COPY --from=builder /opt/venv /opt/venv\n", "", GOOD.replace(builder, ""))
    assert [(p.rule, p.line) for p in lint(single, SERVER)] == [("multi-stage", 2)]


BROKEN_CUDA = [
    pytest.param(
        "FROM nvidia/cuda:13.2.0-cudnn-runtime-ubuntu22.04\n",
        "FROM python:3.11.15-slim-bookworm\n",
        "cuda-base",
        "not nvidia/cuda",
        id="cuda-on-python-base",
    ),
    pytest.param(
        "pip install --no-cache-dir torch",
        "pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch",
        "torch-index",
        "CPU-only wheels",
        id="cuda-torch-from-cpu-index",
    ),
    pytest.param(
        "pip install --no-cache-dir torch",
        "pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu/ torch",
        "torch-index",
        "CPU-only wheels",
        id="cuda-torch-cpu-extra-index",
    ),
]


@pytest.mark.parametrize(("old", "new", "rule", "message"), BROKEN_CUDA)
def test_the_linter_reports_a_broken_rule_in_a_cuda_image(
    old: str, new: str, rule: str, message: str
) -> None:
    problems = lint(mutate(old, new, CUDA_GOOD), CUDA_SERVER)
    assert {p.rule for p in problems} == {rule}, problems
    assert any(message in p.message for p in problems), problems


ALSO_CLEAN = [
    pytest.param(
        "FROM python:3.11.15-slim-bookworm AS builder",
        "ARG PY=3.11.15\nFROM python:${PY}-slim-bookworm AS builder",
        id="arg-with-default",
    ),
    pytest.param(
        "FROM python:3.11.15-slim-bookworm AS builder",
        "FROM python@sha256:" + "a" * 64 + " AS builder",
        id="digest",
    ),
    pytest.param("FROM python:3.11.15-slim-bookworm\n", "FROM builder\n", id="from-earlier-stage"),
    pytest.param(
        "COPY --from=builder",
        "COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uv\nCOPY --from=0",
        id="copy-from-pinned-image-and-index",
    ),
    pytest.param("USER 65532:65532", "USER 65532", id="uid-only"),
    pytest.param("EXPOSE 8001 8002", "EXPOSE 8001/tcp\nEXPOSE 8002", id="expose-split"),
    pytest.param("WORKDIR /app", "ADD vendor/tool.tgz /opt/\nWORKDIR /app", id="add-local-archive"),
    pytest.param(
        "RUN python -m venv /opt/venv",
        "RUN pip --version && echo pip install anything\nRUN python -m venv /opt/venv",
        id="pip-not-installing",
    ),
    pytest.param(
        "torch==2.15.0",
        '"torch==2.15.0" "/dist/kubemaas-0.1.0-py3-none-any.whl[torch]" ./local',
        id="quoted-pin-and-paths",
    ),
    pytest.param(
        "torch==2.15.0\n",
        "torch==2.15.0\nRUN /opt/venv/bin/pip install --no-cache-dir /dist/x.whl torch==2.15.0\n",
        id="same-torch-again-is-kept",
    ),
    pytest.param(
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp",
        "ENV PYTHONDONTWRITEBYTECODE 1\nENV PYTHONUNBUFFERED=1 \\\n    HOME=/tmp",
        id="legacy-env",
    ),
]


@pytest.mark.parametrize(("old", "new"), ALSO_CLEAN)
def test_the_linter_accepts_what_is_fine(old: str, new: str) -> None:
    assert lint(mutate(old, new), SERVER) == []


def test_a_stage_inherits_user_entrypoint_and_cmd_from_the_stage_it_is_built_from() -> None:
    text = (
        mutate("FROM python:3.11.15-slim-bookworm\n", "FROM python:3.11.15-slim-bookworm AS base\n")
        + "FROM base\n"
    )
    assert lint(text, SERVER) == []
    root_user = (
        text.replace("USER 65532:65532", "USER 65532:65532\nFROM base AS rooted\nUSER 0") + "FROM rooted\n"
    )
    assert [p.rule for p in lint(root_user, SERVER)] == ["non-root"]
    # Setting ENTRYPOINT drops the CMD a stage would inherit, as Docker does.
    reset = text + 'ENTRYPOINT ["kubemaas"]\n'
    assert [p.message for p in lint(reset, SERVER)] == ["no CMD; want one starting with 'serve'"]


# ---------------------------------------------------------------------------------------------------
# The parser


def test_continuations_comments_and_blank_lines_join_into_one_instruction() -> None:
    df = parse(
        "FROM python:3.11.15-slim-bookworm AS Builder\n"
        "# a comment\n"
        "RUN pip install --no-cache-dir \\\n"
        "    # a comment inside the continuation is dropped\n"
        "\n"
        "    pip==26.3   \\\n"
        "    uv==0.13.9\n"
        "from builder\n"
        "copy --from=Builder --chown=1:1 /a /b\n"
    )
    (run,) = df.stages[0].all("RUN")
    assert (run.line, run.args) == (3, "pip install --no-cache-dir pip==26.3 uv==0.13.9")
    assert [(s.name, s.base, s.line) for s in df.stages] == [
        ("builder", "python:3.11.15-slim-bookworm", 1),
        (None, "builder", 8),
    ]
    (copy,) = df.final.all("COPY")
    assert (dict(copy.flags), copy.args, copy.line) == ({"from": "Builder", "chown": "1:1"}, "/a /b", 9)
    assert df.stage_named("Builder", 1) is df.stages[0]


def test_the_escape_directive_changes_the_continuation_character() -> None:
    df = parse("# escape=`\nFROM python:3.11.15-slim-bookworm\nRUN echo a `\n    b\n")
    assert df.final.all("RUN")[0].args == "echo a b"
    with pytest.raises(dockerlint.DockerfileSyntaxError, match="escape"):
        parse("# escape=x\nFROM python:3.11.15-slim-bookworm\n")


def test_heredoc_bodies_belong_to_their_instruction() -> None:
    df = parse("FROM python:3.11.15-slim-bookworm\nRUN <<-EOF bash\n\tpip install x\nEOF\nUSER 1\n")
    (run,) = df.final.all("RUN")
    assert run.heredocs == ("pip install x",)
    assert [i.keyword for i in df.final.instructions] == ["RUN", "USER"]
    with pytest.raises(dockerlint.DockerfileSyntaxError, match="never closed"):
        parse("FROM python:3.11.15-slim-bookworm\nRUN <<EOF\npip install x\n")


def test_exec_form_is_a_json_array_of_strings_and_anything_else_is_shell_form() -> None:
    df = parse('FROM a:1.0.0\nCMD ["serve", "--host", "0.0.0.0"]\nCMD [serve]\nCMD ["a", 1]\n')
    assert [cmd.exec_form() for cmd in df.final.all("CMD")] == [["serve", "--host", "0.0.0.0"], None, None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN true\nFROM a:1.0.0\n", "RUN before the first FROM"),
        ("# only a comment\n", "no FROM"),
        ("FROM a:1.0.0 AS\n", "expected `FROM image"),
        ("FROM a:1.0.0\nENV A\n", "key=value"),
    ],
)
def test_malformed_dockerfiles_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(dockerlint.DockerfileSyntaxError, match=re.escape(message)):
        df = parse(text)
        for env in df.final.all("ENV"):
            dockerlint.key_values(env)


def test_image_references_split_into_repository_tag_and_digest() -> None:
    assert dockerlint.split_image("localhost:5000/kubemaas/server") == (
        "localhost:5000/kubemaas/server",
        None,
        None,
    )
    assert dockerlint.split_image("ghcr.io/astral-sh/uv:0.13.9") == ("ghcr.io/astral-sh/uv", "0.13.9", None)
    assert dockerlint.split_image("python:3.11.15@sha256:ab") == ("python", "3.11.15", "sha256:ab")


def test_ignore_patterns_follow_docker_rules_last_match_wins_and_folders_cover_their_files() -> None:
    patterns = dockerlint.ignore_patterns(
        "# comment\n*\n!server\n**/__pycache__\n!/README.md\nserver/secret?.txt\n"
    )
    kept = {
        "server/kubemaas_server/cli.py": False,
        "server/kubemaas_server/__pycache__/cli.cpython-311.pyc": True,
        "README.md": False,
        "server/secret1.txt": True,
        "server/deep/secret1.txt": False,
        ".venv/bin/python": True,
        "pyproject.toml": True,
    }
    assert {path: dockerlint.is_ignored(path, patterns) for path in kept} == kept


def test_problems_print_with_their_line_and_rule() -> None:
    assert str(Problem("cmd", 3, "no CMD")) == "line 3: [cmd] no CMD"
