//! BLAKE3 trees of large blobs, for verified ranges.
//!
//! A blob's digest is the root of BLAKE3's hash tree over its content. For content of 256 KiB
//! or more, the store also keeps the chaining values of the tree's 64 KiB subtrees ("groups")
//! in `trees-v1/blake3/ab/cd/<hex>`, written as the content is hashed on the way in. With them,
//! any group can be checked against the digest on its own: the group values are first merged up
//! to the root and compared with the digest (a damaged or forged tree file is never used), then
//! each group read is hashed and compared with its value before any of it is handed out. That
//! is what lets [`VerifiedRange`] return verified content piece by piece, and a range verify
//! only the groups it covers, where a reader without the tree must hash everything first.
//!
//! A tree is derived data, also made when a blob arrives encoded (a remote fetch hashes it
//! group by group as it verifies it): a blob without one (written by an earlier version) is
//! read and verified whole, as before. Tree file: `AST1`, the group size as a power of two
//! (16), the frame size as a power of two (23; 0 without a frame table), two zero bytes, the
//! content length (u64, little-endian), then 32 bytes per group; with a frame table (blobs
//! compressed in independent frames, see `frames`), then the compressed offset of each frame
//! (u64, little-endian) and a 32-byte check of the table against the digest and the size of
//! the blob file it describes.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::Digest;
use crate::blob::corrupt_io;
use crate::error::{Error, Result};
use crate::frames::{FRAME, FRAME_LOG};

/// Bytes per group: 64 BLAKE3 chunks, the subtree whose chaining value the tree keeps.
pub(crate) const GROUP: u64 = 1 << GROUP_LOG;
const GROUP_LOG: u8 = 16;
const MAGIC: &[u8; 4] = b"AST1";
const HEADER: usize = 16;
/// The largest piece a [`VerifiedRange`] returns: pieces start at one group and double up to
/// this, so the first verified bytes come early and later ones in few large pieces.
const MAX_PIECE_GROUPS: u64 = 16;
/// The largest piece, in bytes.
pub const MAX_PIECE: usize = (MAX_PIECE_GROUPS * GROUP) as usize;

/// Hashes content as it streams in, keeping the chaining value of every group; its root is the
/// content's plain BLAKE3 hash.
pub(crate) struct TreeHasher {
    current: blake3::Hasher,
    filled: u64,
    cvs: Vec<ChainingValue>,
}

impl TreeHasher {
    pub(crate) fn new() -> Self {
        TreeHasher {
            current: blake3::Hasher::new(),
            filled: 0,
            cvs: Vec::new(),
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.filled == GROUP {
                // A full group with more content after it: never the root.
                self.cvs.push(self.current.finalize_non_root());
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.cvs.len() as u64 * GROUP);
                self.filled = 0;
            }
            let take = ((GROUP - self.filled) as usize).min(data.len());
            self.current.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
        }
    }

    /// The digest, and the group values when there is more than one group.
    pub(crate) fn finish(mut self) -> (Digest, Vec<ChainingValue>) {
        if self.cvs.is_empty() {
            return (Digest::from(self.current.finalize()), Vec::new());
        }
        self.cvs.push(self.current.finalize_non_root());
        let root = root_of(&self.cvs);
        (Digest::from(root), self.cvs)
    }
}

/// The largest power of two below `n` (n ≥ 2): how BLAKE3 splits `n` groups into subtrees.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let l = left_len(cvs.len());
    merge_subtrees_non_root(&subtree(&cvs[..l]), &subtree(&cvs[l..]), Mode::Hash)
}

/// The root hash over two or more group values.
fn root_of(cvs: &[ChainingValue]) -> blake3::Hash {
    debug_assert!(cvs.len() >= 2);
    let l = left_len(cvs.len());
    merge_subtrees_root(&subtree(&cvs[..l]), &subtree(&cvs[l..]), Mode::Hash)
}

/// The chaining value of group `index` of content with more than one group.
fn group_cv(index: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * GROUP);
    h.update(data);
    h.finalize_non_root()
}

/// Groups in content of `len` bytes.
fn groups(len: u64) -> u64 {
    len.div_ceil(GROUP).max(1)
}

