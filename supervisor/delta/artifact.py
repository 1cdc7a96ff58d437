"""The image delta artifact: what a delta server sends and how a device turns it into the target image.

Format (docs/DELTAS.md has the rationale)::

    MAGIC (8 bytes "PSIDELTA") | header length (4 bytes, big-endian) | header (UTF-8 JSON)
    | target config (header.target.config_size bytes) | one payload per "delta" layer, in layer order

The basis is the base image's *uncompressed layer tars*, which are fixed by their content digest
(the config's ``rootfs.diff_ids``); compressed blobs and ``docker save`` archives are not. Each target
layer is either ``{"kind": "base", "base_index": k}`` (identical to base layer k: no payload) or
``{"kind": "delta", "base_index": k | null, "payload_size": n}``: a zlib-compressed librsync delta
against base layer k, or against an empty basis for a layer with no useful base.

Applying never trusts the artifact: every produced layer's sha256 must equal its diff_id, the config's
sha256 must equal the target id and list exactly those diff_ids, and the engine must report that id
after ``docker load``; otherwise :class:`DeltaApplyError` is raised and nothing is left in the engine.
Everything is streamed through files; no layer is ever held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

MAGIC: Final = b"PSIDELTA"
FORMAT_VERSION: Final = 1
CHUNK: Final = 256 * 1024
#: Headers are small (a few digests per layer); anything bigger is not an artifact of ours.
MAX_HEADER: Final = 4 * 2**20

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "ApplyResult",
    "BaseMismatchError",
    "DeltaApplyError",
    "Header",
    "ImageLayers",
    "apply_artifact",
    "load_image",
    "read_header",
    "save_image",
    "write_artifact",
]


class DeltaApplyError(Exception):
    """The artifact is malformed or produced something other than the target."""


class BaseMismatchError(DeltaApplyError):
    """The artifact was made against layers this device's base image does not have."""


# ------------------------------------------------------------------------------ image layers
@dataclass
class ImageLayers:
    """An image as raw config bytes plus its layers as uncompressed tar files, in order.

    ``fetch(i)`` returns the path of layer i (its sha256 already checked against ``diff_ids[i]``);
    sources that download lazily (a registry) only fetch the layers someone asks for.
    """

    config: bytes
    fetch: Callable[[int], Path]
    _paths: dict[int, Path] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def diff_ids(self) -> list[str]:
        return list(json.loads(self.config)["rootfs"]["diff_ids"])

    def layer(self, index: int) -> Path:
        if index not in self._paths:
            self._paths[index] = self.fetch(index)
        return self._paths[index]


class _HashingWriter:
    """A file wrapper that hashes and counts what goes through ``write``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the engine's ``docker save`` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def save_image(api: Any, image: str, workdir: Path, *, wanted: set[str] | None = None) -> ImageLayers:
    """``docker save`` ``image`` and keep its layer tars under ``workdir``, named by digest.

    The archive layout differs between engine versions (``<id>/layer.tar`` or OCI ``blobs/``), so
    members are identified by hashing them, and matched to the config through ``manifest.json``.
    ``wanted`` (diff_ids) limits which layer files are kept; the others are hashed and dropped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    small: dict[str, bytes] = {}
    by_path: dict[str, str] = {}  # member path -> sha256 digest of its content
    links: dict[str, str] = {}
    kept: dict[str, Path] = {}
    stream = api.get_image(image, chunk_size=CHUNK)
    try:
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(stream), CHUNK), mode="r|") as tar:
            for member in tar:
                name = os.path.normpath(member.name)
                if member.issym() or member.islnk():
                    target = member.linkname
                    if member.issym():
                        target = os.path.join(os.path.dirname(name), target)
                    links[name] = os.path.normpath(target)
                    continue
                if not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None
                if member.size <= 1 << 20:  # configs and manifest (and small layers) stay in memory
                    data = src.read()
                    small[name] = data
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    by_path[name] = digest
                    if (wanted is None or digest in wanted) and digest not in kept:
                        final = workdir / digest.replace(":", "-")
                        final.write_bytes(data)
                        kept[digest] = final
                    continue
                fd, tmp = tempfile.mkstemp(dir=workdir, suffix=".part")
                with os.fdopen(fd, "wb") as out:
                    writer = _HashingWriter(out)
                    shutil.copyfileobj(src, writer, CHUNK)  # type: ignore[misc]
                by_path[name] = writer.digest
                if (wanted is None or writer.digest in wanted) and writer.digest not in kept:
                    final = workdir / writer.digest.replace(":", "-")
                    os.replace(tmp, final)
                    kept[writer.digest] = final
                else:
                    os.unlink(tmp)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    try:
        (entry,) = json.loads(small["manifest.json"])
        config = small[os.path.normpath(entry["Config"])]
    except (KeyError, ValueError) as err:
        raise DeltaApplyError(f"unexpected 'docker save' archive of {image}: {err}") from err
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    layer_paths = [os.path.normpath(p) for p in entry["Layers"]]
    if len(layer_paths) != len(diff_ids):
        raise DeltaApplyError(f"'docker save' of {image} lists {len(layer_paths)} layers for {len(diff_ids)}")
    for index, path in enumerate(layer_paths):
        seen: set[str] = set()
        while path in links and path not in seen:
            seen.add(path)
            path = links[path]
        digest = by_path.get(path)
        if digest != diff_ids[index]:
            raise DeltaApplyError(f"layer {index} of {image} has digest {digest}, expected {diff_ids[index]}")

    def fetch(index: int) -> Path:
        path = kept.get(diff_ids[index])
        if path is None:
            raise DeltaApplyError(f"layer {index} of {image} was not kept")
        return path

    return ImageLayers(config, fetch)


