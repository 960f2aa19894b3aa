//! The guest's virtio-serial artifact port, as the host reads it: one connection for the
//! guest's whole life (a guest of its own, a session guest's many tests, a restored snapshot's
//! test), carrying one framed archive per test that sends artifacts.
//!
//! A frame is a header line `ORCH1 ARCHIVE <n>` (the agent's count of the tests it ran, so the
//! host knows which test's archive it is) and a tar stream. The host expects archive `n` before
//! the test is sent ([`ArtifactPort::expect`]) and unpacks it into that test's directory as it
//! arrives ([`crate::artifacts::extract`], with its checks); the zero blocks that end an archive
//! are skipped before the next header. Anything else on the port (a header for another test,
//! an archive that does not end where its tar stream does, bytes the test wrote there itself)
//! leaves the stream impossible to follow: the port is then *poisoned* (the guest is not
//! trusted with another test) and everything else the guest writes there is read and dropped,
//! so that no write in the guest ever blocks on it.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::artifacts::{ArtifactLimits, Extracted};

/// The header of an archive on the port: `ORCH1 ARCHIVE <n>`.
const HEADER: &str = "ORCH1 ARCHIVE ";

/// Longest header line read.
const MAX_HEADER: usize = 64;

/// Zero bytes skipped at most before a header (the end of the previous archive: busybox's tar
/// writes two zero blocks, GNU tar pads to 10 KiB records).
const MAX_PADDING: usize = 64 << 10;

/// How long QEMU has to connect to the port once the listener is handed over.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// A test's archive the host is waiting for.
struct Job {
    seq: u32,
    dest: PathBuf,
    limits: ArtifactLimits,
    done: oneshot::Sender<Extracted>,
}

#[derive(Default)]
struct State {
    /// The archive expected next, until its header arrives.
    job: Option<Job>,
    /// Why the stream can no longer be followed.
    poisoned: Option<String>,
    /// Archives received.
    archives: u32,
    /// When the last archive was unpacked, and its number.
    unpacked: Option<(u32, Instant)>,
    /// The connection closed (or never came): no archive arrives any more.
    closed: bool,
}

/// The host's end of a guest's artifact port (see the module's documentation).
#[derive(Debug)]
pub(super) struct ArtifactPort {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("expecting", &self.job.as_ref().map(|j| j.seq))
            .field("poisoned", &self.poisoned)
            .field("archives", &self.archives)
            .finish()
    }
}

impl ArtifactPort {
    /// Takes the connection QEMU makes to `listener` (at its start) and reads the port from
    /// then on, on a thread of its own, until QEMU closes it.
    pub(super) fn start(listener: tokio::net::UnixListener) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let accepted = tokio::time::timeout(CONNECT_LIMIT, listener.accept()).await;
            let stream = match accepted {
                Ok(Ok((stream, _))) => stream,
                _ => {
                    lock(&shared).poisoned = Some(format!(
                        "QEMU did not connect to the artifact port within {}s",
                        CONNECT_LIMIT.as_secs()
                    ));
                    // Whoever waits for an archive learns that none comes.
                    close(&shared);
                    return;
                }
            };
            let Ok(stream) = stream.into_std() else {
                close(&shared);
                return;
            };
            if stream.set_nonblocking(false).is_err() {
                close(&shared);
                return;
            }
            let span = tracing::Span::current();
            let _ = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                read_port(stream, &shared);
                close(&shared);
            })
            .await;
        }));
        ArtifactPort { state }
    }

    /// Expects archive `seq` (the guest's count of its tests, this one included), unpacked into
    /// `dest` within `limits`; the receiver gets what arrived, or an error when no archive
    /// came before the port closed or the next test's expectation replaced this one.
    pub(super) fn expect(
        &self,
        seq: u32,
        dest: PathBuf,
        limits: ArtifactLimits,
    ) -> oneshot::Receiver<Extracted> {
        let (done, rx) = oneshot::channel();
        let mut state = lock(&self.state);
        if state.poisoned.is_none() && !state.closed {
            state.job = Some(Job {
                seq,
                dest,
                limits,
                done,
            });
        }
        rx
    }

    /// Gives up waiting for archive `seq` (the guest sent none): `false` when its header
    /// already arrived, so that the archive is being read.
    pub(super) fn withdraw(&self, seq: u32) -> bool {
        let mut state = lock(&self.state);
        match &state.job {
            Some(job) if job.seq == seq => {
                state.job = None;
                true
            }
            _ => state.archives < seq,
        }
    }

    /// When archive `seq` was unpacked (its last byte read and its files checked), if it was.
    pub(super) fn unpacked_at(&self, seq: u32) -> Option<Instant> {
        match lock(&self.state).unpacked {
            Some((n, at)) if n == seq => Some(at),
            _ => None,
        }
    }

    /// Why the port's stream can no longer be followed, if it cannot.
    pub(super) fn poisoned(&self) -> Option<String> {
        lock(&self.state).poisoned.clone()
    }
}

