//! The host side of the guest agent's console protocol.
//!
//! The agent (see [`crate::agent`]) writes records as whole console lines:
//!
//! ```text
//! ORCH1 <nonce> READY <kernel-release> <machine>
//! ORCH1 <nonce> SEND <stream> <total-bytes> <sent-bytes> <md5 of the sent bytes>
//! ORCH1 <nonce> DATA <stream> <base64 line>
//! ORCH1 <nonce> END <stream>
//! ORCH1 <nonce> EMPTY <stream>...
//! ORCH1 <nonce> EXIT <code>
//! ORCH1 <nonce> DONE
//! ```
//!
//! The nonce is 32 random hex digits the agent draws at boot, before any test runs; the first
//! `READY` fixes it, and every later line without it is console noise. The test's own output
//! never reaches the console directly (the agent redirects it to files and sends it base64
//! encoded), so a test printing look-alike records cannot forge one. Kernel messages that land in
//! the middle of a record line break that line; the MD5 of each stream then fails to match, and
//! the host asks the agent to send everything again (`RESEND`), or acknowledges (`ACK`).
//!
//! The host writes plain lines to the guest: `ACK`, `RESEND`; while a test runs, `TICK` every
//! half second (the agent's watcher then bounds its copy of the test's output) and `STOP` at
//! the test's deadline; in a session, the next test (`TEXT`, `RUN`) or `QUIT`.
//!
//! The nonce is no security boundary: the test runs as root in the guest and can read it from
//! the agent's memory, then write any record to the console. So nothing here trusts a record
//! for more than its shape: stream names are checked ([`is_stream_name`]), at most
//! [`MAX_STREAMS`] streams are kept, each within its byte limit and all within a total, and
//! every record refused for that is counted in [`Parser::rejections`], which the runner puts in
//! the test's result.

use std::collections::BTreeMap;

use base64::Engine as _;
use md5::{Digest, Md5};

/// The record prefix, versioned.
pub const PREFIX: &str = "ORCH1";

/// The longest console line kept whole; longer lines are cut (a flood must not grow memory).
pub const MAX_LINE: usize = 64 * 1024;

/// The most streams one transfer may have (the agent sends eight at most); `SEND` or `EMPTY`
/// records opening more are refused and counted.
pub const MAX_STREAMS: usize = 16;

/// The longest stream name.
pub const MAX_STREAM_NAME: usize = 32;

/// Whether `name` can name a stream: 1 to [`MAX_STREAM_NAME`] ASCII lowercase letters, digits
/// or `-`, starting with a letter. Stream names never reach the file system, but a name the
/// agent cannot have sent is refused rather than kept.
pub fn is_stream_name(name: &str) -> bool {
    name.len() <= MAX_STREAM_NAME
        && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Guest records (or names in them) the host refused, for the test's result: counted by kind,
/// with the first few of each kind named. Its size is bounded whatever the guest sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    kinds: Vec<RejectedKind>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RejectedKind {
    what: String,
    count: u64,
    examples: Vec<String>,
}

/// Examples kept per kind of rejection.
const EXAMPLES_PER_KIND: usize = 3;
/// Kinds kept (the host's own wording, so a handful exist; more are folded into the last).
const MAX_KINDS: usize = 16;
/// Characters of a guest-chosen name shown in an example.
const SHOWN_NAME: usize = 80;

impl Rejections {
    /// Counts one rejected record of kind `what` (plural, e.g. "SEND streams beyond the
    /// limit of 16"), described by `example` if fewer than a few of its kind were kept.
    pub fn add(&mut self, what: &str, example: impl FnOnce() -> String) {
        let kind = self.slot(what);
        kind.count += 1;
        if kind.examples.len() < EXAMPLES_PER_KIND {
            kind.examples.push(example());
        }
    }

    /// Counts `n` more rejected records of kind `what` without describing them.
    pub fn add_count(&mut self, what: &str, n: u64) {
        if n > 0 {
            self.slot(what).count += n;
        }
    }

    fn slot(&mut self, what: &str) -> &mut RejectedKind {
        let at = match self.kinds.iter().position(|k| k.what == what) {
            Some(at) => at,
            None if self.kinds.len() < MAX_KINDS => {
                self.kinds.push(RejectedKind {
                    what: what.to_owned(),
                    count: 0,
                    examples: Vec::new(),
                });
                self.kinds.len() - 1
            }
            // Kinds are the host's own wording, so this needs a new kind of rejection.
            None => self.kinds.len() - 1,
        };
        &mut self.kinds[at]
    }