# ------------------------------------------------------------------------------ the header
@dataclass(frozen=True)
class Header:
    base_id: str
    base_diff_ids: list[str]
    target_id: str
    target_diff_ids: list[str]
    config_size: int
    layers: list[dict[str, Any]]

    def to_json(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "base": {"id": self.base_id, "diff_ids": self.base_diff_ids},
            "target": {
                "id": self.target_id, "diff_ids": self.target_diff_ids, "config_size": self.config_size,
            },
            "layers": self.layers,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        try:
            doc = json.loads(raw)
            if doc.get("version") != FORMAT_VERSION:
                raise DeltaApplyError(f"unsupported delta artifact version {doc.get('version')!r}")
            base, target, layers = doc["base"], doc["target"], doc["layers"]
            header = cls(
                base_id=str(base["id"]),
                base_diff_ids=[str(d) for d in base["diff_ids"]],
                target_id=str(target["id"]),
                target_diff_ids=[str(d) for d in target["diff_ids"]],
                config_size=int(target["config_size"]),
                layers=[dict(layer) for layer in layers],
            )
        except DeltaApplyError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DeltaApplyError(f"malformed delta artifact header: {err!r}") from err
        if len(header.layers) != len(header.target_diff_ids):
            raise DeltaApplyError("malformed delta artifact header: layer count")
        for layer in header.layers:
            index = layer.get("base_index")
            if layer.get("kind") not in ("base", "delta") or not (
                index is None or (isinstance(index, int) and 0 <= index < len(header.base_diff_ids))
            ):
                raise DeltaApplyError(f"malformed delta artifact header: layer {layer!r}")
            if layer["kind"] == "base" and index is None:
                raise DeltaApplyError(f"malformed delta artifact header: layer {layer!r}")
        return header

    def base_layers_used(self) -> set[int]:
        return {layer["base_index"] for layer in self.layers if layer.get("base_index") is not None}


def read_header(f: BinaryIO) -> Header:
    """Read MAGIC, the length and the JSON header; ``f`` is left at the config bytes."""
    start = f.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or not start.startswith(MAGIC):
        raise DeltaApplyError("not an image delta artifact (bad magic)")
    (length,) = struct.unpack(">I", start[len(MAGIC):])
    if length > MAX_HEADER:
        raise DeltaApplyError(f"delta artifact header too long ({length} bytes)")
    raw = f.read(length)
    if len(raw) != length:
        raise DeltaApplyError("truncated delta artifact header")
    return Header.parse(raw)


# ------------------------------------------------------------------------------ writing (server)
def _pick_basis(index: int, diff_id: str, base_diff_ids: list[str]) -> tuple[str, int | None]:
    """Same layer in the base: reference it; else diff against the base layer at the same position
    (the one a Dockerfile step that changed produced before), or an empty basis past the base's top."""
    if diff_id in base_diff_ids:
        return "base", base_diff_ids.index(diff_id)
    return "delta", index if index < len(base_diff_ids) else None


@dataclass
class WriteStats:
    artifact_size: int = 0
    payload_size: int = 0
    target_size: int = 0
    layers_referenced: int = 0
    layers_delta: int = 0


def write_artifact(base: ImageLayers, target: ImageLayers, out: BinaryIO, workdir: Path) -> WriteStats:
    """Write the artifact turning ``base`` into ``target`` to ``out``; payloads are staged in
    ``workdir`` because the header, which comes first, carries their sizes."""
    from supervisor.delta import rsync

    stats = WriteStats()
    base_ids, target_ids = base.diff_ids, target.diff_ids
    layers: list[dict[str, Any]] = []
    payloads: list[Path] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="write-") as tmp:
        for index, diff_id in enumerate(target_ids):
            kind, base_index = _pick_basis(index, diff_id, base_ids)
            new_path = target.layer(index) if kind == "delta" else base.layer(base_index)  # type: ignore[arg-type]
            size = new_path.stat().st_size
            stats.target_size += size
            if kind == "base":
                layers.append({"diff_id": diff_id, "size": size, "kind": "base", "base_index": base_index})
                stats.layers_referenced += 1
                continue
            sig = io.BytesIO()
            if base_index is None:
                basis: BinaryIO = io.BytesIO(b"")
                rsync.signature(basis, sig)
            else:
                with open(base.layer(base_index), "rb") as basis_file:
                    rsync.signature(basis_file, sig)
            sig.seek(0)
            loaded = rsync.load_signature(sig)
            payload = Path(tmp) / f"{index}.zdelta"
            with open(new_path, "rb") as new, open(payload, "wb") as pf:
                compressor = _ZlibWriter(pf)
                rsync.delta(loaded, new, compressor)
                compressor.close()
            payloads.append(payload)
            psize = payload.stat().st_size
            stats.payload_size += psize
            stats.layers_delta += 1
            layers.append({
                "diff_id": diff_id, "size": size, "kind": "delta", "base_index": base_index,
                "payload_size": psize, "compression": "zlib",
            })
        header = Header(base.image_id, base_ids, target.image_id, target_ids, len(target.config), layers)
        raw = header.to_json()
        written = out.write(MAGIC + struct.pack(">I", len(raw)) + raw)
        written += out.write(target.config)
        for payload in payloads:
            with open(payload, "rb") as pf:
                shutil.copyfileobj(pf, out, CHUNK)
            written += payload.stat().st_size
    stats.artifact_size = written
    return stats


