//! Serde helpers: durations as fractional seconds (`1.5`), read back from numbers or from
//! human-readable strings (`"1m 30s"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Writes a duration as fractional seconds.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Secs(f64),
    Text(String),
}

/// Reads a duration from seconds or a human-readable string.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Repr::deserialize(d)? {
        Repr::Secs(s) => Duration::try_from_secs_f64(s).map_err(D::Error::custom),
        Repr::Text(t) => humantime::parse_duration(&t).map_err(D::Error::custom),
    }
}

/// The same for an `Option<Duration>` (`None` as `null`).
pub(crate) mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as fractional seconds, `None` as `null`.
    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "super::deserialize")] Duration);

    /// Reads a duration from seconds or a human-readable string, or `null`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
    }
}
