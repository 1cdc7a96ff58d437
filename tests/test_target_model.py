"""Target state model and parsers (reference §2.1, §2.2, §2.5, §11.2, §3.11): plain data only."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.state import validation as v
from supervisor.state.target import (
    SUPERVISOR_APP_UUIDS,
    V2_APPS_JSON_MESSAGE,
    AppsJsonParseError,
    FrozenDict,
    Preload,
    TargetApp,
    TargetDevice,
    TargetRelease,
    TargetService,
    TargetStateError,
    from_v2_local,
    is_supervisor_app,
    is_supervisor_service,
    normalise_image,
    normalise_labels,
    parse_apps_json,
    parse_target_device,
    parse_target_state,
    split_image,
)

DEVICE_UUID = "0123456789abcdef0123456789abcdef"
APP_UUID = "aaaabbbbccccddddeeeeffff00001111"
COMMIT = "2f1e0c9b4a7d4e2b8c3d5e6f7a8b9c0d"
DIGEST = "sha256:" + "0123456789abcdef" * 4
API_IMAGE = f"registry2.balena-cloud.com/v2/abc@{DIGEST}"
SVC = ("apps", APP_UUID, "releases", COMMIT, "services", "api")
SVC_PATH = f"apps.{APP_UUID}.releases.{COMMIT}.services.api"

# The worked example of §2.2 (its elided images filled in).
WORKED_EXAMPLE: dict[str, Any] = {
    DEVICE_UUID: {
        "name": "quiet-lake",
        "config": {
            "RESIN_SUPERVISOR_POLL_INTERVAL": "900000",
            "BALENA_HOST_CONFIG_gpu_mem": "64",
            "HOST_CONFIG_dtparam": '"i2c_arm=on","spi=on"',
        },
        "apps": {
            APP_UUID: {
                "id": 1001,
                "name": "myfleet",
                "class": "fleet",
                "releases": {
                    COMMIT: {
                        "id": 50001,
                        "services": {
                            "api": {
                                "id": 7001,
                                "image_id": 9001,
                                "image": API_IMAGE,
                                "environment": {"PORT": "80"},
                                "labels": {
                                    "io.balena.features.supervisor-api": "1",
                                    "io.balena.update.strategy": "download-then-kill",
                                },
                                "running": True,
                                "composition": {
                                    "ports": ["80:80"],
                                    "depends_on": ["db"],
                                    "volumes": ["data:/data"],
                                    "networks": ["default"],
                                },
                            },
                            "db": {
                                "id": 7002,
                                "image_id": 9002,
                                "image": "balenalib/db",
                                "environment": {},
                                "labels": {},
                            },
                        },
                        "volumes": {"data": {}},
                        "networks": {},
                    }
                },
            }
        },
    }
}


def example_device() -> dict[str, Any]:
    """A fresh copy of the worked example's TargetDevice object."""
    return copy.deepcopy(WORKED_EXAMPLE[DEVICE_UUID])


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """The example device with the field at ``path`` set to ``value`` (or removed for DELETE)."""
    doc = example_device()
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc


DELETE = object()


def refused(doc: Any, parser=parse_target_device) -> TargetStateError:
    with pytest.raises(TargetStateError) as info:
        parser(doc)
    return info.value


# ----------------------------------------------------------------------- worked example
def test_worked_example_parses_into_the_model() -> None:
    device = parse_target_state(copy.deepcopy(WORKED_EXAMPLE), DEVICE_UUID)
    assert device.name == "quiet-lake"
    assert device.config["HOST_CONFIG_dtparam"] == '"i2c_arm=on","spi=on"'
    app = device.apps[APP_UUID]
    assert (app.uuid, app.id, app.name, app.app_class) == (APP_UUID, 1001, "myfleet", "fleet")
    assert (app.parent_app, app.is_host) == (None, False)
    release = app.release
    assert release is not None and (release.commit, release.id) == (COMMIT, 50001)
    assert release.volumes == {"data": {}} and release.networks == {}
    api, db = release.services["api"], release.services["db"]
    assert (api.name, api.id, api.image_id, api.image) == ("api", 7001, 9001, API_IMAGE)
    assert api.environment == {"PORT": "80"}
    assert api.composition["ports"] == ["80:80"]
    assert (db.image, db.running, db.contract, db.composition) == ("balenalib/db:latest", True, None, {})
    assert app.services is release.services


def test_to_v3_round_trips_and_is_plain_json() -> None:
    device = parse_target_state(copy.deepcopy(WORKED_EXAMPLE), DEVICE_UUID)
    wire = device.to_v3()
    assert json.loads(json.dumps(wire)) == wire
    assert parse_target_device(wire) == device
    assert parse_target_state({DEVICE_UUID: wire}, DEVICE_UUID) == device
    expected = example_device()
    expected["apps"][APP_UUID]["releases"][COMMIT]["services"]["db"].update(
        image="balenalib/db:latest", running=True
    )
    assert wire == expected


def test_service_wire_shape() -> None:
    service = parse_target_device(example_device()).apps[APP_UUID].services
    assert list(service["api"].to_v3()) == [
        "id", "image_id", "image", "environment", "labels", "running", "composition"
    ]  # fmt: skip
    assert list(service["db"].to_v3()) == ["id", "image_id", "image", "environment", "labels", "running"]
    doc = with_value((*SVC, "contract"), {"type": "sw.container", "requires": []})
    assert parse_target_device(doc).apps[APP_UUID].services["api"].to_v3()["contract"] == {
        "type": "sw.container",
        "requires": [],
    }


