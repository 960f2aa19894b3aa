//! The guest agent: the `/init` of every guest, a busybox shell script, and the per-test files
//! it reads.
//!
//! The agent mounts the pseudo file systems, loads the requested kernel modules, draws a random
//! nonce and announces `READY`, runs the test with its output redirected to files, then sends
//! stdout, stderr and the kernel log as framed records (see [`crate::protocol`]) and waits for
//! the host to acknowledge or ask for a resend before powering off.

use std::collections::BTreeMap;

use orchestrator_core::Command;

/// Where the per-test files live in the guest.
pub const ORCH_DIR: &str = "orch";

/// The `/init` script. It loads `/orch/boot-modules` before it says `READY` (the artifact
/// channel's modules), reads `/orch/limit` (bytes of each stream to send), and runs the test:
/// `/orch/modules` (the test's own module files to `insmod`, dependencies first, each with the
/// `<module>.<param>=<value>` parameters of the kernel command line, as modprobe does; loaded in
/// the test phase, on the test's clock, after the kernel log line `qemu-runner: loading the
/// test's modules`; what loading them printed is kept in `/tmp/modules-kmsg.log` for the test),
/// `/orch/env` (sourced), then `/orch/run.sh` in `/work`.
/// While the test runs, a watcher stops it when the host sends `STOP` (its deadline) and, at
/// each `TICK` the host sends meanwhile, keeps the guest's copy of its output bounded (head and
/// tail, with the byte count).
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# Guest agent of qemu-runner. PID 1. Speaks ORCH1 records on the console.
B=/bin/busybox
$B mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin /work
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
# Without tmpfs (CONFIG_TMPFS) /tmp and /run stay on the initramfs root, writable too.
$B mount -t tmpfs tmpfs /tmp 2>/dev/null
$B mount -t tmpfs tmpfs /run 2>/dev/null
$B --install -s 2>/dev/null || $B --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# Makes /dev/<name> for each sysfs device directory given, from its `major:minor`, unless it
# exists: without devtmpfs (CONFIG_DEVTMPFS) /dev holds only the initramfs' console and null.
mknodes() {
    for d in "$@"; do
        [ -e "/dev/${d##*/}" ] || [ ! -r "$d/dev" ] && continue
        IFS=: read -r ma mi <"$d/dev"
        mknod "/dev/${d##*/}" c "$ma" "$mi"
    done
}
if [ ! -c /dev/urandom ]; then
    mknodes /sys/class/mem/null /sys/class/mem/zero /sys/class/mem/full /sys/class/mem/random \
        /sys/class/mem/urandom /sys/class/mem/kmsg /sys/class/tty/console /sys/class/tty/tty
    for d in $(cat /sys/class/tty/console/active); do mknodes "/sys/class/tty/$d"; done