class _ZlibWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.z = zlib.compressobj(6)

    def write(self, data: bytes) -> int:
        self.out.write(self.z.compress(data))
        return len(data)

    def close(self) -> None:
        self.out.write(self.z.flush())


# ------------------------------------------------------------------------------ applying (device)
@dataclass
class ApplyResult:
    config: bytes
    layers: list[Path]
    image_id: str


def _payload_chunks(f: BinaryIO, size: int, check: Callable[[], None]) -> Iterator[bytes]:
    """The decompressed payload of ``size`` compressed bytes, in bounded chunks."""
    z = zlib.decompressobj()
    left = size
    try:
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                raise DeltaApplyError("truncated delta artifact payload")
            left -= len(data)
            out = z.decompress(data, CHUNK)
            while out:
                yield out
                check()
                out = z.decompress(z.unconsumed_tail, CHUNK) if z.unconsumed_tail else b""
        tail = z.flush()
        if tail:
            yield tail
        if not z.eof or z.unused_data:
            raise DeltaApplyError("corrupt delta artifact payload (compressed stream)")
    except zlib.error as err:
        raise DeltaApplyError(f"corrupt delta artifact payload: {err}") from err


@contextlib.contextmanager
def _open_basis(base: ImageLayers, index: int | None) -> Iterator[IO[bytes]]:
    if index is None:
        yield io.BytesIO(b"")
        return
    with open(base.layer(index), "rb") as f:
        yield f


