#!/usr/bin/env bash
# Installs the system packages Haven's tests and demo use, when missing:
#   qemu-utils (qemu-img, qemu-nbd) and nbdkit: real disk-image tools and NBD servers;
#   chromium and chromium-driver: the dashboard's tests drive a real headless browser.
# The Rust target and componentize-py are installed by build-plugins.sh.
set -euo pipefail
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
