"""Generate the Python gRPC code for protos/ into the talkingface package, once.

Usage: python scripts/gen_protos.py          # (re)generate shared/talkingface/v1/
       python scripts/gen_protos.py --check  # exit 1 if the committed code is stale

Generated modules live only in the package (talkingface.v1.*_pb2, *_pb2_grpc); services import
them from there rather than keeping their own copies.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PACKAGE_ROOT = ROOT / "shared"
GENERATED_DIR = PACKAGE_ROOT / "talkingface" / "v1"
INIT_TEXT = '"""Generated gRPC/protobuf code for talkingface.v1 (make protos); do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto under protos/ and return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out_dir = out_root / "talkingface" / "v1"
    (out_dir / "__init__.py").write_text(INIT_TEXT)
    return sorted(out_dir.iterdir())


def _generated_names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*") if p.name == "__init__.py" or "_pb2" in p.name}


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp) / "talkingface" / "v1"
        fresh_dir.mkdir(parents=True)
        generate(Path(tmp))
        fresh = _generated_names(fresh_dir)
        committed = _generated_names(GENERATED_DIR) if GENERATED_DIR.exists() else set()
        problems = [f"missing: {n}" for n in sorted(fresh - committed)]
        problems += [f"no longer generated: {n}" for n in sorted(committed - fresh)]
        problems += [
            f"differs: {n}"
            for n in sorted(fresh & committed)
            if not filecmp.cmp(fresh_dir / n, GENERATED_DIR / n, shallow=False)
        ]
    if problems:
        print("generated protobuf code is stale; run `make protos`:", *problems, sep="\n  ")
        return 1
    print(f"generated protobuf code is up to date ({len(fresh)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check for staleness")
    if parser.parse_args().check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "talkingface" / "v1").mkdir(parents=True)
        files = generate(Path(tmp))
        if GENERATED_DIR.exists():
            for stale in _generated_names(GENERATED_DIR):
                (GENERATED_DIR / stale).unlink()
        GENERATED_DIR.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, GENERATED_DIR / f.name)
    print(f"generated {len(files)} files into {GENERATED_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