def test_models_are_frozen_and_hashable() -> None:
    device = parse_target_device(example_device())
    api = device.apps[APP_UUID].services["api"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        api.image = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        api.environment["PORT"] = "81"  # type: ignore[index]
    assert isinstance(api.composition["ports"], tuple)
    assert hash(device) == hash(parse_target_device(example_device()))
    assert {device, parse_target_device(example_device())} == {device}


def test_models_built_directly_are_frozen_too() -> None:
    svc = TargetService("s", 1, 2, "a:latest", {"A": "1"}, {}, composition={"ports": ["1:1"]})
    release = TargetRelease("c", 3, {"s": svc}, volumes={"v": {"driver": "local"}})
    app = TargetApp("u", 4, "n", release=release)
    device = TargetDevice("d", {"X": "1"}, {"u": app})
    assert isinstance(svc.environment, FrozenDict) and isinstance(device.apps, FrozenDict)
    assert svc.composition == {"ports": ["1:1"]}
    assert parse_target_device(device.to_v3()) == device
    assert TargetService("s", 1, 2, "a:latest", {}, {}).composition == {}


# -------------------------------------------------------------------- cloud v3 document
def test_missing_device_uuid_has_the_reference_message() -> None:
    with pytest.raises(TargetStateError) as info:
        parse_target_state(copy.deepcopy(WORKED_EXAMPLE), "ffff")
    assert str(info.value) == "Expected target state for local device with uuid 'ffff'."
    with pytest.raises(TargetStateError, match="uuid 'x'"):
        parse_target_state({}, "x")


def test_every_device_entry_is_validated() -> None:
    doc = copy.deepcopy(WORKED_EXAMPLE)
    doc["other"] = {"name": "x", "config": {}, "apps": []}
    err = refused(doc, lambda d: parse_target_state(d, DEVICE_UUID))
    assert err.path == "other.apps" and "expected object, got array" in str(err)


def test_v2_shaped_cloud_document_is_rejected() -> None:
    v2 = {"local": {"name": "x", "config": {}, "apps": {"1": {"name": "a", "commit": "c"}}}}
    err = refused(v2, lambda d: parse_target_state(d, DEVICE_UUID))
    assert err.path == "local.apps.1.id"
    v2_empty = {"local": {"name": "x", "config": {}, "apps": {}}}
    with pytest.raises(TargetStateError, match="Expected target state for local device"):
        parse_target_state(v2_empty, DEVICE_UUID)


@pytest.mark.parametrize("junk", [None, [], "x", 1, True, [{}]])
def test_non_object_top_levels_are_refused(junk: Any) -> None:
    for parser in (
        parse_target_device,
        lambda d: parse_target_state(d, DEVICE_UUID),
        lambda d: from_v2_local(d, current_name="n"),
    ):
        assert "Invalid target state: expected object, got" in str(refused(junk, parser))
    if not isinstance(junk, list):
        err = refused(junk, lambda d: parse_apps_json(d, current_name="n"))
        assert isinstance(err, AppsJsonParseError)
        assert str(err).startswith("Invalid apps.json: expected object, got")


# ----------------------------------------------------------------- §2.1 rules, one by one
VALID_CASES = [
    # NumericIdentifier: numbers and numeric strings; integral floats
    ((*SVC, "id"), 0, 0),
    ((*SVC, "id"), "42", 42),
    ((*SVC, "id"), 42.0, 42),
    ((*SVC, "image_id"), "7.0", 7),
    ((*SVC, "image_id"), 2**53 - 1, 2**53 - 1),
    # ShortString, counted in UTF-16 units like the reference
    (("apps", APP_UUID, "name"), "x" * 255, "x" * 255),
    (("apps", APP_UUID, "name"), "\U0001f600" * 127, "\U0001f600" * 127),
    # DeviceName: only \n is forbidden
    (("name",), "a\rb c", "a\rb c"),
    # UUID is a ShortString, not necessarily hex
    (("apps", APP_UUID, "parent_app"), "myapp", "myapp"),
]


@pytest.mark.parametrize(("path", "value", "expected"), VALID_CASES)
def test_valid_basic_values(path: tuple[str, ...], value: Any, expected: Any) -> None:
    node = _walk(parse_target_device(with_value(path, value)), path)
    assert node == expected and type(node) is type(expected)


def _attr(key: str, node: Any) -> str:
    if isinstance(node, TargetApp) and key == "releases":
        return "release"
    return {"class": "app_class"}.get(key, key)


def _walk(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if isinstance(node, TargetApp) and key == "releases":
            node = node.release
            continue
        if isinstance(node, TargetRelease) and key == node.commit:
            continue
        node = node[key] if isinstance(node, FrozenDict) else getattr(node, _attr(key, node))
    return node


# (path to set, value, path named in the message, rule fragment)
INVALID_CASES = [
    # NumericIdentifier
    ((*SVC, "id"), -1, f"{SVC_PATH}.id", "must be an integer between 0 and"),
    ((*SVC, "id"), "-1", f"{SVC_PATH}.id", "must be an integer between 0 and"),
    ((*SVC, "id"), 1.5, f"{SVC_PATH}.id", "got 1.5"),
    ((*SVC, "id"), "1.5", f"{SVC_PATH}.id", "got '1.5'"),
    ((*SVC, "id"), "abc", f"{SVC_PATH}.id", "got 'abc'"),
    ((*SVC, "id"), "", f"{SVC_PATH}.id", "got ''"),
    ((*SVC, "id"), "0x10", f"{SVC_PATH}.id", "got '0x10'"),
    ((*SVC, "id"), True, f"{SVC_PATH}.id", "expected number or numeric string, got boolean"),
    ((*SVC, "id"), None, f"{SVC_PATH}.id", "expected number or numeric string, got null"),
    ((*SVC, "image_id"), [1], f"{SVC_PATH}.image_id", "got array"),
    ((*SVC, "image_id"), 2**53, f"{SVC_PATH}.image_id", "between 0 and 9007199254740991"),
    ((*SVC, "image_id"), float("nan"), f"{SVC_PATH}.image_id", "got nan"),
    (("apps", APP_UUID, "id"), "1e3", f"apps.{APP_UUID}.id", "got '1e3'"),
    (("apps", APP_UUID, "releases", COMMIT, "id"), {}, f"apps.{APP_UUID}.releases.{COMMIT}.id",
     "got object"),  # fmt: skip
    # ShortString
    (("apps", APP_UUID, "name"), "x" * 256, f"apps.{APP_UUID}.name", "at most 255 characters"),
    (("apps", APP_UUID, "name"), "\U0001f600" * 128, f"apps.{APP_UUID}.name", "at most 255"),
    (("apps", APP_UUID, "name"), 5, f"apps.{APP_UUID}.name", "expected string, got number"),
    ((*SVC, "image"), "x" * 256, f"{SVC_PATH}.image", "at most 255 characters"),
    # DeviceName
    (("name",), "a\nb", "name", "must not contain newline"),
    (("name",), "x" * 256, "name", "at most 255"),
    (("name",), None, "name", "expected string, got null"),
    # UUID (ShortString)
    (("apps", APP_UUID, "parent_app"), "p" * 256, f"apps.{APP_UUID}.parent_app", "at most 255"),
    (("apps", APP_UUID, "parent_app"), None, f"apps.{APP_UUID}.parent_app", "got null"),
    # EnvVarObject
    ((*SVC, "environment"), {"A B": "1"}, f"{SVC_PATH}.environment",
     "key 'A B' must match ^[a-zA-Z_][a-zA-Z0-9_]*$"),  # fmt: skip
    ((*SVC, "environment"), {"1A": "1"}, f"{SVC_PATH}.environment", "key '1A' must match"),
    ((*SVC, "environment"), {"A:1": "1"}, f"{SVC_PATH}.environment", "key 'A:1' must match"),
    ((*SVC, "environment"), {"A\n": "1"}, f"{SVC_PATH}.environment", "must match"),
    ((*SVC, "environment"), {"A" * 256: "1"}, f"{SVC_PATH}.environment", "at most 255"),
    ((*SVC, "environment"), {"A": 1}, f"{SVC_PATH}.environment.A", "expected string, got number"),
    ((*SVC, "environment"), {"A": None}, f"{SVC_PATH}.environment.A", "got null"),
    ((*SVC, "environment"), ["A=1"], f"{SVC_PATH}.environment", "expected object, got array"),
    # ConfigVarObject
    (("config",), {"A-B": "1"}, "config", "key 'A-B' must match ^[a-zA-Z_][a-zA-Z0-9_:]*$"),
    (("config",), {":A": "1"}, "config", "must match"),
    (("config",), {"A": True}, "config.A", "expected string, got boolean"),
    (("config",), "A=1", "config", "expected object, got string"),
    # LabelObject
    ((*SVC, "labels"), {"a b": "1"}, f"{SVC_PATH}.labels", "key 'a b' must match ^[!#-&(-_a-~]+$"),
    ((*SVC, "labels"), {'a"b': "1"}, f"{SVC_PATH}.labels", "must match"),
    ((*SVC, "labels"), {"a'b": "1"}, f"{SVC_PATH}.labels", "must match"),
    ((*SVC, "labels"), {"a`b": "1"}, f"{SVC_PATH}.labels", "must match"),
    ((*SVC, "labels"), {"caf\u00e9": "1"}, f"{SVC_PATH}.labels", "must match"),
    ((*SVC, "labels"), {"": "1"}, f"{SVC_PATH}.labels", "must match"),
    ((*SVC, "labels"), {"io.balena.x": 1}, f"{SVC_PATH}.labels['io.balena.x']",
     "expected string, got number"),  # fmt: skip
    # DockerName keys for services, volumes and networks
    (("apps", APP_UUID, "releases", COMMIT, "services"), {"-x": {}},
     f"apps.{APP_UUID}.releases.{COMMIT}.services",
     "key '-x' must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),  # fmt: skip
    (("apps", APP_UUID, "releases", COMMIT, "volumes"), {"a b": {}},
     f"apps.{APP_UUID}.releases.{COMMIT}.volumes", "key 'a b' must match"),  # fmt: skip
    (("apps", APP_UUID, "releases", COMMIT, "networks"), {"": {}},
     f"apps.{APP_UUID}.releases.{COMMIT}.networks", "key '' must match"),  # fmt: skip
    (("apps", APP_UUID, "releases", COMMIT, "volumes"), {"data": []},
     f"apps.{APP_UUID}.releases.{COMMIT}.volumes.data", "expected object, got array"),  # fmt: skip
    (("apps", APP_UUID, "releases", COMMIT, "networks"), {"n": "bridge"},
     f"apps.{APP_UUID}.releases.{COMMIT}.networks.n", "expected object, got string"),  # fmt: skip
    # record keys (UUIDs) are ShortStrings
    (("apps",), {"u" * 256: {}}, "apps", "at most 255"),
    (("apps", APP_UUID, "releases"), {"c" * 256: {}}, f"apps.{APP_UUID}.releases", "at most 255"),
]


@pytest.mark.parametrize(("path", "value", "where", "rule"), INVALID_CASES)
def test_invalid_basic_values(path: tuple[str, ...], value: Any, where: str, rule: str) -> None:
    err = refused(with_value(path, value))
    assert err.path == where
    assert str(err).startswith(f"Invalid target state: {where}: ")
    assert rule in err.rule


def test_error_message_example_from_the_brief() -> None:
    err = refused(with_value((*SVC, "environment"), {"A B": "x"}))
    assert str(err) == (
        f"Invalid target state: {SVC_PATH}.environment: key 'A B' must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
    )


def test_valid_keys_for_each_record_type() -> None:
    doc = with_value((*SVC, "environment"), {"_A1": "", "a_b": "x"})
    doc["config"] = {"HOST_CONFIG_hdmi_mode:1": "1", "_x": ""}
    odd_label = "a!#$%&()*+,-./:;<=>?@[\\]^_{|}~Z"
    doc["apps"][APP_UUID]["releases"][COMMIT]["services"]["api"]["labels"] = {odd_label: "v"}
    doc["apps"][APP_UUID]["releases"][COMMIT]["volumes"] = {"0a._-z": {"driver": "local"}}
    doc["apps"]["myapp"] = {"id": 2, "name": "not-hex-uuid"}
    device = parse_target_device(doc)
    api = device.apps[APP_UUID].services["api"]
    assert api.environment == {"_A1": "", "a_b": "x"} and api.labels == {odd_label: "v"}
    assert device.config == {"HOST_CONFIG_hdmi_mode:1": "1", "_x": ""}
    assert device.apps[APP_UUID].release.volumes == {"0a._-z": {"driver": "local"}}
    assert device.apps["myapp"].release is None


REQUIRED = [
    ("name",),
    ("config",),
    ("apps",),
    ("apps", APP_UUID, "id"),
    ("apps", APP_UUID, "name"),
    ("apps", APP_UUID, "releases", COMMIT, "id"),
    (*SVC, "id"),
    (*SVC, "image_id"),
    (*SVC, "image"),
    (*SVC, "environment"),
    (*SVC, "labels"),
]


@pytest.mark.parametrize("path", REQUIRED)
def test_required_fields(path: tuple[str, ...]) -> None:
    err = refused(with_value(path, DELETE))
    assert err.path == ".".join(path) and err.rule == "is required"


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        ((*SVC, "running"), "true", "expected boolean, got string"),
        ((*SVC, "running"), 1, "expected boolean, got number"),
        ((*SVC, "contract"), None, "expected object, got null"),
        ((*SVC, "contract"), [], "expected object, got array"),
        ((*SVC, "composition"), [], "expected object, got array"),
        ((*SVC, "composition"), {"x": float("inf")}, "inf is not a JSON number"),
        (("apps", APP_UUID, "is_host"), "yes", "expected boolean, got string"),
        (("apps", APP_UUID, "is_host"), None, "expected boolean, got null"),
        (("apps", APP_UUID, "class"), "device", "must be one of 'fleet', 'app', 'block', got 'device'"),
        (("apps", APP_UUID, "class"), ["fleet"], "must be one of"),
        (("apps", APP_UUID, "releases"), [], "expected object, got array"),
        (("apps", APP_UUID, "releases", COMMIT, "services"), "x", "expected object, got string"),
        (("apps", APP_UUID, "releases", COMMIT, "services", "api"), None, "got null"),
    ],
)
def test_wrong_types_name_field_and_expected_type(path: tuple[str, ...], value: Any, rule: str) -> None:
    err = refused(with_value(path, value))
    assert err.path.startswith(".".join(path)) and rule in err.rule


def test_composition_is_not_validated_but_must_be_json() -> None:
    odd = {"anything": {"nested": [1, "two", None, {"x": True}]}, "weird key!": 1.5}
    device = parse_target_device(with_value((*SVC, "composition"), odd))
    assert device.apps[APP_UUID].services["api"].composition == odd
    deep: Any = 1
    for _ in range(80):
        deep = [deep]
    err = refused(with_value((*SVC, "composition"), {"x": deep}))
    assert "nested deeper than" in err.rule


# ----------------------------------------------------------------------- defaults (§2.2)
def minimal_device() -> dict[str, Any]:
    return {
        "name": "d",
        "config": {},
        "apps": {
            "u": {
                "id": 1,
                "name": "a",
                "releases": {"c": {"id": 2, "services": {"s": _minimal_service()}}},
            }
        },
    }


def _minimal_service() -> dict[str, Any]:
    return {"id": 3, "image_id": 4, "image": "busybox", "environment": {}, "labels": {}}


def test_defaults() -> None:
    app = parse_target_device(minimal_device()).apps["u"]
    assert (app.app_class, app.parent_app, app.is_host) == ("fleet", None, False)
    assert app.release.volumes == {} and app.release.networks == {}
    svc = app.services["s"]
    assert (svc.running, svc.contract, svc.composition) == (True, None, {})


def test_null_means_default_for_with_default_fields() -> None:
    doc = minimal_device()
    app = doc["apps"]["u"]
    app["class"] = None
    release = app["releases"]["c"]
    release.update(volumes=None, networks=None)
    release["services"]["s"]["running"] = None
    parsed = parse_target_device(doc).apps["u"]
    assert parsed.app_class == "fleet" and parsed.services["s"].running is True
    release["services"] = None
    assert parse_target_device(doc).apps["u"].services == {}
    app["releases"] = None
    assert parse_target_device(doc).apps["u"].release is None


def test_empty_config_and_apps_are_valid() -> None:
    assert parse_target_device({"name": "", "config": {}, "apps": {}}) == TargetDevice("", {}, {})


def test_app_classes_and_host_fields() -> None:
    for cls in ("fleet", "app", "block"):
        doc = minimal_device()
        doc["apps"]["u"].update({"class": cls, "is_host": True, "parent_app": "p"})
        app = parse_target_device(doc).apps["u"]
        assert (app.app_class, app.is_host, app.parent_app) == (cls, True, "p")
        assert app.to_v3()["class"] == cls and app.to_v3()["is_host"] is True


# ------------------------------------------------------------------- first release only
def test_only_the_first_release_is_used() -> None:
    doc = minimal_device()
    second = {"id": 9, "services": {"other": _minimal_service()}}
    doc["apps"]["u"]["releases"]["later"] = second
    app = parse_target_device(doc).apps["u"]
    assert app.release.commit == "c" and list(app.services) == ["s"]
    assert list(app.to_v3()["releases"]) == ["c"]


def test_later_releases_are_still_validated() -> None:
    doc = minimal_device()
    doc["apps"]["u"]["releases"]["later"] = {"services": {}}
    assert refused(doc).path == "apps.u.releases.later.id"


# ------------------------------------------------------------------ image normalisation
@pytest.mark.parametrize(
    ("image", "normalised"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:", "busybox:latest"),
        ("reg:5000/a/b", "reg:5000/a/b:latest"),
        (f"a/b:tag@{DIGEST}", f"a/b@{DIGEST}"),
        (f"a/b@{DIGEST}", f"a/b@{DIGEST}"),
        ("a/b:1.2", "a/b:1.2"),
        ("localhost/foo", "localhost/foo:latest"),
        ("localhost:5000/foo:bar", "localhost:5000/foo:bar"),
        ("registry2.resin.io/superapp/abcdef", "registry2.resin.io/superapp/abcdef:latest"),
        (API_IMAGE, API_IMAGE),
    ],
)
def test_image_normalisation(image: str, normalised: str) -> None:
    assert normalise_image(image) == normalised
    assert normalise_image(normalised) == normalised
    doc = with_value((*SVC, "image"), image)
    assert parse_target_device(doc).apps[APP_UUID].services["api"].image == normalised


def test_split_image() -> None:
    assert split_image("reg.io:5000/org/app:v1") == ("reg.io:5000", "org/app", "v1", None)
    assert split_image("busybox") == (None, "busybox", "latest", None)
    assert split_image(f"a/b:t@{DIGEST}") == (None, "a/b", "t", DIGEST)
    assert split_image(f"a/b@{DIGEST}") == (None, "a/b", None, DIGEST)


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        ("", "must not be empty"),
        ("a/b@sha256:xyz", "invalid image reference"),
        ("a@md5:" + "0" * 31, "invalid image reference"),
        ("a\nb", "invalid image reference"),
        ("x" * 250, "once normalised"),
        (".x/", "ambiguous image reference"),
        (None, "expected string, got null"),
    ],
)
def test_invalid_images(image: Any, rule: str) -> None:
    err = refused(with_value((*SVC, "image"), image))
    assert err.path == f"{SVC_PATH}.image" and rule in err.rule


