//! The checks of plan values (counts, durations, sizes, booleans), shared by the getters of
//! [`Field`] and by the value types of the serde-derived tables ([`Count`], [`Seconds`],
//! [`Size`], [`Flag`]), and the reading of a derived table ([`Table::read`]).
//!
//! A check sees the value as the plan wrote it ([`Raw`]) and says what is wrong with it as a
//! [`Problem`]; [`Field::problem`] words the problem for the key it is about ("`timeout` in
//! test `a` must be greater than zero, not 0"), with the key's example as help. A derived
//! table is read one key at a time, in file order, so that the first problem reported is the
//! first one in the file and every problem is worded for its key.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::field::{Diag, Field, Res, Table, found, parse_size, toml_str};

/// A value as the plan wrote it, as far as the checks care.
#[derive(Debug)]
pub(super) enum Raw {
    Str(String),
    /// An integer; `None` when it does not fit in an `i128`.
    Int(Option<i128>),
    Float(f64),
    Bool(bool),
    /// An array, a table or a date-time.
    Other,
}

impl Raw {
    pub(super) fn of(value: &DeValue<'_>) -> Raw {
        match value {
            DeValue::String(s) => Raw::Str(s.to_string()),
            DeValue::Integer(i) => Raw::Int(i128::from_str_radix(i.as_str(), i.radix()).ok()),
            DeValue::Float(f) => Raw::Float(f.as_str().parse().unwrap_or(f64::NAN)),
            DeValue::Boolean(b) => Raw::Bool(*b),
            DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => Raw::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;

        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a plan value")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(Some(v.into())))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Int(Some(v.into())))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
                Ok(Raw::Int(Some(v)))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
                Ok(Raw::Int(i128::try_from(v).ok()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Raw::Other)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Raw::Other)
            }
        }

        deserializer.deserialize_any(RawVisitor)
    }
}

/// What is wrong with a value; [`Field::problem`] words it for its key.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum Problem {
    /// Not of the expected type; `unquoted` is the value of a string that would be right
    /// without its quotes.
    WrongType {
        expected: String,
        unquoted: Option<String>,
    },
    TooLarge,
    AtLeast {
        min: i128,
        n: i128,
    },
    AtMost {
        max: i128,
        n: i128,
    },
    /// A duration that is zero or negative.
    NotPositive,
    /// A string that is no duration, with humantime's reason.
    BadDuration(String),
    /// A string that is no size, with the reason.
    BadSize(String),
    /// A size under 1KiB, in bytes.
    SmallSize(u64),
    /// A blank string.
    Empty,
}

/// How a [`Problem`] travels in a serde error: after this prefix, as JSON.
const PROBLEM: &str = "\u{1}plan-problem:";

impl Problem {
    fn into_error<E: de::Error>(self) -> E {
        E::custom(format_args!(
            "{PROBLEM}{}",
            serde_json::to_string(&self).expect("a problem serializes")
        ))
    }

    /// The problem a serde error carries, if it is one of a value type of this module.
    fn from_message(message: &str) -> Option<Problem> {
        serde_json::from_str(message.strip_prefix(PROBLEM)?).ok()
    }
}

/// An integer in `min..=max`.
pub(super) fn integer(raw: &Raw, min: i128, max: i128, expected: &str) -> Result<i128, Problem> {
    let n = match raw {
        Raw::Int(Some(n)) => *n,
        Raw::Int(None) => return Err(Problem::TooLarge),
        Raw::Str(s) if s.trim().parse::<i128>().is_ok() => {
            return Err(Problem::WrongType {
                expected: expected.to_owned(),
                unquoted: Some(s.trim().to_owned()),
            });
        }
        _ => {
            return Err(Problem::WrongType {
                expected: expected.to_owned(),
                unquoted: None,
            });
        }
    };
    if n < min {
        return Err(Problem::AtLeast { min, n });
    }
    if n > max {
        return Err(Problem::AtMost { max, n });
    }
    Ok(n)
}

