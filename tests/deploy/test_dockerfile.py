"""The Dockerfile cannot be built here (no Docker engine), so it is read: multi-stage, the final
stage runs as a numeric non-root user, installs no build tools, copies only what it needs, and every
module the image or the manifests start exists."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tests.deploy.kube import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|cmake|build-essential|python3?-dev|libpq-dev|"
    r"[a-z0-9+.-]+-dev|autoconf|automake|pkg-config|git|rustc|cargo)\b"
)
ENTRYPOINTS = ("services.job_service", "services.notifier", "services.media_worker")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        parsed.append((keyword.upper(), args.strip()))
    return parsed


def stages() -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            result.append(Stage(base=parts[0], name=name))
        elif result:
            result[-1].instructions.append((keyword, args))
    return result


def test_dockerfile_is_multi_stage() -> None:
    found = stages()
    assert len(found) >= 2
    final = found[-1]
    copies_from = [a for a in final.all("COPY") if a.startswith("--from=")]
    assert copies_from, "the final stage must take its files from the build stage"
    names = {s.name for s in found[:-1]}
    for args in copies_from:
        assert args.split()[0].removeprefix("--from=") in names, args


def test_final_stage_runs_as_numeric_non_root_user() -> None:
    users = stages()[-1].all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: a numeric, non-zero UID"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {user}"


def test_final_stage_installs_no_build_tools() -> None:
    final = stages()[-1]
    for run in final.all("RUN"):
        if re.search(r"\b(apt-get|apt|apk|yum|dnf|pip)\b.*\binstall\b", run):
            assert not BUILD_TOOLS.search(run), f"build tools in the final stage: {run}"
    base = final.base
    if base.startswith("${"):
        arg = base.strip("${}")
        base = next(
            a.partition("=")[2] for k, a in instructions() if k == "ARG" and a.startswith(arg)
        )
    # The slim images ship no compiler; the full python:3.11 image does.
    assert "slim" in base or "distroless" in base, base
    assert re.search(r"python:3\.11", base), f"the services run on Python 3.11: {base}"


def test_image_starts_an_existing_entrypoint() -> None:
    cmd = stages()[-1].all("CMD")[-1]
    argv = json.loads(cmd)  # exec form: signals reach Python, not a shell
    assert argv[:2] == ["python", "-m"] and argv[2] in ENTRYPOINTS
    for module in ENTRYPOINTS:
        assert REPO.joinpath(*module.split("."), "__main__.py").is_file(), module
    # Every entrypoint named in the header comment is one of them.
    named = set(re.findall(r"python -m (services\.\w+)", DOCKERFILE.read_text()))
    assert named == set(ENTRYPOINTS)


def test_build_context_has_what_pip_install_needs_and_nothing_local() -> None:
    copied = " ".join(stages()[0].all("COPY"))
    for needed in ("pyproject.toml", "README.md", "gen", "services"):
        assert needed in copied, needed
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert "**" in ignore, ".dockerignore should start from nothing and allow what is needed"
    for needed in ("!pyproject.toml", "!README.md", "!gen/", "!services/"):
        assert needed in ignore, needed
