//! The seam through which a runner's crate reads its own table of a plan.
//!
//! The core knows the tables of a run (`[run]`, `[defaults]`, `[[test]]`, `[store]`,
//! `[monitor]`); a runner with settings of its own (the QEMU runner's `[qemu]`) declares its
//! table as a [`Section`] and the program running the plan registers it with a [`Loader`]. The
//! core hands the section its located [`Table`]; the section reads it with the same typed
//! getters as the core's tables ([`Field::duration`], [`Field::bytes`], [`Field::count`]...) and
//! returns its settings, or a [`Diag`] that the core locates in the file. Loading stays whole:
//! every table, the core's and the sections', is checked before anything runs.
//!
//! [`Loader`]: super::Loader
//! [`Field::duration`]: super::Field::duration
//! [`Field::bytes`]: super::Field::bytes
//! [`Field::count`]: super::Field::count

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::parse::{Diag, Table};

/// One key of a section's table, with what help messages say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The key, as written in the plan (`max-artifact-bytes`).
    pub name: &'static str,
    /// A sample line shown in help messages (`max-artifact-bytes = "256MiB"`).
    pub example: Option<&'static str>,
    /// What leaving the key out means, as "to ..." advice shown next to the example when a
    /// value is out of range ("to keep the runner's default of 1GiB").
    pub unset: Option<&'static str>,
}

impl Key {
    /// A key with neither example nor advice.
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            example: None,
            unset: None,
        }
    }

    /// The key with a sample line.
    #[must_use]
    pub const fn example(mut self, line: &'static str) -> Self {
        self.example = Some(line);
        self
    }

    /// The key with what leaving it out means.
    #[must_use]
    pub const fn unset(mut self, note: &'static str) -> Self {
        self.unset = Some(note);
        self
    }
}

/// A table of a plan that a runner's crate reads: `[qemu]` for the QEMU runner.
///
/// ```
/// use std::path::Path;
/// use std::time::Duration;
/// use orchestrator_core::plan::{self, Diag, Key, Loader, Section, Table};
///
/// /// The `[ssh]` table of a made-up runner.
/// #[derive(Clone, Debug, Default, PartialEq)]
/// struct SshPlan {
///     connect_timeout: Option<Duration>,
/// }
///
/// impl Section for SshPlan {
///     const NAME: &'static str = "ssh";
///     const ABOUT: &'static str = "a setting of the SSH runner";
///     const KEYS: &'static [Key] =
///         &[Key::new("connect-timeout").example("connect-timeout = \"10s\"")];
///
///     fn read(table: &Table<'_, '_>) -> Result<Self, Diag> {
///         let mut ssh = SshPlan::default();
///         for f in table.fields() {
///             match f.key() {
///                 "connect-timeout" => ssh.connect_timeout = Some(f.duration()?),
///                 _ => return Err(f.unknown_key()),
///             }
///         }
///         Ok(ssh)
///     }
/// }
///
/// let loader = Loader::new().section::<SshPlan>();
/// let text = "[ssh]\nconnect-timeout = 5\n[[test]]\nid = \"a\"\nscript = \"true\"\n";
/// let plan = loader.parse(text, Path::new("p.toml"), Path::new("."))?;
/// assert_eq!(plan.section::<SshPlan>().unwrap().connect_timeout, Some(Duration::from_secs(5)));
///
/// let err = loader
///     .parse("[ssh]\nconect-timeout = 5\n", Path::new("p.toml"), Path::new("."))
///     .unwrap_err();
/// assert_eq!(err.to_string(), "p.toml:2:1: unknown key `conect-timeout` in [ssh]\n  \
///                              help: did you mean `connect-timeout`?");
/// // Without the section, the table is unknown.
/// assert!(plan::parse(text, Path::new("p.toml"), Path::new(".")).is_err());
/// # Ok::<(), plan::PlanError>(())
/// ```
pub trait Section: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The table's name at the top level of a plan (`"qemu"` for `[qemu]`).
    const NAME: &'static str;
    /// What its keys are, in advice for a key written elsewhere: ``"`pool` is {ABOUT}: move it
    /// into the [qemu] table"`` (`"a setting of the QEMU runner"`).
    const ABOUT: &'static str;
    /// The keys the table takes: an unknown key gets a did-you-mean among them, and a key of
    /// this table written in another table is told to move here.
    const KEYS: &'static [Key];

    /// Advice for `key` (lowercase, with dashes) written at the top level of the plan, when it
    /// belongs somewhere in this section other than its table itself (such as a sub-table).
    fn advice(key: &str) -> Option<String> {
        let _ = key;
        None
    }

    /// Reads the table: the settings, or the first problem in it.
    fn read(table: &Table<'_, '_>) -> Result<Self, Diag>;
}

/// A section as a [`super::Loader`] keeps it.
#[derive(Clone, Copy)]
pub(super) struct Registered {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) keys: &'static [Key],
    pub(super) advice: fn(&str) -> Option<String>,
    pub(super) read: fn(&Table<'_, '_>) -> Result<Arc<dyn AnySection>, Diag>,
}

impl Registered {
    pub(super) fn of<S: Section>() -> Self {
        Registered {
            name: S::NAME,
            about: S::ABOUT,
            keys: S::KEYS,
            advice: S::advice,
            read: read_as::<S>,
        }
    }
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section").field("name", &self.name).finish()
    }
}

fn read_as<S: Section>(table: &Table<'_, '_>) -> Result<Arc<dyn AnySection>, Diag> {
    Ok(Arc::new(S::read(table)?))
}

/// A section's settings with their type erased.
pub(super) trait AnySection: fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn equals(&self, other: &dyn AnySection) -> bool;
}

impl<S: Section> AnySection for S {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn equals(&self, other: &dyn AnySection) -> bool {
        other.as_any().downcast_ref::<S>() == Some(self)
    }
}

/// The tables of a plan read by [`Section`]s, by name; see [`super::Plan::section`].
#[derive(Clone, Default)]
pub struct Sections(BTreeMap<&'static str, Arc<dyn AnySection>>);

impl Sections {
    pub(super) fn insert(&mut self, name: &'static str, value: Arc<dyn AnySection>) {
        self.0.insert(name, value);
    }

    /// The settings of section `S`, if the plan has its table.
    pub fn get<S: Section>(&self) -> Option<&S> {
        self.0.get(S::NAME)?.as_any().downcast_ref()
    }

    /// The names of the tables read, in alphabetical order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl PartialEq for Sections {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a == b && x.equals(y.as_ref()))
    }
}
