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

use std::collections::BTreeMap;

use base64::Engine as _;
use md5::{Digest, Md5};

/// The record prefix, versioned.
pub const PREFIX: &str = "ORCH1";

/// The longest console line kept whole; longer lines are cut (a flood must not grow memory).
pub const MAX_LINE: usize = 64 * 1024;

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
    streams: BTreeMap<String, Stream>,
    exit: Option<i32>,
}

impl Parser {
    /// A parser accepting at most `limit` decoded bytes per stream (more is damage).
    pub fn new(limit: u64) -> Self {
        Parser {
            nonce: None,
            limit,
            stream_limits: BTreeMap::new(),
            streams: BTreeMap::new(),
            exit: None,
        }
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
                if md5.len() != 32 || sent > self.limit_of(name) || fields.next().is_some() {
                    return None;
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
                let limit = self.limit_of(name);
                let stream = self.streams.get_mut(name)?;
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
                    || names.len() > 16
                    || names
                        .iter()
                        .any(|n| n.len() > 32 || !n.bytes().all(|b| b.is_ascii_lowercase()))
                {
                    return None;
                }
                for name in names {
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
                self.exit = Some(code);
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
        assert!(matches!(p.line(&lines[0]), Some(Record::Corrupt(_))));
        assert!(p.streams().get("stdout").is_none());
    }
}