/// Frames in content of `len` bytes.
fn frames(len: u64) -> u64 {
    len.div_ceil(FRAME).max(1)
}

/// What a tree file holds: the group values, and where each compressed frame starts when the
/// blob was written as independent frames (see `frames`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tree {
    pub(crate) cvs: Vec<ChainingValue>,
    pub(crate) frames: Option<Vec<u64>>,
}

/// Where the frames of one blob file start, and that file's size: a table describes one
/// encoding of the content, and another encoding of it (an earlier version's single stream,
/// another zstd release) is another file, almost surely of another size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frames<'a> {
    pub(crate) offsets: &'a [u64],
    pub(crate) stored_len: u64,
}

/// The check of a frame table: the digest it belongs to, the header, the offsets and the size
/// of the blob file they describe, hashed.
fn frame_check(digest: &Digest, header: &[u8], table: &[u8], stored_len: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(digest.as_bytes());
    h.update(header);
    h.update(table);
    h.update(&stored_len.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The tree file's bytes. With `frames`, the header's second byte is the frame size as a power
/// of two and the group values are followed by one offset per frame (u64, little-endian) and
/// the table's check ([`frame_check`]); without, that byte is zero and the values end the
/// file (the layout of earlier versions, which refuse a file with a frame table and read the
/// blob whole).
pub(crate) fn encode(
    raw_len: u64,
    cvs: &[ChainingValue],
    frames: Option<Frames<'_>>,
    digest: &Digest,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 32 * cvs.len());
    out.extend_from_slice(MAGIC);
    let frame_log = if frames.is_some() { FRAME_LOG } else { 0 };
    out.extend_from_slice(&[GROUP_LOG, frame_log, 0, 0]);
    out.extend_from_slice(&raw_len.to_le_bytes());
    for cv in cvs {
        out.extend_from_slice(cv);
    }
    if let Some(Frames {
        offsets,
        stored_len,
    }) = frames
    {
        let table: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let check = frame_check(digest, &out[..HEADER], &table, stored_len);
        out.extend_from_slice(&table);
        out.extend_from_slice(&check);
    }
    out
}

/// The tree file at `path` if it describes content of `raw_len` bytes hashing to `digest`;
/// `None` for a missing, malformed, damaged or forged file. The frame table is kept only for a
/// blob file of `stored_len` bytes, and when it checks: else it is left out (the content is
/// then decoded from its start).
pub(crate) fn load(
    path: &Path,
    raw_len: u64,
    digest: &Digest,
    stored_len: Option<u64>,
) -> Option<Tree> {
    let n = groups(raw_len);
    if n < 2 {
        return None;
    }
    let values = HEADER as u64 + 32 * n;
    let table = 8 * frames(raw_len) + 32;
    let mut f = File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if size != values && size != values + table {
        return None;
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf).ok()?;
    let framed = buf.len() as u64 == values + table && buf.get(5) == Some(&FRAME_LOG);
    if !(buf.len() as u64 == values || framed)
        || &buf[..4] != MAGIC
        || buf[4] != GROUP_LOG
        || buf[6..8] != [0, 0]
        || (!framed && buf[5] != 0)
        || u64::from_le_bytes(buf[8..16].try_into().ok()?) != raw_len
    {
        return None;
    }
    let cvs: Vec<ChainingValue> = buf[HEADER..values as usize]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect();
    if Digest::from(root_of(&cvs)) != *digest {
        return None;
    }
    let frames = stored_len.filter(|_| framed).and_then(|stored_len| {
        let (table, check) = buf[values as usize..].split_at(buf.len() - values as usize - 32);
        let offsets: Vec<u64> = table
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .collect();
        let ok = frame_check(digest, &buf[..HEADER], table, stored_len) == check
            && offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] < w[1]);
        ok.then_some(offsets)
    });
    Some(Tree { cvs, frames })
}