    /// Whether nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// How many records of kind `what` were rejected.
    pub fn count(&self, what: &str) -> u64 {
        self.kinds
            .iter()
            .find(|k| k.what == what)
            .map_or(0, |k| k.count)
    }

    /// Adds everything `other` rejected.
    pub fn extend(&mut self, other: &Rejections) {
        for k in &other.kinds {
            for e in &k.examples {
                self.add(&k.what, || e.clone());
            }
            self.add_count(&k.what, k.count - k.examples.len() as u64);
        }
    }

    /// One line for the result, e.g. "9,984 SEND streams beyond the limit of 16 (`s16`,
    /// `s17`, `s18`, ...); 1 manifest name refused (`/etc/hostname`: the path is absolute)";
    /// `None` when nothing was rejected.
    pub fn summary(&self) -> Option<String> {
        if self.kinds.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .kinds
            .iter()
            .map(|k| {
                let examples: Vec<&str> = k.examples.iter().map(String::as_str).collect();
                let more = if (examples.len() as u64) < k.count {
                    ", ..."
                } else {
                    ""
                };
                if examples.is_empty() {
                    format!("{} {}", thousands(k.count), k.what)
                } else {
                    format!(
                        "{} {} ({}{more})",
                        thousands(k.count),
                        k.what,
                        examples.join(", ")
                    )
                }
            })
            .collect();
        Some(parts.join("; "))
    }
}

