"""Regenerate serving/grpc_protocol/'s Python modules from grpc_predict_v2.proto.

    .venv/bin/python scripts/generate_grpc_protocol.py

grpcio-tools is not a dependency of sigserve: it is installed (with uv) in a throwaway venv,
pinned to the lock's grpcio (requirements.lock), whose protobuf is the lock's (7.x): the
``_grpc`` module refuses a grpcio older than the tools that made it, and the messages a protobuf
runtime older than their gencode. The venv is removed after.

Two edits after protoc, both in the generated code's own terms:
- the ``_grpc`` module imports its messages from ``serving.grpc_protocol`` (protoc writes a
  top-level import);
- the messages go into a descriptor pool of their own, not protobuf's default pool: Triton's
  client (tritonclient.grpc.service_pb2) defines the same ``inference.*`` names in the default
  pool, and a process that imports both (the tests, a user's notebook running the local stack)
  would fail with "duplicate symbol".
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "serving" / "grpc_protocol"
PROTO = "grpc_predict_v2.proto"
LOCK = ROOT / "requirements.lock"


def _locked(name: str) -> str:
    for line in LOCK.read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise SystemExit(f"{name} is not pinned in {LOCK}")


UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
PRIVATE_POOL = (
    "# sigserve's own pool (scripts/generate_grpc_protocol.py says why).\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


def main() -> None:
    # grpcio-tools has no release for every grpcio patch: the newest not above the lock's.
    grpcio = _locked("grpcio")
    with tempfile.TemporaryDirectory(prefix="sigserve-protoc-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([UV, "venv", "-q", "-p", "3.11", str(venv)], check=True)
        subprocess.run(
            [
                UV,
                "pip",
                "install",
                "-q",
                "--python",
                str(venv / "bin" / "python"),
                f"grpcio-tools<={grpcio},=={grpcio.rsplit('.', 1)[0]}.*",
                f"protobuf=={_locked('protobuf')}",
            ],
            check=True,
        )
        out = Path(tmp) / "out"
        out.mkdir()
        subprocess.run(
            [
                str(venv / "bin" / "python"), "-m", "grpc_tools.protoc",
                f"-I{PACKAGE}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(PACKAGE / PROTO),
            ],
            check=True,
        )  # fmt: skip
        stem = PROTO.removesuffix(".proto")
        messages = (out / f"{stem}_pb2.py").read_text()
        if "_descriptor_pool.Default().AddSerializedFile(" not in messages:
            raise SystemExit("protoc's output changed: the descriptor pool edit no longer fits")
        messages = messages.replace(
            "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(", PRIVATE_POOL
        )
        service = (out / f"{stem}_pb2_grpc.py").read_text()
        service, count = re.subn(
            rf"^import {stem}_pb2 as", f"from serving.grpc_protocol import {stem}_pb2 as",
            service, flags=re.MULTILINE,
        )  # fmt: skip
        if count != 1:
            raise SystemExit("protoc's output changed: the import edit no longer fits")
        (PACKAGE / f"{stem}_pb2.py").write_text(messages)
        (PACKAGE / f"{stem}_pb2_grpc.py").write_text(service)
        shutil.copy(out / f"{stem}_pb2.pyi", PACKAGE / f"{stem}_pb2.pyi")
    print(f"regenerated {stem}_pb2.py, {stem}_pb2.pyi, {stem}_pb2_grpc.py in {PACKAGE}")


if __name__ == "__main__":
    main()
