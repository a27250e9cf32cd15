#!/bin/sh
# /init of vmm's default guest image (busybox sh; guest/build.ts writes the image).
#
# Protocol with the host (vmm implements the other side):
#   port 0xF5 (245)  one byte written once init is up; in a run over a root,
#                    once it waits for its command (vmm may snapshot it then).
#   port 0xF4 (244)  the exit status of the command, one byte: vmm exits with it.
# What to run is not part of the image: vmm appends a second cpio archive
# (guest/command.ts), and Linux unpacks both. Three modes:
#   /vmm/run.stdin `vmm run -- CMD`: the command comes on the vmm.stdin
#                  port (read_command below), then CMD runs over a root
#                  shared by virtio-fs (the host's own by default), with its
#                  stdin, stdout and stderr on virtio-serial ports; see
#                  host_run below.
#   /vmm/run.sh    `vmm run --busybox -- CMD`: CMD runs here, in the
#                  initramfs, with the console as its terminal.
#   neither        `vmm boot`: an interactive shell on the console.
# In both run modes the guest prints nothing of its own.
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
[ -f /vmm/run.sh ] || [ -f /vmm/run.stdin ] && run_mode=1

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
# Like modprobe, each module gets the parameters the kernel command line names
# for it (`kvm_amd.npt=0`); busybox insmod alone would not look there.
#
# A device's driver is loaded only when the VM has that device: each insmod
# costs tens of milliseconds where every guest instruction is emulated, and a
# `vmm run` has a console and shares, no disk, network card or rng. The virtio
# device IDs (virtio spec 5: 1 net, 2 block, 3 console, 4 entropy, 26 fs) are
# read once the transport has found the devices: virtio_mmio comes first in
# the list, and probes its devices as it loads. PCI is off (pci=off; vmm and
# microvm have none), so its transport is never loaded.
if [ -f /etc/vmm/modules ]; then
	read -r cmdline </proc/cmdline
	present=
	while read -r ko; do
		[ -n "$ko" ] || continue
		mod=${ko##*/}
		mod=${mod%.ko}
		mod=${mod//-/_} # busybox ash, the only shell this init runs in
		case $mod in
		virtio_pci*) continue ;;
		failover | net_failover | virtio_net) need=1 ;;
		virtio_blk) need=2 ;;
		virtio_console) need=3 ;;
		virtio_rng) need=4 ;;
		fuse | virtiofs) need=26 ;;
		*) need= ;;
		esac
		if [ -n "$need" ]; then
			if [ -z "$present" ]; then
				present=" "
				for f in /sys/bus/virtio/devices/*/device; do
					[ -r "$f" ] && read -r id <"$f" && present="$present$((id)) "
				done
			fi
			case $present in *" $need "*) ;; *) continue ;; esac
		fi
		set --
		for w in $cmdline; do
			case $w in "$mod".*=*) set -- "$@" "${w#"$mod".}" ;; esac
		done
		err=$(insmod "$ko" "$@" 2>&1) || warn "insmod ${ko##*/} failed: $err"
	done </etc/vmm/modules
fi

# With console=hvc0 the console is virtio-console, a module: when the kernel
# started init there was no console to open, so init has no stdin/stdout/stderr.
# Now there is one.
[ -t 1 ] || exec </dev/console >/dev/console 2>&1

# ---- vmm run over a root -------------------------------------------------
#
# The root (tag vmm.root) is mounted read-only at $R. What a system must write
# gets a tmpfs: /tmp and /run plainly, /etc, /var and the home directory as
# overlayfs with a tmpfs upper layer over the root's directory, so the guest
# may change them and the host never sees it. Fresh /proc, /sys, /dev,
# /dev/pts and /dev/shm go inside. The read-write shares (the working
# directory, each --rw) are mounted last, parents first, at their own paths.
#
# Then CMD runs chrooted into $R as the caller (/vmm/setids), through the
# root's own /bin/sh, which reads /vmm/exec.sh: environment, cd, exec CMD.
#
# Its stdio goes through pipes to the virtio-serial ports vmm.stdin,
# vmm.stdout and vmm.stderr, copied by cat. Why not the ports themselves: a
# port can be open only once (virtio_console.c port_fops_open answers EBUSY),
# and `echo oops >/dev/stderr` opens it again through /proc/self/fd/2 — a
# pipe can be opened any number of times.
#
# The status is reported only after both output copies have finished: a
# write() to a port returns once its bytes are in the virtqueue, and vmm
# serves every queue before it exits, so every byte reaches the host.

