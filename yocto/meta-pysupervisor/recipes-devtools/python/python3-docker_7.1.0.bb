SUMMARY = "A Python library for the Docker Engine API"
DESCRIPTION = "docker-py, the Docker SDK pysupervisor drives balenaEngine with. Its only OE recipe is \
               in meta-virtualization, a layer balenaOS does not build with; this copy avoids adding that layer and \
               its dependencies."
AUTHOR = "Docker Inc."
HOMEPAGE = "https://github.com/docker/docker-py"
BUGTRACKER = "https://github.com/docker/docker-py/issues"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=34f3846f940453127309b920eeb89660"

SRC_URI[sha256sum] = "ad8c70e6e3f8926cb8a92619b832b4ea5299e2831c14284663184e200546fa6c"

# pyproject.toml builds with hatchling and hatch-vcs (the version comes from the sdist's PKG-INFO).
# python_pep517 with hatchling's backend is what scarthgap's python_hatchling class does; that class
# does not exist on kirkstone, and inheriting it would break parsing there for every recipe.
inherit pypi python_pep517
PEP517_BUILD_API = "hatchling.build"
DEPENDS += "python3-hatch-vcs-native python3-hatchling-native"

RDEPENDS:${PN} = "python3-core \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-netclient \
                  python3-requests \
                  python3-shell \
                  python3-urllib3 \
"

CVE_PRODUCT = "docker:docker-py"
BBCLASSEXTEND = "native nativesdk"
