//! Durations written the way Flux and Kubernetes users write them: `90s`,
//! `5m`, `1h30m`, `250ms`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration as written in YAML (`30m`), kept with its parsed value so it
/// serialises back exactly as the person wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationSpec {
    text: String,
    value: Duration,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration: {why}; write a number and a unit, such as `90s`, `30m` or `1h30m` (units: ms, s, m, h)")]
pub struct DurationError {
    text: String,
    why: &'static str,
}

impl DurationSpec {
    /// Parses `text`; units `ms`, `s`, `m`, `h`, combinable (`1h30m`).
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = |why| DurationError { text: text.to_owned(), why };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("a number is missing before a unit"));
            }
            let (num, after) = rest.split_at(digits);
            let n: u64 = num.parse().map_err(|_| err("the number is too large"))?;
            let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, after) = after.split_at(unit_len);
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| err("it is too large"))?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| err("it is too large"))?),
                "" => return Err(err("a unit is missing")),
                _ => return Err(err("the unit is unknown")),
            };
            total = total.checked_add(part).ok_or_else(|| err("it is too large"))?;
            rest = after;
        }
        Ok(DurationSpec { text: text.to_owned(), value: total })
    }

    /// The parsed value.
    pub fn as_duration(&self) -> Duration {
        self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DurationSpec::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: numbers with units ms, s, m or h, e.g. `90s`, `30m`, `1h30m`.",
            "pattern": "^([0-9]+(ms|s|m|h))+$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_units() {
        let d = DurationSpec::parse("1h30m15s250ms").expect("a valid duration");
        assert_eq!(d.as_duration(), Duration::from_millis(5_415_250));
        assert_eq!(d.as_str(), "1h30m15s250ms");
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in ["", "30", "m", "5 m", "5d", "-5s", "99999999999999999999s"] {
            assert!(DurationSpec::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