/// A positive duration: a humantime string (`"1m 30s"`) or a number of seconds.
pub(super) fn duration(raw: &Raw) -> Result<Duration, Problem> {
    const EXPECTED: &str = "a duration such as \"30s\" or a number of seconds";
    let duration = match raw {
        Raw::Str(s) => {
            let s = s.trim();
            if s.starts_with('-') {
                return Err(Problem::NotPositive);
            }
            humantime::parse_duration(s).map_err(|e| Problem::BadDuration(e.to_string()))?
        }
        Raw::Int(_) => {
            let secs = integer(raw, i128::MIN, u64::MAX.into(), EXPECTED)?;
            if secs <= 0 {
                return Err(Problem::NotPositive);
            }
            Duration::from_secs(u64::try_from(secs).expect("range was checked"))
        }
        Raw::Float(secs) => {
            if secs.is_nan() || *secs <= 0.0 {
                return Err(Problem::NotPositive);
            }
            Duration::try_from_secs_f64(*secs).map_err(|_| Problem::TooLarge)?
        }
        _ => {
            return Err(Problem::WrongType {
                expected: EXPECTED.to_owned(),
                unquoted: None,
            });
        }
    };
    if duration.is_zero() {
        return Err(Problem::NotPositive);
    }
    Ok(duration)
}

/// A byte count of at least 1KiB: a string with a unit (`"64KiB"`) or an integer, in bytes.
pub(super) fn bytes(raw: &Raw) -> Result<u64, Problem> {
    const EXPECTED: &str = "a size such as \"64KiB\" or a number of bytes";
    let bytes = match raw {
        Raw::Int(_) => {
            u64::try_from(integer(raw, 0, u64::MAX.into(), EXPECTED)?).expect("range was checked")
        }
        Raw::Str(s) => parse_size(s).map_err(Problem::BadSize)?,
        _ => {
            return Err(Problem::WrongType {
                expected: EXPECTED.to_owned(),
                unquoted: None,
            });
        }
    };
    if bytes < 1024 {
        return Err(Problem::SmallSize(bytes));
    }
    Ok(bytes)
}

/// `true` or `false`.
pub(super) fn boolean(raw: &Raw) -> Result<bool, Problem> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) => Err(Problem::WrongType {
            expected: "`true` or `false`".to_owned(),
            unquoted: matches!(s.trim(), "true" | "false").then(|| s.trim().to_owned()),
        }),
        _ => Err(Problem::WrongType {
            expected: "`true` or `false`".to_owned(),
            unquoted: None,
        }),
    }
}

/// A string that is not blank.
pub(super) fn text(raw: &Raw) -> Result<String, Problem> {
    match raw {
        Raw::Str(s) if is_blank(s) => Err(Problem::Empty),
        Raw::Str(s) => Ok(s.clone()),
        _ => Err(Problem::WrongType {
            expected: "a string".to_owned(),
            unquoted: None,
        }),
    }
}

/// Whether a string says nothing.
pub(super) fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// A value type of a derived table: deserialized from the raw value by `check`.
fn checked<'de, D, T>(
    deserializer: D,
    check: impl FnOnce(&Raw) -> Result<T, Problem>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Raw::deserialize(deserializer)?;
    check(&raw).map_err(Problem::into_error)
}

/// An integer in `MIN..=MAX` (`parallelism = 4`, `retries = 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const MIN: i128, const MAX: i128>(pub i128);

/// The largest `u32`, as a bound of [`Count`].
pub const U32_MAX: i128 = u32::MAX as i128;

impl<'de, const MIN: i128, const MAX: i128> Deserialize<'de> for Count<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expected = if MIN == 1 && MAX == U32_MAX {
            "a positive integer".to_owned()
        } else {
            format!("an integer from {MIN} to {MAX}")
        };
        checked(deserializer, |raw| integer(raw, MIN, MAX, &expected)).map(Count)
    }
}

/// A positive duration (`timeout = "30s"`, `kill-grace = 2.5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, duration).map(Seconds)
    }
}

