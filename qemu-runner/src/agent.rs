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

/// The `/init` script. It reads `/orch/limit` (bytes of each stream to send), `/orch/modules`
/// (module files to `insmod`, dependencies first), `/orch/env` (sourced) and runs `/orch/run.sh` in `/work`.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# Guest agent of qemu-runner. PID 1. Speaks ORCH1 records on the console.
B=/bin/busybox
$B mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin /work
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t tmpfs tmpfs /tmp
$B mount -t tmpfs tmpfs /run
$B --install -s 2>/dev/null || $B --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
exec 0</dev/console 1>/dev/console 2>&1
stty -echo 2>/dev/null
nonce=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
say() { echo "ORCH1 $nonce $*"; }
if [ -s /orch/modules ]; then
    for m in $(cat /orch/modules); do
        insmod "$m" >/tmp/insmod.log 2>&1 || { echo "agent: insmod $m failed:"; cat /tmp/insmod.log; }
    done
fi
# A crashing user-space program leaves a core named after it and its signal.
echo '/tmp/orch/cores/core.%e.%s.%p' >/proc/sys/kernel/core_pattern 2>/dev/null
t=/sys/kernel/tracing
dmesg -c >/dev/null 2>&1

send() {
    f=/tmp/orch/$1
    lim=${2:-$limit}
    total=$(wc -c <"$f")
    if [ "$total" -eq 0 ]; then
        # The MD5 of nothing: no need to run md5sum for an empty stream.
        say SEND "$1" 0 0 d41d8cd98f00b204e9800998ecf8427e
        say END "$1"
        return
    fi
    sent=$total
    if [ "$total" -gt "$lim" ]; then
        half=$((lim / 2))
        { head -c "$half" "$f"; tail -c $((lim - half)) "$f"; } >"$f.sent"
        f="$f.sent"
        sent=$lim
    fi
    sum=$(md5sum <"$f")
    say SEND "$1" "$total" "$sent" "${sum%% *}"
    base64 "$f" | sed "s/^/ORCH1 $nonce DATA $1 /"
    say END "$1"
}

# Runs the test described by /orch and /work, then reports until the host acknowledges.
run_one() {
    rm -rf /tmp/orch
    mkdir -p /tmp/orch/cores
    limit=262144
    [ -f /orch/limit ] && read -r limit </orch/limit
    # Tracing asked for by the test: a tracer name, or trace events (they contain a colon).
    if [ -s /orch/trace ]; then
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
        [ -f /orch/env ] && . /orch/env
        ulimit -c unlimited 2>/dev/null
        exec sh /orch/run.sh
    ) </dev/null >/tmp/orch/stdout 2>/tmp/orch/stderr
    code=$?
    cd /
    if [ -s /orch/trace ]; then
        echo 0 >$t/tracing_on
        mkdir -p /work/.orch-trace && cat $t/trace >/work/.orch-trace/trace.txt && echo .orch-trace >>/orch/artifacts
    fi
    set -- /tmp/orch/cores/*
    if [ -e "$1" ]; then
        mkdir -p /work/.orch-cores && mv /tmp/orch/cores/* /work/.orch-cores/ && echo .orch-cores >>/orch/artifacts
    fi
    say EXIT "$code"
    # -c: the next test of a session sees only its own kernel messages.
    dmesg -c >/tmp/orch/dmesg 2>/dev/null
    : >/tmp/orch/manifest
    : >/tmp/orch/missing
    channel=none
    if [ -s /orch/artifacts ]; then
        cd /work
        files=
        for g in $(cat /orch/artifacts); do
            found=
            for f in $g; do
                [ -e "$f" ] && { files="$files $f"; found=1; }
            done
            [ -n "$found" ] || echo "$g" >>/tmp/orch/missing
        done
        if [ -n "$files" ]; then
            find $files -type f | while read -r f; do md5sum "$f"; done >/tmp/orch/manifest
            port=
            for p in /sys/class/virtio-ports/*; do
                [ "$(cat "$p/name" 2>/dev/null)" = org.orch.artifacts ] && port=/dev/${p##*/}
            done
            if [ -n "$port" ] && [ -c "$port" ] && tar -cf "$port" $files; then
                channel=virtio-serial
            elif tar -cf /tmp/orch/artifacts $files; then
                channel=serial-console
            fi
        fi
        cd /
    fi
    serial_limit=4194304
    [ -f /orch/serial-artifact-limit ] && read -r serial_limit </orch/serial-artifact-limit
    if [ "$channel" = serial-console ] && [ "$(wc -c </tmp/orch/artifacts)" -gt "$serial_limit" ]; then
        echo "(all: larger than the serial console limit of $serial_limit bytes)" >>/tmp/orch/missing
        channel=none
    fi
    echo "$channel" >/tmp/orch/channel
    tries=0
    while :; do
        send stdout
        send stderr
        send dmesg
        send manifest
        send missing
        send channel
        [ "$channel" = serial-console ] && send artifacts "$serial_limit"
        say EXIT "$code"
        say DONE
        tries=$((tries + 1))
        # Without a host to answer (a plain QEMU command line), go on at once.
        [ -f /orch/noack ] && break
        reply=
        read -t 20 reply
        case "$reply" in
            ACK*) break ;;
        esac
        [ "$tries" -ge 5 ] && break
    done
}

say READY "$(uname -r)" "$(uname -m)"
if [ -f /orch/session ]; then
    # Session: the host sends each test as `RUN <lines> <md5>` and base64 lines of a gzip'd
    # cpio archive holding /orch and /work; `QUIT` ends the session.
    while :; do
        cmd=
        read -r cmd n sum || continue
        case "$cmd" in
            RUN)
                : >/tmp/in.b64
                i=0
                while [ "$i" -lt "$n" ]; do
                    read -r l
                    echo "$l" >>/tmp/in.b64
                    i=$((i + 1))
                done
                if [ "$(base64 -d /tmp/in.b64 | md5sum | cut -c1-32)" = "$sum" ]; then
                    rm -rf /work /orch/run.sh /orch/test.sh /orch/env /orch/artifacts /orch/trace
                    mkdir -p /work
                    base64 -d /tmp/in.b64 | gunzip | (cd / && cpio -idmu 2>/dev/null)
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
            // The script goes to its own file, run by the requested interpreter.
            let mut s = String::from("exec");
            let shell = if shell.is_empty() {
                Command::default_shell()
            } else {
                shell.clone()
            };
            for word in &shell {
                s.push(' ');
                s.push_str(&shell_quote(word));
            }
            s.push_str(" /orch/test.sh\n");
            let _ = body;
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
    fn env_names_are_checked() {
        assert!(valid_env_name("FOO_1"));
        assert!(!valid_env_name("1FOO"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }
}