/// A guest-chosen name for a message: control characters escaped, cut to a few dozen
/// characters, in backquotes.
pub fn shown_name(name: &str) -> String {
    let mut out = String::from("`");
    for (i, c) in name.chars().enumerate() {
        if i == SHOWN_NAME {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// `9984` as "9,984".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Something the agent said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The agent is up.
    Ready {
        /// The nonce of this boot.
        nonce: String,
        /// `uname -r` in the guest.
        kernel_release: String,
        /// `uname -m` in the guest.
        machine: String,
    },
    /// Part of a stream (its header or a data line) was received.
    Data,
    /// A stream finished transferring (complete or not, see [`Stream::verified`]).
    StreamEnd(String),
    /// The test's exit code.
    Exit(i32),
    /// The agent has sent everything and waits for `ACK` or `RESEND`.
    Done,
    /// In a session, the test the host sent arrived damaged.
    BadRun,
    /// A line carrying this boot's nonce that does not parse: a corrupted record.
    Corrupt(String),
    /// A well-formed record the host refused (a bad stream name, a stream too many, too many
    /// bytes, a contradicting exit code), counted in [`Parser::rejections`].
    Rejected,
}

/// One transferred stream (stdout, stderr, dmesg...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    /// Bytes the stream had in the guest.
    pub total: u64,
    /// Bytes the agent sent (the head and tail when `total` exceeded the limit).
    pub sent: u64,
    /// MD5 the agent computed over the sent bytes.
    pub md5: String,
    /// The decoded bytes received.
    pub data: Vec<u8>,
    /// Whether `END` arrived.
    pub ended: bool,
    /// Whether a line of the stream failed to decode.
    pub damaged: bool,
}

impl Stream {
    /// Whether the stream arrived complete and intact.
    pub fn verified(&self) -> bool {
        self.ended
            && !self.damaged
            && self.data.len() as u64 == self.sent
            && hex_md5(&self.data) == self.md5
    }
}

fn hex_md5(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses console lines into records, keeping the streams' data, bounded by `limit` bytes per
/// stream.
#[derive(Debug)]
pub struct Parser {
    nonce: Option<String>,
    limit: u64,
    stream_limits: BTreeMap<String, u64>,
    total_limit: Option<u64>,
    streams: BTreeMap<String, Stream>,
    exit: Option<i32>,
    rejections: Rejections,
}

impl Parser {
    /// A parser accepting at most `limit` decoded bytes per stream (more is damage).
    pub fn new(limit: u64) -> Self {
        Parser {
            nonce: None,
            limit,
            stream_limits: BTreeMap::new(),
            total_limit: None,
            streams: BTreeMap::new(),
            exit: None,
            rejections: Rejections::default(),
        }
    }

    /// Allows at most `limit` bytes announced by all streams of a transfer together (by
    /// default eight default-sized streams plus the streams given their own limit).
    #[must_use]
    pub fn with_total_limit(mut self, limit: u64) -> Self {
        self.total_limit = Some(limit);
        self
    }

    fn total_limit(&self) -> u64 {
        self.total_limit.unwrap_or_else(|| {
            self.stream_limits
                .values()
                .fold(self.limit.saturating_mul(8), |a, b| a.saturating_add(*b))
        })
    }

    /// The records refused since the parser was made (or [`Parser::clear_rejections`]); a
    /// resend does not clear them.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// Forgets the rejected records (a session's next test starts).
    pub fn clear_rejections(&mut self) {
        self.rejections = Rejections::default();
    }

    /// Whether another stream named `name` may be opened; counts the refusal if not.
    fn admit_stream(&mut self, record: &str, name: &str) -> bool {
        if self.streams.contains_key(name) || self.streams.len() < MAX_STREAMS {
            return true;
        }
        self.rejections.add(
            &format!("{record} streams beyond the limit of {MAX_STREAMS}"),
            || shown_name(name),
        );
        false
    }

    /// Allows `limit` bytes for the stream `name` instead of the default.
    #[must_use]
    pub fn with_stream_limit(mut self, name: &str, limit: u64) -> Self {
        self.stream_limits.insert(name.to_owned(), limit);
        self
    }

    fn limit_of(&self, name: &str) -> u64 {
        self.stream_limits.get(name).copied().unwrap_or(self.limit)
    }

    /// The nonce of this boot, once `READY` was seen.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The streams received so far.
    pub fn streams(&self) -> &BTreeMap<String, Stream> {
        &self.streams
    }

    /// The exit code, once received.
    pub fn exit(&self) -> Option<i32> {
        self.exit
    }

    /// Forgets received streams before the agent sends them again.
    pub fn reset_transfer(&mut self) {
        self.streams.clear();
        self.exit = None;
    }

    /// Feeds one console line (without its line ending); returns a record if the line held one.
    pub fn line(&mut self, line: &str) -> Option<Record> {
        let line = line.trim_end_matches('\r');
        // Kernel output may precede a record on the same line: look for the prefix anywhere.
        let at = line.find(PREFIX)?;
        let mut fields = line[at + PREFIX.len()..].split_ascii_whitespace();
        let nonce = fields.next()?;
        match &self.nonce {
            None => {
                // Only READY can fix the nonce, and only a well-formed one.
                if fields.next()? != "READY" || !is_nonce(nonce) {
                    return None;
                }
                let kernel_release = fields.next()?.to_owned();
                let machine = fields.next()?.to_owned();
                self.nonce = Some(nonce.to_owned());
                Some(Record::Ready {
                    nonce: nonce.to_owned(),
                    kernel_release,
                    machine,
                })
            }
            Some(expected) if expected != nonce => None,
            Some(_) => {
                let parsed = self.record(fields.clone());
                parsed.or_else(|| Some(Record::Corrupt(line[at..].chars().take(200).collect())))
            }
        }
    }

    fn record<'a>(&mut self, mut fields: impl Iterator<Item = &'a str>) -> Option<Record> {
        match fields.next()? {
            "SEND" => {
                let name = fields.next()?;
                let total = fields.next()?.parse().ok()?;
                let sent: u64 = fields.next()?.parse().ok()?;
                let md5 = fields.next()?;
                if md5.len() != 32 || fields.next().is_some() {
                    return None;
                }
                if !is_stream_name(name) {
                    self.rejections
                        .add("SEND records with an invalid stream name", || {
                            shown_name(name)
                        });
                    return Some(Record::Rejected);
                }
                if sent > self.limit_of(name) {
                    let limit = self.limit_of(name);
                    self.rejections.add("SEND streams larger than allowed", || {
                        format!("`{name}`: {sent} bytes, limit {limit}")
                    });
                    return Some(Record::Rejected);
                }
                let others: u64 = self
                    .streams
                    .iter()
                    .filter(|(n, _)| n.as_str() != name)
                    .map(|(_, s)| s.sent)
                    .sum();
                if others.saturating_add(sent) > self.total_limit() {
                    let limit = self.total_limit();
                    self.rejections.add(
                        &format!("SEND streams beyond the total of {limit} bytes"),
                        || format!("`{name}`: {sent} bytes"),
                    );
                    return Some(Record::Rejected);
                }
                if !self.admit_stream("SEND", name) {
                    return Some(Record::Rejected);
                }
                self.streams.insert(
                    name.to_owned(),
                    Stream {
                        total,
                        sent,
                        md5: md5.to_owned(),
                        ..Stream::default()
                    },
                );
                Some(Record::Data)
            }
            "DATA" => {
                let name = fields.next()?;
                let b64 = fields.next()?;
                if fields.next().is_some() {
                    return None;
                }
                let Some(stream) = self.streams.get_mut(name) else {
                    if is_stream_name(name) {
                        self.rejections
                            .add("DATA records for a stream never announced", || {
                                shown_name(name)
                            });
                        return Some(Record::Rejected);
                    }
                    return None;
                };
                // No more than the stream announced (which its limit bounded).
                let limit = stream.sent;
                match base64::engine::general_purpose::STANDARD.decode(b64) {
                    Ok(bytes) if stream.data.len() as u64 + bytes.len() as u64 <= limit => {
                        stream.data.extend_from_slice(&bytes);
                    }
                    _ => stream.damaged = true,
                }
                Some(Record::Data)
            }
            "EMPTY" => {
                // Streams with nothing in them, in one line: no MD5 to compute in the guest.
                let names: Vec<&str> = fields.collect();
                if names.is_empty()
                    || names.len() > MAX_STREAMS
                    || !names.iter().all(|n| is_stream_name(n))
                {
                    return None;
                }
                for name in names {
                    if !self.admit_stream("EMPTY", name) {
                        continue;
                    }
                    self.streams.insert(
                        name.to_owned(),
                        Stream {
                            md5: hex_md5(b""),
                            ended: true,
                            ..Stream::default()
                        },
                    );
                }
                Some(Record::Data)
            }
            "END" => {
                let name = fields.next()?;
                let stream = self.streams.get_mut(name)?;
                stream.ended = true;
                Some(Record::StreamEnd(name.to_owned()))
            }
            "EXIT" => {
                let code = fields.next()?.parse().ok()?;
                // The agent repeats its EXIT; one that contradicts the first (a test forging
                // records) is refused and named, and the first stands.
                match self.exit {
                    Some(first) if first != code => {
                        self.rejections
                            .add("EXIT records contradicting an earlier one", || {
                                format!("EXIT {code} after EXIT {first}")
                            });
                        return Some(Record::Rejected);
                    }
                    _ => self.exit = Some(code),
                }
                Some(Record::Exit(code))
            }
            "DONE" => Some(Record::Done),
            "BADRUN" => Some(Record::BadRun),
            _ => None,
        }
    }
}

fn is_nonce(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "0123456789abcdef0123456789abcdef";

    fn send(name: &str, data: &[u8]) -> Vec<String> {
        let mut lines = vec![format!(
            "ORCH1 {N} SEND {name} {} {} {}",
            data.len(),
            data.len(),
            hex_md5(data)
        )];
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        for chunk in b64.as_bytes().chunks(76) {
            lines.push(format!(
                "ORCH1 {N} DATA {name} {}",
                std::str::from_utf8(chunk).unwrap()
            ));
        }
        lines.push(format!("ORCH1 {N} END {name}"));
        lines
    }

    #[test]
    fn a_clean_transfer_verifies() {
        let mut p = Parser::new(1 << 20);
        assert_eq!(p.line("[    1.0] random boot noise"), None);
        assert!(matches!(
            p.line(&format!("ORCH1 {N} READY 6.1.0-28-arm64 aarch64\r")),
            Some(Record::Ready { .. })
        ));
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for l in send("stdout", &payload) {
            p.line(&l);
        }
        assert_eq!(p.line(&format!("ORCH1 {N} EXIT 3")), Some(Record::Exit(3)));
        assert!(p.streams()["stdout"].verified());
        assert_eq!(p.streams()["stdout"].data, payload);
    }

    #[test]
    fn forged_records_without_the_nonce_are_ignored() {
        let mut p = Parser::new(1 << 20);
        p.line(&format!("ORCH1 {N} READY 6.1 x86_64"));
        let fake = "ffffffffffffffffffffffffffffffff";
        assert_eq!(p.line(&format!("ORCH1 {fake} EXIT 0")), None);
        assert_eq!(p.line(&format!("ORCH1 {fake} READY 6.1 x86_64")), None);
        assert_eq!(p.exit(), None);
        assert_eq!(p.nonce(), Some(N));
    }

    #[test]
    fn a_kernel_message_inside_a_record_is_detected() {
        let mut p = Parser::new(1 << 20);
        p.line(&format!("ORCH1 {N} READY 6.1 x86_64"));
        let payload = b"hello world, this is a longer line of output\n".repeat(4);
        let mut lines = send("stdout", &payload);
        // printk cut a data line in two.
        let victim = lines[1].clone();
        let (a, b) = victim.split_at(victim.len() / 2 + 10);
        lines[1] = format!("{a}[   12.345] virtio_console: oops");
        lines.insert(2, b.to_owned());
        for l in &lines {
            p.line(l);
        }
        assert!(!p.streams()["stdout"].verified());
        p.reset_transfer();
        for l in send("stdout", &payload) {
            p.line(&l);
        }
        assert!(p.streams()["stdout"].verified());
    }

    #[test]
    fn records_after_kernel_text_on_the_same_line_still_count() {
        let mut p = Parser::new(1 << 20);
        p.line(&format!(
            "[    2.1] random: crng init done ORCH1 {N} READY 6.1 riscv64"
        ));
        assert_eq!(p.nonce(), Some(N));
        assert_eq!(
            p.line(&format!("ORCH1 {N} EXIT nope")),
            Some(Record::Corrupt(format!("ORCH1 {N} EXIT nope")))
        );
    }

    #[test]
    fn empty_streams_come_in_one_record() {
        let mut p = Parser::new(1 << 20);
        p.line(&format!("ORCH1 {N} READY 6.1 x86_64"));
        assert_eq!(
            p.line(&format!("ORCH1 {N} EMPTY stdout dmesg")),
            Some(Record::Data)
        );
        assert!(p.streams()["stdout"].verified());
        assert!(p.streams()["dmesg"].data.is_empty());
        // A name cut by a kernel message, or no name at all, is a corrupt record.
        for bad in ["EMPTY", "EMPTY std[   1.2] oops", "EMPTY Stdout"] {
            assert!(matches!(
                p.line(&format!("ORCH1 {N} {bad}")),
                Some(Record::Corrupt(_))
            ));
        }
    }

    #[test]
    fn streams_are_bounded() {
        let mut p = Parser::new(10);
        p.line(&format!("ORCH1 {N} READY 6.1 x86_64"));
        // Announcing more than the limit is refused outright.
        let big = vec![b'a'; 100];
        let lines = send("stdout", &big);
        assert_eq!(p.line(&lines[0]), Some(Record::Rejected));
        assert!(p.streams().get("stdout").is_none());
        assert_eq!(p.rejections().count("SEND streams larger than allowed"), 1);
        // Data lines past what a stream announced are damage, not memory.
        p.line(&format!("ORCH1 {N} SEND out 4 4 {}", hex_md5(b"abcd")));
        p.line(&format!("ORCH1 {N} DATA out YWJjZGVmZ2g="));
        assert!(p.streams()["out"].data.is_empty());
        assert!(p.streams()["out"].damaged);
    }

    fn ready() -> Parser {
        let mut p = Parser::new(1 << 10).with_stream_limit("artifacts", 1 << 12);
        p.line(&format!("ORCH1 {N} READY 6.1 aarch64"));
        p
    }

    #[test]
    fn a_flood_of_streams_is_cut_at_the_limit_and_counted() {
        let mut p = ready();
        for i in 0..10_000 {
            let r = p.line(&format!(
                "ORCH1 {N} SEND s{i} 0 0 d41d8cd98f00b204e9800998ecf8427e"
            ));
            assert!(matches!(r, Some(Record::Data | Record::Rejected)));
        }
        let names: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
        p.line(&format!("ORCH1 {N} EMPTY {}", names[..16].join(" ")));
        assert_eq!(p.streams().len(), MAX_STREAMS);
        let what = format!("SEND streams beyond the limit of {MAX_STREAMS}");
        assert_eq!(p.rejections().count(&what), 10_000 - MAX_STREAMS as u64);
        assert_eq!(
            p.rejections().count("EMPTY streams beyond the limit of 16"),
            16
        );
        let summary = p.rejections().summary().unwrap();
        assert!(
            summary.starts_with(
                "9,984 SEND streams beyond the limit of 16 (`s16`, `s17`, `s18`, ...)"
            ),
            "{summary}"
        );
        assert!(summary.len() < 400, "{summary}");
        // A resend forgets the streams, not what was refused.
        p.reset_transfer();
        assert!(p.streams().is_empty());
        assert!(!p.rejections().is_empty());
        p.clear_rejections();
        assert!(p.rejections().is_empty());
    }

    #[test]
    fn stream_names_and_totals_are_checked() {
        let mut p = ready().with_total_limit(3000);
        for bad in [
            "../etc/passwd",
            "/dev/zero",
            "Stdout",
            "a.b",
            &"x".repeat(33),
        ] {
            assert_eq!(
                p.line(&format!("ORCH1 {N} SEND {bad} 1 1 {}", hex_md5(b"x"))),
                Some(Record::Rejected),
                "{bad}"
            );
        }
        assert_eq!(
            p.rejections()
                .count("SEND records with an invalid stream name"),
            5
        );
        assert!(p.streams().is_empty());
        // Data for a stream never announced is refused too.
        assert_eq!(
            p.line(&format!("ORCH1 {N} DATA ghost eA==")),
            Some(Record::Rejected)
        );
        // Three 1,000-byte streams fit the total of 3,000; a fourth does not.
        for name in ["a", "b", "c", "d"] {
            p.line(&format!("ORCH1 {N} SEND {name} 1000 1000 {}", hex_md5(b"")));
        }
        assert_eq!(p.streams().len(), 3);
        assert_eq!(
            p.rejections()
                .count("SEND streams beyond the total of 3000 bytes"),
            1
        );
        // Announcing a stream again replaces it, within the total.
        p.line(&format!("ORCH1 {N} SEND a 900 900 {}", hex_md5(b"")));
        assert_eq!(p.streams()["a"].sent, 900);
    }

    #[test]
    fn a_contradicting_exit_is_refused_and_named() {
        let mut p = ready();
        assert_eq!(p.line(&format!("ORCH1 {N} EXIT 0")), Some(Record::Exit(0)));
        assert_eq!(p.line(&format!("ORCH1 {N} EXIT 0")), Some(Record::Exit(0)));
        assert_eq!(p.line(&format!("ORCH1 {N} EXIT 3")), Some(Record::Rejected));
        assert_eq!(p.exit(), Some(0));
        assert_eq!(
            p.rejections().summary().unwrap(),
            "1 EXIT records contradicting an earlier one (EXIT 3 after EXIT 0)"
        );
    }

    #[test]
    fn numbers_and_names_are_shown_safely() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(shown_name("a\nb\tc"), "`a\\nb\\tc`");
        assert!(shown_name(&"y".repeat(500)).len() < 100);
    }

    proptest::proptest! {
        /// Whatever lines a guest writes, the parser keeps at most MAX_STREAMS streams, each
        /// within its limit, and a summary of bounded length.
        #[test]
        fn any_console_input_stays_bounded(
            lines in proptest::collection::vec(
                (0..6usize, "[a-z0-9./-]{0,40}", 0..100_000u64, "[A-Za-z0-9+/=]{0,80}"),
                0..400,
            )
        ) {
            let mut p = ready();
            for (kind, name, n, b64) in lines {
                let line = match kind {
                    0 => format!("ORCH1 {N} SEND {name} {n} {n} {}", hex_md5(b"")),
                    1 => format!("ORCH1 {N} DATA {name} {b64}"),
                    2 => format!("ORCH1 {N} END {name}"),
                    3 => format!("ORCH1 {N} EMPTY {name} {name}x"),
                    4 => format!("ORCH1 {N} EXIT {}", n % 5),
                    _ => format!("ORCH1 {N} {name} {b64}"),
                };
                p.line(&line);
            }
            proptest::prop_assert!(p.streams().len() <= MAX_STREAMS);
            for (name, s) in p.streams() {
                proptest::prop_assert!(is_stream_name(name));
                proptest::prop_assert!(s.data.len() as u64 <= p.limit_of(name));
            }
            let total: u64 = p.streams().values().map(|s| s.sent).sum();
            proptest::prop_assert!(total <= p.total_limit());
            if let Some(summary) = p.rejections().summary() {
                proptest::prop_assert!(summary.len() < 16 * 400, "{}", summary.len());
            }
        }
    }
}
