use std::fs;
use std::io::Write;

use artifact_store::{ArtifactKind, Error, NewArtifact, Query, VerifyOptions};

use crate::support::{art, store};

fn sample_store() -> (tempfile::TempDir, artifact_store::ArtifactStore) {
    let (d, s) = store();
    s.add_bytes(art("boot", "r1").meta("k", "v"), b"console output")
        .unwrap();
    s.add_bytes(
        NewArtifact::new("boot", "r1", ArtifactKind::CoreDump, "core"),
        &vec![3u8; 200_000],
    )
    .unwrap();
    s.add_bytes(art("net", "r2"), b"other run").unwrap();
    (d, s)
}

#[test]
fn export_import_round_trip_is_idempotent() {
    let (d, s) = sample_store();
    let bundle = d.path().join("r1.tar.zst");
    let sum = s.export_bundle(&Query::new().run("r1"), &bundle).unwrap();
    assert_eq!((sum.records, sum.blobs), (2, 2));
    let (_d2, t) = store();
    let imp = t.import_bundle(&bundle).unwrap();
    assert_eq!(imp.records_added, 2);
    let mut a = s.query(&Query::new().run("r1")).unwrap();
    let mut b = t.query(&Query::new()).unwrap();
    a.sort_by(|x, y| x.id.cmp(&y.id));
    b.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(a, b);
    for r in &b {
        assert_eq!(t.get(&r.id).unwrap(), s.get(&r.id).unwrap());
    }
    let again = t.import_bundle(&bundle).unwrap();
    assert_eq!((again.records_added, again.records_skipped), (0, 2));
    assert!(t.verify(VerifyOptions::default()).unwrap().is_clean());
}

/// Rewrites a bundle: `edit` sees every (path, data) and may change them; `extra` appends raw
/// entries built by the caller.
fn rewrite(
    src: &std::path::Path,
    dst: &std::path::Path,
    mut edit: impl FnMut(&str, &mut Vec<u8>),
    extra: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) {
    let dec = zstd::stream::read::Decoder::new(fs::File::open(src).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut out = tar::Builder::new(Vec::new());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        edit(&path, &mut data);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    extra(&mut out);
    let tar = out.into_inner().unwrap();
    let mut enc = zstd::stream::write::Encoder::new(fs::File::create(dst).unwrap(), 3).unwrap();
    enc.write_all(&tar).unwrap();
    enc.finish().unwrap();
}

fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("/etc/passwd").unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn tampered_and_hostile_bundles_are_rejected_and_add_nothing() {
    let (d, s) = sample_store();
    let good = d.path().join("good.tar.zst");
    s.export_bundle(&Query::new(), &good).unwrap();
    let bad = d.path().join("bad.tar.zst");
    type Edit = Box<dyn FnMut(&str, &mut Vec<u8>)>;
    type Extra = Box<dyn FnOnce(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, Edit, Extra, &str)> = vec![
        (
            "flipped byte in a blob",
            Box::new(|p, data| {
                if p.starts_with("blobs/") && !data.is_empty() {
                    data[0] ^= 1;
                }
            }),
            Box::new(|_| {}),
            "tampered",
        ),
        (
            "wrong digest in the manifest",
            Box::new(|p, data| {
                if p == "manifest.json" {
                    let s = String::from_utf8(data.clone()).unwrap();
                    let i = s.find("\"size\": ").unwrap() + 8;
                    let mut s = s.into_bytes();
                    s[i] = if s[i] == b'9' { b'8' } else { b'9' };
                    *data = s;
                }
            }),
            Box::new(|_| {}),
            "",
        ),
        (
            "parent dir entry",
            Box::new(|_, _| {}),
            Box::new(|b| raw_entry(b, b"../evil", tar::EntryType::Regular, b"x")),
            "`..`",
        ),
        (
            "absolute entry",
            Box::new(|_, _| {}),
            Box::new(|b| raw_entry(b, b"/tmp/evil", tar::EntryType::Regular, b"x")),
            "absolute",
        ),
        (
            "symlink entry",
            Box::new(|_, _| {}),
            Box::new(|b| raw_entry(b, b"blobs/link", tar::EntryType::Symlink, b"")),
            "not a regular file",
        ),
        (
            "unlisted blob",
            Box::new(|_, _| {}),
            Box::new(|b| {
                raw_entry(
                    b,
                    format!("blobs/{}", artifact_store::Digest::of(b"x")).as_bytes(),
                    tar::EntryType::Regular,
                    b"x",
                )
            }),
            "not listed",
        ),
        (
            "unexpected file",
            Box::new(|_, _| {}),
            Box::new(|b| raw_entry(b, b"README", tar::EntryType::Regular, b"x")),
            "unexpected entry",
        ),
    ];
    for (name, edit, extra, needle) in cases {
        rewrite(&good, &bad, edit, extra);
        let (_d2, t) = store();
        let err = t.import_bundle(&bad).unwrap_err();
        assert!(matches!(err, Error::Bundle { .. }), "{name}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(needle) && msg.contains("bad.tar.zst"),
            "{name}: {msg}"
        );
        assert!(
            t.query(&Query::new().include_evicted(true))
                .unwrap()
                .is_empty(),
            "{name}: records added"
        );
        // Nothing leaked into the store beyond collectable orphans.
        t.gc(&Default::default()).unwrap();
        assert!(
            t.verify(VerifyOptions::default()).unwrap().is_clean(),
            "{name}"
        );
    }
    // Garbage is not a bundle.
    fs::write(&bad, b"not a bundle").unwrap();
    assert!(matches!(
        s.import_bundle(&bad).unwrap_err(),
        Error::Bundle { .. }
    ));
}
