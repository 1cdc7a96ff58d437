"""Hardware adapters: identify LED (GPIO or kernel LED), later D-Bus host and netlink."""
