"""Issue #10 §3 end to end: a real ``python -m supervisor`` in local mode, the real engine and a
loopback registry (the harness of tests/test_update_strategies.py).

* A release that changes a network's config *and* moves the service on it to an image the device
  does not have converges: the image is pulled, the container recreated on the new network.
* Engine names are matched whole: a supervised volume ``x<appId>_data``, a network labelled with
  the app's id but named for another, and a container labelled as the app's ``main`` but named
  otherwise are not the app's. The app installs beside them; install, purge and
  ``/v2/cleanup-volumes`` leave them alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.state.images import is_old_supervisor_tag
from tests.fixtures.docker import TEST_LABEL
from tests.test_update_strategies import Lab, app_owner, lab, new_commit, publish_new  # noqa: F401 - fixtures

pytestmark = pytest.mark.docker


def _apply(lab: Lab, mutate: Any, *, timeout: float = 90.0) -> None:  # noqa: F811
    """POST the lab's target after ``mutate(app)`` edits its app, and wait until it is applied."""
    body = lab.target()
    mutate(body["local"]["apps"][str(lab.app_id)])
    offset = len(lab.sup.output())
    response = lab.sup.post("/v2/local/target-state", json=body)
    assert response.status_code == 200, response.text
    lab.wait_settled(offset, timeout=timeout)


def _on_backend(config: dict[str, Any]) -> Any:
    def mutate(app: dict[str, Any]) -> None:
        app["networks"] = {"backend": config}
        for service in app["services"].values():
            service["networks"] = ["backend"]

    return mutate


def test_a_network_change_with_a_new_image_pulls_it_and_converges(lab: Lab, publish_new) -> None:  # noqa: F811
    _apply(lab, _on_backend({"labels": {TEST_LABEL: "1"}}))
    old = lab.one("main")
    network = f"{lab.app_id}_backend"  # local mode: the app's uuid is its id
    assert network in lab.client.api.inspect_container(old["Id"])["NetworkSettings"]["Networks"]

    # download-then-kill (the default): the image must be fetched although the container has to go
    # for the network change; it used to wait for an image nobody fetched, forever.
    lab.new_release(main=publish_new())
    _apply(lab, _on_backend({"labels": {TEST_LABEL: "1", "rev": "2"}}))

    new = lab.one("main")
    assert new["Id"] != old["Id"] and new["State"] == "running"
    inspect = lab.client.api.inspect_container(new["Id"])
    assert inspect["Image"] == lab.client.api.inspect_image(lab.images["main"])["Id"]
    assert network in inspect["NetworkSettings"]["Networks"]
    assert lab.client.api.inspect_network(network)["Labels"]["rev"] == "2"


# ------------------------------------------------------------------------------ foreign names
def _ours(lab: Lab) -> dict[str, dict[str, Any]]:  # noqa: F811
    """The app's containers by service, the foreign one (named otherwise) left out."""
    found: dict[str, dict[str, Any]] = {}
    for entry in lab.containers():
        service = entry["Labels"]["io.balena.service-name"]
        if entry["Names"][0].startswith(f"/{service}_"):
            assert service not in found, lab.containers()
            found[service] = entry
    return found


def test_objects_named_like_the_apps_but_not_by_its_names_are_left_alone(
    lab: Lab, docker_client, docker_cleanup, busybox_image  # noqa: F811
) -> None:
    api, app_id = docker_client.api, lab.app_id
    supervised = {TEST_LABEL: "1", "io.balena.supervised": "true"}
    volume = api.create_volume(f"x{app_id}_data", labels=supervised)["Name"]
    docker_cleanup.append(volume)
    network = api.create_network(
        f"f{app_id}_default", labels={**supervised, "io.balena.app-id": str(app_id)}
    )["Id"]
    docker_cleanup.append(network)
    container_labels = {
        **supervised,
        "io.balena.app-id": str(app_id),
        "io.balena.app-uuid": str(app_id),
        "io.balena.service-id": "1",
        "io.balena.service-name": "main",
    }
    foreign = api.create_container(
        busybox_image, labels=container_labels, name=f"xmain_1_1_{new_commit()}"
    )["Id"]
    docker_cleanup.append(foreign)

    def survivors() -> tuple[str, str, str]:
        return (
            api.inspect_volume(volume)["Name"],
            api.inspect_network(network)["Name"],
            api.inspect_container(foreign)["Name"],
        )

    before = survivors()
    lab.volumes = {"main": ["data:/data"]}
    _apply(lab, lambda _app: None)  # installs (it used to loop on removeVolume -> 404)
    ours = _ours(lab)
    assert set(ours) == {"main"} and ours["main"]["State"] == "running"
    listing = docker_client.containers.get(ours["main"]["Id"]).exec_run(["ls", "/data"])
    assert (listing.exit_code, listing.output) == (0, b"")
    assert api.inspect_volume(f"{app_id}_data")["Labels"]["io.balena.app-uuid"] == str(app_id)
    assert survivors() == before

    offset = len(lab.sup.output())
    response = lab.sup.post("/v1/purge", json={"appId": app_id})
    assert (response.status_code, response.json()) == (200, {"Data": "OK", "Error": ""})
    lab.wait_settled(offset)
    assert survivors() == before
    assert _ours(lab)["main"]["State"] == "running"

    # An orphan of the app's own is removed, so the call did run; the foreign volume stays.
    orphan = api.create_volume(
        f"{app_id}_old", labels={**supervised, "io.balena.app-uuid": str(app_id)}
    )["Name"]
    docker_cleanup.append(orphan)
    response = lab.sup.get("/v2/cleanup-volumes")
    assert (response.status_code, response.json()) == (200, {"status": "success"})
    assert orphan not in {v["Name"] for v in (api.volumes() or {}).get("Volumes") or []}
    assert survivors() == before


# ------------------------------------------------------------------------------ image names
@pytest.mark.parametrize(
    ("tag", "old"),
    [
        ("balena/amd64-supervisor:v1.0.0", True),
        ("resin/amd64-supervisor:v1.0.0", True),  # the repository's old name
        ("balena/amd64-supervisor:v2.0.0", False),  # the running one
        ("balena/amd64-supervisor-extra:v1.0.0", False),
        ("myorg/balena/amd64-supervisor:v1.0.0", False),
        ("resin/amd64-resinsupervisor:v1.0.0", False),
        ("balena/amd64-supervisor", False),
        ("localhost:5000/balena/amd64-supervisor", False),
    ],
)
def test_old_supervisor_tags_are_matched_by_whole_repository(tag: str, old: bool) -> None:
    assert is_old_supervisor_tag(tag, "balena/amd64-supervisor:v2.0.0") is old


def test_only_a_leading_balena_is_the_old_resin_name() -> None:
    running = "registry2.balena-cloud.com/balena/amd64-supervisor:v2"
    assert is_old_supervisor_tag("registry2.balena-cloud.com/balena/amd64-supervisor:v1", running)
    assert not is_old_supervisor_tag("registry2.resin-cloud.com/resin/amd64-supervisor:v1", running)


def test_cleanup_volumes_takes_only_whole_app_volume_names() -> None:
    """``/v2/cleanup-volumes``'s choice: a supervised ``x7119_data`` is someone else's."""
    from supervisor.cleanup import orphaned_volumes

    supervised = {"io.balena.supervised": "true"}
    volumes = [{"Name": name, "Labels": supervised}
               for name in ("x7119_data", "7119_data", "7119_old", "07119_old", "a_7119_old", "7119_")]
    assert orphaned_volumes(volumes, [], {"7119_data"}, lambda app_id: app_id == 7119) == ["7119_old"]
