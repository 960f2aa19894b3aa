//! Large compressed content as independent zstd frames, one per 8 MiB of content.
//!
//! Concatenated frames are one valid zstd stream, so every reader (earlier versions, `zstd -d`)
//! decodes such a blob from its start as before. The compressed offset of each frame is kept
//! in the blob's tree file (see `tree`), so a range of the content is decoded from the frame
//! that holds its start instead of from the blob's start: the end of a large console log is
//! read in about the time of one frame. The frames are compressed on a worker thread while the
//! caller reads and hashes the next ones, as the single zstd stream was before. Each frame
//! starts without history, which costs compression: for 60 MB of varied text (source code)
//! 1 MiB frames stored 38 % more than one stream, 4 MiB 5.8 %, 8 MiB 1.9 % (a console log:
//! 12 %, 2.0 %, 0.7 %), measured with `zstd -3` on the pieces; 8 MiB frames keep that small
//! while a range still decodes at most 8 MiB before its start.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Content bytes per frame: 128 tree groups.
pub(crate) const FRAME: u64 = 1 << FRAME_LOG;
/// `FRAME` as a power of two (as the tree file records it).
pub(crate) const FRAME_LOG: u8 = 23;

/// What the worker gives back: the output, and where each frame starts in it.
type Written<W> = io::Result<(W, Vec<u64>)>;

/// A writer that compresses what it is given into frames of [`FRAME`] content bytes and writes
/// them to `out` in order, recording where each starts (relative to the first).
pub(crate) struct FrameWriter<W: Write + Send + 'static> {
    pending: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Written<W>>>,
}

