SUMMARY = "Fast, simple object-to-object and broadcast signaling"
DESCRIPTION = "Blinker >= 1.6.2 for Flask 3 on kirkstone (meta-python has 1.4). Parsed only in \
               kirkstone builds (BBFILES_DYNAMIC on meta-balena-kirkstone)."
AUTHOR = "Jason Kirtland"
HOMEPAGE = "https://blinker.readthedocs.io/"
BUGTRACKER = "https://github.com/pallets-eco/blinker/issues"
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=42cd19c88fc13d1307a4efd64ee90e4e"

SRC_URI[sha256sum] = "8f77b09d3bf7c795e969e9486f39c2c5e9c39d4ee07424be2bc594ece9642d83"

inherit pypi python_flit_core

RDEPENDS:${PN} = "python3-asyncio \
                  python3-core \
"

CVE_PRODUCT = "blinker"
BBCLASSEXTEND = "native nativesdk"
