"""The CPU- and file-heavy half of a pull, run as a child process of the daemon.

`python -m banger.images.build SPEC.json` applies the layers into a tree and builds the ext4 from
it. When the daemon is not root it runs this under `fakeroot`, so the chowns and mknods of the
applier and the ownership `mkfs.ext4 -d` copies live in one fakeroot session. Progress and the
result go to stdout as JSON lines; a failure is one `{"event": "error", ...}` line and exit 2.

The spec names the image (`image`, for errors), the layers, the tree to unpack into (tmpfs
scratch with `fallback_tree` on the disk and the scratch's `tree_budget`, or the disk directly)
and `size_bytes` (--size). Whichever tree is used, the layers may unpack to at most
`unpack_limit(size_bytes)` bytes (`max_bytes` in the spec overrides it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from banger import errors
from banger.errors import OperationFailed
from banger.images.ext4 import SizeTooSmall, choose_size, make_ext4, tree_usage
from banger.images.layers import (
    DEFAULT_MAX_UNPACKED,
    BudgetExceeded,
    HostileLayer,
    Layer,
    LayerError,
    TooLarge,
    apply_layers,
)

# The daemon kills this process if a download fails; this only bounds an orphaned child.
LAYER_WAIT_SECONDS = 3600


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def unpack_limit(size_bytes: int | None) -> int:
    """The most file data an image may unpack to: the default, or a larger requested --size
    (the user asked for an image that big)."""
    return max(DEFAULT_MAX_UNPACKED, size_bytes or 0)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    layers = [
        Layer(Path(x["path"]), x["name"], x.get("compression", "auto")) for x in spec["layers"]
    ]
    tree = Path(spec["tree"])
    out = Path(spec["out"])

    parent = os.getppid()

    def on_layer(i: int, layer: Layer) -> None:
        # Blobs land in the cache (renamed into place, verified) while we work: wait for this one.
        deadline = time.monotonic() + LAYER_WAIT_SECONDS
        while not layer.path.exists():
            if os.getppid() != parent or time.monotonic() > deadline:
                raise LayerError(f"layer {layer.name} never arrived in the cache")
            time.sleep(0.02)
        _emit(event="layer", index=i, total=len(layers), name=layer.name)

    image = str(spec.get("image") or spec.get("label") or "rootfs")
    max_bytes = int(spec.get("max_bytes") or unpack_limit(spec.get("size_bytes")))
    fallback = spec.get("fallback_tree")
    try:
        stats = apply_layers(
            tree,
            layers,
            on_layer,
            spec.get("tree_budget") if fallback else None,
            max_bytes=max_bytes,
            image=image,
        )
    except BudgetExceeded:
        # The estimate from compressed sizes was wrong (highly compressible data): tmpfs is
        # memory, so start over on the disk rather than fill it. The image's own limit
        # (TooLarge) is the same on both and is never a reason to fall back.
        assert fallback is not None
        shutil.rmtree(tree, ignore_errors=True)
        _emit(event="fallback", tree=fallback)
        tree = Path(fallback)
        stats = apply_layers(tree, layers, on_layer, max_bytes=max_bytes, image=image)
    # The guest's `/` is 0755 whatever mkfs.ext4 -d copies from the tree root (the daemon's umask
    # made it 0700; its staging parent stays private to the owner).
    os.chmod(tree, 0o755)
    usage = tree_usage(tree)
    size = choose_size(usage, spec.get("size_bytes"))
    _emit(event="mkfs", size_bytes=size, content_bytes=usage.bytes)
    make_ext4(tree, out, size, usage, label=spec.get("label", "rootfs"))
    return {
        "size_bytes": size,
        "content_bytes": usage.bytes,
        "members": stats.members,
        "xattr_failures": stats.xattr_failures[:20],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m banger.images.build SPEC.json", file=sys.stderr)
        return 64
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run(spec)
    except HostileLayer as e:
        _emit(event="error", kind="hostile", message=str(e))
        return 2
    except TooLarge as e:
        _emit(event="error", kind="too_large", message=str(e))
        return 2
    except (LayerError, SizeTooSmall, OperationFailed, errors.OperationFailed, OSError) as e:
        _emit(event="error", kind="failed", message=str(e))
        return 2
    _emit(event="done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
