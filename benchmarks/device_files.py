"""Carry a directory back from the lent GPU machine, whose command returns only a few small files.

What a device command hands back is what it leaves in ``$OUT``, and only within limits: at most 8
files, 16 MiB each and 64 MiB together, no more than 2 folders down, named in letters, digits, '.',
'_' and '-' (the workplace's device README). A ``gorl bench`` archive is a tree several folders deep
(``<method>_<task>/seed<k>/checkpoints/last.ckpt``) that would not come back at all, so
``benchmarks/gpu_paper_runs.sh`` packs it with this script into one gzipped tar, cut into parts
that fit, plus a manifest with the whole tar's SHA-256; here, ``unpack`` checks and unpacks them.

    python benchmarks/device_files.py pack benchmarks/logs/paper_hopper $OUT --name paper_hopper
    python benchmarks/device_files.py unpack /work/.device/<files_at>/paper_hopper* --into benchmarks/logs

If the tar is too large for the files left, ``pack`` packs again without the unfinished runs'
checkpoints, says so in one line and exits 2: the records (metrics, logs, status) still come back,
and those runs continue from their previous archived checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

MiB = 1 << 20
# The device's limits on what comes back from $OUT, with a margin for the files beside ours.
PART_BYTES = 15 * MiB
TOTAL_BYTES = 60 * MiB
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _tar(src: Path, checkpoints: bool) -> bytes:
    """``src`` (its folder name as the tar's top) as a gzipped tar, files in sorted order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(src.rglob("*")):
            if path.is_file() and (checkpoints or "checkpoints" not in path.relative_to(src).parts):
                tar.add(path, arcname=str(Path(src.name) / path.relative_to(src)), recursive=False)
    return buf.getvalue()


def pack(src: Path, out: Path, name: str, max_parts: int = 6, part_bytes: int = PART_BYTES, total_bytes: int = TOTAL_BYTES) -> int:
    """Write ``src`` as ``<name>.tgz.<k>`` parts and ``<name>.json`` into ``out``. Returns 0, or 2
    if the checkpoints had to be left out to fit."""
    if not NAME.match(name):
        raise SystemExit(f"device_files: error: name {name!r} must be letters, digits, '.', '_' or '-'")
    if not src.is_dir():
        raise SystemExit(f"device_files: error: no such directory {src}")
    out.mkdir(parents=True, exist_ok=True)
    limit = min(total_bytes, max_parts * part_bytes)
    blob, left_out = _tar(src, checkpoints=True), False
    if len(blob) > limit:
        full = len(blob)
        blob, left_out = _tar(src, checkpoints=False), True
        print(f"device_files: {src} is {full / MiB:.1f} MiB packed, over the {limit / MiB:.0f} MiB that can come back: "
              f"packed without its checkpoints ({len(blob) / MiB:.1f} MiB); those runs continue from their previous archived checkpoint",
              file=sys.stderr, flush=True)
        if len(blob) > limit:
            raise SystemExit(f"device_files: error: {src} is {len(blob) / MiB:.1f} MiB packed even without checkpoints, over {limit / MiB:.0f} MiB")
    for old in out.glob(f"{name}.tgz.*"):
        old.unlink()
    parts = [blob[i:i + part_bytes] for i in range(0, len(blob), part_bytes)] or [b""]
    for k, part in enumerate(parts):
        (out / f"{name}.tgz.{k}").write_bytes(part)
    manifest = {"source": str(src), "parts": len(parts), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                "checkpoints_left_out": left_out}
    (out / f"{name}.json").write_text(json.dumps(manifest, indent=1))
    print(f"device_files: {src} -> {len(parts)} part(s), {len(blob) / MiB:.2f} MiB, in {out}", flush=True)
    return 2 if left_out else 0


def unpack(files: list[Path], into: Path) -> Path:
    """Join the parts named by ``files`` (the ``.json`` manifest and its ``.tgz.<k>`` parts, in any
    order), check the SHA-256 and unpack into ``into``, replacing the tree there. Returns the tree."""
    manifests = [f for f in files if f.suffix == ".json"]
    if len(manifests) != 1:
        raise SystemExit(f"device_files: error: give exactly one <name>.json manifest with its parts (got {len(manifests)})")
    manifest = json.loads(manifests[0].read_text())
    name = manifests[0].stem
    parts = {int(f.name.rsplit(".", 1)[1]): f for f in files if f.name.startswith(f"{name}.tgz.")}
    missing = [k for k in range(manifest["parts"]) if k not in parts]
    if missing:
        raise SystemExit(f"device_files: error: {name}: parts {missing} missing (the manifest lists {manifest['parts']})")
    blob = b"".join(parts[k].read_bytes() for k in range(manifest["parts"]))
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"device_files: error: {name}: the joined parts do not match the manifest's SHA-256 (a part is cut or stale)")
    import shutil

    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tops = {Path(m.name).parts[0] for m in tar.getmembers()}
        if len(tops) != 1:
            raise SystemExit(f"device_files: error: {name}: the tar holds {len(tops)} top folders, not one")
        top = into / tops.pop()
        if manifest.get("checkpoints_left_out"):
            # Keep this tree's checkpoints (the runs continue from them) and take everything else.
            keep = {p.relative_to(top): p.read_bytes() for p in top.rglob("*") if p.is_file() and "checkpoints" in p.relative_to(top).parts} if top.is_dir() else {}
        else:
            keep = {}
        if top.exists():
            shutil.rmtree(top)
        tar.extractall(into, filter="data")  # the data filter refuses absolute paths, '..' and links out
        for rel, raw in keep.items():
            run = top / rel.parts[0] / rel.parts[1] if len(rel.parts) > 2 else None
            if run is not None and (run / "done.json").exists():
                continue  # finished since: its record needs no checkpoint
            (top / rel).parent.mkdir(parents=True, exist_ok=True)
            (top / rel).write_bytes(raw)
    print(f"device_files: unpacked {name} ({manifest['bytes'] / MiB:.2f} MiB) into {top}"
          + (" (no checkpoints came back: the runs keep the ones already here)" if manifest.get("checkpoints_left_out") else ""), flush=True)
    return top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="device_files.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="a directory -> parts and a manifest in OUT")
    a.add_argument("src", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--name", required=True)
    a.add_argument("--max-parts", type=int, default=6, help="files of the tar at most (the device returns 8 files in all)")
    b = sub.add_parser("unpack", help="a manifest and its parts -> the directory, under --into")
    b.add_argument("files", type=Path, nargs="+")
    b.add_argument("--into", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        return pack(args.src, args.out, args.name, max_parts=args.max_parts)
    unpack(args.files, args.into)
    return 0


if __name__ == "__main__":
    sys.exit(main())
