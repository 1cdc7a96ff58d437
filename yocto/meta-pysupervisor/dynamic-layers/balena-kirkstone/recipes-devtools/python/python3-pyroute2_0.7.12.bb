SUMMARY = "A pure Python netlink library"
DESCRIPTION = "pyroute2 0.7 for kirkstone, whose meta-python has 0.5 (a different API): pysupervisor \
               reads interface addresses over rtnetlink with it. Parsed only in kirkstone builds \
               (BBFILES_DYNAMIC on meta-balena-kirkstone)."
AUTHOR = "Peter Saveliev"
HOMEPAGE = "https://github.com/svinota/pyroute2"
BUGTRACKER = "https://github.com/svinota/pyroute2/issues"
SECTION = "devel/python"
LICENSE = "GPL-2.0-or-later | Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=dccbff78d7d79ae7e53953d43445c6e6 \
                    file://LICENSE.Apache-2.0;md5=34281e312165f843a2b7d1f114fe65ce \
                    file://LICENSE.GPL-2.0-or-later;md5=b234ee4d69f5fce4486a80fdaf4a4263"

SRC_URI[sha256sum] = "54d226fc3ff2732f49bac9b26853c50c9d05be05a4d9daf09c7cf6d77301eff3"

inherit pypi python_setuptools_build_meta

RDEPENDS:${PN} = "python3-core \
                  python3-ctypes \
                  python3-fcntl \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-multiprocessing \
                  python3-netclient \
                  python3-pickle \
                  python3-pkgutil \
                  python3-shell \
                  python3-threading \
"

CVE_PRODUCT = "pyroute2"
BBCLASSEXTEND = "native nativesdk"
