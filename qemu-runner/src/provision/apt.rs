//! `apt-get` and `apt-cache` with a private configuration, and running commands.

use super::*;

// ---------------------------------------------------------------------------------------------
// apt with a private configuration

/// `apt-get`/`apt-cache` confined to a directory: own lists, cache, sources and architecture.
pub(super) struct Apt {
    pub(super) dir: PathBuf,
    conf: PathBuf,
    sources: PathBuf,
    arch: Arch,
    debian_arch: &'static str,
}

impl Apt {
    pub(super) fn create(
        dir: &Path,
        arch: Arch,
        debian_arch: &'static str,
    ) -> Result<Self, ProvisionError> {
        let d = dir.display();
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            create_dir(&dir.join(sub))?;
        }
        // Hooks are cleared: the system's update hooks are about the system's lists, not ours.
        // Preferences are emptied so that the host's pinning does not pick the guest's kernel.
        let conf_text = format!(
            "#clear APT::Update::Pre-Invoke;\n\
             #clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n\
             #clear APT::Architectures;\n\
             APT::Architecture \"{debian_arch}\";\n\
             APT::Architectures {{ \"{debian_arch}\"; }};\n\
             Dir::State \"{d}/state\";\n\
             Dir::State::Lists \"{d}/state/lists\";\n\
             Dir::State::status \"/dev/null\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Cache::Archives \"{d}/cache/archives\";\n\
             Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
             Dir::Etc::Preferences \"{d}/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
             Acquire::Languages \"none\";\n"
        );
        let conf = dir.join("apt.conf");
        fs::write(&conf, conf_text).map_err(io_err("writing", &conf))?;
        Ok(Self {
            dir: dir.to_owned(),
            conf,
            sources: dir.join("sources.list"),
            arch,
            debian_arch,
        })
    }

    pub(super) fn write_sources(&self, lines: &[SourceLine]) -> Result<(), ProvisionError> {
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let signed_by = match &line.signed_by {
                None => String::new(),
                Some(SignedBy::Keyrings(keys)) => format!(" signed-by={}", keys.join(",")),
                Some(SignedBy::Inline(key)) => {
                    let path = self.dir.join(format!("key-{i}.asc"));
                    fs::write(&path, inline_key_text(key)).map_err(io_err("writing", &path))?;
                    format!(" signed-by={}", path.display())
                }
            };
            text.push_str(&format!(
                "deb [arch={} target=Packages{signed_by}] {} {} main\n",
                self.debian_arch, line.uri, line.suite
            ));
        }
        fs::write(&self.sources, text).map_err(io_err("writing", &self.sources))
    }

    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.arg("-c").arg(&self.conf).env("LC_ALL", "C");
        command
    }

    pub(super) fn update(&self) -> Result<(), ProvisionError> {
        run(
            self.command("apt-get").args(["-q", "update"]),
            "check the network connection and the Debian entries in the apt sources; the \
             private apt configuration is in the staging directory until the next run",
        )
        .map(drop)
    }

    /// The versioned kernel package the metapackage depends on.
    pub(super) fn kernel_package(&self, metapackage: &str) -> Result<String, ProvisionError> {
        let out = run(
            self.command("apt-cache").args(["depends", metapackage]),
            "the Debian release in the apt sources must ship this kernel package",
        )?;
        parse_kernel_dependency(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            ProvisionError::BadPackage {
                arch: self.arch,
                package: metapackage.to_owned(),
                reason: "it depends on no linux-image package".to_owned(),
            }
        })
    }

    pub(super) fn download(&self, dest: &Path, packages: &[&str]) -> Result<(), ProvisionError> {
        run(
            self.command("apt-get")
                .args(["-q", "download"])
                .args(packages)
                .current_dir(dest),
            "check the network connection and the free space in the cache directory",
        )
        .map(drop)
    }
}

pub(super) fn parse_kernel_dependency(depends_output: &str) -> Option<String> {
    depends_output
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix("|Depends:")
                .or_else(|| l.strip_prefix("Depends:"))
        })
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.ends_with("-dbg"))
        .map(str::to_owned)
}

