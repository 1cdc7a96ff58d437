"""The image delta artifact (supervisor/delta/artifact.py): write, apply, verify, ``docker load``.

The first tests work on layer files in a temporary directory; the last ones go through the real
engine: ``docker save`` as the basis and ``docker load`` of the rebuilt image, whose id must be the
target's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import tarfile
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from supervisor.delta.artifact import (
    MAGIC,
    BaseMismatchError,
    DeltaApplyError,
    ImageLayers,
    apply_artifact,
    load_image,
    read_header,
    save_image,
    write_artifact,
)
from tests.fixtures.docker import TEST_LABEL, _tarinfo, build_layer


def layers_from(tmp: Path, name: str, blobs: list[bytes]) -> ImageLayers:
    paths = []
    for i, data in enumerate(blobs):
        path = tmp / f"{name}-{i}.tar"
        path.write_bytes(data)
        paths.append(path)
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}, "name": name}).encode()
    return ImageLayers(config, lambda i: paths[i])


@pytest.fixture
def pair(tmp_path: Path) -> tuple[ImageLayers, ImageLayers]:
    rng = random.Random(6)
    shared = rng.randbytes(200_000)
    old_top = rng.randbytes(400_000)
    new_top = old_top[:1000] + b"a changed file" + old_top[1000:300_000] + old_top[300_500:]
    fresh = rng.randbytes(20_000)
    base = layers_from(tmp_path, "base", [shared, old_top])
    target = layers_from(tmp_path, "target", [shared, new_top, fresh])
    return base, target


def write(tmp: Path, base: ImageLayers, target: ImageLayers) -> Path:
    path = tmp / "artifact"
    with open(path, "wb") as out:
        write_artifact(base, target, out, tmp)
    return path


def apply(path: Path, base: ImageLayers, tmp: Path) -> list[bytes]:
    work = tmp / f"apply-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    with open(path, "rb") as f:
        header = read_header(f)
        result = apply_artifact(f, header, base, work)
    return [p.read_bytes() for p in result.layers]


def test_roundtrip_references_shared_layers_and_diffs_the_rest(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    with open(path, "rb") as f:
        header = read_header(f)
    kinds = [(layer["kind"], layer["base_index"]) for layer in header.layers]
    assert kinds == [("base", 0), ("delta", 1), ("delta", None)]
    assert "payload_size" not in header.layers[0]  # an identical layer costs no payload
    assert header.base_id == base.image_id and header.target_id == target.image_id
    assert header.target_diff_ids == target.diff_ids
    # The changed 400 kB layer costs a few kB; the new one (random) about its size.
    assert header.layers[1]["payload_size"] < 20_000
    assert path.stat().st_size < 60_000
    assert apply(path, base, tmp_path) == [target.layer(i).read_bytes() for i in range(3)]


def test_wrong_base_is_refused_before_anything_is_built(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    other = layers_from(tmp_path, "other", [base.layer(0).read_bytes(), b"x" * 1000])
    with pytest.raises(BaseMismatchError, match="position 1"):
        apply(path, other, tmp_path)


def test_corrupt_payload_is_caught(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 5000, len(data) - 4990):  # inside the last payload
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(DeltaApplyError):
        apply(path, base, tmp_path)


def test_truncated_artifact_is_caught(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    data = path.read_bytes()
    for cut in (5, len(MAGIC) + 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(DeltaApplyError):
            apply(path, base, tmp_path)


def test_trailing_garbage_is_caught(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(DeltaApplyError, match="trailing"):
        apply(path, base, tmp_path)


def test_header_must_match_the_config_it_carries(tmp_path, pair):
    base, target = pair
    path = write(tmp_path, base, target)
    data = path.read_bytes()
    (length,) = struct.unpack(">I", data[8:12])
    header = json.loads(data[12:12 + length])
    header["target"]["id"] = "sha256:" + "0" * 64
    raw = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack(">I", len(raw)) + raw + data[12 + length:])
    with pytest.raises(DeltaApplyError, match="config is sha256:"):
        apply(path, base, tmp_path)


@pytest.mark.parametrize("doc", [
    {"version": 99},
    {"version": 1, "base": {}, "target": {}, "layers": []},
    {"version": 1, "base": {"id": "a", "diff_ids": []}, "target": {"id": "b", "diff_ids": ["x"],
     "config_size": 2}, "layers": [{"kind": "base", "base_index": 0}]},
])
def test_malformed_headers_are_refused(doc):
    raw = json.dumps(doc).encode()
    with pytest.raises(DeltaApplyError):
        read_header(io.BytesIO(MAGIC + struct.pack(">I", len(raw)) + raw))
    with pytest.raises(DeltaApplyError, match="magic"):
        read_header(io.BytesIO(b"NOTADELTA" + raw))


# ------------------------------------------------------------------------------ the real engine
def two_layer_archive(layers: list[bytes], marker: str) -> tuple[str, bytes]:
    """A ``docker save`` archive of a two-layer image (the fixtures make one-layer images)."""
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({
        "architecture": docker.from_env().version().get("Arch", "amd64"), "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["sleep", "1000"], "Labels": {TEST_LABEL: "1", "marker": marker}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    names = [f"l{i}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": None, "Layers": names}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in ((f"{config_hex}.json", config), *zip(names, layers, strict=True),
                           ("manifest.json", manifest)):
            tar.addfile(_tarinfo(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return f"sha256:{config_hex}", buf.getvalue()


def load(client: docker.DockerClient, archive: bytes) -> None:
    for message in client.api.load_image(archive):
        assert "error" not in message, message


@pytest.mark.docker
def test_engine_roundtrip_of_a_two_layer_image(tmp_path, docker_client, docker_cleanup):
    """Basis from ``docker save`` of the base; the rebuilt target goes in with ``docker load``."""
    marker = uuid.uuid4().hex
    app_v1 = build_layer({"app/main.sh": f"#!/bin/sh\necho {marker} v1\n", "app/data": "d" * 50_000})
    app_v2 = build_layer({"app/main.sh": f"#!/bin/sh\necho {marker} v2\n", "app/new": "n" * 1000})
    os_layer = build_layer({"etc/os-release": f"ID={marker}\n"})
    base_id, base_archive = two_layer_archive([os_layer, app_v1], marker)
    target_id, target_archive = two_layer_archive([os_layer, app_v2], marker)
    load(docker_client, base_archive)
    docker_cleanup.append(base_id)
    load(docker_client, target_archive)
    docker_cleanup.append(target_id)

    server_work, device_work = tmp_path / "server", tmp_path / "device"
    server_work.mkdir()
    base = save_image(docker_client.api, base_id, server_work / "base")
    target = save_image(docker_client.api, target_id, server_work / "target")
    assert base.image_id == base_id and target.image_id == target_id
    artifact = write(server_work, base, target)
    size = sum(target.layer(i).stat().st_size for i in range(2))
    assert artifact.stat().st_size < size / 20

    docker_client.api.remove_image(target_id)  # the device does not have the target
    with open(artifact, "rb") as f:
        header = read_header(f)
        assert [layer["kind"] for layer in header.layers] == ["base", "delta"]
        wanted = {header.base_diff_ids[i] for i in header.base_layers_used()}
        device_base = save_image(docker_client.api, base_id, device_work, wanted=wanted)
        result = apply_artifact(f, header, device_base, device_work)
    assert load_image(docker_client.api, result) == target_id
    info = docker_client.api.inspect_image(target_id)
    assert info["RootFS"]["Layers"] == target.diff_ids
    kept = [p for p in os.listdir(device_work) if p.startswith("sha256-")]
    assert len(kept) == 2  # both base layers are a basis (one referenced, one diffed against)
