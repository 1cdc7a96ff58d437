"""docs/LOCAL-MODE.md, run as written: its ``<!-- example: NAME -->`` shell blocks, in bash, against a real
supervisor process on the real engine. The doc's documented variables (``SUPERVISOR``, ``APP_ID``,
``IMAGE``, ``WEB_PORT``) point the commands at the test's supervisor, a random app id, an image built
offline and a free port; nothing else of the text is changed."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import test_apply_errors as apply_errors
from tests.fixtures.device import REPO, free_port, wait_for
from tests.test_reconcile import OWNER_LABEL, start_local

pytestmark = pytest.mark.docker

DOC = REPO / "docs/LOCAL-MODE.md"
BLOCK = re.compile(r"<!-- example: ([\w-]+) -->\s*```sh\n(.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    blocks = dict(BLOCK.findall(DOC.read_text()))
    assert set(blocks) >= {"settings", "target", "apply", "watch", "visit", "update", "remove"}, blocks
    return blocks


#: (app id, image owner token), the app removed afterwards: the apply-error tests' fixture.
app = apply_errors.app_owner


def test_the_local_mode_guide_works_as_written(start_supervisor, device_root: Path, tmp_path: Path,
                                               make_image, docker_client, app) -> None:
    app_id, owner = app
    image = f"pysupervisor-test/local-mode-doc-{uuid.uuid4().hex[:10]}:latest"
    make_image(image, labels={OWNER_LABEL: owner})
    sup = start_local(start_supervisor, device_root, [app_id])
    web_port = free_port()
    env = {"SUPERVISOR": sup.url, "APP_ID": str(app_id), "IMAGE": image, "WEB_PORT": str(web_port),
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    blocks = examples()
    work = tmp_path / "work"
    work.mkdir()

    def run(*names: str, timeout: float = 60) -> str:
        script = "\n".join(blocks[name] for name in ("settings", *names))
        result = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", script], cwd=work, env=env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (f"{names} failed:\n{result.stdout}\n{result.stderr}\n"
                                        f"{sup.output()[-4000:]}")
        return result.stdout

    def page() -> str:
        script = "\n".join((blocks["settings"], blocks["visit"]))
        result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                timeout=30)
        return result.stdout

    assert run("target", "apply").strip() == '{"status":"success","message":"OK"}'
    states = run("watch", timeout=240)
    assert '"greeter"' in states and '"writer"' in states and '"web"' in states
    wait_for(lambda: "Hello from the writer" in page(), "the web service to serve the greeting", sup,
             context=page)

    containers = {c["Labels"]["io.balena.service-name"]: docker_client.api.inspect_container(c["Id"])
                  for c in docker_client.api.containers(filters={"label": f"io.balena.app-id={app_id}"})}
    assert set(containers) == {"writer", "web"}
    for inspect in containers.values():
        assert set(inspect["NetworkSettings"]["Networks"]) == {f"{app_id}_backend"}
        assert inspect["Config"]["Healthcheck"]["Test"][0] == "CMD"
        assert any(m["Name"] == f"{app_id}_data" for m in inspect["Mounts"] if m["Type"] == "volume")
    assert containers["web"]["State"]["StartedAt"] > containers["writer"]["State"]["StartedAt"]  # depends_on

    old_web = containers["web"]["Id"]
    assert run("target", "update").strip() == '{"status":"success","message":"OK"}'
    run("watch", timeout=240)
    wait_for(lambda: "Bonjour from the writer" in page(), "the updated greeting", sup, context=page)
    listed = {c["Labels"]["io.balena.service-name"]: c["Id"]
              for c in docker_client.api.containers(filters={"label": f"io.balena.app-id={app_id}"})}
    assert set(listed) == {"writer", "web"}
    assert listed["web"] == old_web and listed["writer"] != containers["writer"]["Id"]  # only what changed

    run("remove", timeout=240)
    assert docker_client.api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"}) == []
    assert not docker_client.api.networks(names=[f"{app_id}_backend"])
    assert docker_client.api.inspect_volume(f"{app_id}_data")  # local mode keeps the data, as the doc says
