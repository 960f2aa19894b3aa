//! The tables of the core: `[run]`, `[store]` (with `[store.retention]`) and `[monitor]`.

#[cfg(feature = "store")]
use std::collections::BTreeMap;
#[cfg(feature = "store")]
use std::path::Path;

#[cfg(feature = "store")]
use artifact_store::{ArtifactKind, Durability};

use super::field::{Field, Kind, Res};
#[cfg(feature = "store")]
use super::field::{suggest, toml_str};
use super::value::{ByHand, Count, Flag, Problem, Seconds, Size, Text, U32_MAX};
#[cfg(feature = "store")]
use super::{CREDENTIAL_KEYS, Diag, KIND_NAMES};
#[cfg(feature = "monitor")]
use crate::plan::MonitorPlan;
use crate::plan::PlanSettings;
#[cfg(feature = "store")]
use crate::plan::{RetentionPlan, StorePlan};

crate::plan_table! {
    /// The `[run]` table: how the run as a whole is carried out (see [`PlanSettings`]).
    pub(super) struct RunTable {
        "parallelism" parallelism: Count<1, U32_MAX> = "parallelism = 4" ("to use the default"),
        "timeout" timeout: Seconds = "timeout = \"2h\"" ("to run without a deadline"),
        "retries" retries: Count<0, 10> = "retries = 2",
        "kill-grace" kill_grace: Seconds = "kill-grace = \"5s\"" ("to use the runner's default grace period"),
        "output-limit" output_limit: Size = "output-limit = \"1MiB\"" ("to keep the default of 1MiB per stream"),
    }
}

crate::plan_table! {
    /// The `[monitor]` table: sampling the host processes of each test (`MonitorPlan`). Its
    /// keys serve the did-you-mean advice even when the `monitor` feature is off.
    #[cfg_attr(not(feature = "monitor"), allow(dead_code))]
    pub(super) struct MonitorTable {
        "enabled" enabled: Flag = "enabled = false",
        "interval" interval: Seconds = "interval = \"100ms\"",
        "top-processes" top_processes: Count<0, 100> = "top-processes = 10" ("to keep the default of 5"),
    }
}

crate::plan_table! {
    /// The `[store]` table: where test artifacts are kept (`StorePlan`). Its keys serve the
    /// did-you-mean advice even when the `store` feature is off.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(super) struct StoreTable {
        "path" path: Text = "path = \"artifacts\"",
        "durability" durability: ByHand = "durability = \"relaxed\"",
        "remote" remote: ByHand = "remote = \"s3://artifacts/ci\"",
        "retention" retention: ByHand,
    }
}

crate::plan_table! {
    /// The `[store.retention]` table: which stored artifacts keep their contents
    /// (`RetentionPlan`).
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(super) struct RetentionTable {
        "max-age" max_age: Seconds = "max-age = \"30d\"",
        "keep-last-runs" keep_last_runs: Count<1, U32_MAX> = "keep-last-runs = 10",
        "max-total-size" max_total_size: Size = "max-total-size = \"20GiB\"",
        "kind-max-age" kind_max_age: ByHand = "kind-max-age = { core-dump = \"7d\" }",
        "kind-budgets" kind_budgets: ByHand = "kind-budgets = { core-dump = \"1GiB\" }",
        "keep-failures-for" keep_failures_for: Seconds = "keep-failures-for = \"90d\"",
        "keep-passes-for" keep_passes_for: Seconds = "keep-passes-for = \"7d\"",
        "first-failure-after-pass" first_failure_after_pass: Flag = "first-failure-after-pass = true",
        "last-passing-run" last_passing_run: Flag = "last-passing-run = true",
        "pin-runs" pin_runs: ByHand = "pin-runs = [\"nightly-2024-06-01\"]",
        "pin-tags" pin_tags: ByHand = "pin-tags = [\"release\"]",
    }
}