fi
exec 0</dev/console 1>/dev/console 2>&1
stty -echo 2>/dev/null
nonce=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
# Never empty (the host ignores a READY without it): the kernel's random UUID otherwise.
[ -n "$nonce" ] || nonce=$(tr -d '-' </proc/sys/kernel/random/uuid)
say() { echo "ORCH1 $nonce $*"; }
# Loads the modules listed in file $1 (dependencies first), each with the
# `<module>.<param>=<value>` parameters of the kernel command line, as modprobe does.
load_modules() {
    for m in $(cat "$1"); do
        n=${m##*/}
        n=${n%.ko}
        n=${n//-/_}
        p=
        for a in $(cat /proc/cmdline); do
            case "$a" in "$n".*) p="$p ${a#"$n".}" ;; esac
        done
        insmod "$m" $p >/tmp/insmod.log 2>&1 || { echo "agent: insmod $m failed:"; cat /tmp/insmod.log; }
    done
}
# The boot's modules (the artifact channel's; a session's are all here): before READY, on the
# boot clock. A test's own modules load in the test phase, on its clock (see run_one).
# The kernel log is never cleared: the boot's messages (KUnit's results among them) stay in
# the test's `dmesg`, and a guest of its own sends the whole log since boot.
kmsg=/dev/null
if [ -s /orch/boot-modules ]; then
    load_modules /orch/boot-modules
    # What loading them printed (a test module's results) stays readable for the test.
    kmsg=/tmp/modules-kmsg.log
    dmesg >$kmsg 2>&1
fi
# A crashing user-space program leaves a core named after it and its signal.
echo '/tmp/orch/cores/core.%e.%s.%p' >/proc/sys/kernel/core_pattern 2>/dev/null
t=/sys/kernel/tracing

send() {
    f=/tmp/orch/$1
    cut=0
    [ -f "$f.cut" ] && read -r cut <"$f.cut"
    if [ ! -s "$f" ] && [ "$cut" = 0 ]; then
        # The MD5 of nothing: no process to start for an empty stream.
        say SEND "$1" 0 0 d41d8cd98f00b204e9800998ecf8427e
        say END "$1"
        return
    fi
    lim=${2:-$limit}
    total=$(stat -c %s "$f")
    # Cut by watch_test: the size is still the byte count, unless nothing came after the cut.
    [ "$total" -lt "$cut" ] && total=$cut
    sent=$total
    if [ "$total" -gt "$lim" ]; then
        half=$((lim / 2))
        rest=$((lim - half))
        after=$((total - cut))
        if [ "$cut" = 0 ]; then
            { head -c "$half" "$f"; tail -c "$rest" "$f"; } >"$f.sent"
        elif [ "$after" -ge "$rest" ]; then
            { cat "$f.head"; tail -c "$rest" "$f"; } >"$f.sent"
        else
            # Little came after the last cut: the tail is the end of what was kept then and
            # everything since.
            { cat "$f.head"; tail -c $((rest - after)) "$f.tail"; tail -c +$((cut + 1)) "$f"; } >"$f.sent"
        fi
        f="$f.sent"
        leftover=1
        sent=$lim
    fi
    sum=$(md5sum <"$f")
    say SEND "$1" "$total" "$sent" "${sum%% *}"
    base64 "$f" | sed "s/^/ORCH1 $nonce DATA $1 /"
    say END "$1"
}

# The channel word goes as constants (its size, MD5 and base64); `none` as an empty stream.
send_channel() {
    case "$channel" in
        virtio-serial) set -- 14 70cb1001a8aaa3524d5f8bf0146804fd dmlydGlvLXNlcmlhbAo= ;;
        serial-console) set -- 15 6b6ee7ac5bbab76c49eebee934fcf4be c2VyaWFsLWNvbnNvbGUK ;;
        *) return ;;
    esac
    say SEND channel "$1" "$1" "$2"
    say DATA channel "$3"
    say END channel
}

