"""yocto/meta-pysupervisor without bitbake (it cannot be installed here): oelint-adv for both
releases balenaOS boards build with, and the variables that matter read with oelint_parser.

The stdlib table below is oe-core's ``python3-manifest.json`` (which module files each ``python3-*``
package ships), for the modules the supervisor imports; modules compiled into the interpreter are
in ``python3-core``. A new import fails the RDEPENDS test until the table and the recipe name it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from oelint_parser.cls_item import FlagAssignment, Inherit, Variable
from oelint_parser.cls_stash import Stash
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import supervisor

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "yocto/meta-pysupervisor"
RECIPE = LAYER / f"recipes-supervisor/pysupervisor/pysupervisor_{supervisor.__version__}.bb"
FILES = RECIPE.parent / "files"
#: oelint's constant db extended with meta-balena's variables and the opt-in override.
CONSTANTS = REPO / "yocto/lint/oelint-constants.json"
RELEASES = ("kirkstone", "scarthgap")

#: Standard-library modules not in python3-core, and the oe-core package that ships each.
STDLIB_PACKAGES = {
    "concurrent": "python3-asyncio",
    "tarfile": "python3-compression",
    "hashlib": "python3-crypt",
    "datetime": "python3-datetime",
    "tempfile": "python3-io", "socket": "python3-io", "ssl": "python3-io",
    "email": "python3-email",
    "json": "python3-json",
    "logging": "python3-logging",
    "http": "python3-netclient", "urllib": "python3-netclient", "uuid": "python3-netclient",
    "secrets": "python3-netclient", "hmac": "python3-netclient", "base64": "python3-netclient",
    "fractions": "python3-numbers", "decimal": "python3-numbers",
    "shlex": "python3-shell",
    "string": "python3-stringold",
    "sqlite3": "python3-sqlite3",
    "queue": "python3-threading",
    "fcntl": "python3-fcntl", "ctypes": "python3-ctypes", "mmap": "python3-mmap",
    "random": "python3-math",
    "difflib": "python3-difflib",
}
#: In python3-core: the interpreter's built-in modules and the core package's files.
STDLIB_CORE = set(sys.builtin_module_names) | {
    "__future__", "abc", "argparse", "collections", "contextlib", "copy", "dataclasses", "enum",
    "functools", "io", "math", "os", "pathlib", "platform", "re", "select", "shutil", "signal",
    "stat", "struct", "subprocess", "threading", "time", "typing", "warnings", "weakref", "zlib",
    "codecs", "inspect", "ipaddress", "operator", "textwrap", "traceback", "types", "glob", "fnmatch",
    "importlib", "heapq", "bisect", "errno", "binascii",
    "array", "selectors",  # in oe-core python3-manifest.json's "core" (lib-dynload/array, selectors.py)
}
def _oelint(release: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("oelint-adv")
    assert exe, "oelint-adv is missing: pip install -e '.[test]' (it is in the test extra)"
    return subprocess.run(
        [exe, "--quiet", "--release", release, "--suppress", "oelint.vars.homepageping",
         f"--constantmods=+{CONSTANTS}", *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


#: BBFILES_DYNAMIC: the layer collection each release's build always has -> the folder it enables.
#: meta-balena-<release> is in every balenaOS build of that release and in no other (§4.2).
DYNAMIC = {"kirkstone": LAYER / "dynamic-layers/balena-kirkstone"}


def _files_in(root: Path) -> list[Path]:
    return [*root.glob("recipes-*/*/*.bb"), *root.glob("recipes-*/*/*.bbappend")]


def _layer_files(release: str | None = None) -> list[Path]:
    """What bitbake parses from this layer in a build of ``release`` (every file when None)."""
    dynamic = DYNAMIC.values() if release is None else [DYNAMIC[release]] if release in DYNAMIC else []
    roots = [LAYER, *dynamic]
    return sorted(f for root in roots for f in _files_in(root))


def test_dynamic_layers_match_layer_conf():
    """The per-release folders the tests use are the ones layer.conf's BBFILES_DYNAMIC enables."""
    conf = (LAYER / "conf/layer.conf").read_text().replace("\\\n", " ")
    entries = set(re.search(r'^BBFILES_DYNAMIC \+= "(.*?)"', conf, re.M)[1].split())
    expected = {f"balena-{release}:${{LAYERDIR}}/{folder.relative_to(LAYER)}/recipes-*/*/*.{ext}"
                for release, folder in DYNAMIC.items() for ext in ("bb", "bbappend")}
    assert entries == expected
    assert set((LAYER / "dynamic-layers").iterdir()) == set(DYNAMIC.values())
    assert all(_files_in(folder) for folder in DYNAMIC.values())


