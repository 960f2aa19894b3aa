//! Direct, allocation-light readers for the procfs files the sampler needs.
//!
//! Every reader fills a caller-owned buffer and parses in place: the sampler reads several files
//! per process every tick, and a fresh `String` per read (what general-purpose procfs crates do)
//! is a measurable part of the cost. Unreadable files are reported as `None`, never as zero.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Reads `path` into `buf` (cleared first). `false` when it cannot be opened or read.
pub(crate) fn read_into(path: &Path, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(buf).is_ok(),
        Err(_) => false,
    }
}

/// Reads a whole procfs file through a kept-open descriptor with `pread` at offset 0: procfs
/// regenerates the contents, and the open/close pair (the larger part of the cost) is saved.
pub(crate) fn pread_all(f: &File, buf: &mut Vec<u8>) -> bool {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut off = 0usize;
    loop {
        if buf.capacity() - off < 1024 {
            buf.reserve(4096);
        }
        buf.resize(buf.capacity(), 0);
        match f.read_at(&mut buf[off..], off as u64) {
            Ok(n) => {
                let room = buf.len() - off;
                off += n;
                // procfs fills the buffer unless the contents end: a short read is the end.
                if n < room {
                    buf.truncate(off);
                    return true;
                }
            }
            Err(_) => {
                buf.truncate(0);
                return false;
            }
        }
    }
}

/// Reads `path` through `slot`: the kept-open descriptor if there is one (dropped when it fails,
/// e.g. ESRCH once the process was reaped), else a fresh open, kept in `slot` when `keep`.
pub(crate) fn read_cached(
    slot: &mut Option<File>,
    path: &str,
    buf: &mut Vec<u8>,
    keep: bool,
) -> bool {
    if let Some(f) = slot {
        if pread_all(f, buf) {
            return true;
        }
        *slot = None;
        return false;
    }
    match File::open(path) {
        Ok(f) => {
            let ok = pread_all(&f, buf);
            if ok && keep {
                *slot = Some(f);
            }
            ok
        }
        Err(_) => {
            buf.clear();
            false
        }
    }
}

/// The fields of `/proc/<pid>/stat` the sampler uses (times in clock ticks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) state: u8,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    pub(crate) minflt: u64,
    pub(crate) cminflt: u64,
    pub(crate) majflt: u64,
    pub(crate) cmajflt: u64,
    pub(crate) utime: u64,
    pub(crate) stime: u64,
    pub(crate) cutime: u64,
    pub(crate) cstime: u64,
    pub(crate) num_threads: u64,
    pub(crate) starttime: u64,
    pub(crate) vsize: u64,
    pub(crate) rss_pages: u64,
    pub(crate) guest_time: u64,
    pub(crate) cguest_time: u64,
    /// Changes when the process runs `exec`: the code and argument addresses (`startcode`,
    /// `arg_start`) of the new image, which address-space randomisation moves on every exec.
    pub(crate) exec_key: u64,
}

/// Parses the contents of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(buf: &[u8]) -> Option<Stat> {
    // The command name may contain spaces and parentheses: the fields start after the last ')'.
    let close = buf.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let mut it = rest.split_ascii_whitespace();
    // Field numbers as in proc(5); `it` starts at field 3 (state).
    let mut fields = [0u64; 50];
    let state = it.next()?.bytes().next()?;
    for (i, tok) in it.enumerate() {
        let n = i + 4;
        if n >= fields.len() {
            break;
        }
        // Some fields (e.g. signal masks) are unsigned, a few may be negative: treat as 0.
        fields[n] = tok.parse::<u64>().unwrap_or(0);
    }
    Some(Stat {
        state,
        ppid: fields[4] as u32,
        pgrp: fields[5] as u32,
        minflt: fields[10],
        cminflt: fields[11],
        majflt: fields[12],
        cmajflt: fields[13],
        utime: fields[14],
        stime: fields[15],
        cutime: fields[16],
        cstime: fields[17],
        num_threads: fields[20],
        starttime: fields[22],
        vsize: fields[23],
        rss_pages: fields[24],
        guest_time: fields[43],
        cguest_time: fields[44],
        exec_key: fields[26] ^ fields[48].rotate_left(32),
    })
}

/// The command name in the contents of `/proc/<pid>/stat`: between the first `(` and the last
/// `)` (the name itself may hold either).
pub(crate) fn comm_of(buf: &[u8]) -> Option<&[u8]> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    buf.get(open + 1..close)
}

