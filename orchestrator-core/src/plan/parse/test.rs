//! The values of `[[test]]` and `[defaults]`: commands, files, environment, architectures...

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::de::DeValue;

use super::field::{Diag, Field, Res, Table, arch_help, entries, found, suggest, toml_str};
use super::{Archs, FileTable};
use crate::case::{Arch, Command, Expectation, FileSpec};

impl Field<'_, '_> {
    /// A program or interpreter with its arguments: a non-empty array of strings whose first
    /// entry is not blank.
    pub(super) fn argv(&self, what: &str) -> Res<Vec<String>> {
        let expected = format!("an array of strings ({what})");
        let parts = match self.get() {
            DeValue::String(s) if self.key == "command" => {
                let words: Vec<String> = s.split_whitespace().map(toml_str).collect();
                return Err(self.wrong_type(&expected).help(format!(
                    "to run the program directly, write `command = [{}]`; to run the text \
                     through the shell, write `script = {}` instead",
                    words.join(", "),
                    toml_str(s)
                )));
            }
            _ => self.strings(&expected)?,
        };
        let Some((program, span)) = parts.first() else {
            return Err(self
                .error(format!("{} is empty", self.what()))
                .help(format!(
                    "give {what}, for example `{}`",
                    self.example().unwrap_or("command = [\"echo\", \"hi\"]")
                )));
        };
        if program.trim().is_empty() {
            return Err(self
                .error_at(
                    span.clone(),
                    format!(
                        "the program name (the first entry of `{}`) {} is blank",
                        self.key, self.scope.place
                    ),
                )
                .maybe_help(self.example_help()));
        }
        Ok(parts.into_iter().map(|(s, _)| s.to_owned()).collect())
    }

    pub(super) fn command(&self) -> Res<Command> {
        let argv = self.argv("the program and its arguments")?;
        Ok(Command::exec(argv).expect("the program name was checked"))
    }

    pub(super) fn script(&self) -> Res<String> {
        Ok(self.text()?.to_owned())
    }

