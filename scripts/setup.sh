#!/bin/bash
# Prepares a Debian bookworm machine (root) for vmm's tests: the Debian packages
# the project uses, then the guest images (scripts/build-guest.ts, on Bun).
# Idempotent: installed packages and built images are kept.
#
#   qemu-system-x86  nested KVM host for e2e tests (TCG -cpu max exposes SVM);
#                    version 10, from bookworm-backports on bookworm
#   busybox-static   the guest's whole userland
#   cpio             reference reader in guest/cpio_test.ts
#   kmod             depmod, to resolve module dependencies of Debian's kernels
#   xz-utils lz4 zstd  unpack the kernel inside a bzImage (PVH boot, no decompressor)
#   e2fsprogs        mkfs.ext4 for disk images
#   acpica-tools     iasl, to check vmm's ACPI tables
#   util-linux       setsid, nsenter and friends
#   iproute2         ip netns / veth / tap for network tests
#   ca-certificates  apt over https mirrors
#   umoci runc       build the container image with no daemon (scripts/build-image.ts)
#                    and run it in test/e2e/oci_test.ts
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-system-x86 busybox-static cpio kmod xz-utils lz4 zstd e2fsprogs acpica-tools util-linux iproute2 ca-certificates umoci runc)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${PKGS[@]}"
fi
# The nested host needs QEMU 10 (bookworm-backports), not bookworm's 7.2,
# whose TCG froze or corrupted the nested host about once a full suite
# (test/support/nested.ts; README). Trixie and later have 10 already.
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if ! dpkg --compare-versions "${qemu_ver:-0}" ge 1:10; then
	if grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release; then
		list=/etc/apt/sources.list.d/vmm-bookworm-backports.list
		if ! apt-cache policy | grep -q bookworm-backports; then
			echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$list" >/dev/null
		fi
		echo "setup: installing QEMU 10 from bookworm-backports (have ${qemu_ver:-none})"
		$SUDO apt-get update -q
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
	fi
fi
# apt-get download needs package lists even when everything is installed.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	$SUDO apt-get update -q
fi

BUN=./node_modules/.bin/bun
[ -x "$BUN" ] || { echo "setup: $BUN is missing: run npm install first" >&2; exit 1; }
"$BUN" scripts/build-guest.ts