# Empties /work for the next test of a session; starts a process only when the last test
# left files there.
clean_work() {
    [ -d /work ] || mkdir -p /work
    for f in /work/* /work/.*; do
        case "$f" in
            /work/. | /work/..) continue ;;
        esac
        if [ -e "$f" ] || [ -L "$f" ]; then
            rm -rf /work
            mkdir -p /work
            return
        fi
    done
}

# Keeps the guest's copy of stream $1 bounded while the test runs: past $cap bytes stored, every
# process but this one and the agent is paused, the head (once) and the last bytes are put
# aside, the file is emptied and the size at the cut noted, and the test goes on. The test's
# writes continue at their offset, so the file's size stays the stream's byte count and what was
# cut is a hole that takes no memory.
bound() {
    f=/tmp/orch/$1
    set -- $(stat -c '%b %s' "$f" 2>/dev/null)
    [ -n "$1" ] && [ $(($1 * 512)) -gt "$cap" ] || return 0
    kill -s STOP -1 2>/dev/null
    stopped_all
    set -- $(stat -c %s "$f")
    half=$((limit / 2))
    # Each piece complete before it is used, and the cut noted before the file is emptied: a
    # watcher killed in the middle (the test ended) leaves pieces that `send` still adds up.
    [ -f "$f.head" ] || { head -c "$half" "$f" >"$f.h" && mv "$f.h" "$f.head"; }
    tail -c $((limit - half)) "$f" >"$f.t" && mv "$f.t" "$f.tail"
    echo "$1" >"$f.c" && mv "$f.c" "$f.cut"
    : >"$f"
    kill -s CONT -1 2>/dev/null
}

# Waits until every process but the kernel's, the agent and this one has stopped: `kill`
# returns once SIGSTOP is queued, and a write may still be under way on another CPU. Builtins
# only; gives up after 2000 rounds.
stopped_all() {
    read -r me rest </proc/self/stat
    i=0
    while [ "$i" -lt 2000 ]; do
        busy=
        for p in /proc/[0-9]*; do
            read -r line <"$p/stat" 2>/dev/null || continue
            n=${p#/proc/}
            [ "$n" = 1 ] || [ "$n" = 2 ] || [ "$n" = "$me" ] && continue
            # After the last `) `: the state, then the parent (2: a kernel thread).
            set -- ${line##*) }
            [ "$2" = 2 ] && continue
            case "$1" in
                T | t | Z | X | x) ;;
                *)
                    busy=1
                    break
                    ;;
            esac
        done
        [ -z "$busy" ] && return 0
        i=$((i + 1))
    done
}

# Runs beside the test (its pid in $tpid), killed by the agent when the test ends, blocked
# reading the console (never a read with a timeout: busybox drops what such a read took of a
# line when the timeout expires, and a guest busy with a flood can take that long over one).
# `STOP` (the test's deadline) makes it SIGTERM, then SIGKILL after 2 s, every process but the
# agent and itself; `TICK` (every half second while the test runs) makes it bound the guest's
# copy of the test's output.
watch_test() {
    cap=$((limit * 4))
    [ "$cap" -ge 1048576 ] || cap=1048576
    while read -r c rest; do
        case "$c" in
            STOP)
                kill -s TERM -1 2>/dev/null
                sleep 2
                [ -d "/proc/$tpid" ] && kill -s KILL -1 2>/dev/null
                exit 0
                ;;
            TICK)
                bound stdout
                bound stderr
                ;;
        esac
    done
}

# Mounts the test's root file system (/orch/rootfs: `9p`, or `blk <type> <options>`) read-only
# under an overlay whose upper layer is in memory, at /rootfs/merged, with /proc, /sys, /dev,
# /tmp (the agent's files and the core dumps), /work and /orch (the test, and busybox for
# enter.sh) bound in. Its messages name the kernel options a failure points to.
mount_root() {
    read -r kind fstype opts </orch/rootfs
    mkdir -p /rootfs/lower /rootfs/rw /rootfs/merged
    case "$kind" in
        9p)
            mount -t 9p -o "ro,trans=virtio,version=9p2000.L,cache=loose,msize=262144" orchroot /rootfs/lower || {
                echo "agent: cannot mount the root file system shared over 9p: the kernel needs CONFIG_NET_9P_VIRTIO and CONFIG_9P_FS (built in, or as modules of its module tree)"
                return 1
            }
            ;;
        blk)
            dev=
            for s in /sys/block/*; do
                [ "$(cat "$s/serial" 2>/dev/null)" = orchroot ] && dev=/dev/${s##*/}
            done
            [ -n "$dev" ] || {
                echo "agent: the root file system's disk did not appear: the kernel needs CONFIG_VIRTIO_BLK (built in, or as a module of its module tree)"
                return 1
            }
            mount -t "$fstype" -o "$opts" "$dev" /rootfs/lower || {
                echo "agent: cannot mount the root file system's disk $dev as $fstype: the kernel needs that file system (CONFIG_EXT4_FS, CONFIG_SQUASHFS)"
                return 1
            }
            ;;
    esac
    mount -t tmpfs -o "mode=0755" tmpfs /rootfs/rw && mkdir -p /rootfs/rw/upper /rootfs/rw/work &&
        mount -t overlay -o "lowerdir=/rootfs/lower,upperdir=/rootfs/rw/upper,workdir=/rootfs/rw/work" overlay /rootfs/merged || {
        echo "agent: cannot mount the overlay over the root file system: the kernel needs CONFIG_OVERLAY_FS and CONFIG_TMPFS_XATTR"
        return 1
    }
    for d in proc sys dev tmp work orch; do
        mkdir -p "/rootfs/merged/$d" && mount -o bind "/$d" "/rootfs/merged/$d" || {
            echo "agent: cannot bind /$d into the root file system"
            return 1
        }
    done
    ln /bin/busybox /orch/busybox 2>/dev/null || cp /bin/busybox /orch/busybox
}