impl Field<'_, '_> {
    /// The settings of `[run]`.
    pub(super) fn run(&self, settings: &mut PlanSettings) -> Res<()> {
        let table = self.child(Kind::Run, "[run]")?;
        let run: RunTable = table.read()?;
        let count = |n: i128| usize::try_from(n).expect("range was checked");
        settings.parallelism = run.parallelism.map(|Count(n)| count(n));
        settings.timeout = run.timeout.map(|Seconds(d)| d);
        settings.retries = run
            .retries
            .map_or(0, |Count(n)| u32::try_from(n).expect("range was checked"));
        settings.kill_grace = run.kill_grace.map(|Seconds(d)| d);
        if let Some(Size(bytes)) = run.output_limit {
            let too_large = || {
                let f = table.field("output-limit").expect("output-limit was read");
                f.problem(Problem::TooLarge)
            };
            settings.output_limit = Some(usize::try_from(bytes).map_err(|_| too_large())?);
        }
        Ok(())
    }

    /// The `[store]` table; `path` is resolved against `base_dir`.
    #[cfg(feature = "store")]
    pub(super) fn store(&self, base_dir: &Path) -> Res<StorePlan> {
        let table = self.child(Kind::Store, "[store]")?;
        let mut store = StorePlan::default();
        let read: StoreTable = table.read_with(|f, one| {
            match (f.key, one) {
                (k, None) if CREDENTIAL_KEYS.contains(&f.normalized_key().as_str()) => {
                    return Err(f
                        .error(format!(
                            "`{k}` {}: credentials never go in a plan file",
                            f.place()
                        ))
                        .help(
                            "plans are shared and committed; give the remote store its \
                             credentials through the environment of the workers \
                             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or \
                             their instance or container role, and remove this key",
                        ));
                }
                ("durability", Some(_)) => store.durability = f.durability()?,
                ("retention", Some(_)) => store.retention = Some(f.retention()?),
                ("remote", Some(_)) => store.remote = Some(f.remote_url()?),
                _ => {}
            }
            Ok(())
        })?;
        let path = read.path.map(|Text(path)| base_dir.join(path));
        let Some(path) = path else {
            return Err(
                Diag::new(self.span(), "store.path", "[store] has no `path`").help(
                    "name the directory the artifacts are kept in, relative to this plan \
                     file, for example `path = \"artifacts\"`",
                ),
            );
        };
        store.path = path;
        Ok(store)
    }

    /// `remote = "s3://bucket/prefix"`.
    #[cfg(feature = "store")]
    fn remote_url(&self) -> Res<String> {
        let text = self.string()?;
        let Some(rest) = text.strip_prefix("s3://") else {
            return Err(self
                .error(format!(
                    "`remote` {} must be an s3:// URL, not {}",
                    self.scope.place,
                    toml_str(text)
                ))
                .help(
                    "name the bucket and a prefix, for example `remote = \"s3://artifacts/ci\"`; \
                     set AWS_ENDPOINT for S3-compatible servers (Garage, MinIO, Ceph)",
                ));
        };
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.contains('@') || bucket.contains(':') {
            return Err(self
                .error(format!(
                    "`remote` {} carries credentials or a port: credentials never go in a plan file",
                    self.scope.place
                ))
                .help(
                    "write only `s3://bucket/prefix`; credentials come from the workers' \
                     environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the server from \
                     AWS_ENDPOINT",
                ));
        }
        if bucket.is_empty() {
            return Err(self
                .error(format!("`remote` {} names no bucket", self.scope.place))
                .help("for example `remote = \"s3://artifacts/ci\"`"));
        }
        Ok(text.to_owned())
    }

    #[cfg(feature = "store")]
    fn durability(&self) -> Res<Durability> {
        self.one_of(
            &[
                ("fsync", Durability::Fsync),
                ("relaxed", Durability::Relaxed),
            ],
            "use \"fsync\" (the default) to sync every write to disk, or \"relaxed\" for a \
             faster store that may lose its newest artifacts if the machine loses power",
        )
    }

