# nooelint: oelint.var.bbclassextend,oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER - a device service, never built for the build host; the project has no public home yet (set HOMEPAGE and BUGTRACKER once it has)
SUMMARY = "pysupervisor, the balena device supervisor as a native systemd service"
DESCRIPTION = "A device supervisor wire-compatible with the balena Supervisor, run by systemd as \
               balena-supervisor.service in place of the stock supervisor container: Type=notify, \
               and a watchdog fed only while every subsystem is healthy."
AUTHOR = "pysupervisor developers"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://pyproject.toml;beginline=11;endline=11;md5=3358005787c442581bead91c71afa94f"
CVE_PRODUCT = "pysupervisor"

# PEP 517 build (setuptools.build_meta, a class kirkstone and scarthgap both have); setup.py compiles
# ext/*.pyx with the native Cython for the target (Cython 3 on scarthgap, 0.29 on kirkstone).
# Kirkstone's setuptools (59) ignores pyproject.toml's [project] table, so setup.py reads it itself: with
# tomli where Python has no tomllib (3.10, kirkstone's).
DEPENDS += "${@'python3-tomli-native' if bb.utils.vercmp_string_op(d.getVar('PYTHON_BASEVERSION'), '3.11', '<') else ''} \
            python3-cython-native \
"

# Built from the checkout this layer lives in (yocto/meta-pysupervisor is inside the repository), so
# the image carries exactly the tree `pip wheel .` builds; the fetcher checksums these files, so any
# change rebuilds the package.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext - the sources are the repository's root
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../..:"
SRC_URI = "file://pyproject.toml;subdir=pysupervisor \
           file://setup.py;subdir=pysupervisor \
           file://README.md;subdir=pysupervisor \
           file://ext;subdir=pysupervisor \
           file://hw;subdir=pysupervisor \
           file://supervisor;subdir=pysupervisor \
           file://balena-supervisor.service \
           file://resin-data.mount \
           file://tmpfiles-pysupervisor.conf \
           file://supervisor.conf \
"
# UNPACKDIR: WORKDIR on kirkstone and scarthgap (meta-balena-<release> aliases it).
S = "${UNPACKDIR}/pysupervisor"

inherit python_setuptools_build_meta systemd balena-configurable

# Python >= 3.10: kirkstone (3.10) and scarthgap (3.12). Kirkstone's older build tools and Flask,
# Werkzeug, blinker, waitress and docker are handled by dynamic-layers/balena-kirkstone (yocto/README.md).

LED_FILE ?= "/dev/null"

do_configure:prepend() {
    # A developer's tree may hold extensions built in place for the build host, and bytecode.
    find ${S} \( -name '*.so' -o -name '*.c' -o -name '__pycache__' \) -prune -exec rm -rf {} +
    rm -rf ${S}/build
}

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/balena-supervisor.service ${D}${systemd_system_unitdir}/balena-supervisor.service
    install -m 0644 ${UNPACKDIR}/resin-data.mount ${D}${systemd_system_unitdir}/resin\\x2ddata.mount
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${UNPACKDIR}/tmpfiles-pysupervisor.conf ${D}${nonarch_libdir}/tmpfiles.d/pysupervisor.conf
    # Seeded onto the state partition by resin-state-reset (first boot, state reset); the unit reads
    # LED_FILE from it, resin-device-register SUPERVISOR_VERSION.
    install -d ${D}${sysconfdir}/balena-supervisor
    sed -e 's|@SUPERVISOR_VERSION@|${PV}|' -e 's|@LED_FILE@|${LED_FILE}|' \
        ${UNPACKDIR}/supervisor.conf > ${D}${sysconfdir}/balena-supervisor/supervisor.conf
    chmod 0644 ${D}${sysconfdir}/balena-supervisor/supervisor.conf
    install -d ${D}/resin-data
}

# systemd.bbclass enables it, and makes the resin-supervisor.service alias of its [Install] section.
SYSTEMD_SERVICE:${PN} = "balena-supervisor.service"
# balena-configurable: restart the unit when config.json's listenPort or balenaRootCA changes.
SYSTEMD_UNIT_NAMES = "balena-supervisor"

FILES:${PN} += "${systemd_system_unitdir} \
                ${nonarch_libdir}/tmpfiles.d/pysupervisor.conf \
                ${sysconfdir}/balena-supervisor/supervisor.conf \
                /resin-data \
"
CONFFILES:${PN} = "${sysconfdir}/balena-supervisor/supervisor.conf"

# Every module the package imports (tests/test_yocto_layer.py checks this list against the code): the
# standard library as oe-core's python3-manifest.json splits it, third-party packages by their OE names
# (oe-core and meta-python, or this layer for docker, sdbus and gpiozero). balena: the engine and its CLI (the unit's
# ExecStartPre); ca-certificates: REQUESTS_CA_BUNDLE.
RDEPENDS:${PN} = "balena \
                  ca-certificates \
                  python3-asyncio \
                  python3-compression \
                  python3-core \
                  python3-crypt \
                  python3-datetime \
                  python3-difflib \
                  python3-docker \
                  python3-email \
                  python3-flask \
                  python3-gpiozero \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-math \
                  python3-netclient \
                  python3-numbers \
                  python3-prometheus-client \
                  python3-psutil \
                  python3-requests \
                  python3-sdbus \
                  python3-shell \
                  python3-sqlite3 \
                  python3-threading \
                  python3-urllib3 \
                  python3-waitress \
                  python3-werkzeug \
                  systemd \
"