/// Writes a tree file (to a temp file in `tmp`, then renamed into place) unless a good one is
/// there; returns whether a tree of the content is in place afterwards. A tree is derived
/// data: failing to write one costs speed later, not content.
pub(crate) fn store(
    trees: &Path,
    tmp: &Path,
    digest: &Digest,
    raw_len: u64,
    cvs: &[ChainingValue],
    frames: Option<Frames<'_>>,
) -> bool {
    if cvs.len() < 2 {
        return false;
    }
    let path = path_of(trees, digest);
    // One left damaged (trees are not fsynced: a power cut) is replaced, and so is one without
    // the frame table of the blob file just written.
    let kept = load(&path, raw_len, digest, frames.map(|f| f.stored_len));
    if kept.is_some_and(|t| frames.is_none_or(|f| t.frames.as_deref() == Some(f.offsets))) {
        return true;
    }
    let write = || -> io::Result<()> {
        let temp = tmp.join(format!(
            "{}.{}.tree",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::write(&temp, encode(raw_len, cvs, frames, digest))?;
        let shard = path.parent().expect("tree paths have a parent");
        fs::create_dir_all(shard)
            .and_then(|()| fs::rename(&temp, &path))
            .inspect_err(|_| {
                let _ = fs::remove_file(&temp);
            })
    };
    write()
        .inspect_err(|e| {
            tracing::debug!(path = %path.display(), error = %e, "cannot keep a blob's tree");
        })
        .is_ok()
}

/// `trees-v1/blake3/ab/cd/<hex>` under the store root's `trees` directory.
pub(crate) fn path_of(trees: &Path, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    trees.join(&hex[..2]).join(&hex[2..4]).join(hex)
}

/// Where the content comes from.
enum Source {
    /// Raw content: the blob file, positioned at the next group to read.
    Raw(io::Take<File>),
    /// Compressed content: decoded from the start of the frame holding the range's start (from
    /// the blob's start without a frame table); `at` is the decoded position.
    Zstd {
        decoder: Box<zstd::stream::read::Decoder<'static, io::BufReader<File>>>,
        at: u64,
    },
}

/// A range of a blob's content returned in pieces, each verified against the blob's digest
/// (through its tree) before it is returned: whatever the caller passes on was verified, and a
/// damaged group is an [`Error::Corrupt`] naming the artifact before any of its bytes are
/// returned, and the last item. The pieces before the damage were verified and are correct.
/// Only the groups the range covers are hashed; compressed content is decoded from the frame
/// holding the range's start when the blob was written in frames, else from its start.
pub struct VerifiedRange {
    source: Source,
    cvs: Vec<ChainingValue>,
    digest: Digest,
    path: PathBuf,
    raw_len: u64,
    /// Next content offset to return, and the end of the range.
    pos: u64,
    end: u64,
    /// Groups in the next piece.
    piece: u64,
    failed: bool,
    artifact: Option<String>,
}

impl std::fmt::Debug for VerifiedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedRange")
            .field("digest", &self.digest)
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl VerifiedRange {
    /// `range` of the blob file `file` (its header already checked: compressed or not,
    /// `raw_len`), whose tree is `cvs`. `range` must lie within the content.
    pub(crate) fn new(
        mut file: File,
        compressed: bool,
        tree: Tree,
        digest: Digest,
        path: PathBuf,
        raw_len: u64,
        range: std::ops::Range<u64>,
    ) -> io::Result<Self> {
        let std::ops::Range { start, end } = range;
        debug_assert!(start <= end && end <= raw_len);
        let first = start / GROUP * GROUP;
        let Tree { cvs, frames } = tree;
        let source = if compressed {
            // The frame holding the first group, where there is a frame table.
            let (offset, at) = frames
                .as_deref()
                .and_then(|f| {
                    let k = (first / FRAME) as usize;
                    f.get(k).map(|&o| (o, k as u64 * FRAME))
                })
                .unwrap_or((0, 0));
            file.seek(SeekFrom::Start(HEADER as u64 + offset))?;
            let decoder = zstd::stream::read::Decoder::with_buffer(io::BufReader::with_capacity(
                1 << 20,
                file,
            ))?;
            Source::Zstd {
                decoder: Box::new(decoder),
                at,
            }
        } else {
            file.seek(SeekFrom::Start(HEADER as u64 + first))?;
            Source::Raw(file.take(raw_len - first))
        };
        Ok(VerifiedRange {
            source,
            cvs,
            digest,
            path,
            raw_len,
            pos: start,
            end,
            piece: 1,
            failed: false,
            artifact: None,
        })
    }

    pub(crate) fn for_artifact(mut self, id: &str) -> Self {
        self.artifact = Some(id.to_owned());
        self
    }

    /// Reads `from..to` (group-aligned `from`) of the content into `buf` (emptied first).
    fn read(&mut self, from: u64, to: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let n = to - from;
        buf.clear();
        buf.reserve(n as usize);
        let got = match &mut self.source {
            Source::Raw(file) => file.take(n).read_to_end(buf).map(|_| ()),
            Source::Zstd { decoder, at } => {
                let mut r = Ok(());
                if *at < from {
                    // Groups before the range: decoded, not hashed, not returned.
                    r = io::copy(&mut decoder.as_mut().take(from - *at), &mut io::sink())
                        .map(|k| *at += k);
                }
                if r.is_ok() {
                    r = decoder.as_mut().take(n).read_to_end(buf).map(|_| ());
                    *at += buf.len() as u64;
                }
                r
            }
        };
        if let Err(e) = got {
            return Err(crate::blob::decode_error(e, self.digest, &self.path));
        }
        if buf.len() as u64 != n {
            return Err(corrupt_io(
                self.digest,
                &self.path,
                format!(
                    "content ends at {} but the header says {}",
                    from + buf.len() as u64,
                    self.raw_len
                ),
            ));
        }
        Ok(())
    }
}

impl Iterator for VerifiedRange {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        self.next_into(&mut buf).map(|r| r.map(|()| buf))
    }
}

impl VerifiedRange {
    /// The next piece into `buf` (emptied first; its allocation reused): `None` at the end.
    /// Pieces are at most [`MAX_PIECE`] bytes.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<Result<()>> {
        self.next_piece(buf).map(|r| {
            r.map_err(|e| {
                // Nothing after an error.
                self.failed = true;
                let e = Error::io("read", &self.path, e);
                match &self.artifact {
                    Some(id) => e.with_artifact(id),
                    None => e,
                }
            })
        })
    }

    fn next_piece(&mut self, buf: &mut Vec<u8>) -> Option<io::Result<()>> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let first = self.pos / GROUP;
        let last = (first + self.piece).min(self.end.div_ceil(GROUP));
        self.piece = (self.piece * 2).min(MAX_PIECE_GROUPS);
        let from = first * GROUP;
        let to = (last * GROUP).min(self.raw_len);
        if let Err(e) = self.read(from, to, buf) {
            return Some(Err(e));
        }
        for (i, group) in buf.chunks(GROUP as usize).enumerate() {
            let index = first + i as u64;
            if group_cv(index, group) != self.cvs[index as usize] {
                let at = index * GROUP;
                return Some(Err(corrupt_io(
                    self.digest,
                    &self.path,
                    format!(
                        "content at {at}..{} does not hash to its part of the digest",
                        at + group.len() as u64
                    ),
                )));
            }
        }
        let take_end = self.end.min(to);
        buf.truncate((take_end - from) as usize);
        if self.pos > from {
            buf.drain(..(self.pos - from) as usize);
        }
        self.pos = take_end;
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_root_of_the_groups_is_the_plain_hash() {
        let c = CHUNK as usize;
        let g = GROUP as usize;
        for len in [
            0,
            1,
            c,
            g - 1,
            g,
            g + 1,
            2 * g,
            2 * g + c,
            3 * g,
            3 * g + 7,
            4 * g,
            5 * g - 1,
            8 * g,
            9 * g + 1,
            13 * g + 5,
            64 * g + 3,
        ] {
            let data = content(len);
            // Fed in awkward pieces: the grouping does not depend on them.
            let mut h = TreeHasher::new();
            for piece in data.chunks(7 * 1024 + 3) {
                h.update(piece);
            }
            let (d, cvs) = h.finish();
            assert_eq!(d, Digest::of(&data), "length {len}");
            assert_eq!(
                cvs.len() as u64,
                if len as u64 > GROUP {
                    groups(len as u64)
                } else {
                    0
                }
            );
            for (i, cv) in cvs.iter().enumerate() {
                let at = i * g;
                assert_eq!(*cv, group_cv(i as u64, &data[at..(at + g).min(len)]));
            }
        }
    }

    const CHUNK: u64 = blake3::CHUNK_LEN as u64;

    proptest::proptest! {
        #[test]
        fn any_length_and_feeding_gives_the_plain_hash(
            len in 0usize..600_000,
            step in 1usize..200_000,
        ) {
            let data = content(len);
            let mut h = TreeHasher::new();
            for piece in data.chunks(step) {
                h.update(piece);
            }
            proptest::prop_assert_eq!(h.finish().0, Digest::of(&data));
        }
    }

    /// The digest, group values and length of test content of `len` bytes.
    fn hashed(len: usize) -> (Digest, Vec<ChainingValue>, u64) {
        let mut h = TreeHasher::new();
        h.update(&content(len));
        let (d, cvs) = h.finish();
        (d, cvs, len as u64)
    }

    #[test]
    fn a_tree_file_is_used_only_for_its_own_content() {
        let dir = tempfile::tempdir().unwrap();
        let (d, cvs, len) = hashed(5 * GROUP as usize + 9);
        store(dir.path(), dir.path(), &d, len, &cvs, None);
        let path = path_of(dir.path(), &d);
        assert_eq!(
            load(&path, len, &d, None).unwrap(),
            Tree {
                cvs: cvs.clone(),
                frames: None
            }
        );
        // Another digest, another length: refused.
        assert!(load(&path, len, &Digest::of(b"other"), None).is_none());
        assert!(load(&path, len + 1, &d, None).is_none());
        // A changed value: its root no longer matches.
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(load(&path, len, &d, None).is_none());
        // Truncated.
        fs::write(&path, encode(len, &cvs[..3], None, &d)).unwrap();
        assert!(load(&path, len, &d, None).is_none());
    }

    #[test]
    fn a_frame_table_is_used_only_when_it_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (d, cvs, len) = hashed(2 * FRAME as usize + 100);
        let path = path_of(dir.path(), &d);
        const OFFSETS: [u64; 3] = [0, 1000, 2500];
        let offsets = OFFSETS;
        let framed = |offsets: &'static [u64], stored_len| {
            Some(Frames {
                offsets,
                stored_len,
            })
        };
        let frames_of = |stored_len| load(&path, len, &d, stored_len).unwrap().frames;
        let keep = |frames| store(dir.path(), dir.path(), &d, len, &cvs, frames);
        // A tree without a table is replaced by one with it, never the other way round.
        keep(None);
        assert_eq!(frames_of(Some(4000)), None);
        keep(framed(&OFFSETS, 4000));
        let t = load(&path, len, &d, Some(4000)).unwrap();
        assert_eq!((t.cvs, t.frames), (cvs.clone(), Some(offsets.to_vec())));
        keep(None);
        assert_eq!(frames_of(Some(4000)), Some(offsets.to_vec()));
        // The table describes one blob file: for a file of another size (another encoding of
        // the same content), or when the size is not asked for, it is left out.
        assert_eq!(frames_of(Some(4001)), None);
        assert_eq!(frames_of(None), None);
        // ...and the blob file written now replaces it with its own.
        keep(framed(&[0, 900, 2000], 3000));
        assert_eq!(frames_of(Some(3000)), Some(vec![0, 900, 2000]));
        assert_eq!(frames_of(Some(4000)), None);
        // A changed offset: the table fails its check and is left out; the values still serve.
        let mut bytes = fs::read(&path).unwrap();
        let at = HEADER + 32 * cvs.len() + 9;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let t = load(&path, len, &d, Some(3000)).unwrap();
        assert_eq!((t.cvs, t.frames), (cvs.clone(), None));
        // Offsets out of order, even with a good check: left out.
        fs::write(&path, encode(len, &cvs, framed(&[0, 2500, 1000], 10), &d)).unwrap();
        assert_eq!(frames_of(Some(10)), None);
        // A table of another length: the whole file is refused.
        fs::write(&path, encode(len, &cvs, framed(&[0, 1000], 10), &d)).unwrap();
        assert!(load(&path, len, &d, Some(10)).is_none());
        // A table checked for another digest: left out.
        let other = Digest::of(b"x");
        fs::write(&path, encode(len, &cvs, framed(&OFFSETS, 10), &other)).unwrap();
        assert_eq!(frames_of(Some(10)), None);
    }
}
