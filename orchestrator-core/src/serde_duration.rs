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