# Reads the test's settings from /orch (a guest of its own, or a test sent as an archive; a
# test sent as text sets them as it arrives). Under TCG each system call costs tens of
# microseconds and each process milliseconds, so the per-test path keeps settings in variables.
load_settings() {
    limit=262144
    serial_limit=4194304
    test_id=
    tracing=
    acks=1
    [ -f /orch/limit ] && read -r limit </orch/limit
    [ -f /orch/serial-artifact-limit ] && read -r serial_limit </orch/serial-artifact-limit
    [ -f /orch/id ] && read -r test_id </orch/id
    [ -s /orch/trace ] && tracing=1
    [ -f /orch/noack ] && acks=
}

# Runs the test described by /orch and /work, then reports until the host acknowledges.
run_one() {
    # Tests this guest ran (the host knows an archive on the artifact port by it).
    nrun=$((nrun + 1))
    # What the previous test of a session left in /tmp/orch (only then a process to start).
    if [ -n "$leftover" ]; then
        rm -rf /tmp/orch
        mkdir -p /tmp/orch/cores
        leftover=
    fi
    extra=
    # Tracing asked for by the test: a tracer name, or trace events (they contain a colon).
    if [ -n "$tracing" ]; then
        mount -t tracefs nodev $t 2>/dev/null
        echo 0 >$t/tracing_on
        echo >$t/trace
        echo nop >$t/current_tracer
        echo >$t/set_event
        for e in $(cat /orch/trace); do
            case "$e" in
                *:*) echo "$e" >>$t/set_event ;;
                *) echo "$e" >$t/current_tracer ;;
            esac
        done
        echo 1 >$t/tracing_on
    fi
    cd /work
    (
        # The test's own modules load on its clock (test modules run their cases as they
        # load); what loading printed stays readable in /tmp/modules-kmsg.log (with the rest
        # of the kernel log since boot) and in its kernel log.
        if [ -s /orch/modules ]; then
            # A mark in the kernel log: what follows it was printed in the test phase.
            echo "<6>qemu-runner: loading the test's modules" >/dev/kmsg 2>/dev/null
            load_modules /orch/modules >&2
            dmesg >/tmp/modules-kmsg.log 2>&1
        fi
        # A root file system: mounted on the test's clock; a failure is the test's, with the
        # reason on its stderr.
        if [ -s /orch/rootfs ]; then
            mount_root >&2 || exit 125
        fi
        ORCH_TEST_ID=$test_id
        export ORCH_TEST_ID
        # The test sees none of the agent's functions and variables.
        unset -f say send send_channel clean_work load_settings run_one load_modules bound \
            watch_test stopped_all mount_root mknodes
        unset B nonce t limit lim f total sent half sum code channel files found g port p \
            serial_limit tries reply session quiet cmd n got ok i j name lines l empty s e m \
            test_id tracing acks leftover extra pending rest arg maybe kmsg a cut after tpid \
            wpid cap c me busy line kind fstype opts dev d ma mi nrun
        [ -f /orch/env ] && . /orch/env
        ulimit -c unlimited 2>/dev/null
        # run.sh either `exec`s the test or (a script for the default `sh -e`) sources it:
        # no shell is started only to be replaced.
        . /orch/run.sh
    ) </dev/null >/tmp/orch/stdout 2>/tmp/orch/stderr &
    tpid=$!
    # (A background job's input is /dev/null unless redirected: the watcher reads the host.)
    watch_test </dev/console &
    wpid=$!
    wait "$tpid"
    code=$?
    kill "$wpid" 2>/dev/null
    wait "$wpid"
    # A watcher killed in the middle of a cut leaves the test's other processes paused.
    kill -s CONT -1 2>/dev/null
    # Output the watcher cut: its pieces go with the next test's clean-up.
    [ -f /tmp/orch/stdout.cut ] || [ -f /tmp/orch/stderr.cut ] && leftover=1
    cd /
    if [ -n "$tracing" ]; then
        echo 0 >$t/tracing_on
        mkdir -p /work/.orch-trace && cat $t/trace >/work/.orch-trace/trace.txt && extra="$extra .orch-trace"
    fi
    set -- /tmp/orch/cores/*
    if [ -e "$1" ]; then
        mkdir -p /work/.orch-cores && mv /tmp/orch/cores/* /work/.orch-cores/ && extra="$extra .orch-cores"
    fi
    say EXIT "$code"
    channel=none
    # Streams that can only have content when the test collects artifacts.
    maybe="manifest missing"
    if [ -s /orch/artifacts ] || [ -n "$extra" ]; then
        maybe=
        leftover=1
        : >/tmp/orch/manifest
        : >/tmp/orch/missing
        cd /work
        files=
        # The globs as words (not yet expanded: a match with a space would be cut in two).
        set -f
        for g in $(cat /orch/artifacts) $extra; do
            set +f
            found=
            for f in $g; do
                [ -e "$f" ] && { found=1; break; }
            done
            # The glob, not its matches: expanded again where it is used, each match stays one
            # word whatever spaces or tabs its name holds.
            if [ -n "$found" ]; then files="$files $g"; else echo "$g" >>/tmp/orch/missing; fi
            set -f
        done
        set +f
        if [ -n "$files" ]; then
            # The channel is what this guest has: the host always offers the port, and it shows
            # up when virtio_console is built in or loaded (the host announces the port once the
            # driver is up, so a console device with no port yet is given a moment).
            port=
            i=0
            while :; do
                for p in /sys/class/virtio-ports/*; do
                    [ "$(cat "$p/name" 2>/dev/null)" = org.orch.artifacts ] && port=/dev/${p##*/} && mknodes "$p"
                done
                set -- /sys/bus/virtio/drivers/virtio_console/virtio*
                [ -z "$port" ] && [ -e "$1" ] && [ "$i" -lt 20 ] || break
                sleep 0.05
                i=$((i + 1))
            done
            # The manifest: a name per line. A name with a newline could forge a line (the
            # host checks every line anyway): it is left out here, and travels in the archive,
            # where the host refuses it by name.
            if [ -n "$port" ] && [ -c "$port" ]; then
                # Over the port, each file's size (no pass over the contents: the host checks
                # the sizes, the archive's structure and its end, see ARCHITECTURE.md), and the
                # archive behind a header naming this guest's test.
                find $files -type f ! -path '*