impl<W: Write + Send + 'static> FrameWriter<W> {
    /// Frames compressed at zstd `level`, written to `out`.
    pub(crate) fn new(out: W, level: i32) -> io::Result<Self> {
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        // Handed over when the worker is free: one frame compressing while the next fills, so
        // at most two frames of content are held.
        let (tx, rx): (_, Receiver<Vec<u8>>) = sync_channel(0);
        let worker = std::thread::Builder::new()
            .name("artifact-store-zstd".into())
            .spawn(move || {
                let mut out = out;
                let mut offsets = Vec::new();
                let mut at = 0u64;
                for content in rx {
                    let frame = compressor.compress(&content)?;
                    out.write_all(&frame)?;
                    offsets.push(at);
                    at += frame.len() as u64;
                }
                Ok((out, offsets))
            })?;
        Ok(FrameWriter {
            pending: Vec::with_capacity(FRAME as usize),
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Hands the pending content to the worker as one frame.
    fn send(&mut self) -> io::Result<()> {
        let content = std::mem::replace(&mut self.pending, Vec::with_capacity(FRAME as usize));
        let sent = self.tx.as_ref().map(|tx| tx.send(content));
        match sent {
            Some(Ok(())) => Ok(()),
            // The worker stopped: its error says why.
            _ => Err(self.join().err().unwrap_or_else(|| {
                io::Error::other("the zstd worker stopped before the content ended")
            })),
        }
    }

    fn join(&mut self) -> Written<W> {
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the zstd worker panicked")),
            None => Err(io::Error::other("the zstd worker has already stopped")),
        }
    }

    /// Compresses what is pending and returns `out` with the offset of every frame.
    pub(crate) fn finish(mut self) -> Written<W> {
        if !self.pending.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl<W: Write + Send + 'static> Write for FrameWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let take = (FRAME as usize - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == FRAME as usize {
                self.send()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for FrameWriter<W> {
    fn drop(&mut self) {
        // An abandoned write (an error upstream): the worker sees the channel close, finishes
        // the frame it holds and stops on its own; nothing here waits for it.
        self.tx = None;
        drop(self.worker.take());
    }
}

/// Where the frames of a zstd stream start (from the start of `stream`, a reader at its
/// first byte holding `len` bytes), when it is the frames a [`FrameWriter`] writes for
/// `content_len` bytes of content: every frame but the last holds [`FRAME`] bytes of content
/// and says so, the last the rest. `None` for anything else (an earlier version's single
/// stream of more than one frame's content, other frame sizes, a frame that does not say its
/// size, unreadable bytes). Reads the compressed bytes once, holding one frame at a time.
pub(crate) fn scan(stream: &mut dyn io::Read, len: u64, content_len: u64) -> Option<Vec<u64>> {
    use zstd::zstd_safe::{find_frame_compressed_size, get_frame_content_size};
    let frames = content_len.div_ceil(FRAME).max(1);
    // The most a frame of `FRAME` content bytes compresses to, and some room.
    let most = zstd::zstd_safe::compress_bound(FRAME as usize) + (64 << 10);
    let mut offsets = Vec::with_capacity(frames as usize);
    let mut buf: Vec<u8> = Vec::new();
    let (mut at, mut read, mut content) = (0u64, 0u64, 0u64);
    while at < len {
        // The whole next frame in `buf`: read more until zstd finds its end.
        let size = loop {
            if let Ok(n) = find_frame_compressed_size(&buf) {
                break n;
            }
            let want = (buf.len() * 2).clamp(64 << 10, most);
            if buf.len() >= most || read >= len {
                return None;
            }
            let more = (want - buf.len()).min((len - read) as usize);
            let start = buf.len();
            buf.resize(start + more, 0);
            stream.read_exact(&mut buf[start..]).ok()?;
            read += more as u64;
        };
        let holds = get_frame_content_size(&buf).ok()??;
        let last = offsets.len() as u64 + 1 == frames;
        let expected = if last { content_len - content } else { FRAME };
        if offsets.len() as u64 >= frames || holds != expected {
            return None;
        }
        offsets.push(at);
        content += holds;
        at += size as u64;
        buf.drain(..size);
    }
    (offsets.len() as u64 == frames && content == content_len).then_some(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-like text of `len` bytes.
    fn log(len: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i: u32| format!("line {i} of a log\n").into_bytes())
            .take(len)
            .collect()
    }

    #[test]
    fn frames_decode_alone_and_together() {
        let content = log(2 * FRAME as usize + 12_345);
        let mut w = FrameWriter::new(Vec::new(), 3).unwrap();
        // Odd-sized writes straddle the frame edges.
        for piece in content.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        let (out, offsets) = w.finish().unwrap();
        assert_eq!(offsets.len(), 3);
        assert_eq!(offsets[0], 0);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        // One stream to a reader that knows nothing of frames.
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), content);
        // Each frame on its own, from its offset.
        for (k, &at) in offsets.iter().enumerate() {
            let end = offsets.get(k + 1).map_or(out.len(), |&e| e as usize);
            let frame = zstd::decode_all(&out[at as usize..end]).unwrap();
            let from = k * FRAME as usize;
            assert_eq!(
                frame,
                &content[from..(from + FRAME as usize).min(content.len())]
            );
        }
    }

    #[test]
    fn a_scan_finds_the_frames_a_writer_wrote_and_nothing_else() {
        let content = log(2 * FRAME as usize + 999);
        let n = content.len() as u64;
        let mut w = FrameWriter::new(Vec::new(), 3).unwrap();
        w.write_all(&content).unwrap();
        let (out, offsets) = w.finish().unwrap();
        let scan_of = |bytes: &[u8], n| scan(&mut &bytes[..], bytes.len() as u64, n);
        assert_eq!(scan_of(&out, n), Some(offsets));
        // Content of another length, a truncated stream, one stream of it all: none.
        assert_eq!(scan_of(&out, n + 1), None);
        assert_eq!(scan_of(&out[..out.len() - 5], n), None);
        let single = zstd::encode_all(&content[..], 3).unwrap();
        assert_eq!(scan_of(&single, n), None);
        // Content within one frame that says its size is one frame; a stream that does not
        // say its size is not used.
        let small = &content[..300_000];
        let one = zstd::bulk::compress(small, 3).unwrap();
        assert_eq!(scan_of(&one, small.len() as u64), Some(vec![0]));
        let streamed = zstd::encode_all(small, 3).unwrap();
        assert_eq!(scan_of(&streamed, small.len() as u64), None);
        // Not zstd at all.
        assert_eq!(scan_of(&content[..100_000], 100_000), None);
    }

    #[test]
    fn a_failing_output_is_an_error_not_a_hang() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = FrameWriter::new(Full, 3).unwrap();
        let chunk = vec![7u8; 100_000];
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = w.write_all(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => w.finish().map(|_| ()).unwrap_err(),
        };
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
