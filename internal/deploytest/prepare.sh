#!/usr/bin/env bash
# Installs what the compose end-to-end test (go test -tags compose) needs,
# when it is missing: Docker's engine, docker-compose and debootstrap from
# Debian's packages, and a running engine. Run as root; idempotent.
set -euo pipefail

missing=()
[ -x /usr/bin/docker ] || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)

if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "prepare.sh: missing ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	echo "prepare.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# An engine that answers. Start Debian's only when none does.
if ! /usr/bin/docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "prepare.sh: no Docker engine answers; start one (systemctl start docker)" >&2
		exit 1
	fi
	if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
		:
	else
		service docker start >/dev/null 2>&1 || (nohup dockerd >/var/log/dockerd.log 2>&1 &)
	fi
	for _ in $(seq 1 60); do
		/usr/bin/docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
		sleep 1
	done
	/usr/bin/docker version --format 'docker engine {{.Server.Version}}' || {
		echo "prepare.sh: the Docker engine did not start" >&2
		exit 1
	}
fi