def test_normalise_image_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Invalid image name"):
        normalise_image("a@bad")


# ---------------------------------------------------------------------- label renaming
def test_resin_labels_are_renamed() -> None:
    labels = {
        "io.resin.features.resin-api": "1",
        "io.resin.update.strategy": "kill-then-download",
        "com.example.resin": "kept",
        "io.resinx": "kept too",
    }
    assert normalise_labels(labels) == {
        "io.balena.features.balena-api": "1",
        "io.balena.update.strategy": "kill-then-download",
        "com.example.resin": "kept",
        "io.resinx": "kept too",
    }


@pytest.mark.parametrize(
    "labels",
    [
        {"io.resin.features.dbus": "resin", "io.balena.features.dbus": "balena"},
        {"io.balena.features.dbus": "balena", "io.resin.features.dbus": "resin"},
    ],
)
def test_explicit_balena_label_wins_whatever_the_order(labels: dict[str, str]) -> None:
    doc = with_value((*SVC, "labels"), labels)
    svc = parse_target_device(doc).apps[APP_UUID].services["api"]
    assert svc.labels == {"io.balena.features.dbus": "balena"}


def test_label_too_long_after_renaming_is_refused() -> None:
    key = "io.resin." + "resin" * 49  # 254 characters, 299 once renamed
    err = refused(with_value((*SVC, "labels"), {key: "1"}))
    assert "once io.resin is renamed" in err.rule


