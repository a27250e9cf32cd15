#!/bin/sh
# /init of vmm's default guest image (busybox sh; guest/build.ts writes the image).
#
# Protocol with the host (vmm implements the other side):
#   port 0xF5 (245)  one byte written once the modules are loaded: "init is up".
#   port 0xF4 (244)  the exit status of /vmm/run.sh, one byte: vmm exits with it.
# /vmm/run.sh is not part of the image: vmm appends a second cpio archive that
# holds it, and Linux unpacks both. With it the guest runs that one command and
# prints nothing of its own; without it the boot is interactive.
#
# Debian's cloud kernel has no /dev/port (CONFIG_DEVPORT is not set), so the
# ports are written by /bin/vmm-outb, a 104-byte static program that asks for
# the port with ioperm(2) and executes `out`.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
export TERM="${TERM:-linux}"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname vmm

run_mode=
[ -f /vmm/run.sh ] && run_mode=1

# Nothing of ours may reach the console in run mode: warnings go to the kernel log.
warn() {
	if [ -n "$run_mode" ]; then
		echo "vmm-guest: $*" >/dev/kmsg
	else
		echo "vmm-guest: $*"
	fi
}

# port_write PORT VALUE (decimal)
port_write() {
	if [ -x /bin/vmm-outb ]; then
		/bin/vmm-outb "$1" "$2" && return 0
	fi
	if [ -c /dev/port ]; then
		# shellcheck disable=SC2059 # the format is the octal escape of the byte
		printf "\\$(printf %o "$2")" | dd of=/dev/port bs=1 seek="$1" count=1 2>/dev/null && return 0
	fi
	warn "cannot write port $1"
	return 1
}

# One .ko path a line, dependencies first (resolved when the image was built).
if [ -f /etc/vmm/modules ]; then
	while read -r ko; do
		[ -n "$ko" ] || continue
		err=$(insmod "$ko" 2>&1) || warn "insmod ${ko##*/} failed: $err"
	done </etc/vmm/modules
fi

# With console=hvc0 the console is virtio-console, a module: when the kernel
# started init there was no console to open, so init has no stdin/stdout/stderr.
# Now there is one.
[ -t 1 ] || exec </dev/console >/dev/console 2>&1

port_write 245 0

if [ -n "$run_mode" ]; then
	cd /
	sh /vmm/run.sh </dev/console >/dev/console 2>&1
	status=$?
	sync
	port_write 244 "$status"
	poweroff -f
	exit "$status"
fi

echo "vmm-guest: ready"
# cttyhack opens the real console tty (ttyS0, hvc0…) as the controlling
# terminal, which /dev/console cannot be: that gives the shell job control.
setsid cttyhack sh -l
sync
poweroff -f
