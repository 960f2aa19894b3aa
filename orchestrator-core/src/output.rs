//! Bounded capture of a byte stream: keeps the head and the tail, counts what is dropped.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::result::CapturedOutput;

/// Keeps at most `limit` bytes of a stream: the first half and the last half, so both the start
/// of a log and the error at its end survive.
#[derive(Debug)]
pub struct BoundedCapture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_limit: usize,
    tail_limit: usize,
    total: u64,
}

impl BoundedCapture {
    /// A capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let head_limit = limit / 2;
        BoundedCapture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_limit,
            tail_limit: limit - head_limit,
            total: 0,
        }
    }

    /// Appends bytes.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.head.len() < self.head_limit {
            let take = bytes.len().min(self.head_limit - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if self.tail_limit == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_limit {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_limit..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_limit);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reads `reader` to its end into the capture, with a fixed-size buffer.
    pub async fn read_to_end<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.push(&buf[..n]);
        }
    }

    /// The kept text with a visible marker where bytes were dropped.
    pub fn finish(self) -> CapturedOutput {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let truncated = self.total - kept;
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if truncated > 0 {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("[... {truncated} bytes truncated ...]\n"));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        text.push_str(&String::from_utf8_lossy(&tail));
        CapturedOutput {
            text,
            total_bytes: self.total,
            truncated_bytes: truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_streams_are_kept_whole() {
        let mut c = BoundedCapture::new(100);
        c.push(b"hello\n");
        c.push(b"world\n");
        let out = c.finish();
        assert_eq!(out.text, "hello\nworld\n");
        assert!(!out.is_truncated());
    }

    #[test]
    fn long_streams_keep_head_and_tail_with_a_marker() {
        let mut c = BoundedCapture::new(10);
        c.push(b"HEADxyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyzTAIL");
        let out = c.finish();
        assert_eq!(out.total_bytes, 45);
        assert_eq!(out.truncated_bytes, 35);
        assert_eq!(out.text, "HEADx\n[... 35 bytes truncated ...]\nzTAIL");
    }

    proptest! {
        #[test]
        fn keeps_exactly_head_and_tail(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20), limit in 0usize..64) {
            let all: Vec<u8> = chunks.concat();
            let mut c = BoundedCapture::new(limit);
            for ch in &chunks { c.push(ch); }
            let head_limit = limit / 2;
            let tail_limit = limit - head_limit;
            let head_len = all.len().min(head_limit);
            let tail_len = (all.len() - head_len).min(tail_limit);
            let expect_head = &all[..head_len];
            let expect_tail = &all[all.len() - tail_len..];
            prop_assert_eq!(&c.head[..], expect_head);
            prop_assert_eq!(c.tail.iter().copied().collect::<Vec<_>>(), expect_tail.to_vec());
            let out = c.finish();
            prop_assert_eq!(out.total_bytes, all.len() as u64);
            prop_assert_eq!(out.truncated_bytes, (all.len() - head_len - tail_len) as u64);
        }
    }
}