R=/vmm/root
RW=/vmm/rw

# Ends the run before CMD started: one line on the stderr port (or the kernel
# log when there is none), status 125 as env(1) and chroot(8) use.
run_fail() {
	if [ -n "$port_err" ]; then
		echo "vmm-guest: $*" >"$port_err"
	else
		echo "vmm-guest: $*" >/dev/kmsg
	fi
	return 125
}

# find_ports: sets port_in, port_out, port_err to the /dev nodes of the ports
# named vmm.stdin, vmm.stdout, vmm.stderr. Their names arrive from the host
# after the driver has loaded, so this waits for them, at most 10 s.
find_ports() {
	port_in= port_out= port_err=
	i=0
	while [ $i -lt 200 ]; do
		for p in /sys/class/virtio-ports/vport*; do
			[ -r "$p/name" ] || continue
			read -r name <"$p/name" || continue
			case "$name" in
			vmm.stdin) port_in=/dev/${p##*/} ;;
			vmm.stdout) port_out=/dev/${p##*/} ;;
			vmm.stderr) port_err=/dev/${p##*/} ;;
			esac
		done
		[ -n "$port_in" ] && [ -n "$port_out" ] && [ -n "$port_err" ] && [ -c "$port_err" ] && return 0
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}

# overlay DIR: the root's DIR becomes writable, over a tmpfs.
overlay() {
	up=$RW$1
	mkdir -p "$up/upper" "$up/work" || return 1
	# The merged directory takes its owner and mode from the upper one.
	chown "$(stat -c %u:%g "$R$1")" "$up/upper" && chmod "$(stat -c %a "$R$1")" "$up/upper" &&
		mount -t overlay overlay -o "lowerdir=$R$1,upperdir=$up/upper,workdir=$up/work" "$R$1"
}

