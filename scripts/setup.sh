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

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${PKGS[@]}"; do
	[ "$p" = qemu-system-x86 ] || installed "$p" || missing+=("$p")
done
# The nested host needs QEMU 10, not bookworm's 7.2, whose TCG froze or
# corrupted the nested host about once a full suite (test/support/nested.ts;
# README): on bookworm it comes from bookworm-backports, whose list goes in
# before the one apt-get update, so that 7.2 is never fetched. Trixie and
# later have 10 already.
qemu=()
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
installed qemu-system-x86 && dpkg --compare-versions "${qemu_ver:-0}" ge 1:10 || qemu=(qemu-system-x86)
if [ ${#qemu[@]} -gt 0 ] && grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release; then
	qemu=(-t bookworm-backports qemu-system-x86)
	if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
		echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/vmm-bookworm-backports.list >/dev/null
	fi
fi
if [ ${#missing[@]} -gt 0 ] || [ ${#qemu[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]} ${qemu[*]}${qemu_ver:+ (have QEMU $qemu_ver)}"
	$SUDO apt-get update -q
	[ ${#missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
	[ ${#qemu[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${qemu[@]}"
fi
# apt-get download needs package lists even when everything is installed.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	$SUDO apt-get update -q
fi

BUN=./node_modules/.bin/bun
[ -x "$BUN" ] || { echo "setup: $BUN is missing: run npm install first" >&2; exit 1; }
"$BUN" scripts/build-guest.ts
