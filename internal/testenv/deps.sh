#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian packages
# with apt-get when running as root; otherwise it prints the command to run.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || need+=(python3-websockets)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
for extra in "$@"; do
  case "$extra" in
    docker) command -v /usr/bin/docker >/dev/null 2>&1 || need+=(docker.io)
            command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
            command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap) ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${need[*]}; install with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