def apply_artifact(
    f: BinaryIO,
    header: Header,
    base: ImageLayers,
    workdir: Path,
    *,
    check: Callable[[], None] = lambda: None,
    progress: Callable[[float], None] | None = None,
) -> ApplyResult:
    """Rebuild the target's config and layer files from ``f`` (positioned after the header).

    ``check`` is called between chunks (abort and timeout checks raise from it). Every produced
    layer is checked against its diff_id before the next one is started.
    """
    from supervisor.delta import rsync

    base_ids = base.diff_ids
    for index in sorted(header.base_layers_used()):
        if index >= len(base_ids) or base_ids[index] != header.base_diff_ids[index]:
            raise BaseMismatchError(
                f"the delta was made against base layer {header.base_diff_ids[index]}, "
                f"which image {base.image_id} does not have at position {index}"
            )
    config = f.read(header.config_size)
    if len(config) != header.config_size:
        raise DeltaApplyError("truncated delta artifact (config)")
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    if image_id != header.target_id:
        raise DeltaApplyError(f"delta artifact config is {image_id}, expected {header.target_id}")
    try:
        config_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as err:
        raise DeltaApplyError(f"delta artifact config is not an image config: {err!r}") from err
    if config_ids != header.target_diff_ids:
        raise DeltaApplyError("delta artifact config lists other layers than its header")
    total = sum(int(layer.get("size") or 0) for layer in header.layers) or 1
    done = 0
    paths: list[Path] = []
    for index, layer in enumerate(header.layers):
        check()
        diff_id = header.target_diff_ids[index]
        if layer["kind"] == "base":
            paths.append(base.layer(layer["base_index"]))
        else:
            out_path = workdir / f"layer-{index}.tar"
            with _open_basis(base, layer["base_index"]) as basis, open(out_path, "wb") as out:
                writer = _HashingWriter(out)
                try:
                    rsync.patch(basis, _payload_chunks(f, int(layer["payload_size"]), check), writer)
                except rsync.DeltaFormatError as err:
                    raise DeltaApplyError(f"corrupt delta for layer {index}: {err}") from err
            if writer.digest != diff_id:
                raise DeltaApplyError(f"layer {index} came out as {writer.digest}, expected {diff_id}")
            paths.append(out_path)
        done += int(layer.get("size") or 0)
        if progress is not None:
            progress(done / total)
    if f.read(1):
        raise DeltaApplyError("trailing data after the delta artifact")
    return ApplyResult(config, paths, image_id)


# ------------------------------------------------------------------------------ docker load
def _tar_member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def save_stream(result: ApplyResult, check: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """A ``docker save``-format tar of the rebuilt image, generated piece by piece."""
    config_name = result.image_id.removeprefix("sha256:") + ".json"
    names = [f"layer{index}/layer.tar" for index in range(len(result.layers))]
    manifest = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": names}]).encode()
    yield _tar_member(config_name, len(result.config)) + result.config + _padding(len(result.config))
    for name, path in zip(names, result.layers, strict=True):
        size = path.stat().st_size
        yield _tar_member(name, size)
        with open(path, "rb") as f:
            while data := f.read(CHUNK):
                check()
                yield data
        yield _padding(size)
    yield _tar_member("manifest.json", len(manifest)) + manifest + _padding(len(manifest))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def load_image(api: Any, result: ApplyResult, *, check: Callable[[], None] = lambda: None) -> str:
    """``docker load`` the rebuilt image from a stream and verify it; returns the image id.

    An image that loads under another id or with other layers is removed again.
    """
    import docker.errors

    try:
        for message in api.load_image(save_stream(result, check)):
            if "error" in message or "errorDetail" in message:
                raise DeltaApplyError(f"docker load failed: {message.get('error') or message}")
    except docker.errors.APIError as err:
        raise DeltaApplyError(f"docker load failed: {err.explanation or err}") from err
    try:
        info = api.inspect_image(result.image_id)
    except docker.errors.NotFound as err:
        raise DeltaApplyError(f"image {result.image_id} is missing after docker load") from err
    expected = json.loads(result.config)["rootfs"]["diff_ids"]
    if info["Id"] != result.image_id or (info.get("RootFS") or {}).get("Layers") != expected:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(info["Id"], force=True)
        raise DeltaApplyError(f"docker load produced {info['Id']} with other layers than the target")
    return result.image_id