# -------------------------------------------------------------------- v2 local (§2.5.1)
def v2_body() -> dict[str, Any]:
    return {
        "local": {
            "name": "my-device",
            "config": {"RESIN_SUPERVISOR_LOCAL_MODE": "1"},
            "apps": {
                "1011": {
                    "name": "localapp",
                    "commit": "localcommit",
                    "releaseId": "1",
                    "services": {
                        "23": {
                            "serviceName": "main",
                            "serviceId": 23,
                            "imageId": 34,
                            "image": "localimage",
                            "environment": {"FOO": "bar"},
                            "labels": {"io.resin.features.dbus": "1"},
                            "running": False,
                            "contract": {"requires": []},
                            "network_mode": "host",
                            "restart": "always",
                            "ports": ["80:80"],
                        }
                    },
                    "volumes": {"data": {}},
                    "networks": {"net": {"driver": "bridge"}},
                }
            },
        },
        "force": True,
    }


def test_v2_local_conversion() -> None:
    device = from_v2_local(v2_body(), current_name="current")
    assert (device.name, device.config) == ("my-device", {"RESIN_SUPERVISOR_LOCAL_MODE": "1"})
    app = device.apps["1011"]
    assert (app.uuid, app.id, app.name, app.app_class) == ("1011", 1011, "localapp", "fleet")
    assert (app.release.commit, app.release.id) == ("localcommit", 1)
    assert app.release.volumes == {"data": {}}
    assert app.release.networks == {"net": {"driver": "bridge"}}
    svc = app.services["main"]
    assert (svc.name, svc.id, svc.image_id, svc.image) == ("main", 23, 34, "localimage:latest")
    assert svc.environment == {"FOO": "bar"} and svc.labels == {"io.balena.features.dbus": "1"}
    assert svc.running is False and svc.contract == {"requires": []}
    assert svc.composition == {"network_mode": "host", "restart": "always", "ports": ["80:80"]}
    assert parse_target_device(device.to_v3()) == device


