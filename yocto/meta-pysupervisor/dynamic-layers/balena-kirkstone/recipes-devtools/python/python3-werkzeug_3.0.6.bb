SUMMARY = "The comprehensive WSGI web application library"
DESCRIPTION = "Werkzeug 3 for kirkstone (meta-python has 2.1), which Flask 3 needs. Parsed only in \
               kirkstone builds (BBFILES_DYNAMIC on meta-balena-kirkstone)."
AUTHOR = "Pallets"
HOMEPAGE = "https://werkzeug.palletsprojects.com/"
BUGTRACKER = "https://github.com/pallets/werkzeug/issues"
SECTION = "devel/python"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=5dc88300786f1c214c1e9827a5229462"

SRC_URI[sha256sum] = "a8dd59d4de28ca70471a34cba79bed5f7ef2e036a76b3ab0835474246eb41f8d"

inherit pypi python_flit_core

RDEPENDS:${PN} = "python3-compression \
                  python3-core \
                  python3-crypt \
                  python3-datetime \
                  python3-email \
                  python3-html \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-markupsafe \
                  python3-netclient \
                  python3-threading \
"

CVE_PRODUCT = "palletsprojects:werkzeug"
BBCLASSEXTEND = "native nativesdk"