/// A byte count of at least 1KiB (`output-limit = "1MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, bytes).map(Size)
    }
}

/// `true` or `false` (`enabled = false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, boolean).map(Flag)
    }
}

/// A string that is not blank (`path = "artifacts"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, text).map(Text)
    }
}

/// A key whose value the table's code reads by hand as the key is met (a sub-table, a map of
/// kinds, a list with its own messages): see [`Table::read_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByHand;

impl<'de> Deserialize<'de> for ByHand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| ByHand)
    }
}

/// The keys of a derived table: the names of its struct's fields, as serde sees them.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(KeyProbe) {
        Err(ProbeError(Some(fields))) => fields,
        _ => &[],
    }
}

/// A deserializer that only asks a struct for its fields.
struct KeyProbe;

#[derive(Debug)]
struct ProbeError(Option<&'static [&'static str]>);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("only the keys of a table were asked for")
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(_: T) -> Self {
        ProbeError(None)
    }
}

impl<'de> Deserializer<'de> for KeyProbe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

impl<'i> Table<'_, 'i> {
    /// Reads the table into the serde-derived `T`, whose fields are the table's keys (all
    /// optional: `#[serde(default)]`). Keys are read one at a time in file order: an unknown
    /// key gets the did-you-mean advice, and a bad value the message of its key.
    pub fn read<T: DeserializeOwned>(&self) -> Res<T> {
        self.read_with(|_, _| Ok(()))
    }

    /// [`Table::read`], with `on_key` called on each key as it is met: with the table with
    /// only that key set once its value is read, or with `None` for a key `T` does not have
    /// (before it is reported as unknown). It may read a value by hand, or refuse it.
    pub fn read_with<T: DeserializeOwned>(
        &self,
        mut on_key: impl FnMut(&Field<'_, 'i>, Option<&T>) -> Res<()>,
    ) -> Res<T> {
        let keys = keys_of::<T>();
        for f in self.fields() {
            if !keys.contains(&f.key) {
                on_key(&f, None)?;
                return Err(f.unknown_key());
            }
            let mut one = DeTable::new();
            one.insert(
                Spanned::new(f.key_span(), f.key.to_owned().into()),
                f.value.clone(),
            );
            let one: T = T::deserialize(deserializer(self.span(), DeValue::Table(one)))
                .map_err(|e| f.serde_error(&e))?;
            on_key(&f, Some(&one))?;
        }
        T::deserialize(deserializer(
            self.span(),
            DeValue::Table(self.de_table().clone()),
        ))
        .map_err(|e| {
            Diag::new(
                e.span().unwrap_or_else(|| self.span()),
                self.scope().prefix.trim_end_matches('.').to_owned(),
                format!("{} {}", self.name(), e.message()),
            )
        })
    }
}

fn deserializer<'i>(span: std::ops::Range<usize>, value: DeValue<'i>) -> ValueDeserializer<'i> {
    ValueDeserializer::from(Spanned::new(span, value))
}

impl Field<'_, '_> {
    /// A serde error met reading this key's value, worded for the key.
    fn serde_error(&self, e: &toml::de::Error) -> Diag {
        match Problem::from_message(e.message()) {
            Some(problem) => self.problem(problem),
            // The number does not fit in an `i128` or an `f64`.
            None if e.message().ends_with("number overflowed") => self.problem(Problem::TooLarge),
            None => self
                .error_at(
                    e.span().unwrap_or_else(|| self.span()),
                    format!("{} is not valid: {}", self.what(), e.message()),
                )
                .maybe_help(self.example_help()),
        }
    }

