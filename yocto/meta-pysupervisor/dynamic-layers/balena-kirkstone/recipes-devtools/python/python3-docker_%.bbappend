# Kirkstone has neither hatchling nor hatch-vcs (they arrive in later oe-core releases), which docker 7's
# sdist builds with. Install the wheel PyPI publishes for the same release instead: pure Python
# (py3-none-any), the files the sdist builds into, pinned by its sha256. Parsed only in kirkstone builds
# (BBFILES_DYNAMIC on meta-balena-kirkstone).
PYPI_SRC_URI = "https://files.pythonhosted.org/packages/py3/d/docker/docker-${PV}-py3-none-any.whl;unpack=0"
SRC_URI[sha256sum] = "c96b93b7f0a746f9e77d325bcfb87422a3d8bd4f03136ae8a85b37f1898d5fc0"
DEPENDS:remove = "python3-hatch-vcs-native python3-hatchling-native"

# The recipe's LIC_FILES_CHKSUM reads ${S}/LICENSE: the wheel carries the same file in its dist-info.
python do_unpack:append() {
    import shutil
    import zipfile
    s = d.getVar("S")
    with zipfile.ZipFile(d.expand("${UNPACKDIR}/docker-${PV}-py3-none-any.whl")) as wheel:
        wheel.extractall(s)
    shutil.copyfile(d.expand("${S}/docker-${PV}.dist-info/licenses/LICENSE"), s + "/LICENSE")
}

# Nothing to build: python_pep517's do_install installs the wheel from PEP517_WHEEL_PATH.
do_compile() {
    install -d ${PEP517_WHEEL_PATH}
    install -m 0644 ${UNPACKDIR}/docker-${PV}-py3-none-any.whl ${PEP517_WHEEL_PATH}/
}