def test_v2_without_commit_has_no_release() -> None:
    for commit in (DELETE, None, ""):
        body = v2_body()
        app = body["local"]["apps"]["1011"]
        if commit is DELETE:
            del app["commit"]
        else:
            app["commit"] = commit
        del app["releaseId"]
        # Services without a commit would be dropped silently (a misspelt `commit` removed the app).
        err = refused(copy.deepcopy(body), lambda d: from_v2_local(d, current_name="c"))
        assert (err.path, err.rule) == ("local.apps.1011.commit", "is required when the app has services")
        app["services"] = {}
        converted = from_v2_local(body, current_name="c").apps["1011"]
        assert converted.release is None and converted.to_v3()["releases"] == {}


def test_v2_name_and_config_fallbacks() -> None:
    body = v2_body()
    del body["local"]["name"], body["local"]["config"]
    device = from_v2_local(body, current_name="current")
    assert device.name == "current" and device.config == {}
    body["local"]["name"] = None
    assert from_v2_local(body, current_name="current").name == "current"
    # Only the documented empty shape removes every app; anything else that says nothing is refused.
    assert from_v2_local({"local": {"apps": {}}}, current_name="cur") == TargetDevice("cur", {}, {})
    for empty, where in (({}, "local"), ({"local": None}, "local"), ({"apps": {}}, "local"),
                         ({"local": {}}, "local.apps"), ({"local": {"apps": None}}, "local.apps")):
        err = refused(empty, lambda d: from_v2_local(d, current_name="cur"))
        assert err.path == where and err.rule.startswith("is required"), err


