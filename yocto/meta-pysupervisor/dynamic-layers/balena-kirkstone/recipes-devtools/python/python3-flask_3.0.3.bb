SUMMARY = "A simple framework for building complex web applications"
DESCRIPTION = "Flask 3 for kirkstone, whose meta-python has 2.1: pysupervisor's API uses the JSON \
               provider (app.json) of Flask >= 2.2. Parsed only in kirkstone builds (BBFILES_DYNAMIC on \
               meta-balena-kirkstone); this layer's priority makes it win over meta-python's."
AUTHOR = "Pallets"
HOMEPAGE = "https://flask.palletsprojects.com/"
BUGTRACKER = "https://github.com/pallets/flask/issues"
SECTION = "devel/python"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=ffeffa59c90c9c4a033c7574f8f3fb75"

SRC_URI[sha256sum] = "ceb27b0af3823ea2737928a4d99d125a06175b8512c445cbd9a9ce200ef76842"

# Built with flit_core (kirkstone has python_flit_core and flit-core 3.x).
inherit pypi python_flit_core

RDEPENDS:${PN} = "python3-blinker \
                  python3-click \
                  python3-core \
                  python3-itsdangerous \
                  python3-jinja2 \
                  python3-json \
                  python3-logging \
                  python3-werkzeug \
"

CVE_PRODUCT = "palletsprojects:flask"
BBCLASSEXTEND = "native nativesdk"
