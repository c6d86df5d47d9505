//! The values with a syntax of their own: the copybreak and the provider kind.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ParseValueError, DEFAULT_COPYBREAK_BYTES};

/// The offload threshold: reads of at least this many bytes go to a DMA channel.
///
/// In TOML it is an integer or the string `"auto"`; as text (sysctl, environment,
/// [`fmt::Display`]/[`FromStr`]) it is a decimal number or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Copybreak {
    /// A fixed threshold in bytes, as Linux's `sysctl_tcp_dma_copybreak`.
    Bytes(usize),
    /// Adaptive: measure both paths as traffic flows and route to the cheaper one.
    Auto,
}

impl Copybreak {
    /// Linux's default threshold, 4096 bytes.
    pub const LINUX_DEFAULT: Copybreak = Copybreak::Bytes(DEFAULT_COPYBREAK_BYTES);

    /// "Never offload": a threshold above any read, and the largest integer a TOML file
    /// holds (`i64::MAX`), so it can be written to `netdma.toml` and read back.
    pub const NEVER: Copybreak = Copybreak::Bytes(i64::MAX as usize);

    /// The fixed threshold, or `None` for [`Copybreak::Auto`].
    pub fn bytes(self) -> Option<usize> {
        match self {
            Copybreak::Bytes(n) => Some(n),
            Copybreak::Auto => None,
        }
    }

    /// Whether the threshold is adaptive.
    pub fn is_auto(self) -> bool {
        matches!(self, Copybreak::Auto)
    }

    pub(super) fn expected() -> String {
        format!("an integer in 0..={} or \"auto\"", usize::MAX)
    }
}

/// The default is [`Copybreak::Auto`], the same as [`NetDmaConfig::default`](super::NetDmaConfig::default)'s.
impl Default for Copybreak {
    fn default() -> Self {
        Copybreak::Auto
    }
}

impl fmt::Display for Copybreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Copybreak::Bytes(n) => write!(f, "{n}"),
            Copybreak::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for Copybreak {
    type Err = ParseValueError;

    /// Parses `auto` (any case) or a non-negative decimal integer; surrounding whitespace is
    /// ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Copybreak::Auto);
        }
        t.parse::<usize>()
            .map(Copybreak::Bytes)
            .map_err(|_| ParseValueError {
                value: s.to_owned(),
                expected: Copybreak::expected(),
            })
    }
}

impl Serialize for Copybreak {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Copybreak::Bytes(n) => serializer.serialize_u64(*n as u64),
            Copybreak::Auto => serializer.serialize_str("auto"),
        }
    }
}

/// A TOML file writes the copybreak as a non-negative integer or the string `"auto"`, and
/// nothing else: no other string, no float, no negative number.
impl<'de> Deserialize<'de> for Copybreak {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Copybreak;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&Copybreak::expected())
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Copybreak, E> {
                usize::try_from(v)
                    .map(Copybreak::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Copybreak, E> {
                usize::try_from(v)
                    .map(Copybreak::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Copybreak, E> {
                if v == "auto" {
                    Ok(Copybreak::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Which DMA provider the engine registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The software DMA device: descriptor rings drained by worker threads (`"software"`).
    #[default]
    Software,
    /// An Intel DSA work queue (`"dsa"`); starting fails, saying why, when none is usable.
    Dsa,
    /// DSA when a usable work queue is found, else the software device (`"auto"`).
    Auto,
}

impl ProviderKind {
    /// Every provider kind, in the order they are documented.
    pub const ALL: &'static [ProviderKind] = &[
        ProviderKind::Software,
        ProviderKind::Dsa,
        ProviderKind::Auto,
    ];

    /// The lower-case name used in TOML, the environment and sysctl.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Software => "software",
            ProviderKind::Dsa => "dsa",
            ProviderKind::Auto => "auto",
        }
    }

    pub(super) fn expected() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|p| format!("\"{}\"", p.as_str()))
            .collect();
        format!("one of {}", names.join(", "))
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = ParseValueError;

    /// Parses a provider name (case-insensitive, surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| ParseValueError {
                value: s.to_owned(),
                expected: Self::expected(),
            })
    }
}

/// A TOML file names the provider by one of its lower-case names (`"software"`, `"dsa"`,
/// `"auto"`), and nothing else.
impl<'de> Deserialize<'de> for ProviderKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ProviderKind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&ProviderKind::expected())
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProviderKind, E> {
                ProviderKind::ALL
                    .iter()
                    .copied()
                    .find(|p| p.as_str() == v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}
