"""Generates the Python stubs for protos/ with grpcio-tools and mypy-protobuf, or checks the
committed ones."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

from devstack.state import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "protos"


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    # mypy-protobuf's plugins write the type stubs (messages and gRPC stubs and servicers), so
    # the type checker sees real types; they are installed next to this interpreter.
    plugins = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    # Make every generated directory a regular package so setuptools finds it.
    for directory in {p.parent for p in out.rglob("*_pb2.py")}:
        while directory != out:
            (directory / "__init__.py").touch()
            directory = directory.parent


def differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    found = [f"only in {cmp.left}: {n}" for n in cmp.left_only]
    found += [f"only in {cmp.right}: {n}" for n in cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    found += [f"differs: {a / n}" for n in mismatch + errors]
    for sub in cmp.common_dirs:
        found += differences(a / sub, b / sub)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    out = (REPO_ROOT / args.out).resolve()
    if not args.check:
        shutil.rmtree(out / "media", ignore_errors=True)
        generate(out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        found = differences(Path(tmp) / "media", out / "media")
    if found:
        print("generated stubs are out of date; run `make proto`:", *found, sep="\n  ")
        sys.exit(1)
    print("generated stubs are up to date")


if __name__ == "__main__":
    main()