/// A deb822 inline key (continuation lines, `.` for empty lines) as an armored key file.
pub(super) fn inline_key_text(key: &str) -> String {
    let mut text: String = key
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .map(|l| if l == "." { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// Runs a command to completion; a failure carries its (bounded) error output and `fix`.
pub(super) fn run(command: &mut Command, fix: &str) -> Result<Output, ProvisionError> {
    let shown = show_command(command);
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ProvisionError::ToolMissing {
                program: program.clone(),
                fix: "install it with the system's package manager".to_owned(),
            }
        } else {
            ProvisionError::Io {
                action: "running",
                path: PathBuf::from(&program),
                source: e,
            }
        }
    })?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let output = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(ProvisionError::CommandFailed {
        command: shown,
        status: out.status.to_string(),
        output: tail(output.trim_end(), MAX_OUTPUT),
        fix: fix.to_owned(),
    })
}

pub(super) fn show_command(command: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            format!("'{}'", s.replace('\'', r"'\''"))
        } else {
            s.into_owned()
        }
    };
    let mut shown = quote(command.get_program());
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&quote(arg));
    }
    if let Some(dir) = command.get_current_dir() {
        shown = format!("cd {} && {shown}", quote(dir.as_os_str()));
    }
    shown
}

/// The last `max` bytes of `text` (at a character boundary), marked when cut.
pub(super) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[…]{}", &text[start..])
}

/// The suites named in the `Failed to fetch <uri>/dists/<suite>/...` lines of a failed
/// `apt-get update`.
pub(super) fn failed_suites(error: &ProvisionError) -> BTreeSet<String> {
    let ProvisionError::CommandFailed { output, .. } = error else {
        return BTreeSet::new();
    };
    output
        .lines()
        .filter_map(|l| l.split_once("Failed to fetch "))
        .filter_map(|(_, rest)| rest.split_once("/dists/"))
        .filter_map(|(_, rest)| rest.split('/').next())
        .filter(|suite| !suite.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first `E:` line of a failed apt command, for notes.
pub(super) fn first_error_line(error: &ProvisionError) -> String {
    let text = match error {
        ProvisionError::CommandFailed { output, .. } => output.clone(),
        other => other.to_string(),
    };
    text.lines()
        .find(|l| l.starts_with("E:"))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim_start_matches("E:")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_dependency() {
        let out = "linux-image-arm64\n  Depends: linux-image-6.1.0-56-arm64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-arm64")
        );
        let out = "linux-image-amd64\n |Depends: linux-image-6.1.0-9-amd64-dbg\n  \
                   Depends: linux-image-6.1.0-9-amd64\n  Recommends: firmware\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-9-amd64")
        );
        assert_eq!(parse_kernel_dependency("x\n  Depends: <virtual>\n"), None);
    }

    #[test]
    fn finds_the_suites_that_failed_to_update() {
        let error = ProvisionError::CommandFailed {
            command: "apt-get update".into(),
            status: "exit status: 100".into(),
            output: "\
E: Failed to fetch http://m.invalid/debian-security/dists/bookworm-security/main/binary-armhf/Packages.xz  File has unexpected size (1 != 2). Mirror sync in progress? [IP: 192.0.2.1 80]
   Hashes of expected file:
W: Failed to fetch http://m.invalid/debian/dists/bookworm-updates/InRelease  Could not resolve host
E: Some index files failed to download. They have been ignored, or old ones used instead."
                .into(),
            fix: String::new(),
        };
        let failed: Vec<String> = failed_suites(&error).into_iter().collect();
        assert_eq!(failed, ["bookworm-security", "bookworm-updates"]);
        assert!(first_error_line(&error).starts_with("Failed to fetch http://m.invalid/"));
    }

    #[test]
    fn bounded_output_keeps_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("0123456789", 4), "[…]6789");
        assert_eq!(tail("ééé", 3), "[…]é");
    }
}