def test_v2_volumes_and_networks_default_to_empty_but_services_are_required() -> None:
    body = v2_body()
    app = body["local"]["apps"]["1011"]
    del app["volumes"], app["networks"]
    app["services"] = {}
    release = from_v2_local(body, current_name="c").apps["1011"].release
    assert (release.services, release.volumes, release.networks) == ({}, {}, {})
    app["servics"] = app.pop("services")
    err = refused(body, lambda d: from_v2_local(d, current_name="c"))
    assert err.path == "local.apps.1011.services" and "(found 'servics')" in err.rule


@pytest.mark.parametrize(
    ("mutate", "where", "rule"),
    [
        (lambda b: b.update(local="x"), "local", "expected object, got string"),
        (lambda b: b["local"].update(apps=[]), "local.apps", "expected object, got array"),
        (lambda b: b["local"]["apps"].update(abc={}), "local.apps", "key 'abc' must be a numeric app id"),
        (lambda b: b["local"]["apps"].update({"01": {}}), "local.apps", "numeric app id"),
        (lambda b: b["local"]["apps"]["1011"].update(commit=5), "local.apps.1011.commit",
         "expected string, got number"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"]["services"]["23"].pop("serviceName"),
         "local.apps.1011.services.23.serviceName", "is required"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"]["services"].update(
            {"24": {**b["local"]["apps"]["1011"]["services"]["23"]}}),
         "local.apps.1011.services.24.serviceName", "duplicate service name 'main'"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"]["services"]["23"].pop("environment"),
         "services.main.environment", "is required"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"]["services"]["23"].update(imageId="x"),
         "services.main.imageId", "got 'x'"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"].pop("releaseId"),
         "local.apps.1011.releaseId", "is required"),  # fmt: skip
        (lambda b: b["local"]["apps"]["1011"].pop("name"), "local.apps.1011.name", "is required"),
        (lambda b: b["local"]["apps"]["1011"]["services"].update(x={"serviceName": "x"}),
         "local.apps.1011.services.x", "got 'x'"),  # fmt: skip
        (lambda b: b["local"].update(name="a\nb"), "local.name", "newline"),
        (lambda b: b["local"]["config"].update({"A B": "1"}), "local.config", "must match"),
    ],
)
def test_v2_errors(mutate: Any, where: str, rule: str) -> None:
    body = v2_body()
    mutate(body)
    err = refused(body, lambda d: from_v2_local(d, current_name="c"))
    assert err.path == where and rule in err.rule


# ---------------------------------------------------------------------- apps.json (§11.2)
def apps_json_v3() -> dict[str, Any]:
    """Like the reference's test/data/apps.json."""
    return {
        "config": {"RESIN_HOST_CONFIG_gpu_mem": "256", "RESIN_HOST_LOG_TO_DISPLAY": "0"},
        "apps": {
            "myapp": {
                "id": 1234,
                "name": "superapp",
                "releases": {
                    "abcdef": {
                        "id": 1,
                        "services": {
                            "someservice": {
                                "id": 123,
                                "image_id": 12345,
                                "image": "registry2.resin.io/superapp/abcdef",
                                "environment": {},
                                "labels": {"io.resin.something": "bar"},
                            }
                        },
                    }
                },
            }
        },
    }


def test_apps_json_v3() -> None:
    preload = parse_apps_json(apps_json_v3(), current_name="current")
    assert isinstance(preload, Preload) and not preload.pin_device and not preload.is_empty
    device = preload.device
    assert device.name == "current"
    assert device.config == {"RESIN_HOST_CONFIG_gpu_mem": "256", "RESIN_HOST_LOG_TO_DISPLAY": "0"}
    app = device.apps["myapp"]
    assert (app.id, app.name, app.app_class, app.release.commit, app.release.id) == (
        1234, "superapp", "fleet", "abcdef", 1
    )  # fmt: skip
    svc = app.services["someservice"]
    assert (svc.id, svc.image_id) == (123, 12345)
    assert svc.image == "registry2.resin.io/superapp/abcdef:latest"
    assert svc.labels == {"io.balena.something": "bar"}
    assert preload.pin_target() is None


def test_apps_json_pin_device() -> None:
    doc = apps_json_v3()
    doc["pinDevice"] = True
    doc["apps"]["blockapp"] = {**doc["apps"]["myapp"], "class": "block", "id": 9}
    doc["apps"] = {"blockapp": doc["apps"].pop("blockapp"), **doc["apps"]}
    preload = parse_apps_json(doc, current_name="c")
    assert preload.pin_device and preload.pin_target() == {"app": 1234, "commit": "abcdef"}
    doc["pinDevice"] = "yes"
    err = refused(doc, lambda d: parse_apps_json(d, current_name="c"))
    assert err.path == "pinDevice" and "expected boolean" in err.rule


