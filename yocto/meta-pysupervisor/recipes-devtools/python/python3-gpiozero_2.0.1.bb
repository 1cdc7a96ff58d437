SUMMARY = "A simple interface to GPIO devices with Raspberry Pi"
DESCRIPTION = "gpiozero drives LEDs, buttons and other GPIO devices; pysupervisor uses it for the \
               identify LED on a GPIO pin. No layer balenaOS builds with has a recipe for it."
AUTHOR = "Ben Nuttall, Dave Jones"
HOMEPAGE = "https://gpiozero.readthedocs.io/"
BUGTRACKER = "https://github.com/gpiozero/gpiozero/issues"
SECTION = "devel/python"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE.rst;md5=f7edfe7aeac02cb6c394726db07eb41c"

SRC_URI[sha256sum] = "d4ea1952689ec7e331f9d4ebc9adb15f1d01c2c9dcfabb72e752c9869ab7e97e"

inherit pypi setuptools3

RDEPENDS:${PN} = "python3-colorzero \
                  python3-core \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-math \
                  python3-threading \
"

CVE_PRODUCT = "gpiozero"
BBCLASSEXTEND = "native nativesdk"