    /// `problem` worded for this key, at its value.
    pub(super) fn problem(&self, problem: Problem) -> Diag {
        match problem {
            Problem::WrongType { expected, unquoted } => {
                let diag = self.wrong_type(&expected);
                match unquoted {
                    Some(value) => {
                        diag.help(format!("remove the quotes: `{} = {value}`", self.key))
                    }
                    None => diag,
                }
            }
            Problem::TooLarge => self.error(format!("{} is too large", self.what())),
            Problem::AtLeast { min, n } => self
                .error(format!("{} must be at least {min}, not {n}", self.what()))
                .maybe_help(self.range_help()),
            Problem::AtMost { max, n } => self
                .error(format!("{} must be at most {max}, not {n}", self.what()))
                .maybe_help(self.range_help()),
            Problem::NotPositive => {
                let value = match self.get() {
                    DeValue::String(s) => toml_str(s),
                    DeValue::Integer(i) => i.to_string(),
                    DeValue::Float(f) => f.to_string(),
                    other => found(other),
                };
                self.error(format!(
                    "{} must be greater than zero, not {value}",
                    self.what()
                ))
                .maybe_help(self.default_help())
            }
            Problem::BadDuration(reason) => self
                .error(format!("{} is not a valid duration: {reason}", self.what()))
                .help(format!(
                    "write a number followed by a unit, such as \"90s\", \"5m\", \"1h 30m\" or \
                     \"7d\", or a plain number of seconds; for example `{}`",
                    self.example().unwrap_or("timeout = \"30s\"")
                )),
            Problem::BadSize(reason) => self
                .error(format!("{} is not a valid size: {reason}", self.what()))
                .help(
                    "write a whole number with a binary unit, such as \"64KiB\" or \"1MiB\", or \
                     an integer number of bytes",
                ),
            Problem::Empty => self
                .error(format!("{} is empty", self.what()))
                .maybe_help(self.example_help()),
            Problem::SmallSize(bytes) => self
                .error(format!(
                    "{} must be at least 1KiB (1024 bytes), not {bytes} bytes",
                    self.what()
                ))
                .maybe_help(self.default_help()),
        }
    }

    /// The value as the checks see it.
    pub(super) fn raw(&self) -> Raw {
        Raw::of(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, rename_all = "kebab-case")]
    struct Sample {
        #[allow(dead_code)]
        first_key: Option<Flag>,
        #[allow(dead_code)]
        second: Option<Seconds>,
    }

    #[test]
    fn keys_come_from_the_struct() {
        assert_eq!(keys_of::<Sample>(), ["first-key", "second"]);
    }

    #[test]
    fn problems_survive_a_serde_error() {
        let problem = Problem::AtMost {
            max: i128::from(u64::MAX),
            n: i128::MAX,
        };
        let e: toml::de::Error = problem.into_error();
        assert_eq!(
            Problem::from_message(e.message()),
            Some(Problem::AtMost {
                max: i128::from(u64::MAX),
                n: i128::MAX,
            })
        );
    }

    fn parse_err(table: &str) -> String {
        let text = format!("{table}[[test]]\nid = \"a\"\nscript = \"true\"\n");
        crate::plan::parse(
            &text,
            std::path::Path::new("t.toml"),
            std::path::Path::new("."),
        )
        .expect_err("the plan is wrong")
        .to_string()
    }

    #[cfg(all(feature = "store", feature = "monitor"))]
    #[test]
    fn derived_tables_report_the_first_problem_in_the_file() {
        let err = parse_err("[monitor]\ninterval = 0.001\nenabled = 3\n");
        assert!(
            err.starts_with("t.toml:2:12: `interval` in [monitor] must be at least 10ms, not 1ms"),
            "{err}"
        );
        let err = parse_err("[run]\nretries = 2\nparalelism = 2\ntimeout = 0\n");
        assert!(
            err.starts_with(
                "t.toml:3:1: unknown key `paralelism` in [run]\n  help: did you mean `parallelism`?"
            ),
            "{err}"
        );
    }

    #[test]
    fn numbers_out_of_reach_are_too_large() {
        for value in ["99999999999999999999999999999999999999999", "1e400"] {
            let err = parse_err(&format!("[run]\ntimeout = {value}\n"));
            assert_eq!(
                err, "t.toml:2:11: `timeout` in [run] is too large",
                "{value}"
            );
        }
    }
}
