//! The system's apt sources: reading them and choosing the Debian archive entries.

use super::*;

// ---------------------------------------------------------------------------------------------
// The system's apt sources

/// How a source's signatures are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SignedBy {
    /// Keyring files or key fingerprints.
    Keyrings(Vec<String>),
    /// An ASCII-armored key embedded in a deb822 `Signed-By` field.
    Inline(String),
}

impl SignedBy {
    pub(super) fn parse(value: &str) -> Option<Self> {
        if value.contains("BEGIN PGP PUBLIC KEY BLOCK") {
            return Some(Self::Inline(value.to_owned()));
        }
        let keys: Vec<String> = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        (!keys.is_empty()).then_some(Self::Keyrings(keys))
    }
}

/// One `deb` source: a URI and a suite (a deb822 stanza yields one per URI and suite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AptSource {
    uri: String,
    suite: String,
    components: Vec<String>,
    signed_by: Option<SignedBy>,
}

/// Parses the one-line format of `sources.list` (`deb [options] uri suite components...`).
pub(super) fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb") else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue; // deb-src, or garbage
        }
        let mut rest = rest.trim_start();
        let mut options = "";
        if let Some(after) = rest.strip_prefix('[') {
            let Some((inside, after)) = after.split_once(']') else {
                continue;
            };
            options = inside;
            rest = after;
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let signed_by = options
            .split_whitespace()
            .filter_map(|o| o.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("signed-by"))
            .and_then(|(_, v)| SignedBy::parse(v));
        sources.push(AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: words.map(str::to_owned).collect(),
            signed_by,
        });
    }
    sources
}

/// Parses the deb822 format of `*.sources` files.
pub(super) fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            stanza_sources(&std::mem::take(&mut fields), &mut sources);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    sources
}

pub(super) fn stanza_sources(fields: &[(String, String)], sources: &mut Vec<AptSource>) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let words = |name: &str| get(name).unwrap_or_default().split_whitespace();
    if !words("types").any(|t| t == "deb") || get("enabled").is_some_and(|e| e.trim() == "no") {
        return;
    }
    let components: Vec<String> = words("components").map(str::to_owned).collect();
    let signed_by = get("signed-by").and_then(SignedBy::parse);
    for uri in words("uris") {
        for suite in words("suites") {
            sources.push(AptSource {
                uri: uri.to_owned(),
                suite: suite.to_owned(),
                components: components.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
}

/// Reads `<etc>/sources.list` and `<etc>/sources.list.d/*.{list,sources}` like apt does (other
/// file names are ignored). Returns the sources and the files read.
pub(super) fn read_apt_sources(
    etc: &Path,
) -> Result<(Vec<AptSource>, Vec<PathBuf>), ProvisionError> {
    let mut files = Vec::new();
    let main = etc.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let parts = etc.join("sources.list.d");
    if parts.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(&parts)
            .map_err(io_err("reading", &parts))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                (name.ends_with(".list") || name.ends_with(".sources"))
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    && p.is_file()
            })
            .collect();
        names.sort();
        files.extend(names);
    }
    let mut sources = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).map_err(io_err("reading", file))?;
        if file.extension() == Some(OsStr::new("sources")) {
            sources.extend(parse_deb822_sources(&text));
        } else {
            sources.extend(parse_one_line_sources(&text));
        }
    }
    Ok((sources, files))
}

/// The system's Debian archive entries: the release, and its -updates and -security suites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DebianSources {
    base: AptSource,
    updates: Option<AptSource>,
    security: Option<AptSource>,
}

pub(super) fn system_debian_sources(etc: &Path) -> Result<DebianSources, ProvisionError> {
    let (sources, files) = read_apt_sources(etc)?;
    let codename = host_codename();
    select_debian_sources(&sources, codename.as_deref()).map_err(|reason| {
        ProvisionError::NoDebianSource {
            searched: if files.is_empty() {
                format!("nothing in {}", etc.display())
            } else {
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            reason,
        }
    })
}

pub(super) fn host_codename() -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
                .find(|v| !v.is_empty())
        })
}