@pytest.mark.parametrize("releases", [{}, None, DELETE])
def test_apps_json_v3_requires_a_release(releases: Any) -> None:
    doc = apps_json_v3()
    if releases is DELETE:
        del doc["apps"]["myapp"]["releases"]
    else:
        doc["apps"]["myapp"]["releases"] = releases
    err = refused(doc, lambda d: parse_apps_json(d, current_name="c"))
    assert isinstance(err, AppsJsonParseError)
    assert str(err) == "Invalid apps.json: apps.myapp.releases: must have at least 1 release"


@pytest.mark.parametrize("doc", [{}, [], {"config": {}, "apps": {}}, {"config": None, "apps": None}])
def test_empty_apps_json(doc: Any) -> None:
    preload = parse_apps_json(doc, current_name="c")
    assert preload.is_empty and preload.device == TargetDevice("c", {}, {})


def test_apps_json_config_only_is_not_empty() -> None:
    assert not parse_apps_json({"config": {"A": "1"}}, current_name="c").is_empty


@pytest.mark.parametrize("key", ["123", "0", "1.0"])
def test_apps_json_v2_needs_the_api(key: str) -> None:
    doc = {"config": {}, "apps": {key: {"name": "a", "commit": "c", "services": {}}}}
    with pytest.raises(AppsJsonParseError) as info:
        parse_apps_json(doc, current_name="c")
    assert str(info.value) == V2_APPS_JSON_MESSAGE
    assert isinstance(info.value, TargetStateError)
    assert V2_APPS_JSON_MESSAGE.startswith("Cannot migrate from v2 apps.json without Internet")


def legacy_entry(**overrides: Any) -> dict[str, Any]:
    entry = {
        "appId": 1234,
        "name": "legacyapp",
        "commit": "abcdef",
        "imageId": "registry2.resin.io/legacyapp/abcdef",
        "env": {"FOO": "bar", "RESIN_DEVICE_UUID": "dropped", "RESIN": "kept"},
        "config": {"RESIN_HOST_CONFIG_gpu_mem": "16"},
    }
    entry.update(overrides)
    return entry


def test_legacy_array_conversion_with_defaults() -> None:
    preload = parse_apps_json([legacy_entry()], current_name="c")
    assert not preload.pin_device
    assert preload.device.config == {"RESIN_HOST_CONFIG_gpu_mem": "16"}
    assert list(preload.device.apps) == ["user-app"]
    app = preload.device.apps["user-app"]
    assert (app.uuid, app.id, app.name, app.app_class) == ("user-app", 1234, "legacyapp", "fleet")
    release = app.release
    assert (release.commit, release.id) == ("abcdef", 1)
    assert release.volumes == {"resin-data": {}} and release.networks == {}
    assert list(release.services) == ["main"]
    main = release.services["main"]
    assert main.name == "main"
    assert (main.id, main.image_id) == (1, 1)
    assert main.image == "registry2.resin.io/legacyapp/abcdef:latest"
    assert main.environment == {"FOO": "bar", "RESIN": "kept"}
    assert main.running is True
    assert main.contract is None
    assert main.labels == {
        "io.balena.features.kernel-modules": "1",
        "io.balena.features.firmware": "1",
        "io.balena.features.dbus": "1",
        "io.balena.features.supervisor-api": "1",
        "io.balena.features.balena-api": "1",
        "io.balena.update.strategy": "download-then-kill",
        "io.balena.update.handover-timeout": "",
        "io.balena.legacy-container": "1",
    }
    assert main.composition == {
        "restart": "always",
        "privileged": True,
        "networkMode": "host",
        "volumes": ["resin-data:/data"],
    }


def test_legacy_array_config_overrides_and_merge() -> None:
    first = legacy_entry(config={"RESIN_SUPERVISOR_UPDATE_STRATEGY": "kill-then-download", "A": "1"})
    second = legacy_entry(
        name="second",
        env=None,
        config={
            "A": "2",
            "RESIN_SUPERVISOR_UPDATE_STRATEGY": "hand-over",
            "RESIN_SUPERVISOR_HANDOVER_TIMEOUT": "60000",
            "RESIN_APP_RESTART_POLICY": "on-failure",
        },
    )
    preload = parse_apps_json([first, second], current_name="c")
    assert preload.device.config == {
        "RESIN_SUPERVISOR_UPDATE_STRATEGY": "hand-over",
        "A": "2",
        "RESIN_SUPERVISOR_HANDOVER_TIMEOUT": "60000",
        "RESIN_APP_RESTART_POLICY": "on-failure",
    }
    app = preload.device.apps["user-app"]  # every entry has this uuid: the last one wins
    assert app.name == "second"
    main = app.services["main"]
    assert main.environment == {}
    assert main.labels["io.balena.update.strategy"] == "hand-over"
    assert main.labels["io.balena.update.handover-timeout"] == "60000"
    assert main.composition["restart"] == "on-failure"


@pytest.mark.parametrize(
    ("entry", "where", "rule"),
    [
        ("x", "[0]", "expected object, got string"),
        (legacy_entry(commit=None), "[0].commit", "expected string, got null"),
        (legacy_entry(commit=""), "[0].commit", "must not be empty"),
        (legacy_entry(env=["A=1"]), "[0].env", "expected object"),
        (legacy_entry(config=[]), "[0].config", "expected object"),
        (legacy_entry(config={"A": 1}), "config.A", "expected string, got number"),
        (legacy_entry(appId="x"), "apps.user-app.id", "got 'x'"),
        (legacy_entry(imageId=None), "apps.user-app.releases.abcdef.services.main.image", "got null"),
        ({k: x for k, x in legacy_entry().items() if k != "imageId"},
         "apps.user-app.releases.abcdef.services.main.image", "is required"),  # fmt: skip
        (legacy_entry(env={"A B": "1"}), "apps.user-app.releases.abcdef.services.main.environment",
         "key 'A B' must match"),  # fmt: skip
    ],
)
def test_legacy_array_errors(entry: Any, where: str, rule: str) -> None:
    err = refused([entry], lambda d: parse_apps_json(d, current_name="c"))
    assert isinstance(err, AppsJsonParseError)
    assert err.path == where and rule in err.rule
    assert str(err).startswith(f"Invalid apps.json: {where}: ")