    pub(super) fn env(&self) -> Res<BTreeMap<String, String>> {
        let table = self.de_table()?;
        let mut env = BTreeMap::new();
        for (key, value) in entries(table) {
            let name: &str = key.get_ref();
            let path = format!("{}env.{name}", self.scope.prefix);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(Diag::new(
                    key.span(),
                    path,
                    format!(
                        "`{name}` {} is not a valid environment variable name",
                        self.scope.place
                    ),
                )
                .help("names must not be empty and must not contain `=`"));
            }
            let text = match value.get_ref() {
                DeValue::String(s) => s,
                other => {
                    let diag = Diag::new(
                        value.span(),
                        path,
                        format!(
                            "environment variable `{name}` {} must be a string, not {}",
                            self.scope.place,
                            found(other)
                        ),
                    );
                    let raw = match other {
                        DeValue::Integer(i) => Some(i.to_string()),
                        DeValue::Float(f) => Some(f.to_string()),
                        DeValue::Boolean(b) => Some(b.to_string()),
                        _ => None,
                    };
                    return Err(match raw {
                        Some(raw) => diag.help(format!("quote the value: `{name} = \"{raw}\"`")),
                        None => diag.help(format!("for example: `{name} = \"value\"`")),
                    });
                }
            };
            if text.contains('\0') {
                return Err(Diag::new(
                    value.span(),
                    path,
                    format!(
                        "environment variable `{name}` {} contains a NUL character",
                        self.scope.place
                    ),
                ));
            }
            env.insert(name.to_owned(), text.to_string());
        }
        Ok(env)
    }

    pub(super) fn tags(&self) -> Res<Vec<String>> {
        let mut tags = Vec::new();
        for (tag, span) in self.strings("an array of strings")? {
            if tag.trim().is_empty() {
                return Err(self
                    .error_at(
                        span,
                        format!("an entry of `tags` {} is empty", self.scope.place),
                    )
                    .help("remove the empty entry from `tags`"));
            }
            tags.push(tag.to_owned());
        }
        Ok(tags)
    }

    pub(super) fn artifacts(&self) -> Res<Vec<String>> {
        let mut globs = Vec::new();
        for (glob, span) in self.strings("an array of glob patterns")? {
            let problem = if glob.trim().is_empty() {
                Some(("is empty".to_owned(), "remove the empty entry".to_owned()))
            } else if glob.starts_with('/') {
                Some((
                    "is an absolute path".to_owned(),
                    "artifacts are collected from the test's working directory only: use a \
                     relative pattern such as \"*.log\", and have the test copy files from \
                     elsewhere into its working directory"
                        .to_owned(),
                ))
            } else if glob.split(['/', '\\']).any(|part| part == "..") {
                Some((
                    "reaches outside the test's working directory with `..`".to_owned(),
                    "artifacts are collected from the test's working directory only".to_owned(),
                ))
            } else {
                globset::Glob::new(glob).err().map(|e| {
                    (
                        format!("is not a valid glob pattern: {}", e.kind()),
                        "patterns use `*`, `**`, `?`, `[abc]` and `{a,b}`, \
                         for example \"*.log\" or \"logs/**/*.txt\""
                            .to_owned(),
                    )
                })
            };
            if let Some((problem, help)) = problem {
                return Err(self
                    .error_at(
                        span,
                        format!(
                            "`artifacts` entry {} {} {problem}",
                            toml_str(glob),
                            self.scope.place
                        ),
                    )
                    .help(help));
            }
            globs.push(glob.to_owned());
        }
        Ok(globs)
    }

    /// `arch`: one architecture, or an array of different ones.
    pub(super) fn archs(&self) -> Res<Archs> {
        let array = match self.get() {
            DeValue::String(text) => return Ok(Archs::One(self.arch(text, self.span())?)),
            DeValue::Array(array) => array,
            _ => return Err(self.wrong_type("an architecture name or an array of them")),
        };
        if array.is_empty() {
            return Err(self
                .error(format!("{} is an empty array", self.what()))
                .help(
                    "list at least one architecture, for example \
                     `arch = [\"x86_64\", \"aarch64\"]`, or remove `arch` to run anywhere",
                ));
        }
        let mut archs: Vec<Arch> = Vec::new();
        for (text, span) in self.strings("an architecture name or an array of them")? {
            let arch = self.arch(text, span.clone())?;
            if archs.contains(&arch) {
                let alias = if text.trim() == arch.as_str() {
                    String::new()
                } else {
                    format!(" ({} is another name for it)", toml_str(text))
                };
                return Err(self
                    .error_at(span, format!("{} lists {arch} twice{alias}", self.what()))
                    .help("remove the repeated entry"));
            }
            archs.push(arch);
        }
        Ok(Archs::Each(archs))
    }

    /// One architecture name, at `span`.
    fn arch(&self, text: &str, span: Range<usize>) -> Res<Arch> {
        text.trim().parse().map_err(|_| {
            self.error_at(
                span,
                format!(
                    "`arch` {} is not a supported architecture: {}",
                    self.scope.place,
                    toml_str(text)
                ),
            )
            .help(arch_help(text))
        })
    }

    pub(super) fn expect(&self) -> Res<Expectation> {
        let text = self.string()?;
        match text {
            "pass" => Ok(Expectation::Pass),
            "fail" => Ok(Expectation::Fail),
            other => {
                let lower = other.trim().to_ascii_lowercase();
                let guess = if lower.starts_with("pass") {
                    Some("pass")
                } else if lower.starts_with("fail") || lower.contains("fail") {
                    Some("fail")
                } else {
                    suggest(&lower, &["pass", "fail"])
                };
                let help = match guess {
                    Some(guess) => format!("did you mean \"{guess}\"?"),
                    None => "use \"pass\" (the default) or \"fail\" for a test that is known \
                             to fail"
                        .to_owned(),
                };
                Err(self
                    .error(format!(
                        "`expect` {} must be \"pass\" or \"fail\", not {}",
                        self.scope.place,
                        toml_str(other)
                    ))
                    .help(help))
            }
        }
    }

    /// The `files` of a test: paths, or `{ source, dest }` tables.
    pub(super) fn files(&self, base_dir: &Path) -> Res<Vec<FileSpec>> {
        let array = self.array("an array of paths or `{ source, dest }` tables")?;
        let entry_scope = self.scope.file_entry();
        let mut files: Vec<FileSpec> = Vec::new();
        for entry in array.iter() {
            let (source, source_span, dest, dest_span) = match entry.get_ref() {
                DeValue::String(source) => (source.to_string(), entry.span(), None, entry.span()),
                DeValue::Table(table) => {
                    let mut source = None;
                    let mut dest = None;
                    Table::new(table, entry.span(), entry_scope.clone()).read_with(
                        |f, known: Option<&FileTable>| {
                            let read = || Ok::<_, Diag>((f.text()?.to_owned(), f.span()));
                            match (f.key, known) {
                                ("source", Some(_)) => source = Some(read()?),
                                ("dest", Some(_)) => dest = Some(read()?),
                                _ => {}
                            }
                            Ok(())
                        },
                    )?;
                    let Some((source, source_span)) = source else {
                        return Err(Diag::new(
                            entry.span(),
                            "test.files.source",
                            format!("a `files` entry {} has no `source`", self.scope.place),
                        )
                        .help(
                            "name the file to copy, for example \
                             `{ source = \"data/input.txt\", dest = \"input.txt\" }`",
                        ));
                    };
                    let (dest, dest_span) = match dest {
                        Some((dest, span)) => (Some(dest), span),
                        None => (None, source_span.clone()),
                    };
                    (source, source_span, dest, dest_span)
                }
                other => {
                    return Err(self
                        .error_at(
                            entry.span(),
                            format!(
                                "each entry of `files` {} must be a path or a \
                                 `{{ source, dest }}` table, not {}",
                                self.scope.place,
                                found(other)
                            ),
                        )
                        .maybe_help(self.example_help()));
                }
            };

            let (source, dest) = (source.as_str(), dest.as_deref());
            if source.trim().is_empty() {
                return Err(self
                    .error_at(
                        source_span,
                        format!("a `files` source {} is empty", self.scope.place),
                    )
                    .maybe_help(self.example_help()));
            }
            let resolved = base_dir.join(source);
            if let Err(e) = fs::metadata(&resolved) {
                let diag = if e.kind() == io::ErrorKind::NotFound {
                    self.error_at(
                        source_span,
                        format!(
                            "`files` source {} {} does not exist",
                            toml_str(source),
                            self.scope.place
                        ),
                    )
                    .help(format!(
                        "looked for `{}`; relative sources are resolved against the \
                         directory of the plan file",
                        resolved.display()
                    ))
                } else {
                    self.error_at(
                        source_span,
                        format!(
                            "`files` source {} {} cannot be read: {e}",
                            toml_str(source),
                            self.scope.place
                        ),
                    )
                };
                return Err(diag);
            }

            let dest = match dest {
                Some(dest) => PathBuf::from(dest),
                None => match Path::new(source).file_name() {
                    Some(name) => PathBuf::from(name),
                    None => {
                        return Err(self
                            .error_at(
                                source_span,
                                format!(
                                    "cannot tell the file name of `files` source {} {}",
                                    toml_str(source),
                                    self.scope.place
                                ),
                            )
                            .help(format!(
                                "name the destination: `{{ source = {}, dest = \"name\" }}`",
                                toml_str(source)
                            )));
                    }
                },
            };
            let dest = self.check_dest(&dest, dest_span.clone())?;
            if files.iter().any(|f| f.dest == dest) {
                return Err(self
                    .error_at(
                        dest_span,
                        format!(
                            "two `files` entries {} are copied to `{}`",
                            self.scope.place,
                            dest.display()
                        ),
                    )
                    .help("give one of them a different `dest`"));
            }
            files.push(FileSpec {
                source: resolved,
                dest,
            });
        }
        Ok(files)
    }

    /// Checks that a `files` destination stays inside the working directory, and drops `.`
    /// components.
    fn check_dest(&self, dest: &Path, span: Range<usize>) -> Res<PathBuf> {
        let shown = toml_str(&dest.to_string_lossy());
        let mut clean = PathBuf::new();
        for component in dest.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    let inside: PathBuf = dest
                        .components()
                        .filter(|c| matches!(c, Component::Normal(_)))
                        .collect();
                    let inside = match inside.to_str() {
                        Some(name) if !name.is_empty() => name.to_owned(),
                        _ => "input.txt".to_owned(),
                    };
                    return Err(self
                        .error_at(
                            span,
                            format!(
                                "`files` destination {shown} {} leaves the test's working \
                                 directory",
                                self.scope.place
                            ),
                        )
                        .help(format!(
                            "destinations are relative to the test's working directory and \
                             must not contain `..`; for example `dest = {}`",
                            toml_str(&inside)
                        )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self
                        .error_at(
                            span,
                            format!(
                                "`files` destination {shown} {} is an absolute path",
                                self.scope.place
                            ),
                        )
                        .help(format!(
                            "destinations are relative to the test's working directory, \
                             for example `dest = {}`",
                            toml_str(dest.to_string_lossy().trim_start_matches('/'))
                        )));
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(self
                .error_at(
                    span,
                    format!(
                        "`files` destination {shown} {} names no file",
                        self.scope.place
                    ),
                )
                .help("for example: `dest = \"input.txt\"`"));
        }
        Ok(clean)
    }
}
