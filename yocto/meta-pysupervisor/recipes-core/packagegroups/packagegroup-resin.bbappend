# pysupervisor in place of the stock container supervisor (balenaos-integration.md §4.6), for builds
# that opt in with DISTROOVERRIDES:append = ":pysupervisor" (yocto/README.md): adding the layer alone
# changes nothing. Both variables are weak defaults in packagegroup-resin; BALENA_REGISTER left alone
# would still pull the stock balena-supervisor package (and its networked do_install) into the image.
BALENA_SUPERVISOR:pysupervisor = "pysupervisor"
BALENA_REGISTER:pysupervisor = "pysupervisor"