def test_apps_json_round_trips_through_v3() -> None:
    preload = parse_apps_json([legacy_entry()], current_name="c")
    wire = preload.device.to_v3()
    again = parse_apps_json({"config": wire["config"], "apps": wire["apps"]}, current_name="c")
    assert again == preload


# ------------------------------------------------------------------ supervisor identity
def test_supervisor_app_uuids() -> None:
    expected = {
        "52e35121417640b1b28a680504e4039b",
        "900de4f3cbac4b9bbd232885a35e407b",
        "2e66a95795c149959c69472a8c2f92b8",
        "531b357e155c480cbec0fdd33041a1f5",
        "6822565f766e413e96d9bebe2227cdcc",
    }
    assert expected == SUPERVISOR_APP_UUIDS
    assert all(is_supervisor_app(u) for u in SUPERVISOR_APP_UUIDS)
    assert not is_supervisor_app(APP_UUID) and not is_supervisor_app("")
    aarch64 = "900de4f3cbac4b9bbd232885a35e407b"
    for name in ("main", "balena-supervisor", "core"):
        assert is_supervisor_service(aarch64, name)
    assert not is_supervisor_service(aarch64, "api") and not is_supervisor_service(APP_UUID, "main")


# ------------------------------------------------------------------- validation helpers
@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), ("0", 0), ("-0", 0), (" 12 ", 12), ("+5", 5), ("1.", 1), ("1.00", 1), (3.0, 3),
     ("0000000000000000000001", 1)],  # fmt: skip
)
def test_numeric_identifier_accepts(value: Any, expected: int) -> None:
    assert v.numeric_identifier(value, "x") == expected and v.is_numeric_identifier(value)


@pytest.mark.parametrize(
    "value",
    [-1, "-1", 0.5, "0.5", "", " ", "1e3", "0x0", "abc", False, None, [], {}, float("inf"),
     2**53, "9" * 5000],  # fmt: skip
)
def test_numeric_identifier_refuses(value: Any) -> None:
    assert not v.is_numeric_identifier(value)
    with pytest.raises(v.ValidationError) as info:
        v.numeric_identifier(value, "x")
    assert info.value.path == "x"


def test_string_identifier() -> None:
    assert v.string_identifier("12", "p") == "12"
    for bad in (12, "a", "-3"):
        with pytest.raises(v.ValidationError):
            v.string_identifier(bad, "p")


def test_docker_name_and_device_name_checks() -> None:
    assert v.docker_name("a.b_c-1", "p") == "a.b_c-1"
    for bad in ("", ".a", "a b", "a/b", "a\n", "x" * 256):
        with pytest.raises(v.ValidationError):
            v.docker_name(bad, "p")
    with pytest.raises(v.ValidationError, match="newline"):
        v.device_name("a\n", "p")


def test_with_default_and_optional_treat_null_as_the_reference_does() -> None:
    dflt = v.with_default(v.boolean, True)
    assert dflt(v.MISSING, "p") is True and dflt(None, "p") is True and dflt(False, "p") is False
    opt = v.optional(v.boolean)
    assert opt(v.MISSING, "p") is None
    with pytest.raises(v.ValidationError, match="got null"):
        opt(None, "p")
    with pytest.raises(v.ValidationError, match="is required"):
        v.short_string(v.MISSING, "p")


def test_paths_quote_odd_keys() -> None:
    assert v.child("", "a") == "a" and v.child("a", "b-1") == "a.b-1"
    assert v.child("a", 3) == "a[3]" and v.child("l", "io.x") == "l['io.x']"
    assert v.utf16_length("a\U0001f600") == 3


def test_non_string_keys_are_refused() -> None:
    err = refused(with_value((*SVC, "environment"), {1: "x"}))
    assert "key 1 must be a string" in err.rule


# ---------------------------------------------------------------------------- properties
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["1", "main", "busybox", "fleet", "A", "io.resin.x", "", "-1", "1.5"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _parsers() -> list[Any]:
    return [
        parse_target_device,
        lambda d: parse_target_state(d, DEVICE_UUID),
        lambda d: from_v2_local(d, current_name="n"),
        lambda d: parse_apps_json(d, current_name="n"),
    ]


def _check(parser: Any, doc: Any) -> None:
    """Either a model that round-trips through to_v3, or a TargetStateError: nothing else."""
    try:
        result = parser(doc)
    except TargetStateError as err:
        assert str(err)
        return
    device = result.device if isinstance(result, Preload) else result
    assert parse_target_device(json.loads(json.dumps(device.to_v3()))) == device


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_junk_only_ever_raises_target_state_error(doc: Any) -> None:
    for parser in _parsers():
        _check(parser, doc)


def _mutated(data: st.DataObject, doc: Any) -> Any:
    """``doc`` with one random subtree replaced by junk, or one random key removed."""
    doc = copy.deepcopy(doc)
    parent, key = None, None
    node = doc
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        return data.draw(json_values)
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = data.draw(json_values)
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_documents_parse_or_raise_target_state_error(data: st.DataObject) -> None:
    _check(lambda d: parse_target_state(d, DEVICE_UUID), _mutated(data, WORKED_EXAMPLE))
    _check(lambda d: from_v2_local(d, current_name="n"), _mutated(data, v2_body()))
    _check(lambda d: parse_apps_json(d, current_name="n"), _mutated(data, apps_json_v3()))
    _check(lambda d: parse_apps_json(d, current_name="n"), _mutated(data, [legacy_entry()]))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_image_parsing_never_crashes(image: str) -> None:
    try:
        normalised = normalise_image(image)
    except ValueError:
        return
    assert isinstance(normalised, str) and normalised