pub(super) fn select_debian_sources(
    sources: &[AptSource],
    codename: Option<&str>,
) -> Result<DebianSources, String> {
    let usable: Vec<&AptSource> = sources
        .iter()
        .filter(|s| {
            s.components.iter().any(|c| c == "main")
                && !s.uri.starts_with("cdrom:")
                && !s.suite.ends_with('/')
        })
        .collect();
    let base = codename
        .and_then(|c| usable.iter().find(|s| s.suite == c))
        .or_else(|| {
            usable
                .iter()
                .find(|s| SUITE_ALIASES.contains(&s.suite.as_str()))
        })
        .ok_or_else(|| match codename {
            Some(c) => format!("no `deb` entry has suite `{c}` (this system's release) and `main`"),
            None => "this system's release is unknown (no VERSION_CODENAME in /etc/os-release) \
                     and no `deb` entry has suite `stable` and `main`"
                .to_owned(),
        })?;
    let find = |suffixes: &[&str]| {
        suffixes.iter().find_map(|suffix| {
            let suite = format!("{}{suffix}", base.suite);
            usable
                .iter()
                .find(|s| s.suite == suite)
                .map(|s| (*s).clone())
        })
    };
    Ok(DebianSources {
        base: (*base).clone(),
        updates: find(&["-updates"]),
        security: find(&["-security", "/updates"]),
    })
}

/// One line of the generated source list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SourceLine {
    pub(super) uri: String,
    pub(super) suite: String,
    pub(super) signed_by: Option<SignedBy>,
}