/// The head of a command line from the contents of `/proc/<pid>/cmdline`: the arguments joined
/// by spaces (a trailing NUL dropped), control characters as `?`, at most `max` characters with
/// `…` when cut.
pub(crate) fn command_head(buf: &[u8], max: usize) -> String {
    let raw = buf.strip_suffix(&[0]).unwrap_or(buf);
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        out.push(match c {
            '\0' => ' ',
            c if c.is_control() => '?',
            c => c,
        });
    }
    out
}

/// `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Io {
    pub(crate) rchar: u64,
    pub(crate) wchar: u64,
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) cancelled_write_bytes: u64,
}

fn value_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.strip_prefix(key).map(str::trim)
}

/// Parses the contents of `/proc/<pid>/io`.
pub(crate) fn parse_io(buf: &[u8]) -> Option<Io> {
    let s = std::str::from_utf8(buf).ok()?;
    let mut io = Io::default();
    let mut seen = 0;
    for line in s.lines() {
        let (k, v) = line.split_once(':')?;
        let v: u64 = v.trim().parse().ok()?;
        seen += 1;
        match k {
            "rchar" => io.rchar = v,
            "wchar" => io.wchar = v,
            "read_bytes" => io.read_bytes = v,
            "write_bytes" => io.write_bytes = v,
            "cancelled_write_bytes" => io.cancelled_write_bytes = v,
            _ => seen -= 1,
        }
    }
    (seen >= 5).then_some(io)
}

/// The fields of `/proc/<pid>/status` the sampler uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// Peak resident set size (VmHWM), bytes; `None` for zombies and kernel threads.
    pub(crate) hwm_bytes: Option<u64>,
    pub(crate) voluntary_ctxt: Option<u64>,
    pub(crate) nonvoluntary_ctxt: Option<u64>,
    pub(crate) uid: Option<u32>,
}

/// Parses the contents of `/proc/<pid>/status`.
pub(crate) fn parse_status(buf: &[u8]) -> Status {
    let mut st = Status::default();
    let Ok(s) = std::str::from_utf8(buf) else {
        return st;
    };
    for line in s.lines() {
        if let Some(v) = value_after(line, "VmHWM:") {
            st.hwm_bytes = v
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024);
        } else if let Some(v) = value_after(line, "voluntary_ctxt_switches:") {
            st.voluntary_ctxt = v.parse().ok();
        } else if let Some(v) = value_after(line, "nonvoluntary_ctxt_switches:") {
            st.nonvoluntary_ctxt = v.parse().ok();
        } else if let Some(v) = value_after(line, "Uid:") {
            st.uid = v
                .split_ascii_whitespace()
                .next()
                .and_then(|u| u.parse().ok());
        }
    }
    st
}

/// Appends the pids listed in a `/proc/<pid>/task/<tid>/children` file.
pub(crate) fn parse_children(buf: &[u8], out: &mut Vec<u32>) {
    if let Ok(s) = std::str::from_utf8(buf) {
        out.extend(
            s.split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
}

/// `/proc/stat`'s aggregate `cpu` line, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub(crate) busy: u64,
    pub(crate) total: u64,
    pub(crate) steal: u64,
    pub(crate) iowait: u64,
}

/// Parses the first line of `/proc/stat`.
pub(crate) fn parse_cpu_times(buf: &[u8]) -> Option<CpuTimes> {
    let s = std::str::from_utf8(buf).ok()?;
    let line = s.lines().next()?;
    let mut it = line.split_ascii_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.filter_map(|t| t.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice] (guest is inside user).
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Some(CpuTimes {
        busy: total - idle - v[7],
        total,
        steal: v[7],
        iowait: v[4],
    })
}

/// `/proc/loadavg`: 1, 5 and 15 minute load averages.
pub(crate) fn parse_loadavg(buf: &[u8]) -> Option<[f64; 3]> {
    let s = std::str::from_utf8(buf).ok()?;
    let mut it = s.split_ascii_whitespace();
    Some([
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ])
}

/// One `/proc/pressure/<resource>` file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Pressure {
    pub(crate) some_avg10: f64,
    pub(crate) some_total_us: u64,
    /// `None` for `cpu` on kernels before 5.13.
    pub(crate) full_avg10: Option<f64>,
    pub(crate) full_total_us: Option<u64>,
}