@pytest.mark.parametrize("release", RELEASES)
def test_oelint_clean(release):
    files = _layer_files(release)
    assert any(f.suffix == ".bbappend" for f in files) and RECIPE in files
    proc = _oelint(release, files)
    # Every finding, info included, is a failure: the layer is kept at zero.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_oelint_catches_a_broken_recipe(tmp_path):
    """The lint run above can fail: the same command on a recipe missing its license fails."""
    broken = tmp_path / "python3-broken_1.0.bb"
    broken.write_text('SUMMARY = "x"\nSRC_URI = "https://example.invalid/x.tar.gz"\n')
    proc = _oelint("scarthgap", [broken])
    assert proc.returncode != 0 and "LICENSE" in proc.stdout + proc.stderr


@cache
def _stash() -> Stash:
    stash = Stash(quiet=True)
    for path in _layer_files():
        if path.suffix == ".bb":
            stash.AddFile(str(path))
    stash.Finalize()
    return stash


def _var(path: Path, name: str, sub: str = "") -> list[str]:
    """The words of ``name`` (``name:sub``) in a recipe, as oelint_parser reads them."""
    words: list[str] = []
    for item in _stash().GetItemsFor(filename=str(path), classifier=Variable.CLASSIFIER,
                                     attribute=Variable.ATTR_VAR, attributeValue=name):
        if item.SubItem == sub:
            words += [w for w in item.get_items() if w]
    return words


def _flags(path: Path, name: str) -> dict[str, str]:
    items = _stash().GetItemsFor(filename=str(path), classifier=FlagAssignment.CLASSIFIER)
    return {i.Flag: i.ValueStripped for i in items if i.VarName == name}


def _inherits(path: Path) -> set[str]:
    items = _stash().GetItemsFor(filename=str(path), classifier=Inherit.CLASSIFIER)
    return {cls for i in items for cls in i.get_items()}


def _recipes() -> list[Path]:
    return [p for p in _layer_files() if p.suffix == ".bb"]


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.name)
def test_sources_have_checksums(path):
    sources = _var(path, "SRC_URI")
    if "pypi" in _inherits(path):  # pypi.bbclass fetches the sdist: its sha256 must be pinned
        assert re.fullmatch(r"[0-9a-f]{64}", _flags(path, "SRC_URI").get("sha256sum", "")), path.name
    for uri in sources:
        scheme = uri.split("://", 1)[0]
        if scheme in ("http", "https", "ftp"):
            assert re.fullmatch(r"[0-9a-f]{64}", _flags(path, "SRC_URI").get("sha256sum", "")), uri
        elif scheme == "git":
            assert _var(path, "SRCREV"), uri
        else:
            assert scheme == "file", uri
    for entry in _var(path, "LIC_FILES_CHKSUM"):
        assert re.search(r";md5=[0-9a-f]{32}\b", entry), entry


def test_recipe_builds_this_tree_with_cython_for_the_target():
    classes = _inherits(RECIPE)
    assert {"python_setuptools_build_meta", "systemd", "balena-configurable"} <= classes
    assert "python3-cython-native" in _var(RECIPE, "DEPENDS")
    # file:// sources exist (in files/ or, for the project, the repository root).
    for uri in _var(RECIPE, "SRC_URI"):
        name = uri.removeprefix("file://").split(";", 1)[0]
        assert (FILES / name).exists() or (REPO / name).exists(), name
    # What setup.py and pyproject.toml need is all fetched.
    fetched = {u.removeprefix("file://").split(";", 1)[0] for u in _var(RECIPE, "SRC_URI")}
    assert {"pyproject.toml", "setup.py", "README.md", "ext", "supervisor", "hw"} <= fetched
    # The license checksum is of the lines it names, as bitbake computes it.
    (entry,) = _var(RECIPE, "LIC_FILES_CHKSUM")
    params = dict(p.split("=", 1) for p in entry.split(";")[1:])
    lines = (REPO / "pyproject.toml").read_text().splitlines(keepends=True)
    chunk = "".join(lines[int(params["beginline"]) - 1:int(params["endline"])])
    assert "Apache-2.0" in chunk and hashlib.md5(chunk.encode()).hexdigest() == params["md5"]
    assert _var(RECIPE, "LICENSE") == ["Apache-2.0"]


