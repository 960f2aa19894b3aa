//! Why a plan was rejected, and where in the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A position in a plan file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The plan file, spelled as it was given to [`load`](super::load) or
    /// [`parse`](super::parse).
    pub path: PathBuf,
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text`. An offset at the very end of a file that ends
    /// with a newline is reported at the end of the last line rather than on a line that does
    /// not exist.
    pub(super) fn from_offset(path: &Path, text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        if offset == text.len()
            && let Some(stripped) = text.strip_suffix('\n')
        {
            offset = stripped.strip_suffix('\r').unwrap_or(stripped).len();
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            path: path.to_path_buf(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// Why a plan file was rejected.
///
/// Apart from [`PlanError::Read`], every error renders as `{path}:{line}:{column}: {message}`,
/// optionally followed by a second line `  help: {how to fix it}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan file could not be read.
    #[error("{}: cannot read the plan file: {error}", path.display())]
    Read {
        /// The file, as given.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{location}: {message}{}", help_line(.help))]
    Syntax {
        /// Where the parser gave up.
        location: Location,
        /// The key whose value is malformed, when that can be told.
        key: Option<String>,
        /// What is wrong.
        message: String,
        /// How to fix it.
        help: Option<String>,
    },
    /// The file is valid TOML but not a valid plan: an unknown key, a value of the wrong type
    /// or out of range, a missing key, a duplicate test id, a missing file.
    #[error("{location}: {message}{}", help_line(.help))]
    Invalid {
        /// Where the offending key or value is.
        location: Location,
        /// The offending key as a dotted path, such as `run.parallelism` or `test.timeout`.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        help: Option<String>,
    },
}

fn help_line(help: &Option<String>) -> String {
    match help {
        Some(help) => format!("\n  help: {help}"),
        None => String::new(),
    }
}

impl PlanError {
    /// Where in the file the problem is; `None` when the file could not be read at all.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PlanError::Read { .. } => None,
            PlanError::Syntax { location, .. } | PlanError::Invalid { location, .. } => {
                Some(location)
            }
        }
    }

    /// The offending key as a dotted path (`run.parallelism`, `test.files.dest`), if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            PlanError::Read { .. } => None,
            PlanError::Syntax { key, .. } => key.as_deref(),
            PlanError::Invalid { key, .. } => Some(key),
        }
    }

    /// How to fix the problem, if there is advice to give.
    pub fn help(&self) -> Option<&str> {
        match self {
            PlanError::Read { .. } => None,
            PlanError::Syntax { help, .. } | PlanError::Invalid { help, .. } => help.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, offset: usize) -> (usize, usize) {
        let l = Location::from_offset(Path::new("p.toml"), text, offset);
        (l.line, l.column)
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(at(text, 0), (1, 1));
        assert_eq!(at(text, 4), (1, 5));
        assert_eq!(at(text, 6), (2, 1));
        // `é` is two bytes but one column.
        assert_eq!(at(text, 9), (2, 3));
        // The end of a file ending in a newline is the end of its last line.
        assert_eq!(at(text, text.len()), (2, 9));
        assert_eq!(at("x\r\n", 3), (1, 2));
        assert_eq!(at("", 0), (1, 1));
    }
}
