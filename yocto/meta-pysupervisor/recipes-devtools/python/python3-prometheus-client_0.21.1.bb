SUMMARY = "Python client for the Prometheus monitoring system"
DESCRIPTION = "The exposition format and process collector pysupervisor serves GET /metrics with. \
               Shipped here for both releases: neither balenaos-integration.md's list of kirkstone \
               or scarthgap recipes nor this layer's dependencies could vouch for another layer's copy."
AUTHOR = "Prometheus authors"
HOMEPAGE = "https://github.com/prometheus/client_python"
BUGTRACKER = "https://github.com/prometheus/client_python/issues"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=86d3f3a95c324c9479bd8986968f4327"

SRC_URI[sha256sum] = "252505a722ac04b0456be05c05f75f45d760c2911ffc45f2a06bcaed9f3ae3fb"

# The sdist is prometheus_client-<version>.tar.gz; 0.21 still builds with setup.py (setuptools 59 on
# kirkstone is enough).
PYPI_PACKAGE = "prometheus_client"

inherit pypi setuptools3

RDEPENDS:${PN} = "python3-core \
                  python3-io \
                  python3-logging \
                  python3-netclient \
                  python3-netserver \
                  python3-threading \
"

CVE_PRODUCT = "prometheus:client_python"
BBCLASSEXTEND = "native nativesdk"