# read_command: the command, from fd 3 (vmm.stdin), ahead of the host's
# stdin: a 16-byte header "vmm-cmd1" + the length in 8 hex digits, then a
# cpio archive of /vmm/run.conf, exec.sh, setids, settime and seed
# (guest/command.ts runPayload). dd with iflag=fullblock reads exactly that
# many bytes, never past them: what follows is the command's stdin.
read_command() {
	hdr=$(dd bs=16 count=1 iflag=fullblock <&3 2>/dev/null)
	case "$hdr" in
	vmm-cmd1[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
	*) run_fail "no command from vmm on vmm.stdin (read '$hdr')" || return ;;
	esac
	len=$((0x${hdr#vmm-cmd1}))
	dd bs="$len" count=1 iflag=fullblock of=/vmm/command.cpio <&3 2>/dev/null &&
		(cd / && cpio -i -d -u </vmm/command.cpio 2>/dev/null) || run_fail "cannot unpack the command vmm sent" || return
	rm -f /vmm/command.cpio
	# The clock first: a restored guest has the snapshot's (guest/settime.ts).
	/vmm/settime || warn "cannot set the clock"
	# A restored guest's random pool is the snapshot's: stir in fresh bytes.
	cat /vmm/seed >/dev/urandom 2>/dev/null
	rm -f /vmm/seed
}

host_run() {
	port_err=
	find_ports || run_fail "no vmm.stdin, vmm.stdout and vmm.stderr ports (is vmm's stdio device there?)" || return
	# Up, and waiting for a command: vmm may snapshot the guest here, before
	# it opened vmm.stdin or mounted anything, and restore this moment for
	# later runs (loop/run_cache.ts).
	port_write 245 0
	exec 3<"$port_in" || run_fail "cannot open vmm.stdin ($port_in)" || return
	read_command || return
	. /vmm/run.conf
	mkdir -p "$R" "$RW"
	mount -t virtiofs -o ro "$root_tag" "$R" || run_fail "cannot mount the root (virtio-fs tag $root_tag)" || return
	mount -t tmpfs -o mode=0755 vmm-rw "$RW" || run_fail "cannot mount a tmpfs for the overlays" || return
	i=0
	while [ $i -lt "$overlay_n" ]; do
		eval "d=\$overlay_$i"
		overlay "$d" || warn "cannot make $d writable"
		i=$((i + 1))
	done
	for d in /tmp /run; do
		mount -t tmpfs -o mode=1777 tmpfs "$R$d" 2>/dev/null || warn "cannot mount a tmpfs on $d"
	done
	chmod 0755 "$R/run" 2>/dev/null
	mount -t proc proc "$R/proc" 2>/dev/null || warn "cannot mount /proc"
	mount -t sysfs sysfs "$R/sys" 2>/dev/null || warn "cannot mount /sys"
	if mount -t devtmpfs devtmpfs "$R/dev" 2>/dev/null; then
		mkdir -p "$R/dev/pts" "$R/dev/shm"
		mount -t devpts -o ptmxmode=0666 devpts "$R/dev/pts"
		mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
		# What udev would add, and what programs open by name.
		ln -sf /proc/self/fd "$R/dev/fd"
		ln -sf /proc/self/fd/0 "$R/dev/stdin"
		ln -sf /proc/self/fd/1 "$R/dev/stdout"
		ln -sf /proc/self/fd/2 "$R/dev/stderr"
		[ -e "$R/dev/ptmx" ] || ln -sf pts/ptmx "$R/dev/ptmx"
	else
		warn "cannot mount /dev"
	fi
	# A home directory under /tmp or /run exists only once made.
	if [ -n "$home" ] && [ ! -d "$R$home" ] && mkdir -p "$R$home" 2>/dev/null; then
		chown "$uid:$gid" "$R$home"
	fi
	i=0
	while [ $i -lt "$mount_n" ]; do
		eval "tag=\$mount_tag_$i at=\$mount_at_$i"
		[ -d "$R$at" ] || mkdir -p "$R$at" 2>/dev/null
		mount -t virtiofs "$tag" "$R$at" || run_fail "cannot mount $at (virtio-fs tag $tag)" || return
		i=$((i + 1))
	done

	# The pipes, in the initramfs: outside the root, out of the command's sight.
	mkfifo /vmm/in /vmm/out /vmm/err || run_fail "cannot make the stdio pipes" || return
	cat /vmm/out >"$port_out" &
	copy_out=$!
	cat /vmm/err >"$port_err" &
	copy_err=$!
	cat <&3 >/vmm/in &
	exec 3<&-
	# In a subshell that becomes the command (exec): ash applies a simple
	# command's redirections in its own process, and would then print
	# "Killed" for a killed command on the command's stderr.
	(exec env -i /vmm/setids "$R" /bin/sh -c "$(cat /vmm/exec.sh)" vmm </vmm/in >/vmm/out 2>/vmm/err)
	status=$?

	# What CMD left running may hold the pipes open: end it all (but the
	# two copies), so the copies see end-of-file.
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		case "$p" in 1 | "$copy_out" | "$copy_err") continue ;; esac
		kill -9 "$p" 2>/dev/null
	done
	wait "$copy_out" "$copy_err"
	# Files written to the shares may still be dirty pages in the guest.
	sync
	return "$status"
}

if [ -f /vmm/run.stdin ]; then
	host_run
	status=$?
	port_write 244 "$status"
	poweroff -f
	exit "$status"
fi

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
