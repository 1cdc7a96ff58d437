# nooelint: oelint.var.bbclassextend - a native sdbus would need a native libsystemd; nothing needs one
SUMMARY = "Modern Python D-Bus library based on sd-bus from libsystemd"
DESCRIPTION = "python-sdbus binds libsystemd's sd-bus; pysupervisor talks to systemd, logind, \
               hostnamed and NetworkManager with it. Kirkstone's meta-python has no recipe and scarthgap's is 0.11.1, \
               older than the 0.12 pysupervisor needs: this layer's priority makes this recipe win."
AUTHOR = "igo95862"
HOMEPAGE = "https://github.com/python-sdbus/python-sdbus"
BUGTRACKER = "https://github.com/python-sdbus/python-sdbus/issues"
SECTION = "devel/python"
LICENSE = "LGPL-2.1-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=b234ee4d69f5fce4486a80fdaf4a4263 \
                    file://COPYING.LESSER;md5=4fbd65380cdd255951079008b364516c"

SRC_URI[sha256sum] = "41d61b76cc05a9ea41d10d70a11e9f9a86ed95f40f713630c5e18340e0e4c76f"

# setup.py asks pkg-config for the target's libsystemd and links it dynamically.
inherit pypi setuptools3 pkgconfig features_check
REQUIRED_DISTRO_FEATURES = "systemd"
DEPENDS += "systemd"

RDEPENDS:${PN} = "python3-asyncio \
                  python3-core \
                  python3-logging \
"

CVE_PRODUCT = "python-sdbus"
