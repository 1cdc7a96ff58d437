SUMMARY = "Waitress WSGI server"
DESCRIPTION = "Waitress 3.0.2 for kirkstone (meta-python has 2.1): the release pysupervisor is tested \
               with, with the 3.0.1 fixes for CVE-2024-49768 and CVE-2024-49769. Parsed only in kirkstone \
               builds (BBFILES_DYNAMIC on meta-balena-kirkstone)."
AUTHOR = "Zope Foundation and Contributors"
HOMEPAGE = "https://github.com/Pylons/waitress"
BUGTRACKER = "https://github.com/Pylons/waitress/issues"
SECTION = "devel/python"
LICENSE = "ZPL-2.1"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=78ccb3640dc841e1baecb3e27a6966b2"

SRC_URI[sha256sum] = "682aaaf2af0c44ada4abfb70ded36393f0e307f4ab9456a215ce0020baefc31f"

inherit pypi python_setuptools_build_meta

RDEPENDS:${PN} = "python3-core \
                  python3-io \
                  python3-logging \
                  python3-netclient \
                  python3-netserver \
                  python3-threading \
"

CVE_PRODUCT = "agendaless:waitress"
BBCLASSEXTEND = "native nativesdk"