*' -exec stat -c '%s %n' {} + >/tmp/orch/manifest
                { echo "ORCH1 ARCHIVE $nrun" && tar -cf - $files; } >"$port" && channel=virtio-serial
            fi
            # Over the console, one md5sum for all files.
            if [ "$channel" = none ]; then
                find $files -type f ! -path '*
*' -exec md5sum {} + >/tmp/orch/manifest
                tar -cf /tmp/orch/artifacts $files && channel=serial-console
            fi
        fi
        cd /
    fi
    # A session test's kernel log came on the console; a guest of its own sends dmesg: the
    # whole log since boot, gzip'd (a few times fewer bytes over the console for one process).
    # Taken once the artifacts went over the port, so that they do not wait for it.
    [ -n "$session" ] || { dmesg 2>/dev/null | gzip >/tmp/orch/dmesg; leftover=1; }
    if [ "$channel" = serial-console ] && [ "$(wc -c </tmp/orch/artifacts)" -gt "$serial_limit" ]; then
        echo "(all: larger than the serial console limit of $serial_limit bytes)" >>/tmp/orch/missing
        channel=none
    fi
    tries=0
    while :; do
        empty=$maybe
        [ -n "$session" ] && empty="$empty dmesg"
        for s in stdout stderr dmesg manifest missing; do
            case " $empty " in
                *" $s "*) continue ;;
            esac
            if [ -s "/tmp/orch/$s" ] || [ -f "/tmp/orch/$s.cut" ]; then
                send "$s"
            else
                empty="$empty $s"
            fi
        done
        [ "$channel" = none ] && empty="$empty channel"
        say EMPTY $empty
        send_channel
        [ "$channel" = serial-console ] && send artifacts "$serial_limit"
        say EXIT "$code"
        say DONE
        tries=$((tries + 1))
        # Without a host to answer (a plain QEMU command line), go on at once.
        [ -n "$acks" ] || break
        # In a session the next test (or QUIT) acknowledges this one. A `TICK` the host sent
        # as the test ended is no answer.
        while :; do
            reply=
            if [ -n "$session" ]; then
                read -r reply rest || break
            else
                read -t 20 reply rest || break
            fi
            [ "$reply" = TICK ] || break
        done
        case "$reply" in
            ACK*) break ;;
            TEXT | RUN | QUIT)
                pending="$reply $rest"
                break
                ;;
        esac
        [ "$tries" -ge 5 ] && break
    done
}