    /// The `[store.retention]` table.
    #[cfg(feature = "store")]
    fn retention(&self) -> Res<RetentionPlan> {
        let table = self.child(Kind::Retention, "[store.retention]")?;
        let mut rules = RetentionPlan::default();
        let read: RetentionTable = table.read_with(|f, one| {
            if one.is_none() {
                return Ok(());
            }
            match f.key {
                "kind-max-age" => {
                    rules.kind_max_age =
                        f.per_kind(Kind::MaxAges, "`kind-max-age` of [store.retention]", |f| {
                            f.duration()
                        })?;
                }
                "kind-budgets" => {
                    rules.kind_budgets =
                        f.per_kind(Kind::Budgets, "`kind-budgets` of [store.retention]", |f| {
                            f.bytes()
                        })?;
                }
                "pin-runs" => rules.pin_runs = f.names()?,
                "pin-tags" => rules.pin_tags = f.names()?,
                _ => {}
            }
            Ok(())
        })?;
        let count = |Count(n)| usize::try_from(n).expect("range was checked");
        rules.max_age = read.max_age.map(|Seconds(d)| d);
        rules.keep_last_runs = read.keep_last_runs.map(count);
        rules.max_total_size = read.max_total_size.map(|Size(bytes)| bytes);
        rules.keep_failures_for = read.keep_failures_for.map(|Seconds(d)| d);
        rules.keep_passes_for = read.keep_passes_for.map(|Seconds(d)| d);
        rules.first_failure_after_pass = read.first_failure_after_pass.is_some_and(|Flag(b)| b);
        rules.last_passing_run = read.last_passing_run.is_some_and(|Flag(b)| b);
        Ok(rules)
    }

    /// A table from kinds of artifact to values read by `read`, such as
    /// `{ core-dump = "7d" }`.
    #[cfg(feature = "store")]
    fn per_kind<T>(
        &self,
        kind: Kind,
        name: &str,
        read: impl Fn(&Field<'_, '_>) -> Res<T>,
    ) -> Res<BTreeMap<ArtifactKind, T>> {
        let table = self.child(kind, name)?;
        let mut map = BTreeMap::new();
        for f in table.fields() {
            let Ok(kind) = f.key.parse::<ArtifactKind>() else {
                let help = match suggest(&f.key.to_ascii_lowercase().replace('_', "-"), KIND_NAMES)
                {
                    Some(kind) => format!("did you mean `{kind}`?"),
                    None => {
                        let mut list: Vec<String> =
                            KIND_NAMES.iter().map(|k| format!("`{k}`")).collect();
                        let last = list.pop().unwrap_or_default();
                        format!("the kinds are {} and {last}", list.join(", "))
                    }
                };
                return Err(Diag::new(
                    f.key_span.clone(),
                    f.path(),
                    format!("unknown kind of artifact `{}` {}", f.key, f.place()),
                )
                .help(help));
            };
            map.insert(kind, read(&f)?);
        }
        Ok(map)
    }

    /// The `[monitor]` table.
    #[cfg(feature = "monitor")]
    pub(super) fn monitor(&self) -> Res<MonitorPlan> {
        let table = self.child(Kind::Monitor, "[monitor]")?;
        let read: MonitorTable = table.read_with(|f, one: Option<&MonitorTable>| {
            match one.and_then(|m| m.interval) {
                Some(Seconds(interval)) if interval < MonitorPlan::MIN_INTERVAL => Err(f
                    .error(format!(
                        "{} must be at least {}, not {}",
                        f.what(),
                        humantime::format_duration(MonitorPlan::MIN_INTERVAL),
                        humantime::format_duration(interval)
                    ))
                    .help(
                        "sampling more often costs more than it tells; remove the key to \
                         sample every 100ms, or use for example `interval = \"50ms\"`",
                    )),
                _ => Ok(()),
            }
        })?;
        let mut monitor = MonitorPlan::default();
        if let Some(Flag(enabled)) = read.enabled {
            monitor.enabled = enabled;
        }
        if let Some(Seconds(interval)) = read.interval {
            monitor.interval = interval;
        }
        if let Some(Count(n)) = read.top_processes {
            monitor.top_processes = usize::try_from(n).expect("range was checked");
        }
        Ok(monitor)
    }

    /// An array of names that are not blank (`pin-runs`, `pin-tags`).
    #[cfg(feature = "store")]
    fn names(&self) -> Res<Vec<String>> {
        let mut names = Vec::new();
        for (name, span) in self.strings("an array of strings")? {
            if name.trim().is_empty() {
                return Err(self
                    .error_at(span, format!("an entry of {} is empty", self.what()))
                    .help(format!("remove the empty entry from `{}`", self.key)));
            }
            names.push(name.to_owned());
        }
        Ok(names)
    }
}