/// The Debian release to use for `arch` and the source lines for it: the system's release, or,
/// when that release has no kernels for `arch`, the first that has, from the same mirrors.
pub(super) fn source_lines(
    debian: &DebianSources,
    arch: Arch,
    keyring_installed: bool,
) -> (String, Vec<SourceLine>) {
    let base = debian.base.suite.as_str();
    let release = if arch == Arch::Riscv64 && RELEASES_WITHOUT_RISCV64.contains(&base) {
        FIRST_RISCV64_RELEASE
    } else {
        base
    };
    let entries = [
        Some((&debian.base, String::new())),
        debian.updates.as_ref().map(|s| (s, "-updates".to_owned())),
        debian
            .security
            .as_ref()
            .map(|s| (s, "-security".to_owned())),
    ];
    let lines = entries
        .into_iter()
        .flatten()
        .map(|(source, suffix)| {
            if release == base {
                SourceLine {
                    uri: source.uri.clone(),
                    suite: source.suite.clone(),
                    signed_by: source.signed_by.clone(),
                }
            } else {
                // Another release: the system's own entries may be restricted to keys of its
                // release; the archive keyring package carries the next release's keys too.
                let signed_by = if keyring_installed {
                    Some(SignedBy::Keyrings(vec![DEBIAN_ARCHIVE_KEYRING.to_owned()]))
                } else {
                    source.signed_by.clone()
                };
                SourceLine {
                    uri: source.uri.clone(),
                    suite: format!("{release}{suffix}"),
                    signed_by,
                }
            }
        })
        .collect();
    (release.to_owned(), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str, suite: &str, signed_by: Option<&str>) -> AptSource {
        AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: vec!["main".to_owned()],
            signed_by: signed_by.map(|k| SignedBy::Keyrings(vec![k.to_owned()])),
        }
    }

    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    #[test]
    fn deb822_stanzas_with_comments_and_several_suites() {
        let text = "\
# a comment before everything
Types: deb
# a comment inside the stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 3);
        assert_eq!(
            sources[0],
            AptSource {
                uri: "http://mirror.invalid/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "contrib".into()],
                signed_by: Some(SignedBy::Keyrings(vec![KEYRING.into()])),
            }
        );
        assert_eq!(sources[1].suite, "bookworm-updates");
        assert_eq!(sources[2].uri, "http://mirror.invalid/debian-security");
        assert_eq!(sources[2].suite, "bookworm-security");
    }

    #[test]
    fn deb822_skips_disabled_and_source_only_stanzas_and_reads_inline_keys() {
        let text = "\
Types: deb-src
URIs: http://mirror.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://other.invalid/debian
Suites: bookworm
Components: main
Enabled: no

types: deb
uris: http://a.invalid/debian http://b.invalid/debian
suites: trixie
components: main
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UgrF6nP+Thhu8L
 -----END PGP PUBLIC KEY BLOCK-----
";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].uri, "http://a.invalid/debian");
        assert_eq!(sources[1].uri, "http://b.invalid/debian");
        let Some(SignedBy::Inline(key)) = &sources[0].signed_by else {
            panic!("expected an inline key, got {:?}", sources[0].signed_by);
        };
        assert_eq!(
            inline_key_text(key),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/\
             NZJPR8lsD9K7UgrF6nP+Thhu8L\n-----END PGP PUBLIC KEY BLOCK-----\n"
        );
    }

    #[test]
    fn one_line_format_with_options_and_comments() {
        let text = "\
# deb http://commented.invalid/debian bookworm main
deb http://mirror.invalid/debian bookworm main non-free-firmware # trailing comment
deb-src http://mirror.invalid/debian bookworm main
deb [ arch=amd64,arm64 signed-by=/etc/apt/keyrings/a.gpg ] http://mirror.invalid/debian-security bookworm-security main
deb [signed-by=/k1.gpg,/k2.gpg] https://third.invalid/apt stable-party main

   deb\thttp://tab.invalid/debian bookworm-updates main
debian-is-not-a-type http://x.invalid/ bookworm main
deb http://incomplete.invalid/
";
        let sources = parse_one_line_sources(text);
        assert_eq!(sources.len(), 4, "{sources:#?}");
        assert_eq!(
            sources[0],
            AptSource {
                uri: "http://mirror.invalid/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "non-free-firmware".into()],
                signed_by: None,
            }
        );
        assert_eq!(sources[1].suite, "bookworm-security");
        assert_eq!(
            sources[1].signed_by,
            Some(SignedBy::Keyrings(vec!["/etc/apt/keyrings/a.gpg".into()]))
        );
        assert_eq!(
            sources[2].signed_by,
            Some(SignedBy::Keyrings(vec!["/k1.gpg".into(), "/k2.gpg".into()]))
        );
        assert_eq!(sources[3].uri, "http://tab.invalid/debian");
        assert_eq!(sources[3].suite, "bookworm-updates");
    }

    #[test]
    fn reads_sources_like_apt_does() {
        let etc = tempfile::tempdir().unwrap();
        let d = etc.path().join("sources.list.d");
        fs::create_dir(&d).unwrap();
        fs::write(
            etc.path().join("sources.list"),
            "deb http://one.invalid/debian bookworm main\n",
        )
        .unwrap();
        fs::write(
            d.join("debian.sources"),
            "Types: deb\nURIs: http://two.invalid/debian\nSuites: bookworm-security\n\
             Components: main\n",
        )
        .unwrap();
        fs::write(
            d.join("old.list.disabled"),
            "deb http://no.invalid/ x main\n",
        )
        .unwrap();
        fs::write(d.join("bad name.list"), "deb http://no.invalid/ y main\n").unwrap();
        let (sources, files) = read_apt_sources(etc.path()).unwrap();
        assert_eq!(files.len(), 2);
        let uris: Vec<&str> = sources.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["http://one.invalid/debian", "http://two.invalid/debian"]
        );
    }

    #[test]
    fn selects_the_release_entries_and_ignores_others() {
        let sources = vec![
            source("https://third.invalid/node", "nodistro", None),
            source("http://m.invalid/debian", "bookworm-backports", None),
            source("http://m.invalid/debian", "bookworm", Some(KEYRING)),
            source("http://m.invalid/debian", "bookworm-updates", Some(KEYRING)),
            source(
                "http://s.invalid/debian-security",
                "bookworm-security",
                None,
            ),
        ];
        let debian = select_debian_sources(&sources, Some("bookworm")).unwrap();
        assert_eq!(debian.base.suite, "bookworm");
        assert_eq!(debian.updates.as_ref().unwrap().suite, "bookworm-updates");
        assert_eq!(
            debian.security.as_ref().unwrap().uri,
            "http://s.invalid/debian-security"
        );

        // Same release for the architectures bookworm has kernels for.
        let (suite, lines) = source_lines(&debian, Arch::Aarch64, true);
        assert_eq!(suite, "bookworm");
        let suites: Vec<&str> = lines.iter().map(|l| l.suite.as_str()).collect();
        assert_eq!(
            suites,
            ["bookworm", "bookworm-updates", "bookworm-security"]
        );
        assert_eq!(lines[2].signed_by, None);

        // riscv64 comes from trixie, same mirrors, the archive keyring.
        let (suite, lines) = source_lines(&debian, Arch::Riscv64, true);
        assert_eq!(suite, "trixie");
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.uri.as_str(), l.suite.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("http://m.invalid/debian", "trixie"),
                ("http://m.invalid/debian", "trixie-updates"),
                ("http://s.invalid/debian-security", "trixie-security"),
            ]
        );
        assert!(
            lines
                .iter()
                .all(|l| l.signed_by == Some(SignedBy::Keyrings(vec![KEYRING.into()])))
        );
    }

    #[test]
    fn falls_back_to_suite_aliases_and_reports_missing_sources() {
        let sources = vec![
            source("http://m.invalid/debian", "stable", None),
            source("http://m.invalid/debian", "stable-updates", None),
        ];
        let debian = select_debian_sources(&sources, Some("trixie")).unwrap();
        assert_eq!(debian.base.suite, "stable");
        assert_eq!(debian.security, None);
        let (suite, lines) = source_lines(&debian, Arch::Riscv64, true);
        assert_eq!(suite, "stable");
        assert_eq!(lines.len(), 2);

        let err = select_debian_sources(
            &[source("https://third.invalid/x", "nodistro", None)],
            Some("bookworm"),
        )
        .unwrap_err();
        assert!(err.contains("`bookworm`"), "{err}");
    }
}