say READY "$(uname -r)" "$(uname -m)"
session=
leftover=1
pending=
nrun=0
load_settings
if [ -f /orch/session ]; then
    session=1
    # The kernel log of a session test is what the kernel prints on the console while it runs:
    # every level goes to the console (no dmesg process per test).
    echo 8 >/proc/sys/kernel/printk
    # Session: the host sends each test either as `TEXT <files> <bytes> <test id>`, then per
    # file a `<name> <lines>` line and its lines (small all-text tests; only the files that
    # changed since the last test), or as `RUN <lines> <md5>` and base64 lines of a gzip'd cpio
    # archive holding /orch and /work; `QUIT` ends the session.
    while :; do
        cmd=
        if [ -n "$pending" ]; then
            set -- $pending
            cmd=$1 n=$2 sum=$3 arg=$4
            pending=
        else
            read -r cmd n sum arg || continue
        fi
        case "$cmd" in
            TEXT)
                test_id=$arg
                got=0
                ok=1
                i=0
                while [ "$i" -lt "$n" ]; do
                    read -r name lines || { ok=; break; }
                    case "$name" in
                        run.sh | test.sh | env | limit | artifacts | trace | serial-artifact-limit) ;;
                        *) ok=; break ;;
                    esac
                    case "$lines" in
                        '' | *[!0-9]*) ok=; break ;;
                    esac
                    : >"/orch/$name"
                    j=0
                    l=
                    while [ "$j" -lt "$lines" ]; do
                        IFS= read -r l
                        printf '%s\n' "$l" >>"/orch/$name"
                        got=$((got + ${#l} + 1))
                        j=$((j + 1))
                    done
                    # The one-line settings, kept as variables.
                    case "$name" in
                        limit) limit=$l ;;
                        serial-artifact-limit) serial_limit=$l ;;
                        trace) tracing=${l:+1} ;;
                    esac
                    i=$((i + 1))
                done
                if [ -n "$ok" ] && [ "$got" = "$sum" ]; then
                    clean_work
                    run_one
                else
                    say BADRUN
                fi
                ;;
            RUN)
                : >/tmp/in.b64
                i=0
                while [ "$i" -lt "$n" ]; do
                    read -r l
                    echo "$l" >>/tmp/in.b64
                    i=$((i + 1))
                done
                if [ "$(base64 -d /tmp/in.b64 | md5sum | cut -c1-32)" = "$sum" ]; then
                    rm -rf /work /orch/run.sh /orch/test.sh /orch/env /orch/artifacts /orch/trace /orch/id
                    mkdir -p /work
                    base64 -d /tmp/in.b64 | gunzip | (cd / && cpio -idmu 2>/dev/null)
                    load_settings
                    run_one
                else
                    say BADRUN
                fi
                ;;
            QUIT) break ;;
        esac
    done