/// Parses a `/proc/pressure/*` file.
pub(crate) fn parse_pressure(buf: &[u8]) -> Option<Pressure> {
    let s = std::str::from_utf8(buf).ok()?;
    let mut p = Pressure::default();
    let mut some_seen = false;
    for line in s.lines() {
        let mut it = line.split_ascii_whitespace();
        let kind = it.next()?;
        let mut avg10 = None;
        let mut total = None;
        for kv in it {
            if let Some(v) = kv.strip_prefix("avg10=") {
                avg10 = v.parse().ok();
            } else if let Some(v) = kv.strip_prefix("total=") {
                total = v.parse().ok();
            }
        }
        match kind {
            "some" => {
                p.some_avg10 = avg10?;
                p.some_total_us = total?;
                some_seen = true;
            }
            "full" => {
                p.full_avg10 = avg10;
                p.full_total_us = total;
            }
            _ => {}
        }
    }
    some_seen.then_some(p)
}

/// `/proc/<pid>/net/dev`: received and sent bytes summed over the namespace's interfaces.
pub(crate) fn parse_net_dev(buf: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(buf).ok()?;
    let (mut rx, mut tx) = (0u64, 0u64);
    let mut any = false;
    for line in s.lines().skip(2) {
        let (_, rest) = line.split_once(':')?;
        let v: Vec<u64> = rest
            .split_ascii_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        if v.len() < 9 {
            return None;
        }
        rx += v[0];
        tx += v[8];
        any = true;
    }
    any.then_some((rx, tx))
}

/// `MemTotal` from `/proc/meminfo`, bytes.
pub(crate) fn parse_mem_total(buf: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(buf).ok()?;
    s.lines()
        .find_map(|l| value_after(l, "MemTotal:"))
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 200 3 4 150 50 7 8 20 0 3 0 555 1048576 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0 9 1\n";

    #[test]
    fn stat_fields_land_where_proc5_says() {
        let s = parse_stat(STAT.as_bytes()).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!((s.minflt, s.cminflt, s.majflt, s.cmajflt), (100, 200, 3, 4));
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (150, 50, 7, 8));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 555);
        assert_eq!(s.vsize, 1_048_576);
        assert_eq!(s.rss_pages, 256);
    }

    #[test]
    fn stat_of_this_process_parses() {
        let mut buf = Vec::new();
        assert!(read_into(Path::new("/proc/self/stat"), &mut buf));
        let s = parse_stat(&buf).unwrap();
        assert!(s.num_threads >= 1);
        assert!(s.rss_pages > 0);
    }

    #[test]
    fn io_status_and_system_files_parse() {
        let io = parse_io(b"rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 6\ncancelled_write_bytes: 7\n").unwrap();
        assert_eq!(
            (io.rchar, io.wchar, io.read_bytes, io.write_bytes),
            (1, 2, 5, 6)
        );
        assert_eq!(parse_io(b""), None);
        let st = parse_status(b"Name:\tx\nUid:\t0\t0\t0\t0\nVmHWM:\t  1024 kB\nvoluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t6\n");
        assert_eq!(st.hwm_bytes, Some(1024 * 1024));
        assert_eq!(
            (st.voluntary_ctxt, st.nonvoluntary_ctxt),
            (Some(5), Some(6))
        );
        assert_eq!(parse_status(b"Name:\tzombie\n").hwm_bytes, None);
        let cpu = parse_cpu_times(b"cpu  10 0 10 70 5 0 0 5 0 0\ncpu0 1\n").unwrap();
        assert_eq!(
            (cpu.busy, cpu.total, cpu.steal, cpu.iowait),
            (20, 100, 5, 5)
        );
        assert_eq!(
            parse_loadavg(b"0.50 0.25 0.10 1/100 42\n"),
            Some([0.5, 0.25, 0.1])
        );
        let p = parse_pressure(b"some avg10=1.50 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.25 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((p.some_avg10, p.some_total_us), (1.5, 42));
        assert_eq!((p.full_avg10, p.full_total_us), (Some(0.25), Some(7)));
        let net = b"Inter-|   Receive  |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n  eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), Some((110, 220)));
        assert_eq!(parse_mem_total(b"MemTotal:  2048 kB\n"), Some(2 << 20));
        let mut kids = Vec::new();
        parse_children(b"12 34 ", &mut kids);
        assert_eq!(kids, [12, 34]);
    }

    #[test]
    fn the_command_name_may_hold_parentheses_and_the_command_line_is_cut() {
        assert_eq!(comm_of(STAT.as_bytes()), Some(&b"a (weird) name"[..]));
        assert_eq!(command_head(b"sh\0-c\0echo hi\0", 80), "sh -c echo hi");
        assert_eq!(command_head(b"a\tb\0", 80), "a?b");
        assert_eq!(command_head(b"abcdef\0", 3), "abc…");
        assert_eq!(command_head(b"", 3), "");
    }
}