def test_systemd_service_is_the_shipped_unit():
    assert _var(RECIPE, "SYSTEMD_SERVICE", "${PN}") == ["balena-supervisor.service"]
    assert _var(RECIPE, "SYSTEMD_UNIT_NAMES") == ["balena-supervisor"]
    unit = (FILES / "balena-supervisor.service").read_text()
    entries = re.findall(r"^(\w+)=(.*)$", unit, re.M)
    service = dict(entries)
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0 and service["Restart"] == "always"
    assert int(service["TimeoutStopSec"]) < 90  # os-config waits 90 s for the stop
    assert service["ExecStart"] == "/usr/bin/python3 -m supervisor"
    env = dict(v.split("=", 1) for k, v in entries if k == "Environment")
    assert env["DOCKER_HOST"] == "unix:///var/run/balena-engine.sock"
    assert env["SUPERVISOR_DATA_DIR"] == "/mnt/data/resin-data/balena-supervisor"
    assert env["SUPERVISOR_ROOT"] == "/"
    needs = " ".join(v for k, v in entries if k == "Requires")
    for dep in ("resin\\x2ddata.mount", "balena-device-uuid.service", "os-config-devicekey.service",
                "bind-etc-balena-supervisor.service", "extract-balena-ca.service"):
        assert dep in needs


def _runtime_imports() -> set[str]:
    """Top-level modules imported by the package at run time (not under ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    for path in [*(REPO / "supervisor").rglob("*.py"), *(REPO / "hw").rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - {"supervisor", "hw"}


def _oe_name(distribution: str) -> str:
    return "python3-" + re.sub(r"[-_.]+", "-", distribution).lower()


def test_rdepends_cover_every_runtime_import_and_dependency():
    rdepends = set(_var(RECIPE, "RDEPENDS", "${PN}"))
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_runtime_imports()):
        if module in STDLIB_CORE:
            needed = "python3-core"
        elif module in STDLIB_PACKAGES:
            needed = STDLIB_PACKAGES[module]
        elif module in sys.stdlib_module_names:
            pytest.fail(f"stdlib module {module!r}: add its python3-manifest.json package to "
                        f"STDLIB_PACKAGES (or STDLIB_CORE) in {__file__}")
        else:
            (dist, *_) = distributions[module]
            needed = _oe_name(dist)
        if needed not in rdepends:
            missing.append(f"{module} -> {needed}")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        needed = _oe_name(Requirement(spec).name)
        if needed not in rdepends:
            missing.append(f"pyproject {spec} -> {needed}")
    assert not missing, f"RDEPENDS:${{PN}} of {RECIPE.name} lacks: {missing}"


#: Python of each release's oe-core (balenaos-integration.md §4.1).
PYTHON = {"kirkstone": "3.10.20", "scarthgap": "3.12.13"}
#: Recipes the other layers of a balenaOS build have for each release (oe-core, meta-oe, meta-python,
#: meta-balena; balenaos-integration.md §4.2-4.4), with the version where §4.4 or the release's
#: meta-python names it (None: present, version not pinned down). A layer's recipe wins over these
#: (BBFILE_PRIORITY above meta-python's), whatever the version.
_COMMON = {"balena": None, "ca-certificates": None, "systemd": None, "python3-colorzero": "2.0",
           "python3-psutil": None, "python3-urllib3": None, "python3-jinja2": None,
           "python3-markupsafe": None, "python3-tomli": None, "python3-cython": None}
OTHER_LAYERS = {
    "kirkstone": _COMMON | {
        "python3-flask": "2.1.1", "python3-waitress": "2.1.2",
        "python3-werkzeug": "2.1.1", "python3-blinker": "1.4", "python3-click": "8.1.2",
        "python3-itsdangerous": "2.1.2", "python3-requests": "2.27.1"},
    "scarthgap": _COMMON | {
        "python3-flask": "3.0.3", "python3-waitress": "3.0.2",
        "python3-sdbus": "0.11.1", "python3-werkzeug": None, "python3-blinker": None,
        "python3-click": None, "python3-itsdangerous": None, "python3-requests": None},
}
#: oe-core's python3 recipe splits the standard library into these packages (python3-manifest.json);
#: each exists on both releases.
PYTHON3_SPLIT = set(STDLIB_PACKAGES.values()) | {
    "python3-core", "python3-html", "python3-multiprocessing", "python3-pickle", "python3-pkgutil",
    "python3-netserver", "python3-unixadmin", "python3-profile"}


def _ours(release: str) -> dict[str, Path]:
    """This layer's recipes in a build of ``release``: package name -> recipe."""
    return {p.name.split("_", 1)[0]: p for p in _layer_files(release) if p.suffix == ".bb"}