else
    run_one
fi
sync
poweroff -f
"#;

/// `/orch/enter.sh`, the first program of a test in a root file system: busybox's `sh`, started
/// by `chroot` in the merged root. It enters the working directory and `exec`s the test's
/// program, looked up in the root's `PATH` by hand (Debian's busybox runs its own applets before
/// anything in `PATH`: `ls` would be busybox's, not the root file system's).
pub const ENTER_ROOT_SCRIPT: &str = r#"# Started by the agent in the test's root file system: the test's program replaces it.
cd /work || exit 126
p=$1
shift
case "$p" in
    */*) ;;
    *)
        f=
        IFS=:
        for d in $PATH; do
            [ -n "$d" ] || d=.
            if [ -f "$d/$p" ] && [ -x "$d/$p" ]; then
                f=$d/$p
                break
            fi
        done
        unset IFS
        if [ -z "$f" ]; then
            echo "agent: $p: not found in the root file system (PATH=$PATH)" >&2
            exit 127
        fi
        p=$f
        ;;
esac
exec "$p" "$@"
"#;

/// The `/orch/run.sh` of a test in a root file system: `chroot` into it, then
/// [`ENTER_ROOT_SCRIPT`] with the program and its arguments (a script: its interpreter, `sh -e`
/// by default, the root file system's).
pub fn run_script_in_root(command: &Command) -> String {
    let argv: Vec<String> = match command {
        Command::Exec { program, args } => std::iter::once(program).chain(args).cloned().collect(),
        Command::Script { shell, .. } => {
            let mut argv = if shell.is_empty() {
                Command::default_shell()
            } else {
                shell.clone()
            };
            argv.push("/orch/test.sh".to_owned());
            argv
        }
        _ => return run_script(command),
    };
    let mut s = format!(
        "exec /bin/busybox chroot {} /orch/busybox sh /orch/enter.sh",
        crate::rootfs::GUEST_ROOT
    );
    for word in &argv {
        s.push(' ');
        s.push_str(&shell_quote(word));
    }
    s.push('\n');
    s
}

/// Quotes a string for the shell (single quotes, with embedded single quotes escaped).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `/orch/run.sh` the agent runs for `command`.
pub fn run_script(command: &Command) -> String {
    match command {
        Command::Exec { program, args } => {
            let mut s = String::from("exec");
            for word in std::iter::once(program).chain(args) {
                s.push(' ');
                s.push_str(&shell_quote(word));
            }
            s.push('\n');
            s
        }
        Command::Script { shell, body } => {
            let _ = body;
            // The script goes to its own file. The agent sources run.sh in a fresh subshell of
            // its own `sh`: a script for the default `sh -e` runs right there.
            if shell.is_empty() || *shell == Command::default_shell() {
                return "set -e\n. /orch/test.sh\n".to_owned();
            }
            // Any other interpreter is started on it.
            let mut s = String::from("exec");
            for word in shell {
                s.push(' ');
                s.push_str(&shell_quote(word));
            }
            s.push_str(" /orch/test.sh\n");
            s
        }
        _ => "echo 'agent: unsupported command kind' >&2; exit 127\n".to_owned(),
    }
}

/// The `/orch/env` file: one `export` per variable.
pub fn env_file(env: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s
}

/// Whether `name` can be an environment variable name in the guest's shell.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_a_real_shell() {
        for s in [
            "plain",
            "",
            "with space",
            "it's",
            "$(reboot)",
            "a\nb",
            "`x`",
            "\\",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn exec_commands_keep_their_arguments() {
        let c = Command::exec(["printf", "%s|", "a b", "c'd"]).unwrap();
        let script = run_script(&c);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "a b|c'd|");
    }

    #[test]
    fn the_test_sees_none_of_the_agents_variables() {
        // Every variable the agent sets (`x=`, `for x in`, `read x`) is unset in the subshell
        // the test runs in, as the test sourced there would otherwise see it.
        let script = INIT_SCRIPT;
        let unset_at = script.find("unset B ").expect("the unset line");
        let unset_end = unset_at
            + script[unset_at..]
                .find("\n        [ -f /orch/env ]")
                .unwrap();
        let unset: Vec<&str> = script[unset_at..unset_end]
            .split(|c: char| c.is_whitespace() || c == '\\')
            .filter(|w| !w.is_empty())
            .collect();
        let ident = |w: &str| {
            !w.is_empty()
                && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !w.as_bytes()[0].is_ascii_digit()
        };
        let mut set = std::collections::BTreeSet::new();
        for line in script.lines() {
            let line = line.trim_start();
            // Comments and the channel constants (base64 ends in `=`) set nothing.
            if line.starts_with('#') || line.contains("set -- ") {
                continue;
            }
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
                .filter(|w| !w.is_empty())
                .collect();
            for (i, w) in words.iter().enumerate() {
                if let Some((name, _)) = w.split_once('=')
                    && ident(name)
                {
                    set.insert(name.to_owned());
                }
                if *w == "for" && i + 1 < words.len() {
                    set.insert(words[i + 1].to_owned());
                }
                if *w == "read" {
                    for v in &words[i + 1..] {
                        if v.starts_with('<') || ["|", "||", "&&", "do", "then"].contains(v) {
                            break;
                        }
                        if ident(v) {
                            set.insert((*v).to_owned());
                        }
                    }
                }
            }
        }
        for allowed in ["IFS", "PATH", "ORCH_TEST_ID", "_"] {
            set.remove(allowed);
        }
        let missing: Vec<_> = set
            .iter()
            .filter(|v| !unset.contains(&v.as_str()))
            .collect();
        assert!(missing.is_empty(), "not unset for the test: {missing:?}");
    }

    #[test]
    fn channel_constants_are_the_words_md5_and_base64() {
        use base64::Engine as _;
        use md5::Digest as _;
        for word in ["virtio-serial", "serial-console"] {
            let bytes = format!("{word}\n");
            let md5: String = md5::Md5::digest(bytes.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes.as_bytes());
            let expected = format!("set -- {} {md5} {b64} ;;", bytes.len());
            assert!(INIT_SCRIPT.contains(&expected), "{word}: {expected}");
        }
    }

    #[test]
    fn default_shell_scripts_are_sourced_and_others_started() {
        let sourced = run_script(&Command::script("true"));
        assert_eq!(sourced, "set -e\n. /orch/test.sh\n");
        let bash = run_script(&Command::Script {
            shell: vec!["bash".into(), "-eu".into()],
            body: "true".into(),
        });
        assert_eq!(bash, "exec bash -eu /orch/test.sh\n");
    }

    #[test]
    fn the_root_entry_finds_programs_in_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("hello");
        std::fs::write(&prog, "#!/bin/sh\necho \"from path: $1 $(pwd)\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = ENTER_ROOT_SCRIPT.replace("cd /work", &format!("cd {}", dir.path().display()));
        let run = |argv: &[&str]| {
            // (An absolute shell: the command's own PATH is the one under test.)
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .arg("enter")
                .args(argv)
                .env("PATH", format!("/nonexistent::{}", bin.display()))
                .output()
                .unwrap()
        };
        let out = run(&["hello", "a b"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("from path: a b {}\n", dir.path().display())
        );
        let out = run(&["no-such-program"]);
        assert_eq!(out.status.code(), Some(127));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found in the root file system"));

        let c = Command::exec(["ls", "-l", "a b"]).unwrap();
        assert_eq!(
            run_script_in_root(&c),
            "exec /bin/busybox chroot /rootfs/merged /orch/busybox sh /orch/enter.sh ls -l 'a b'\n"
        );
        assert!(run_script_in_root(&Command::script("true")).ends_with(" sh -e /orch/test.sh\n"));
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("FOO_1"));
        assert!(!valid_env_name("1FOO"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }
}
