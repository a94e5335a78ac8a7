"""The Dockerfile cannot be built here (no Docker engine), so it is read: multi-stage, the final
stage runs as a numeric non-root user, installs no build tools, copies only what it needs, and every
module the image or the manifests start exists. What ships (the image, the installed package) is
services/ and gen/ only: the dev-only devstack/, tests/ and bench/ stay out of both."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from tests.deploy.kube import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|cmake|build-essential|python3?-dev|libpq-dev|"
    r"[a-z0-9+.-]+-dev|autoconf|automake|pkg-config|git|rustc|cargo)\b"
)
ENTRYPOINTS = (
    "services.job_service",
    "services.notifier",
    "services.media_worker",
    "services.webhooks",
)
SHIPPED = ("pyproject.toml", "README.md", "gen", "services")
DEV_ONLY = ("devstack", "tests", "bench")


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


def copy_sources() -> list[str]:
    """The build-context paths of every COPY that does not take its files from another stage."""
    sources = []
    for stage in stages():
        for args in stage.all("COPY"):
            words = args.split()
            if any(w.startswith("--from=") for w in words):
                continue
            assert not args.startswith("["), f"JSON-form COPY is not parsed here: {args}"
            paths = [w for w in words if not w.startswith("--")]
            sources += [w.removeprefix("./").rstrip("/") for w in paths[:-1]]
    return sources


def test_build_stage_copies_only_what_ships() -> None:
    assert sorted(copy_sources()) == sorted(SHIPPED)


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker compiles it: `**` spans directories, `*` and `?` do not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative to the repo): the last pattern that matches the path
    or one of its parent directories decides, and a `!` pattern lets it back in."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negated, _ignore_regex(pattern)))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = negated
    return included


def _files_under(top: str) -> Iterator[str]:
    root = REPO / top
    if root.is_file():
        yield top
        return
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path.relative_to(REPO).as_posix()


def test_build_context_holds_what_ships_and_no_dev_only_code() -> None:
    for top in SHIPPED:
        files = list(_files_under(top))
        assert files, top
        left_out = [f for f in files if not in_build_context(f)]
        assert not left_out, left_out
    for top in DEV_ONLY:
        files = list(_files_under(top))
        assert files, f"{top}/ is expected at the repo root"
        assert not any(in_build_context(f) for f in files), top
    for local in (".venv/bin/python", ".run/env", ".git/HEAD", "Makefile"):
        assert not in_build_context(local), local


def installed_packages() -> list[str]:
    """The packages that pip installs, found the way [tool.setuptools.packages.find] finds them."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    found = []
    for where in find["where"]:
        base = REPO / where
        pending = [p for p in base.iterdir() if (p / "__init__.py").is_file()]
        while pending:
            directory = pending.pop()
            name = directory.relative_to(base).as_posix().replace("/", ".")
            if any(fnmatchcase(name, p) for p in include) and not any(
                fnmatchcase(name, p) for p in exclude
            ):
                found.append(name)
            pending += [p for p in directory.iterdir() if (p / "__init__.py").is_file()]
    return found


def test_installed_package_is_what_runs_and_nothing_dev_only() -> None:
    packages = installed_packages()
    for module in (*ENTRYPOINTS, "services.mediactl", "services.common", "media.v1"):
        assert module in packages, module
    roots = {name.partition(".")[0] for name in packages}
    assert roots == {"services", "media"}, roots


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.partition(".")[0])
    return roots


def test_shipped_code_imports_nothing_dev_only() -> None:
    # The image has no devstack/, tests/ or bench/: importing one would fail only in production.
    for path in (REPO / "services").rglob("*.py"):
        found = _imported_roots(path) & set(DEV_ONLY)
        assert not found, f"{path.relative_to(REPO)} imports {sorted(found)}"
