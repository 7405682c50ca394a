#!/bin/sh
# Install mftd as a runit service for termux-services:
#   $PREFIX/var/service/mftd/{run,log/run}, $PREFIX/etc/mftd/mftd.conf (kept if present),
#   and a Termux:Boot script in ~/.termux/boot/mftd; then enable the service with sv-enable.
# Without Termux (no sv-enable, no termux-wake-lock) it still places the files and says what it skipped.
set -eu
: "${PREFIX:?PREFIX is not set: run this in Termux (or set PREFIX to where the service tree should go)}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
service="$PREFIX/var/service/mftd"
config_dir="$PREFIX/etc/mftd"
config="$config_dir/mftd.conf"
boot_dir="${TERMUX_BOOT_DIR:-$HOME/.termux/boot}"
skipped=""

if [ -x "$PREFIX/bin/sh" ]; then shell="$PREFIX/bin/sh"; else shell="$(command -v sh)"; fi

install_script() {  # SOURCE TARGET: copy with this system's shell in the #! line, executable
    mkdir -p "$(dirname "$2")"
    { echo "#!$shell"; tail -n +2 "$1"; } > "$2.tmp"
    chmod 755 "$2.tmp"
    mv "$2.tmp" "$2"
}

install_script "$here/run" "$service/run"
install_script "$here/log/run" "$service/log/run"
mkdir -p "$PREFIX/var/log/sv/mftd" "$config_dir"
echo "installed the service in $service"

if [ -e "$config" ]; then
    echo "kept the existing $config"
else
    exec_command="${MFTD_EXEC:-}"
    if [ -z "$exec_command" ]; then
        if command -v mftd >/dev/null 2>&1; then exec_command="$(command -v mftd)"
        elif [ -x "$repo/.venv/bin/mftd" ]; then exec_command="$repo/.venv/bin/mftd"
        else exec_command="mftd"; echo "warning: no mftd found; set MFTD_EXEC in $config"
        fi
    fi
    cat > "$config" <<CONF
# mftd service settings: shell syntax, every line exported to \`mftd serve\` (see mftd/settings.py).
MFTD_EXEC="$exec_command"
# MFTD_DATA_DIR="\$HOME/.local/share/mftd"
# MFTD_PORT=8765
# MFTD_REQUIRE_CHARGING=1
# MFTD_MIN_BATTERY_PERCENT=30
# MFTD_MAX_BATTERY_TEMP_C=42
# MFTD_ALLOWED_HOURS="23:00-07:00"
CONF
    echo "wrote $config (MFTD_EXEC=$exec_command)"
fi

mkdir -p "$boot_dir"
install_script "$here/boot.sh" "$boot_dir/mftd"
echo "installed the Termux:Boot script $boot_dir/mftd"
command -v termux-wake-lock >/dev/null 2>&1 || skipped="$skipped termux-wake-lock"

if command -v sv-enable >/dev/null 2>&1; then
    sv-enable mftd
    echo "enabled and started the service (sv-enable mftd); logs: $PREFIX/var/log/sv/mftd/current"
else
    skipped="$skipped sv-enable"
    echo "skipped sv-enable: not found (on Termux: pkg install termux-services, restart Termux, then sv-enable mftd)"
fi
if [ -n "$skipped" ]; then
    echo "not on Termux, skipped:$skipped"
fi
