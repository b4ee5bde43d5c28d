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

# The recipe's hash is a label of the image: an image built by an older recipe is rebuilt.
recipe="$(cat "$0" | sha256sum | cut -c1-16)-$(printf '%s' "$suite $packages" | sha256sum | cut -c1-8)"
present="$(docker image inspect --format '{{ index .Config.Labels "io.codefleet.recipe" }}' "$image" 2>/dev/null || true)"
if [ "${CODEFLEET_IMAGE_REBUILD:-0}" != 1 ] && [ -n "$present" ] && { [ "$present" = "$recipe" ] || [ "$present" = "<no value>" ]; }; then
	log "$image is present"
	exit 0
fi
if [ -n "$present" ] && [ "$present" != "$recipe" ]; then
	CODEFLEET_IMAGE_REBUILD=1
	log "$image was built by an older recipe; rebuilding"
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
# to keep the image small; /workspace is where snippets run, owned by the sandbox user (uid 1000,
# with a passwd entry so programs that look the user up find it fast). C.UTF-8 goes into the
# locale archive: loading it from separate files costs every bash or python start a millisecond.
mmdebstrap --quiet --variant=apt --include="$packages" \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
	--customize-hook='chroot "$1" localedef --add-to-archive /usr/lib/locale/C.utf8' \
	--customize-hook='echo "sandbox:x:1000:1000:codefleet sandbox:/workspace:/bin/bash" >> "$1"/etc/passwd' \
	--customize-hook='echo "sandbox:x:1000:" >> "$1"/etc/group' \
	--customize-hook='mkdir -p "$1"/workspace && chown 1000:1000 "$1"/workspace' \
	"$suite" "$tarball" "$mirror"

docker import \
	--change 'WORKDIR /workspace' \
	--change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/bin/bash"]' \
	--change "LABEL io.codefleet.recipe=$recipe" \
	--message "codefleet sandbox image: Debian $suite with python3, bash, nodejs, typescript" \
	"$tarball" "$image" >/dev/null
log "built $image ($(docker image inspect --format '{{.Size}}' "$image") bytes)"
