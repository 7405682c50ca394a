#!/bin/sh
# Termux:Boot script (installed as ~/.termux/boot/mftd): keep the CPU awake while services start, then start mftd.
command -v termux-wake-lock >/dev/null 2>&1 && termux-wake-lock
# termux-services starts runsvdir for $PREFIX/var/service from this profile script.
if [ -f "$PREFIX/etc/profile.d/start-services.sh" ]; then
    . "$PREFIX/etc/profile.d/start-services.sh"
fi
command -v sv >/dev/null 2>&1 && sv up mftd