def _resolve(release: str, package: str) -> tuple[str, Version | None]:
    """Where ``package`` comes from in a build of ``release`` and its version (None if unknown)."""
    if package in PYTHON3_SPLIT:
        return "oe-core python3", Version(PYTHON[release])
    ours = _ours(release)
    if package in ours:
        return "this layer", Version(ours[package].stem.split("_", 1)[1])
    if package in OTHER_LAYERS[release]:
        known = OTHER_LAYERS[release][package]
        return "other layer", Version(known) if known else None
    pytest.fail(f"{release}: nothing provides {package!r} (no recipe in this layer, not in "
                f"balenaos-integration.md's lists)")


@pytest.mark.parametrize("release", RELEASES)
def test_rdepends_resolve_on_the_release(release):
    """Every RDEPENDS of pysupervisor, and of each recipe of this layer the build uses, names a package
    some layer of the release's balenaOS build provides; the versions meet pyproject.toml's minimums."""
    pending = ["pysupervisor"]
    seen: set[str] = set()
    ours = _ours(release)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name != "pysupervisor":
            _resolve(release, name)
        if name in ours:  # follow this layer's recipes; other layers' are theirs to keep whole
            pending += _var(ours[name], "RDEPENDS", "${PN}")
    assert "python3-flask" in seen and "python3-werkzeug" in seen
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert Version(PYTHON[release]) in SpecifierSet(pyproject["project"]["requires-python"])
    for spec in map(Requirement, pyproject["project"]["dependencies"]):
        origin, version = _resolve(release, _oe_name(spec.name))
        if version is not None:
            assert version in spec.specifier, f"{release}: {spec.name} {version} ({origin}) fails {spec}"


def test_pysupervisor_recipe_is_not_skipped():
    """No release-dependent skip: the recipe parses the same on kirkstone (Python 3.10) and scarthgap."""
    text = RECIPE.read_text()
    assert "SkipRecipe" not in text and "__anonymous" not in text
    # The one per-release difference is the build dependency of setup.py on tomli where there is no tomllib.
    assert "python3-tomli-native" in text and _resolve("kirkstone", "python3-tomli")


def test_docker_on_kirkstone_is_the_pypi_wheel_pinned():
    """kirkstone has no hatchling to build docker's sdist: its bbappend installs the release's wheel."""
    (append,) = DYNAMIC["kirkstone"].glob("recipes-devtools/python/python3-docker_*.bbappend")
    text = append.read_text()
    url = re.search(r'^PYPI_SRC_URI = "([^"]+)"', text, re.M)[1]
    assert url.startswith("https://files.pythonhosted.org/packages/py3/d/docker/docker-${PV}-py3-none-any.whl")
    assert re.search(r'^SRC_URI\[sha256sum\] = "[0-9a-f]{64}"$', text, re.M)
    assert "python3-hatchling-native" in re.search(r"^DEPENDS:remove = (.*)$", text, re.M)[1]


def test_layer_conf_and_stock_supervisor_replacement():
    conf = (LAYER / "conf/layer.conf").read_text()
    values = dict(re.findall(r'^(\w[\w-]*) = "(.*)"$', conf, re.M))
    assert set(values["LAYERSERIES_COMPAT_pysupervisor"].split()) == set(RELEASES)
    assert {"core", "meta-python", "balena-common"} <= set(values["LAYERDEPENDS_pysupervisor"].split())
    assert int(values["BBFILE_PRIORITY_pysupervisor"]) > 5  # above meta-python, for python3-sdbus
    group = (LAYER / "recipes-core/packagegroups/packagegroup-resin.bbappend").read_text()
    assert re.findall(r'^(BALENA_\w+):pysupervisor = "(\w+)"$', group, re.M) == [
        ("BALENA_SUPERVISOR", "pysupervisor"), ("BALENA_REGISTER", "pysupervisor")]
    disk = (LAYER / "recipes-containers/docker-disk/docker-disk.bbappend").read_text()
    assert "do_compile:prepend:pysupervisor()" in disk and "remove_me_to_reset" in disk


#: bbclasses each release's oe-core has that recipes here may use (balenaos-integration.md §4.3), plus
#: meta-balena-common's balena-configurable. A class missing on one release breaks parsing of the
#: whole build there, with or without the pysupervisor override.
CLASSES_COMMON = {"pypi", "setuptools3", "python_pep517", "python_setuptools_build_meta", "python_flit_core",
                  "systemd", "pkgconfig", "features_check", "balena-configurable"}
CLASSES = {"kirkstone": CLASSES_COMMON,
           "scarthgap": CLASSES_COMMON | {"python_hatchling", "python_maturin", "python_mesonpy"}}


@pytest.mark.parametrize("release", RELEASES)
def test_inherited_classes_exist_on_the_release(release):
    for path in (p for p in _layer_files(release) if p.suffix == ".bb"):
        assert _inherits(path) <= CLASSES[release], (path.name, _inherits(path) - CLASSES[release])
