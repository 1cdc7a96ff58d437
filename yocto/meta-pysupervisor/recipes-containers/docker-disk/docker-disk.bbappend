# The data partition image (resin-data.img) is made by a dind container running entry.sh, which also
# pulls the stock supervisor image into it. With pysupervisor (opted in by the "pysupervisor"
# override, yocto/README.md) the supervisor is in the rootfs: drop that pull, keep the rest (the
# healthcheck and host-extension images, docker/, resin-data/ and remove_me_to_reset, without which
# balena-data-reset wipes the data partition at first boot; balenaos-integration.md §4.5-4.6).
#
# entry.sh pulls only when SUPERVISOR_FLEET and SUPERVISOR_VERSION are both set, but the recipe aborts
# when they are empty, so they are emptied inside the script instead. The build fails loudly if a newer
# meta-balena changes the script so that this no longer holds.
do_compile:prepend:pysupervisor() {
    script="${UNPACKDIR}/entry.sh"
    if ! grep -q 'if \[ -n "${SUPERVISOR_FLEET}" \] && \[ -n "${SUPERVISOR_VERSION}" \]' "$script"; then
        bbfatal "docker-disk entry.sh no longer guards the supervisor pull as expected: update ${FILE}"
    fi
    if ! grep -q 'touch $DATA_VOLUME/remove_me_to_reset' "$script"; then
        bbfatal "docker-disk entry.sh no longer creates remove_me_to_reset: update ${FILE}"
    fi
    if ! grep -q '^# meta-pysupervisor' "$script"; then
        sed -i '1a # meta-pysupervisor: the supervisor is in the rootfs, no supervisor image to pull\nSUPERVISOR_FLEET=""\nSUPERVISOR_VERSION=""' "$script"
    fi
}