/// What became of a test's archive once the console said how the guest sent its artifacts.
#[derive(Debug)]
pub(super) enum Archive {
    /// None came (or the port could not be followed: see [`ArtifactPort::poisoned`]).
    None,
    /// It arrived: what was unpacked.
    Arrived(Extracted),
    /// It is still arriving (or stuck): what was unpacked comes once QEMU has stopped.
    Pending(oneshot::Receiver<Extracted>),
}

/// Archive `seq`'s fate (`rx`: from [`ArtifactPort::expect`]): awaited for up to `limit` when
/// the guest said it sent it over the port (`sent`), else withdrawn.
pub(super) async fn archive_of(
    port: &ArtifactPort,
    rx: oneshot::Receiver<Extracted>,
    seq: u32,
    sent: bool,
    limit: Duration,
) -> Archive {
    let mut rx = rx;
    if sent {
        match tokio::time::timeout(limit, &mut rx).await {
            Ok(Ok(e)) => Archive::Arrived(e),
            Ok(Err(_)) => Archive::None,
            Err(_) => Archive::Pending(rx),
        }
    } else if port.withdraw(seq) {
        Archive::None
    } else {
        Archive::Pending(rx)
    }
}

/// Marks the connection closed: whoever waits for an archive learns that none comes.
fn close(state: &Mutex<State>) {
    let mut s = lock(state);
    s.closed = true;
    s.job = None;
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The port's reader: archive after archive, until the connection closes.
fn read_port(stream: impl Read, state: &Mutex<State>) {
    // Large reads: the guest writes at up to a few hundred MB/s.
    let mut reader = BufReader::with_capacity(256 << 10, stream);
    loop {
        let seq = match next_header(&mut reader) {
            Ok(Some(seq)) => seq,
            // The guest is gone.
            Ok(None) => break,
            Err(why) => {
                poison(state, why, &mut reader);
                break;
            }
        };
        let job = {
            let mut s = lock(state);
            s.archives = s.archives.max(seq);
            s.job.take()
        };
        let job = match job {
            Some(job) if job.seq == seq => job,
            Some(job) => {
                let why = format!(
                    "the artifact port sent archive {seq} while test {} of the guest waited for its own",
                    job.seq
                );
                poison(state, why, &mut reader);
                break;
            }
            None => {
                let why = format!(
                    "the artifact port sent archive {seq} with no test of the guest waiting for one"
                );
                poison(state, why, &mut reader);
                break;
            }
        };
        let started = Instant::now();
        let extracted = crate::artifacts::extract(&mut reader, &job.dest, job.limits);
        lock(state).unpacked = Some((seq, Instant::now()));
        tracing::debug!(
            channel = "virtio-serial",
            archive = seq,
            files = extracted.files.len(),
            bytes = extracted.files.values().sum::<u64>(),
            rejected = extracted.rejected_count(),
            complete = extracted.complete,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "artifact archive received"
        );
        let complete = extracted.complete;
        let error = extracted.error.clone();
        let _ = job.done.send(extracted);
        if !complete {
            let why = format!(
                "archive {seq} on the artifact port did not end where its tar stream should: {}",
                error.unwrap_or_else(|| "it was cut short".into())
            );
            poison(state, why, &mut reader);
            break;
        }
    }
}

/// Marks the stream as impossible to follow and reads everything else the guest writes to the
/// port, dropping it, until the connection closes.
fn poison(state: &Mutex<State>, why: String, reader: &mut impl Read) {
    tracing::debug!(why = %why, "artifact port poisoned");
    {
        let mut s = lock(state);
        s.poisoned = Some(why);
        s.job = None;
    }
    let _ = std::io::copy(reader, &mut std::io::sink());
}

/// The next archive's number: zero bytes (the end of the previous archive) skipped, then a
/// header line; `None` at the end of the stream.
fn next_header(reader: &mut impl BufRead) -> Result<Option<u32>, String> {
    let mut skipped = 0usize;
    loop {
        let buf = reader
            .fill_buf()
            .map_err(|e| format!("reading the artifact port failed: {e}"))?;
        if buf.is_empty() {
            return Ok(None);
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        let all = zeros == buf.len();
        reader.consume(zeros);
        skipped += zeros;
        if skipped > MAX_PADDING {
            return Err(format!(
                "the artifact port sent more than {MAX_PADDING} zero bytes between archives"
            ));
        }
        if !all {
            break;
        }
    }
    let mut line = Vec::new();
    reader
        .take(MAX_HEADER as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the artifact port failed: {e}"))?;
    let text = String::from_utf8_lossy(&line);
    let seq = line
        .ends_with(b"\n")
        .then(|| text.trim_end().strip_prefix(HEADER))
        .flatten()
        .and_then(|n| n.parse::<u32>().ok());
    match seq {
        Some(seq) => Ok(Some(seq)),
        None if line.is_empty() => Ok(None),
        None => Err(format!(
            "the artifact port sent {:?} where an archive header (`{HEADER}<n>`) belongs",
            text.chars().take(40).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(seq: u32, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = format!("{HEADER}{seq}\n").into_bytes();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        out.extend(b.into_inner().unwrap());
        out
    }

    /// Runs the reader over `stream` with archive `seq` expected.
    fn read_all(
        stream: &[u8],
        seq: u32,
        dir: &std::path::Path,
    ) -> (Option<Extracted>, Option<String>) {
        let state = Mutex::new(State::default());
        let (done, mut rx) = oneshot::channel();
        lock(&state).job = Some(Job {
            seq,
            dest: dir.join(seq.to_string()),
            limits: ArtifactLimits::default(),
            done,
        });
        read_port(stream, &state);
        let poisoned = lock(&state).poisoned.clone();
        (rx.try_recv().ok(), poisoned)
    }

    #[test]
    fn archives_follow_each_other_on_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let state = Mutex::new(State::default());
        let mut stream = archive(1, &[("a.txt", b"one")]);
        // GNU-style record padding after the first archive, none after the second.
        stream.extend(vec![0u8; 8192]);
        stream.extend(archive(2, &[("b.txt", b"two"), ("c/d.bin", &[7u8; 1000])]));
        let (tx1, mut rx1) = oneshot::channel();
        lock(&state).job = Some(Job {
            seq: 1,
            dest: dir.path().join("1"),
            limits: ArtifactLimits::default(),
            done: tx1,
        });
        // The second test's expectation is set once the first archive was read: a reader over
        // a pipe shows it.
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        let state = Arc::new(state);
        let shared = Arc::clone(&state);
        let reader = std::thread::spawn(move || read_port(r, &shared));
        use std::io::Write as _;
        let first_len = archive(1, &[("a.txt", b"one")]).len() + 8192;
        w.write_all(&stream[..first_len]).unwrap();
        let first = loop {
            if let Ok(e) = rx1.try_recv() {
                break e;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(first.complete, "{first:?}");
        assert_eq!(
            std::fs::read(dir.path().join("1/a.txt")).unwrap(),
            b"one".to_vec()
        );
        let (tx2, rx2) = oneshot::channel();
        lock(&state).job = Some(Job {
            seq: 2,
            dest: dir.path().join("2"),
            limits: ArtifactLimits::default(),
            done: tx2,
        });
        w.write_all(&stream[first_len..]).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
        reader.join().unwrap();
        let second = rx2.blocking_recv().unwrap();
        assert!(second.complete, "{second:?}");
        assert_eq!(second.files.get("c/d.bin"), Some(&1000));
        assert_eq!(lock(&state).poisoned, None);
    }

    #[test]
    fn anything_else_on_the_port_poisons_it() {
        let dir = tempfile::tempdir().unwrap();
        // Raw bytes where a header belongs.
        let (got, poisoned) = read_all(&b"hello\n".repeat(1000), 1, dir.path());
        assert!(got.is_none());
        assert!(poisoned.unwrap().contains("archive header"));
        // Another test's archive.
        let (got, poisoned) = read_all(&archive(3, &[("x", b"x")]), 2, dir.path());
        assert!(got.is_none());
        assert!(poisoned.unwrap().contains("archive 3"));
        // An archive cut short: what arrived is kept, and the port is poisoned.
        let whole = archive(1, &[("big.bin", &[1u8; 4096])]);
        let (got, poisoned) = read_all(&whole[..2000], 1, dir.path());
        let e = got.unwrap();
        assert!(!e.complete);
        assert!(poisoned.unwrap().contains("did not end"));
        // Endless zeros.
        let (got, poisoned) = read_all(&vec![0u8; 1 << 20], 1, dir.path());
        assert!(got.is_none());
        assert!(poisoned.unwrap().contains("zero bytes"));
        // Nothing at all: no archive, nothing wrong.
        let (got, poisoned) = read_all(&[], 1, dir.path());
        assert!(got.is_none() && poisoned.is_none());
    }
}
