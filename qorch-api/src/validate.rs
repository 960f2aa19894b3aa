//! Checks of what a request names: the raw path, artifact ids, run ids and test ids.

use crate::ApiError;

/// Refuses a raw request path holding a `.` or `..` segment, an encoded `/` or `\`, a NUL, a
/// backslash, or a malformed escape, whether written raw or percent-encoded (once or twice).
pub(crate) fn path(raw: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::bad_request(format!(
            "refused path `{}`: {why}",
            raw.escape_default()
        )))
    };
    let mut decoded = raw.to_owned();
    // Decoding twice catches `%252e%252e` as well.
    for _ in 0..3 {
        for seg in decoded.split('/') {
            if seg == ".." || seg == "." {
                return refuse("it holds a `..` or `.` segment (no traversal)");
            }
        }
        if decoded.contains('\\') {
            return refuse("it holds a backslash");
        }
        if decoded.contains('\0') {
            return refuse("it holds a NUL");
        }
        let lower = decoded.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return refuse("it holds an encoded `/` or `\\` (no traversal)");
        }
        match percent_decode(&decoded) {
            Some(d) if d == decoded => return Ok(()),
            Some(d) => decoded = d,
            None => return refuse("it holds a malformed percent escape or is not UTF-8"),
        }
    }
    refuse("it is encoded more than twice")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An artifact id: a UUID in its hyphenated lowercase form, as the store makes them.
pub(crate) fn artifact_id(id: &str) -> Result<(), ApiError> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "invalid artifact id `{}`: artifact ids are UUIDs (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex)",
            id.escape_default()
        ))),
    }
}

/// A test id: the orchestrator's `TestId` rules.
pub(crate) fn test_id(id: &str) -> Result<(), ApiError> {
    orchestrator_core::TestId::new(id)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A run id: what the orchestrator makes (`20260101T120000Z-1a2b3c4d`) and reports merged or
/// imported carry: letters, digits and `. _ - : @ +`, at most 128 characters, starting with a
/// letter or digit.
pub(crate) fn run_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:@+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid run id `{}`: run ids hold letters, digits and `. _ - : @ +` (at most 128, starting with a letter or digit)",
            id.escape_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_raw_and_encoded() {
        for bad in [
            "/api/v1/artifacts/../../etc/passwd",
            "/api/v1/artifacts/%2e%2e/x",
            "/api/v1/artifacts/%2E%2E%2Fetc",
            "/api/v1/artifacts/..%2fetc",
            "/api/v1/artifacts/a%2Fb",
            "/api/v1/artifacts/a%5Cb",
            "/api/v1/artifacts/%252e%252e/x",
            "/api/v1/artifacts/a%00",
            "/api/v1/artifacts/./x",
            "/api/v1/artifacts/%zz",
            "/api/v1/artifacts/a\\..\\b",
        ] {
            assert_eq!(path(bad).unwrap_err().status(), 400, "{bad}");
        }
        for good in [
            "/api/v1/artifacts",
            "/api/v1/tests/boot%40x86_64/history",
            "/api/v1/runs/20260101T000000Z-12345678/report.html",
            "/metrics",
        ] {
            path(good).unwrap();
        }
    }

    #[test]
    fn ids() {
        artifact_id("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        assert!(artifact_id("67E55044-10B1-426F-9247-BB680E5FE0C8").is_err());
        assert!(artifact_id("../x").is_err());
        run_id("20260101T120000Z-1a2b3c4d").unwrap();
        assert!(run_id("..").is_err());
        assert!(run_id("a/b").is_err());
        test_id("boot@x86_64").unwrap();
        assert!(test_id("../etc").is_err());
    }
}
