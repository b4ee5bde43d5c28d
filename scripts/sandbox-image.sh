#!/usr/bin/env bash
# sandbox-image.sh: make sure the codefleet sandbox image exists in the local Docker engine.
#
#   present  -> done (a second or less)
#   else     -> docker pull IMAGE
#   else     -> build it from Debian packages: mmdebstrap a minimal Debian with python3, bash,
#               nodejs and typescript, then `docker import` it. Works with no container registry.
#
# Usage: scripts/sandbox-image.sh [IMAGE]   (default: $CODEFLEET_IMAGE or codefleet-sandbox:bookworm)
# Env:   CODEFLEET_DEBIAN_SUITE (bookworm), CODEFLEET_DEBIAN_MIRROR (http://deb.debian.org/debian),
#        CODEFLEET_IMAGE_PACKAGES (extra Debian packages), CODEFLEET_IMAGE_REBUILD=1 to force a build.
set -euo pipefail

image="${1:-${CODEFLEET_IMAGE:-codefleet-sandbox:bookworm}}"
suite="${CODEFLEET_DEBIAN_SUITE:-bookworm}"
mirror="${CODEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages="python3,bash,coreutils,nodejs,node-typescript,ca-certificates${CODEFLEET_IMAGE_PACKAGES:+,$CODEFLEET_IMAGE_PACKAGES}"

log() { printf 'sandbox-image: %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
	log "the Docker engine is not reachable (is dockerd running? is DOCKER_HOST right?)"
	exit 1
fi

if [ "${CODEFLEET_IMAGE_REBUILD:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
	log "$image is present"
	exit 0
fi

if [ "${CODEFLEET_IMAGE_REBUILD:-0}" != 1 ] && timeout 60 docker pull "$image" >/dev/null 2>&1; then
	log "$image pulled"
	exit 0
fi

log "building $image from Debian $suite packages ($packages)"
if ! command -v mmdebstrap >/dev/null 2>&1; then
	log "installing mmdebstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

tarball="$(mktemp --suffix=.tar)"
trap 'rm -f "$tarball"' EXIT

# --variant=apt: essential packages + apt, then ours. Docs, man pages and apt lists are dropped
# to keep the image small; /workspace is where snippets run.
mmdebstrap --quiet --variant=apt --include="$packages" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
	--customize-hook='mkdir -p "$1"/workspace && chmod 0777 "$1"/workspace' \
	"$suite" "$tarball" "$mirror"

docker import \
	--change 'WORKDIR /workspace' \
	--change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/bin/bash"]' \
	--message "codefleet sandbox image: Debian $suite with python3, bash, nodejs, typescript" \
	"$tarball" "$image" >/dev/null
log "built $image ($(docker image inspect --format '{{.Size}}' "$image") bytes)"
