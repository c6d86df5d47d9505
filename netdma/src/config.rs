//! Configuration of the netdma receive pipeline: defaults, a TOML file, `NETDMA_*`
//! environment overrides and sysctl-style run-time access.
//!
//! A configuration is built in layers: [`NetDmaConfig::default`] <- a TOML file
//! ([`NetDmaConfig::load`], [`NetDmaConfig::from_toml_str`]) <- environment variables
//! ([`NetDmaConfig::apply_env`], [`NetDmaConfig::apply_env_from`]);
//! [`NetDmaConfig::load_with_env`] does all three. At run time the Linux-style sysctl names
//! read and change it ([`NetDmaConfig::get`], [`NetDmaConfig::set`]); the engine keys are
//! fixed once the engine is built and are read-only there.
//!
//! Every change is all-or-nothing: a file, an environment or a `set` with one bad value is
//! rejected with an error that names the key (as spelled in that source) and the accepted
//! range, and the configuration is left as it was.
//!
//! One table ([`NetDmaConfig::keys`]) drives the TOML loader, the environment, `get`/`set`
//! and validation: each key's TOML, sysctl and environment names, default, range and
//! whether it can change at run time live there and nowhere else in the code. The README's
//! configuration reference and `netdma.example.toml` list the same keys, and tests check
//! both against the table.
//!
//! `engine.provider = "dsa"` drives an Intel DSA work queue (`engine.dsa.wq`) and fails
//! to start when none is usable, saying why; `"auto"` uses DSA when a usable WQ is found
//! and the software device otherwise, logging which and why. `engine.dsa.emulate` runs
//! the DSA provider over its software portal instead of hardware (for tests and for
//! trying the provider on any machine).
//!
//! Value syntax per source:
//! - TOML: booleans are `true`/`false`; integers must not be negative; `cpu_fraction`
//!   accepts an integer or a float; `tcp_dma_copybreak` is an integer or the string `"auto"`.
//! - Environment: booleans are `0`, `1`, `true`, `false`, `yes`, `no`, `on` or `off`
//!   (case-insensitive). Any other variable starting with `NETDMA_` is an error.
//! - sysctl: booleans are `0` or `1`, as in `/proc/sys`. Names may also be written with `/`
//!   (`net/ipv4/tcp_dma_copybreak`). Surrounding whitespace is ignored.
//!
//! ```
//! use netdma::config::{Copybreak, NetDmaConfig};
//!
//! let mut cfg = NetDmaConfig::from_toml_str("tcp_dma_copybreak = 8192\n[wait]\nspin_us = 0\n")?;
//! assert_eq!(cfg.tcp_dma_copybreak, Copybreak::Bytes(8192));
//! cfg.set("net.ipv4.tcp_dma_copybreak", "auto")?;
//! assert_eq!(cfg.get("net.ipv4.tcp_dma_copybreak")?, "auto");
//! assert!(cfg.set("net.netdma.engine.channels", "4").is_err()); // read-only at run time
//! # Ok::<(), netdma::config::ConfigError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Linux's default `sysctl_tcp_dma_copybreak`: reads of at least this many bytes are
/// offloaded.
pub const DEFAULT_COPYBREAK_BYTES: usize = 4096;

/// Smallest accepted [`NetDmaConfig::chunk_size`].
pub const MIN_CHUNK_SIZE: usize = 64;
/// Largest accepted [`NetDmaConfig::chunk_size`] (16 MiB).
pub const MAX_CHUNK_SIZE: usize = 16 << 20;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a configuration could not be loaded, applied or changed.
///
/// `key` fields carry the key as spelled in the source that was wrong: the dotted TOML
/// name for files and [`NetDmaConfig::validate`] (`engine.ring_size`), the variable name
/// for the environment (`NETDMA_ENGINE_RING_SIZE`) and the sysctl name for
/// [`NetDmaConfig::set`] (`net.netdma.chunk_size`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML (the message carries line and column).
    #[error("invalid TOML{}: {message}", fmt_opt_path(.path))]
    Parse {
        /// The file the text came from, if any.
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The key (TOML key, `NETDMA_*` variable or sysctl name) does not exist.
    #[error("unknown configuration key `{key}`; known keys: {known}", key = .0, known = known_keys_like(.0))]
    UnknownKey(String),
    /// The value does not have the right form (not a number, negative, wrong TOML type...).
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    InvalidValue {
        /// The key, as spelled in its source.
        key: String,
        /// The rejected value, as written.
        value: String,
        /// What is accepted, with its range.
        expected: String,
    },
    /// The value has the right form but lies outside the accepted range.
    #[error("value `{value}` for `{key}` is out of range: accepted {range}")]
    OutOfRange {
        /// The key, as spelled in its source.
        key: String,
        /// The rejected value, as written.
        value: String,
        /// The accepted range.
        range: String,
    },
    /// The key exists but cannot be changed at run time (the engine keys).
    #[error(
        "`{0}` is read-only at run time; set it in the configuration file or the environment \
         before the engine starts"
    )]
    ReadOnly(String),
    /// The configuration could not be written as TOML.
    #[error("cannot serialize configuration as TOML: {0}")]
    Serialize(String),
}

fn fmt_opt_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

/// The list of known keys in the naming scheme the unknown key seems to use.
fn known_keys_like(key: &str) -> String {
    let names: Vec<&str> = if key.starts_with(ENV_PREFIX) {
        KEYS.iter().map(|k| k.env).collect()
    } else if key.starts_with("net.") || key.starts_with("net/") {
        KEYS.iter().map(|k| k.sysctl).collect()
    } else {
        KEYS.iter().map(|k| k.toml).collect()
    };
    names.join(", ")
}

/// A value that [`Copybreak`] or [`ProviderKind`] could not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value `{value}`: expected {expected}")]
pub struct ParseValueError {
    /// The rejected text.
    pub value: String,
    /// What is accepted.
    pub expected: String,
}

// ---------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------

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

    fn expected() -> String {
        format!("an integer in 0..={} or \"auto\"", usize::MAX)
    }
}

/// The default is [`Copybreak::Auto`], the same as [`NetDmaConfig::default`]'s.
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
                v.parse()
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Which DMA provider the engine registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
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

    fn expected() -> String {
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

// ---------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------

/// How a receive waits for its outstanding DMA copies (Linux: `dma_sync_wait`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitPolicy {
    /// Give up waiting for a copy after this many milliseconds (`1..=600000`, default 5000);
    /// the data is then copied by the CPU.
    pub timeout_ms: u64,
    /// The DMA workers and waiters spin this many microseconds before parking
    /// (`0..=10000`, default 20). Given to the engine when it is built, so read-only at
    /// run time.
    pub spin_us: u64,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            timeout_ms: 5000,
            spin_us: 20,
        }
    }
}

impl WaitPolicy {
    /// [`WaitPolicy::timeout_ms`] as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// [`WaitPolicy::spin_us`] as a [`Duration`].
    pub fn spin(&self) -> Duration {
        Duration::from_micros(self.spin_us)
    }
}

/// The Intel DSA provider's settings (`[engine.dsa]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DsaConfig {
    /// The work queue: `"any"` (the first usable one, default), a name (`wq0.0`) or the
    /// path of its character device (`/dev/dsa/wq0.0`).
    pub wq: String,
    /// Run the DSA provider over its software portal instead of hardware (default false).
    pub emulate: bool,
}

impl Default for DsaConfig {
    fn default() -> Self {
        DsaConfig {
            wq: "any".to_owned(),
            emulate: false,
        }
    }
}

/// How the DMA engine is built. Fixed once the engine runs: read-only through
/// [`NetDmaConfig::set`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The DMA provider to register (default [`ProviderKind::Software`]).
    pub provider: ProviderKind,
    /// Number of DMA channels (`1..=64`, default 2).
    pub channels: usize,
    /// Pin each channel's worker thread to a CPU (default false).
    pub pin_workers: bool,
    /// Descriptors per channel ring (a power of two in `2..=65536`, default 1024).
    pub ring_size: usize,
    /// The DSA provider's settings.
    pub dsa: DsaConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            provider: ProviderKind::Software,
            channels: 2,
            pin_workers: false,
            ring_size: 1024,
            dsa: DsaConfig::default(),
        }
    }
}

/// The netdma configuration. See the [module documentation](self) for every key, its
/// names in TOML, sysctl and the environment, its default and its range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetDmaConfig {
    /// Offload receive copies at all (default true). Switching it off drops every
    /// reference that pins a DMA device.
    pub enabled: bool,
    /// Reads of at least this many bytes are offloaded (Linux's
    /// `sysctl_tcp_dma_copybreak`, whose default was 4096), or [`Copybreak::Auto`] for the
    /// adaptive policy (the default: it routes to whichever path is cheaper on this
    /// machine now, and measured at 0.98-1.0 of the CPU path where offload does not pay;
    /// see BENCHMARKS.md).
    pub tcp_dma_copybreak: Copybreak,
    /// Linux `net.ipv4.tcp_low_latency`: when set, never offload (default false).
    pub low_latency: bool,
    /// Bytes per DMA descriptor (`64..=16777216`, default 65536).
    pub chunk_size: usize,
    /// Descriptors (copies) in flight at once (`1..=1024`, default 8): per read in
    /// [`NetDma::recv`](crate::NetDma::recv), per socket in the pipelined receive.
    pub max_inflight: usize,
    /// Share of each large copy done by the CPU at the same time (`0.0..=0.9`, default
    /// 0.0), as Intel DTO's `cpu_size_fraction`: the tail of every offloaded read in
    /// `recv`, of every chunk in the pipeline.
    pub cpu_fraction: f64,
    /// Drop the DMA references after this many milliseconds without network traffic,
    /// taking them again on the next large receive (`0..=86400000`, 0 = never, default
    /// 1000).
    pub idle_release_ms: u64,
    /// How a receive waits for its copies.
    pub wait: WaitPolicy,
    /// How the DMA engine is built.
    pub engine: EngineConfig,
}

impl Default for NetDmaConfig {
    fn default() -> Self {
        NetDmaConfig {
            enabled: true,
            tcp_dma_copybreak: Copybreak::Auto,
            low_latency: false,
            chunk_size: 65536,
            max_inflight: 8,
            cpu_fraction: 0.0,
            idle_release_ms: 1000,
            wait: WaitPolicy::default(),
            engine: EngineConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The key table
// ---------------------------------------------------------------------------------------

const ENV_PREFIX: &str = "NETDMA_";

/// The kind of a key's value: how it is parsed and which range it accepts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Uint {
        min: u64,
        max: u64,
    },
    PowerOfTwo {
        min: u64,
        max: u64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Copybreak,
    Provider,
    /// `"any"`, a WQ name or a path: non-empty, no control characters.
    Wq,
}

/// Where a textual value came from: decides the boolean syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Env,
    Sysctl,
}

/// A typed value moved between the table and the configuration.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    Uint(u64),
    Float(f64),
    Copybreak(Copybreak),
    Provider(ProviderKind),
    Text(String),
}

impl fmt::Display for Val {
    /// The sysctl form: booleans as 0/1.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Bool(b) => write!(f, "{}", u8::from(*b)),
            Val::Uint(n) => write!(f, "{n}"),
            Val::Float(x) => write!(f, "{x}"),
            Val::Copybreak(c) => write!(f, "{c}"),
            Val::Provider(p) => write!(f, "{p}"),
            Val::Text(t) => f.write_str(t),
        }
    }
}

impl Kind {
    /// The accepted range, as shown in [`ConfigError::OutOfRange`] and the docs.
    fn range(self) -> String {
        match self {
            Kind::Bool => "true or false".to_owned(),
            Kind::Uint { min, max } => format!("{min}..={max}"),
            Kind::PowerOfTwo { min, max } => format!("a power of two in {min}..={max}"),
            Kind::Float { min, max } => format!("{min:?}..={max:?}"),
            Kind::Copybreak => format!("0..={} or \"auto\"", usize::MAX),
            Kind::Provider => ProviderKind::expected(),
            Kind::Wq => WQ_EXPECTED.to_owned(),
        }
    }

    /// What the text form accepts, as shown in [`ConfigError::InvalidValue`].
    fn expected_text(self, source: Source) -> String {
        match (self, source) {
            (Kind::Bool, Source::Sysctl) => "0 or 1".to_owned(),
            (Kind::Bool, Source::Env) => {
                "a boolean: one of 0, 1, true, false, yes, no, on, off".to_owned()
            }
            (Kind::Uint { min, max }, _) => format!("an integer in {min}..={max}"),
            (Kind::PowerOfTwo { min, max }, _) => {
                format!("a power of two in {min}..={max}")
            }
            (Kind::Float { min, max }, _) => format!("a number in {min:?}..={max:?}"),
            (Kind::Copybreak, _) => Copybreak::expected(),
            (Kind::Provider, _) => ProviderKind::expected(),
            (Kind::Wq, _) => WQ_EXPECTED.to_owned(),
        }
    }

    /// What the TOML form accepts.
    fn expected_toml(self) -> String {
        match self {
            Kind::Bool => "a boolean (true or false)".to_owned(),
            Kind::Provider => format!("a string, {}", ProviderKind::expected()),
            Kind::Wq => format!("a string, {WQ_EXPECTED}"),
            other => other.expected_text(Source::Sysctl),
        }
    }

    /// Whether a well-formed value lies in the accepted range.
    fn in_range(self, v: &Val) -> bool {
        match (self, v) {
            (Kind::Uint { min, max }, Val::Uint(n)) => (min..=max).contains(n),
            (Kind::PowerOfTwo { min, max }, Val::Uint(n)) => {
                n.is_power_of_two() && (min..=max).contains(n)
            }
            (Kind::Float { min, max }, Val::Float(x)) => x.is_finite() && min <= *x && *x <= max,
            (Kind::Wq, Val::Text(t)) => wq_ok(t),
            (Kind::Bool, Val::Bool(_))
            | (Kind::Copybreak, Val::Copybreak(_))
            | (Kind::Provider, Val::Provider(_)) => true,
            _ => false,
        }
    }

    /// Parses the text form (environment or sysctl). `Err(())` means malformed.
    fn parse_text(self, s: &str, source: Source) -> Result<Val, ()> {
        let t = s.trim();
        match self {
            Kind::Bool => {
                let lower = t.to_ascii_lowercase();
                match (source, lower.as_str()) {
                    (_, "1") => Ok(Val::Bool(true)),
                    (_, "0") => Ok(Val::Bool(false)),
                    (Source::Env, "true" | "yes" | "on") => Ok(Val::Bool(true)),
                    (Source::Env, "false" | "no" | "off") => Ok(Val::Bool(false)),
                    _ => Err(()),
                }
            }
            Kind::Uint { .. } | Kind::PowerOfTwo { .. } => {
                // Digits only: u64::from_str would also take a leading '+'.
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                t.parse::<u64>().map(Val::Uint).map_err(|_| ())
            }
            Kind::Float { .. } => match t.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Val::Float(x)),
                _ => Err(()),
            },
            Kind::Copybreak => t.parse().map(Val::Copybreak).map_err(|_| ()),
            Kind::Provider => t.parse().map(Val::Provider).map_err(|_| ()),
            Kind::Wq if wq_ok(t) => Ok(Val::Text(t.to_owned())),
            Kind::Wq => Err(()),
        }
    }

    /// Converts a TOML value. `Err(())` means wrong type or malformed.
    fn parse_toml(self, v: &toml::Value) -> Result<Val, ()> {
        use toml::Value as V;
        match (self, v) {
            (Kind::Bool, V::Boolean(b)) => Ok(Val::Bool(*b)),
            (Kind::Uint { .. } | Kind::PowerOfTwo { .. }, V::Integer(i)) => {
                u64::try_from(*i).map(Val::Uint).map_err(|_| ())
            }
            (Kind::Float { .. }, V::Float(x)) if x.is_finite() => Ok(Val::Float(*x)),
            (Kind::Float { .. }, V::Integer(i)) => Ok(Val::Float(*i as f64)),
            (Kind::Copybreak, V::Integer(i)) => usize::try_from(*i)
                .map(|n| Val::Copybreak(Copybreak::Bytes(n)))
                .map_err(|_| ()),
            (Kind::Copybreak, V::String(s)) => s.parse().map(Val::Copybreak).map_err(|_| ()),
            (Kind::Provider, V::String(s)) => s.parse().map(Val::Provider).map_err(|_| ()),
            (Kind::Wq, V::String(s)) if wq_ok(s.trim()) => Ok(Val::Text(s.trim().to_owned())),
            _ => Err(()),
        }
    }
}

const WQ_EXPECTED: &str = "\"any\", a work queue name (wq0.0) or its path (/dev/dsa/wq0.0)";

/// Whether `t` can name a work queue: non-empty, without control characters.
fn wq_ok(t: &str) -> bool {
    !t.is_empty() && !t.chars().any(char::is_control)
}

/// One configuration key and its names in every source.
///
/// The table is [`NetDmaConfig::keys`]; the [module documentation](self) shows it.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// Dotted TOML name (`wait.timeout_ms`), also used by [`NetDmaConfig::validate`].
    pub toml: &'static str,
    /// sysctl name (`net.netdma.wait_timeout_ms`) for [`NetDmaConfig::get`]/[`NetDmaConfig::set`].
    pub sysctl: &'static str,
    /// Environment variable (`NETDMA_WAIT_TIMEOUT_MS`).
    pub env: &'static str,
    /// Whether [`NetDmaConfig::set`] may change it at run time.
    pub writable: bool,
    /// One line of documentation.
    pub doc: &'static str,
    kind: Kind,
    get: fn(&NetDmaConfig) -> Val,
    put: fn(&mut NetDmaConfig, Val),
}

impl KeyInfo {
    /// The accepted range, e.g. `64..=16777216`.
    pub fn range(&self) -> String {
        self.kind.range()
    }

    /// The default value, in sysctl form (booleans as 0/1).
    pub fn default_value(&self) -> String {
        (self.get)(&NetDmaConfig::default()).to_string()
    }

    /// The current value in `cfg`, in sysctl form (booleans as 0/1).
    pub fn value(&self, cfg: &NetDmaConfig) -> String {
        (self.get)(cfg).to_string()
    }

    fn out_of_range(&self, key: &str, value: impl Into<String>) -> ConfigError {
        ConfigError::OutOfRange {
            key: key.to_owned(),
            value: value.into(),
            range: self.kind.range(),
        }
    }

    /// Parses `text`, checks its range and stores it in `cfg`.
    fn apply_text(
        &self,
        cfg: &mut NetDmaConfig,
        key: &str,
        text: &str,
        source: Source,
    ) -> Result<(), ConfigError> {
        let v = self
            .kind
            .parse_text(text, source)
            .map_err(|()| ConfigError::InvalidValue {
                key: key.to_owned(),
                value: text.to_owned(),
                expected: self.kind.expected_text(source),
            })?;
        if !self.kind.in_range(&v) {
            return Err(self.out_of_range(key, text.trim()));
        }
        (self.put)(cfg, v);
        Ok(())
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Defines a `fn(&NetDmaConfig) -> Val` and a `fn(&mut NetDmaConfig, Val)` for a field.
macro_rules! accessors {
    (bool, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Bool(c.$($f).+),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Bool(b) = v {
                    c.$($f).+ = b;
                }
            },
        )
    };
    (u64, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Uint(c.$($f).+),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Uint(n) = v {
                    c.$($f).+ = n;
                }
            },
        )
    };
    (usize, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Uint(c.$($f).+ as u64),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Uint(n) = v {
                    c.$($f).+ = to_usize(n);
                }
            },
        )
    };
    (f64, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Float(c.$($f).+),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Float(x) = v {
                    c.$($f).+ = x;
                }
            },
        )
    };
    (copybreak, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Copybreak(c.$($f).+),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Copybreak(x) = v {
                    c.$($f).+ = x;
                }
            },
        )
    };
    (text, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Text(c.$($f).+.clone()),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Text(x) = v {
                    c.$($f).+ = x;
                }
            },
        )
    };
    (provider, $($f:ident).+) => {
        (
            |c: &NetDmaConfig| Val::Provider(c.$($f).+),
            |c: &mut NetDmaConfig, v: Val| {
                if let Val::Provider(x) = v {
                    c.$($f).+ = x;
                }
            },
        )
    };
}

/// One table entry: `key!(toml, sysctl, env, writable, kind, accessor-type, field, doc)`.
macro_rules! key {
    ($toml:literal, $sysctl:literal, $env:literal, $rw:expr, $kind:expr,
     $ty:ident, $($f:ident).+, $doc:literal) => {{
        let (get, put) = accessors!($ty, $($f).+);
        KeyInfo {
            toml: $toml,
            sysctl: $sysctl,
            env: $env,
            writable: $rw,
            doc: $doc,
            kind: $kind,
            get,
            put,
        }
    }};
}

const RW: bool = true;
const RO: bool = false;

static KEYS: [KeyInfo; 15] = [
    key! { "enabled", "net.netdma.enabled", "NETDMA_ENABLED", RW,
    Kind::Bool, bool, enabled,
    "Offload receive copies at all." },
    key! { "tcp_dma_copybreak", "net.ipv4.tcp_dma_copybreak", "NETDMA_TCP_DMA_COPYBREAK", RW,
    Kind::Copybreak, copybreak, tcp_dma_copybreak,
    "Offload reads of at least this many bytes, or \"auto\" (adaptive)." },
    key! { "low_latency", "net.ipv4.tcp_low_latency", "NETDMA_LOW_LATENCY", RW,
    Kind::Bool, bool, low_latency,
    "Never offload (Linux tcp_low_latency)." },
    key! { "chunk_size", "net.netdma.chunk_size", "NETDMA_CHUNK_SIZE", RW,
    Kind::Uint { min: MIN_CHUNK_SIZE as u64, max: MAX_CHUNK_SIZE as u64 }, usize, chunk_size,
    "Bytes per DMA descriptor." },
    key! { "max_inflight", "net.netdma.max_inflight", "NETDMA_MAX_INFLIGHT", RW,
    Kind::Uint { min: 1, max: 1024 }, usize, max_inflight,
    "Descriptors (copies) in flight per read (recv) or per socket (pipeline)." },
    key! { "cpu_fraction", "net.netdma.cpu_fraction", "NETDMA_CPU_FRACTION", RW,
    Kind::Float { min: 0.0, max: 0.9 }, f64, cpu_fraction,
    "Share of each large copy done by the CPU at the same time." },
    key! { "idle_release_ms", "net.netdma.idle_release_ms", "NETDMA_IDLE_RELEASE_MS", RW,
    Kind::Uint { min: 0, max: 86_400_000 }, u64, idle_release_ms,
    "Drop DMA references after this idle time in ms (0 = never)." },
    key! { "wait.timeout_ms", "net.netdma.wait_timeout_ms", "NETDMA_WAIT_TIMEOUT_MS", RW,
    Kind::Uint { min: 1, max: 600_000 }, u64, wait.timeout_ms,
    "Give up waiting for a copy after this many ms (then the CPU copies)." },
    key! { "wait.spin_us", "net.netdma.wait_spin_us", "NETDMA_WAIT_SPIN_US", RO,
    Kind::Uint { min: 0, max: 10_000 }, u64, wait.spin_us,
    "Spin this many us before parking while waiting for a copy." },
    key! { "engine.provider", "net.netdma.engine.provider", "NETDMA_ENGINE_PROVIDER", RO,
    Kind::Provider, provider, engine.provider,
    "The DMA provider to register." },
    key! { "engine.channels", "net.netdma.engine.channels", "NETDMA_ENGINE_CHANNELS", RO,
    Kind::Uint { min: 1, max: 64 }, usize, engine.channels,
    "Number of DMA channels." },
    key! { "engine.pin_workers", "net.netdma.engine.pin_workers", "NETDMA_ENGINE_PIN_WORKERS", RO,
    Kind::Bool, bool, engine.pin_workers,
    "Pin each channel's worker thread to a CPU." },
    key! { "engine.ring_size", "net.netdma.engine.ring_size", "NETDMA_ENGINE_RING_SIZE", RO,
    Kind::PowerOfTwo { min: 2, max: 65536 }, usize, engine.ring_size,
    "Descriptors per channel ring." },
    key! { "engine.dsa.wq", "net.netdma.engine.dsa.wq", "NETDMA_ENGINE_DSA_WQ", RO,
    Kind::Wq, text, engine.dsa.wq,
    "The DSA work queue: \"any\", a name or a path." },
    key! { "engine.dsa.emulate", "net.netdma.engine.dsa.emulate", "NETDMA_ENGINE_DSA_EMULATE", RO,
    Kind::Bool, bool, engine.dsa.emulate,
    "Run the DSA provider over its software portal." },
];

fn key_by_sysctl(name: &str) -> Option<&'static KeyInfo> {
    let name = name.trim();
    if name.contains('/') {
        let dotted = name.trim_matches('/').replace('/', ".");
        KEYS.iter().find(|k| k.sysctl == dotted)
    } else {
        KEYS.iter().find(|k| k.sysctl == name)
    }
}

fn key_by_toml(path: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.toml == path)
}

fn key_by_env(name: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.env == name)
}

/// Whether `path` is a TOML table of the configuration (`wait`, `engine`).
fn is_section(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.toml
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

// ---------------------------------------------------------------------------------------
// Loading, validation, run-time access
// ---------------------------------------------------------------------------------------

impl NetDmaConfig {
    /// Every key: its TOML, sysctl and environment names, range and writability.
    pub fn keys() -> &'static [KeyInfo] {
        &KEYS
    }

    /// Checks every value against its range. Errors name the key by its dotted TOML name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_named(|k| k.toml)
    }

    fn validate_named(&self, name: impl Fn(&KeyInfo) -> &str) -> Result<(), ConfigError> {
        for k in &KEYS {
            let v = (k.get)(self);
            if !k.kind.in_range(&v) {
                return Err(k.out_of_range(name(k), v.to_string()));
            }
        }
        Ok(())
    }

    /// Parses a TOML document: keys not in the document keep their defaults.
    ///
    /// Syntax errors give [`ConfigError::Parse`] (with line and column); a key that does
    /// not exist gives [`ConfigError::UnknownKey`] with its dotted name; a value of the
    /// wrong type or form gives [`ConfigError::InvalidValue`]; a value outside its range
    /// gives [`ConfigError::OutOfRange`].
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_impl(text, None)
    }

    fn from_toml_impl(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut cfg = NetDmaConfig::default();
        apply_toml_table(&mut cfg, &table, "")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file (see [`NetDmaConfig::from_toml_str`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_impl(&text, Some(path))
    }

    /// Defaults, then the file at `path` if given, then the `NETDMA_*` variables of the
    /// process environment.
    pub fn load_with_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::load(p)?,
            None => Self::default(),
        };
        cfg.apply_env()?;
        Ok(cfg)
    }

    /// Applies the `NETDMA_*` variables of the process environment
    /// (see [`NetDmaConfig::apply_env_from`]).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with(ENV_PREFIX)
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect::<Vec<_>>();
        self.apply_env_from(vars)
    }

    /// Applies environment overrides from `vars`; variables that do not start with
    /// `NETDMA_` are ignored, and a `NETDMA_*` variable that is not a key is
    /// [`ConfigError::UnknownKey`]. All or nothing: on error `self` is unchanged.
    /// Variables are applied in name order (the first error by name is reported); a
    /// name given twice takes its last value.
    pub fn apply_env_from<I, K, V>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in vars {
            let k = k.as_ref();
            if k.starts_with(ENV_PREFIX) {
                map.insert(k.to_owned(), v.as_ref().to_owned());
            }
        }
        let mut next = self.clone();
        for (name, value) in &map {
            let info = key_by_env(name).ok_or_else(|| ConfigError::UnknownKey(name.clone()))?;
            info.apply_text(&mut next, name, value, Source::Env)?;
        }
        next.validate_named(|k| k.env)?;
        *self = next;
        Ok(())
    }

    /// Reads a key by its sysctl name, in sysctl form: booleans as `0`/`1`, the copybreak
    /// as a number or `auto`, the provider by name.
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        let info = key_by_sysctl(key).ok_or_else(|| ConfigError::UnknownKey(key.to_owned()))?;
        Ok(info.value(self))
    }

    /// Changes a key by its sysctl name (booleans as `0`/`1`). The engine keys are
    /// [`ConfigError::ReadOnly`]. On error `self` is unchanged.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let info = key_by_sysctl(key).ok_or_else(|| ConfigError::UnknownKey(key.to_owned()))?;
        if !info.writable {
            return Err(ConfigError::ReadOnly(info.sysctl.to_owned()));
        }
        let mut next = self.clone();
        info.apply_text(&mut next, info.sysctl, value, Source::Sysctl)?;
        next.validate_named(|k| k.sysctl)?;
        *self = next;
        Ok(())
    }

    /// The configuration as a TOML document (every key written out).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        if let Copybreak::Bytes(n) = self.tcp_dma_copybreak {
            if i64::try_from(n).is_err() {
                return Err(ConfigError::Serialize(format!(
                    "tcp_dma_copybreak {n} does not fit a TOML integer (at most {})",
                    i64::MAX
                )));
            }
        }
        toml::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// [`NetDmaConfig::idle_release_ms`] as a [`Duration`], `None` when 0 (never release).
    pub fn idle_release(&self) -> Option<Duration> {
        (self.idle_release_ms != 0).then(|| Duration::from_millis(self.idle_release_ms))
    }
}

fn apply_toml_table(
    cfg: &mut NetDmaConfig,
    table: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if is_section(&path) {
            match v {
                toml::Value::Table(t) => apply_toml_table(cfg, t, &path)?,
                other => {
                    return Err(ConfigError::InvalidValue {
                        expected: format!("a table ([{path}])"),
                        key: path,
                        value: other.to_string(),
                    })
                }
            }
            continue;
        }
        let info = key_by_toml(&path).ok_or_else(|| ConfigError::UnknownKey(path.clone()))?;
        let val = info
            .kind
            .parse_toml(v)
            .map_err(|()| ConfigError::InvalidValue {
                key: path.clone(),
                value: v.to_string(),
                expected: info.kind.expected_toml(),
            })?;
        if !info.kind.in_range(&val) {
            return Err(info.out_of_range(&path, v.to_string()));
        }
        (info.put)(cfg, val);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = NetDmaConfig::default();
        assert!(c.enabled);
        assert_eq!(c.tcp_dma_copybreak, Copybreak::Auto);
        assert!(!c.low_latency);
        assert_eq!(c.chunk_size, 65536);
        assert_eq!(c.max_inflight, 8);
        assert_eq!(c.wait.timeout_ms, 5000);
        assert_eq!(c.wait.spin_us, 20);
        assert_eq!(c.wait.timeout(), Duration::from_secs(5));
        assert_eq!(c.wait.spin(), Duration::from_micros(20));
        assert_eq!(c.cpu_fraction, 0.0);
        assert_eq!(c.idle_release_ms, 1000);
        assert_eq!(c.idle_release(), Some(Duration::from_secs(1)));
        assert_eq!(c.engine.provider, ProviderKind::Software);
        assert_eq!(c.engine.channels, 2);
        assert!(!c.engine.pin_workers);
        assert_eq!(c.engine.ring_size, 1024);
        c.validate().unwrap();
        assert_eq!(NetDmaConfig::from_toml_str("").unwrap(), c);
        assert_eq!(toml::from_str::<NetDmaConfig>("").unwrap(), c);
    }

    #[test]
    fn key_table_is_consistent() {
        let keys = NetDmaConfig::keys();
        assert_eq!(keys.len(), 15);
        for (i, k) in keys.iter().enumerate() {
            // Names are unique in every scheme.
            for other in &keys[i + 1..] {
                assert_ne!(k.toml, other.toml);
                assert_ne!(k.sysctl, other.sysctl);
                assert_ne!(k.env, other.env);
            }
            // The environment name follows the TOML name.
            assert_eq!(
                k.env,
                format!("NETDMA_{}", k.toml.replace('.', "_").to_ascii_uppercase())
            );
            assert!(k.sysctl.starts_with("net."));
            // What the engine is built from cannot change under it.
            let build_time = k.toml.starts_with("engine.") || k.toml == "wait.spin_us";
            assert_eq!(k.writable, !build_time, "{}", k.toml);
            assert!(!k.doc.is_empty());
            assert!(!k.range().is_empty());
        }
        let d = NetDmaConfig::default();
        let defaults: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.sysctl.to_owned(), k.default_value()))
            .collect();
        for (name, value) in &defaults {
            assert_eq!(&d.get(name).unwrap(), value);
        }
        assert_eq!(d.get("net.ipv4.tcp_dma_copybreak").unwrap(), "auto");
        assert_eq!(d.get("net.netdma.enabled").unwrap(), "1");
        assert_eq!(d.get("net.ipv4.tcp_low_latency").unwrap(), "0");
        assert_eq!(d.get("net.netdma.engine.provider").unwrap(), "software");
        assert_eq!(d.get("net/ipv4/tcp_dma_copybreak").unwrap(), "auto");
    }

    const FULL: &str = r#"
# every key, none at its default
enabled = false
tcp_dma_copybreak = "auto"
low_latency = true
chunk_size = 4096
max_inflight = 32
cpu_fraction = 0.25
idle_release_ms = 0

[wait]
timeout_ms = 250
spin_us = 0

[engine]
provider = "auto"
channels = 4
pin_workers = true
ring_size = 256

[engine.dsa]
wq = "/dev/dsa/wq1.0"
emulate = true
"#;

    fn full() -> NetDmaConfig {
        NetDmaConfig {
            enabled: false,
            tcp_dma_copybreak: Copybreak::Auto,
            low_latency: true,
            chunk_size: 4096,
            max_inflight: 32,
            cpu_fraction: 0.25,
            idle_release_ms: 0,
            wait: WaitPolicy {
                timeout_ms: 250,
                spin_us: 0,
            },
            engine: EngineConfig {
                provider: ProviderKind::Auto,
                channels: 4,
                pin_workers: true,
                ring_size: 256,
                dsa: DsaConfig {
                    wq: "/dev/dsa/wq1.0".to_owned(),
                    emulate: true,
                },
            },
        }
    }

    #[test]
    fn full_toml_round_trip() {
        let c = NetDmaConfig::from_toml_str(FULL).unwrap();
        assert_eq!(c, full());
        assert_eq!(c.idle_release(), None);
        // The serde derive reads the same file the same way.
        assert_eq!(toml::from_str::<NetDmaConfig>(FULL).unwrap(), c);
        // Written out and read back.
        let text = c.to_toml_string().unwrap();
        assert_eq!(NetDmaConfig::from_toml_str(&text).unwrap(), c);
        let mut fixed = c.clone();
        fixed.tcp_dma_copybreak = Copybreak::Bytes(123_456);
        let text = fixed.to_toml_string().unwrap();
        assert!(text.contains("tcp_dma_copybreak = 123456"), "{text}");
        assert_eq!(NetDmaConfig::from_toml_str(&text).unwrap(), fixed);
        let json = serde_json::to_string(&fixed).unwrap();
        assert_eq!(serde_json::from_str::<NetDmaConfig>(&json).unwrap(), fixed);
        // usize::MAX cannot be a TOML integer.
        fixed.tcp_dma_copybreak = Copybreak::Bytes(usize::MAX);
        assert!(matches!(
            fixed.to_toml_string(),
            Err(ConfigError::Serialize(_))
        ));
    }

    #[test]
    fn integer_cpu_fraction_is_accepted() {
        let c = NetDmaConfig::from_toml_str("cpu_fraction = 0").unwrap();
        assert_eq!(c.cpu_fraction, 0.0);
    }

    #[test]
    fn load_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("netdma-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netdma.toml");
        std::fs::write(&path, FULL).unwrap();
        assert_eq!(NetDmaConfig::load(&path).unwrap(), full());

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "chunk_size = = 3\n").unwrap();
        match NetDmaConfig::load(&bad) {
            Err(ConfigError::Parse {
                path: Some(p),
                message,
            }) => {
                assert_eq!(p, bad);
                assert!(message.contains("line 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.join("missing.toml");
        match NetDmaConfig::load_with_env(Some(&missing)) {
            Err(ConfigError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_syntax_error_has_line_and_column() {
        let err = NetDmaConfig::from_toml_str("enabled = true\nchunk_size = [\n").unwrap_err();
        match &err {
            ConfigError::Parse {
                path: None,
                message,
            } => {
                assert!(message.contains("line 2"), "{message}");
                assert!(message.contains("column"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn toml_unknown_key() {
        match NetDmaConfig::from_toml_str("chunk_sise = 4096") {
            Err(ConfigError::UnknownKey(k)) => assert_eq!(k, "chunk_sise"),
            other => panic!("{other:?}"),
        }
        match NetDmaConfig::from_toml_str("[engine]\nthreads = 4") {
            Err(e @ ConfigError::UnknownKey(_)) => {
                assert!(matches!(&e, ConfigError::UnknownKey(k) if k == "engine.threads"));
                // The message lists the known keys.
                assert!(e.to_string().contains("engine.channels"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        match NetDmaConfig::from_toml_str("[dma]\nx = 1") {
            Err(ConfigError::UnknownKey(k)) => assert_eq!(k, "dma"),
            other => panic!("{other:?}"),
        }
        // The serde derive rejects it too.
        assert!(toml::from_str::<NetDmaConfig>("chunk_sise = 4096").is_err());
    }

    #[test]
    fn toml_bad_type() {
        let cases = [
            (
                "chunk_size = \"big\"",
                "chunk_size",
                "\"big\"",
                "an integer in 64..=16777216",
            ),
            ("enabled = 1", "enabled", "1", "a boolean (true or false)"),
            (
                "chunk_size = -1",
                "chunk_size",
                "-1",
                "an integer in 64..=16777216",
            ),
            (
                "tcp_dma_copybreak = \"fast\"",
                "tcp_dma_copybreak",
                "\"fast\"",
                "\"auto\"",
            ),
            (
                "tcp_dma_copybreak = -5",
                "tcp_dma_copybreak",
                "-5",
                "\"auto\"",
            ),
            (
                "cpu_fraction = nan",
                "cpu_fraction",
                "nan",
                "a number in 0.0..=0.9",
            ),
            ("wait = 5", "wait", "5", "a table ([wait])"),
            (
                "[engine]\nprovider = \"ioat\"",
                "engine.provider",
                "\"ioat\"",
                "\"software\"",
            ),
            (
                "[engine]\nchannels = 2.5",
                "engine.channels",
                "2.5",
                "1..=64",
            ),
            ("[enabled]\nx = 1", "enabled", "", "a boolean"),
        ];
        for (text, key, value, expected_part) in cases {
            match NetDmaConfig::from_toml_str(text) {
                Err(ConfigError::InvalidValue {
                    key: k,
                    value: v,
                    expected,
                }) => {
                    assert_eq!(k, key, "{text}");
                    if !value.is_empty() {
                        assert_eq!(v, value, "{text}");
                    }
                    assert!(expected.contains(expected_part), "{text}: {expected}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn toml_out_of_range() {
        let cases = [
            ("chunk_size = 32", "chunk_size", "32", "64..=16777216"),
            (
                "chunk_size = 16777217",
                "chunk_size",
                "16777217",
                "64..=16777216",
            ),
            ("max_inflight = 0", "max_inflight", "0", "1..=1024"),
            ("cpu_fraction = 0.95", "cpu_fraction", "0.95", "0.0..=0.9"),
            (
                "idle_release_ms = 86400001",
                "idle_release_ms",
                "86400001",
                "0..=86400000",
            ),
            (
                "[wait]\ntimeout_ms = 0",
                "wait.timeout_ms",
                "0",
                "1..=600000",
            ),
            (
                "[wait]\nspin_us = 10001",
                "wait.spin_us",
                "10001",
                "0..=10000",
            ),
            ("[engine]\nchannels = 65", "engine.channels", "65", "1..=64"),
            (
                "[engine]\nring_size = 1000",
                "engine.ring_size",
                "1000",
                "power of two in 2..=65536",
            ),
            (
                "[engine]\nring_size = 131072",
                "engine.ring_size",
                "131072",
                "2..=65536",
            ),
        ];
        for (text, key, value, range_part) in cases {
            match NetDmaConfig::from_toml_str(text) {
                Err(e @ ConfigError::OutOfRange { .. }) => {
                    let msg = e.to_string();
                    let ConfigError::OutOfRange {
                        key: k,
                        value: v,
                        range,
                    } = e
                    else {
                        unreachable!()
                    };
                    assert_eq!(k, key, "{text}");
                    assert_eq!(v, value, "{text}");
                    assert!(range.contains(range_part), "{text}: {range}");
                    assert!(msg.contains(key) && msg.contains(range_part), "{msg}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn validate_catches_direct_edits() {
        let c = NetDmaConfig {
            cpu_fraction: f64::NAN,
            ..NetDmaConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange { ref key, .. }) if key == "cpu_fraction"
        ));
        let mut c = NetDmaConfig::default();
        c.engine.ring_size = 3;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange { ref key, ref value, .. })
                if key == "engine.ring_size" && value == "3"
        ));
    }

    #[test]
    fn dsa_keys_in_every_source() {
        let c = NetDmaConfig::from_toml_str(
            "[engine]\nprovider = \"auto\"\n[engine.dsa]\nwq = \"/dev/dsa/wq0.1\"\n",
        )
        .unwrap();
        assert_eq!(c.engine.provider, ProviderKind::Auto);
        assert_eq!(c.engine.dsa.wq, "/dev/dsa/wq0.1");
        assert!(!c.engine.dsa.emulate);
        assert_eq!(c.get("net.netdma.engine.dsa.wq").unwrap(), "/dev/dsa/wq0.1");
        assert_eq!(c.get("net.netdma.engine.dsa.emulate").unwrap(), "0");
        assert_eq!(c.get("net.netdma.engine.provider").unwrap(), "auto");
        let mut c2 = c.clone();
        assert!(matches!(
            c2.set("net.netdma.engine.dsa.wq", "any"),
            Err(ConfigError::ReadOnly(_))
        ));
        match NetDmaConfig::from_toml_str("[engine.dsa]\nwq = \"\"\n") {
            Err(ConfigError::InvalidValue { key, .. }) => assert_eq!(key, "engine.dsa.wq"),
            other => panic!("{other:?}"),
        }
        match NetDmaConfig::from_toml_str("[engine]\nprovider = \"ioat\"\n") {
            Err(e @ ConfigError::InvalidValue { .. }) => {
                assert!(e.to_string().contains("\"dsa\""), "{e}")
            }
            other => panic!("{other:?}"),
        }
        match NetDmaConfig::from_toml_str("[engine.dsa]\nqueue = 1\n") {
            Err(ConfigError::UnknownKey(k)) => assert_eq!(k, "engine.dsa.queue"),
            other => panic!("{other:?}"),
        }
        let mut e = NetDmaConfig::default();
        assert!(e
            .apply_env_from([("NETDMA_ENGINE_DSA_EMULATE", "maybe")])
            .is_err());
        e.apply_env_from([("NETDMA_ENGINE_DSA_EMULATE", "on")])
            .unwrap();
        assert!(e.engine.dsa.emulate);
        let text = c.to_toml_string().unwrap();
        assert_eq!(NetDmaConfig::from_toml_str(&text).unwrap(), c);
    }

    #[test]
    fn env_overrides() {
        let mut c = NetDmaConfig::default();
        c.apply_env_from(env(&[
            ("PATH", "/usr/bin"),
            ("NETDMA_TCP_DMA_COPYBREAK", "auto"),
            ("NETDMA_ENABLED", "off"),
            ("NETDMA_LOW_LATENCY", "TRUE"),
            ("NETDMA_CHUNK_SIZE", "8192"),
            ("NETDMA_MAX_INFLIGHT", "4"),
            ("NETDMA_WAIT_TIMEOUT_MS", "100"),
            ("NETDMA_WAIT_SPIN_US", "0"),
            ("NETDMA_CPU_FRACTION", "0.5"),
            ("NETDMA_IDLE_RELEASE_MS", "60000"),
            ("NETDMA_ENGINE_PROVIDER", "DSA"),
            ("NETDMA_ENGINE_CHANNELS", "8"),
            ("NETDMA_ENGINE_PIN_WORKERS", "1"),
            ("NETDMA_ENGINE_RING_SIZE", "4096"),
            ("NETDMA_ENGINE_DSA_WQ", " wq2.1 "),
            ("NETDMA_ENGINE_DSA_EMULATE", "yes"),
        ]))
        .unwrap();
        let expected = NetDmaConfig {
            enabled: false,
            tcp_dma_copybreak: Copybreak::Auto,
            low_latency: true,
            chunk_size: 8192,
            max_inflight: 4,
            cpu_fraction: 0.5,
            idle_release_ms: 60000,
            wait: WaitPolicy {
                timeout_ms: 100,
                spin_us: 0,
            },
            engine: EngineConfig {
                provider: ProviderKind::Dsa,
                channels: 8,
                pin_workers: true,
                ring_size: 4096,
                dsa: DsaConfig {
                    wq: "wq2.1".to_owned(),
                    emulate: true,
                },
            },
        };
        assert_eq!(c, expected);

        // Env on top of a file: only the named keys change.
        let mut c = NetDmaConfig::from_toml_str(FULL).unwrap();
        c.apply_env_from([("NETDMA_TCP_DMA_COPYBREAK", "16384")])
            .unwrap();
        let mut want = full();
        want.tcp_dma_copybreak = Copybreak::Bytes(16384);
        assert_eq!(c, want);
    }

    #[test]
    fn bad_env_changes_nothing() {
        let before = NetDmaConfig::from_toml_str(FULL).unwrap();
        let check = |vars: &[(&str, &str)]| -> ConfigError {
            let mut c = before.clone();
            // A good variable next to the bad one must not be applied either.
            let mut all = env(vars);
            all.push(("NETDMA_MAX_INFLIGHT".to_owned(), "2".to_owned()));
            let err = c.apply_env_from(all).unwrap_err();
            assert_eq!(c, before, "{vars:?}");
            err
        };
        assert!(matches!(
            check(&[("NETDMA_CHUNK_SIZE", "abc")]),
            ConfigError::InvalidValue { key, value, expected }
                if key == "NETDMA_CHUNK_SIZE" && value == "abc"
                    && expected == "an integer in 64..=16777216"
        ));
        assert!(matches!(
            check(&[("NETDMA_CHUNK_SIZE", "-1")]),
            ConfigError::InvalidValue { key, .. } if key == "NETDMA_CHUNK_SIZE"
        ));
        assert!(matches!(
            check(&[("NETDMA_WAIT_TIMEOUT_MS", "600001")]),
            ConfigError::OutOfRange { key, value, range }
                if key == "NETDMA_WAIT_TIMEOUT_MS" && value == "600001" && range == "1..=600000"
        ));
        assert!(matches!(
            check(&[("NETDMA_ENABLED", "maybe")]),
            ConfigError::InvalidValue { key, expected, .. }
                if key == "NETDMA_ENABLED" && expected.contains("yes")
        ));
        assert!(matches!(
            check(&[("NETDMA_ENGINE_RING_SIZE", "100")]),
            ConfigError::OutOfRange { key, .. } if key == "NETDMA_ENGINE_RING_SIZE"
        ));
        assert!(matches!(
            check(&[("NETDMA_ENGINE_PROVIDER", "ioat")]),
            ConfigError::InvalidValue { key, .. } if key == "NETDMA_ENGINE_PROVIDER"
        ));
        let err = check(&[("NETDMA_COPYBREAK", "4096")]);
        assert!(matches!(&err, ConfigError::UnknownKey(k) if k == "NETDMA_COPYBREAK"));
        assert!(
            err.to_string().contains("NETDMA_TCP_DMA_COPYBREAK"),
            "{err}"
        );
    }

    #[test]
    fn sysctl_round_trip() {
        let cases = [
            ("net.ipv4.tcp_dma_copybreak", "8192"),
            ("net.ipv4.tcp_dma_copybreak", "auto"),
            ("net.ipv4.tcp_dma_copybreak", "0"),
            ("net.ipv4.tcp_dma_copybreak", &usize::MAX.to_string()),
            ("net.ipv4.tcp_low_latency", "1"),
            ("net.ipv4.tcp_low_latency", "0"),
            ("net.netdma.enabled", "0"),
            ("net.netdma.enabled", "1"),
            ("net.netdma.chunk_size", "64"),
            ("net.netdma.chunk_size", "16777216"),
            ("net.netdma.max_inflight", "1024"),
            ("net.netdma.wait_timeout_ms", "1"),
            ("net.netdma.cpu_fraction", "0.9"),
            ("net.netdma.cpu_fraction", "0.125"),
            ("net.netdma.idle_release_ms", "86400000"),
        ];
        let mut c = NetDmaConfig::default();
        for (key, value) in cases {
            c.set(key, value).unwrap();
            assert_eq!(c.get(key).unwrap(), value);
            c.validate().unwrap();
        }
        assert_eq!(c.cpu_fraction, 0.125);
        // Given to the engine when it is built: read-only at run time, unchanged.
        assert!(matches!(
            c.set("net.netdma.wait_spin_us", "10000"),
            Err(ConfigError::ReadOnly(k)) if k == "net.netdma.wait_spin_us"
        ));
        assert_eq!(c.wait.spin_us, 20);
        // Whitespace (as written to /proc/sys) and slash names are accepted.
        c.set("net/ipv4/tcp_dma_copybreak", "4096\n").unwrap();
        assert_eq!(c.tcp_dma_copybreak, Copybreak::Bytes(4096));
        // Every key reads; the writable ones take back their own value.
        for k in NetDmaConfig::keys() {
            let v = c.get(k.sysctl).unwrap();
            if k.writable {
                let before = c.clone();
                c.set(k.sysctl, &v).unwrap();
                assert_eq!(c, before);
            }
        }
    }

    #[test]
    fn sysctl_bad_values_change_nothing() {
        let before = NetDmaConfig::from_toml_str(FULL).unwrap();
        let attempt = |key: &str, value: &str| -> ConfigError {
            let mut c = before.clone();
            let err = c.set(key, value).unwrap_err();
            assert_eq!(c, before, "{key}={value}");
            assert!(!err.to_string().is_empty());
            err
        };
        for k in NetDmaConfig::keys().iter().filter(|k| k.writable) {
            for bad in ["-1", "abc", ""] {
                if bad == "-1" && k.sysctl == "net.netdma.cpu_fraction" {
                    // A well-formed float, just below the range (checked below).
                    continue;
                }
                match attempt(k.sysctl, bad) {
                    ConfigError::InvalidValue {
                        key,
                        value,
                        expected,
                    } => {
                        assert_eq!(key, k.sysctl);
                        assert_eq!(value, bad);
                        assert!(!expected.is_empty());
                    }
                    other => panic!("{}={bad}: {other:?}", k.sysctl),
                }
            }
        }
        // Over range, per key.
        let over = [
            ("net.netdma.chunk_size", "16777217", "64..=16777216"),
            ("net.netdma.chunk_size", "63", "64..=16777216"),
            ("net.netdma.max_inflight", "0", "1..=1024"),
            ("net.netdma.max_inflight", "1025", "1..=1024"),
            ("net.netdma.wait_timeout_ms", "0", "1..=600000"),
            ("net.netdma.wait_timeout_ms", "600001", "1..=600000"),
            ("net.netdma.cpu_fraction", "0.91", "0.0..=0.9"),
            ("net.netdma.cpu_fraction", "-0.1", "0.0..=0.9"),
            ("net.netdma.cpu_fraction", "-1", "0.0..=0.9"),
            ("net.netdma.idle_release_ms", "86400001", "0..=86400000"),
        ];
        for (key, value, range_want) in over {
            match attempt(key, value) {
                e @ ConfigError::OutOfRange { .. } => {
                    let msg = e.to_string();
                    assert!(msg.contains(key) && msg.contains(range_want), "{msg}");
                    assert!(
                        matches!(e, ConfigError::OutOfRange { key: k, value: v, range }
                        if k == key && v == value && range == range_want)
                    );
                }
                other => panic!("{key}={value}: {other:?}"),
            }
        }
        // Malformed (not merely large) values.
        let malformed = [
            ("net.netdma.chunk_size", "99999999999999999999999"),
            ("net.netdma.chunk_size", "+64"),
            ("net.netdma.chunk_size", "64KiB"),
            ("net.netdma.enabled", "2"),
            ("net.netdma.enabled", "true"),
            ("net.ipv4.tcp_low_latency", "yes"),
            ("net.netdma.cpu_fraction", "NaN"),
            ("net.netdma.cpu_fraction", "inf"),
            ("net.ipv4.tcp_dma_copybreak", "99999999999999999999999"),
            ("net.ipv4.tcp_dma_copybreak", "automatic"),
        ];
        for (key, value) in malformed {
            assert!(
                matches!(attempt(key, value), ConfigError::InvalidValue { key: k, .. } if k == key),
                "{key}={value}"
            );
        }
        match attempt("net.ipv4.tcp_dma_copybreak", "abc") {
            ConfigError::InvalidValue { expected, .. } => assert_eq!(
                expected,
                format!("an integer in 0..={} or \"auto\"", usize::MAX)
            ),
            other => panic!("{other:?}"),
        }
        // Unknown keys.
        for key in [
            "net.ipv4.tcp_dma_copybrake",
            "tcp_dma_copybreak",
            "",
            "net.netdma",
        ] {
            assert!(
                matches!(attempt(key, "1"), ConfigError::UnknownKey(k) if k == key),
                "{key}"
            );
            assert!(matches!(before.get(key), Err(ConfigError::UnknownKey(_))));
        }
        // Read-only keys: refused whatever the value, but readable.
        for k in NetDmaConfig::keys().iter().filter(|k| !k.writable) {
            let current = before.get(k.sysctl).unwrap();
            for value in [current.as_str(), "1", "abc"] {
                assert!(matches!(
                    attempt(k.sysctl, value),
                    ConfigError::ReadOnly(key) if key == k.sysctl
                ));
            }
        }
        assert_eq!(before.get("net.netdma.engine.channels").unwrap(), "4");
        assert_eq!(before.get("net.netdma.engine.pin_workers").unwrap(), "1");
        assert_eq!(before.get("net.netdma.engine.ring_size").unwrap(), "256");
    }

    #[test]
    fn copybreak_and_provider_text() {
        assert_eq!("auto".parse::<Copybreak>().unwrap(), Copybreak::Auto);
        assert_eq!("AUTO".parse::<Copybreak>().unwrap(), Copybreak::Auto);
        assert_eq!(" 512 ".parse::<Copybreak>().unwrap(), Copybreak::Bytes(512));
        assert!("-1".parse::<Copybreak>().is_err());
        assert_eq!(Copybreak::Auto.to_string(), "auto");
        assert_eq!(Copybreak::Bytes(4096).to_string(), "4096");
        assert_eq!(
            Copybreak::default(),
            NetDmaConfig::default().tcp_dma_copybreak
        );
        assert_eq!(Copybreak::Bytes(7).bytes(), Some(7));
        assert!(Copybreak::Auto.is_auto());
        assert_eq!(
            "Software".parse::<ProviderKind>().unwrap(),
            ProviderKind::Software
        );
        assert_eq!(ProviderKind::Software.to_string(), "software");
        let e = "ioat".parse::<ProviderKind>().unwrap_err();
        assert_eq!(e.value, "ioat");
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../../README.md");
        let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
        for k in NetDmaConfig::keys() {
            let row = rows
                .iter()
                .find(|l| l.starts_with(&format!("| `{}` |", k.toml)))
                .unwrap_or_else(|| panic!("README's configuration table lacks {}", k.toml));
            assert!(row.contains(&format!("`{}`", k.sysctl)), "{row}");
            assert!(row.contains(&format!("`{}`", k.env)), "{row}");
            let run_time = if k.writable {
                "| yes |"
            } else {
                "| read-only |"
            };
            assert!(
                row.ends_with(run_time),
                "{}: expected `{run_time}`: {row}",
                k.toml
            );
        }
    }

    #[test]
    fn example_file_parses_and_documents_every_key() {
        let text = include_str!("../../netdma.example.toml");
        let c = NetDmaConfig::from_toml_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c, NetDmaConfig::default());
        assert_eq!(toml::from_str::<NetDmaConfig>(text).unwrap(), c);
        let table: toml::Table = toml::from_str(text).unwrap();
        for k in NetDmaConfig::keys() {
            let mut item = Some(&table);
            let mut parts = k.toml.split('.').peekable();
            let mut found = false;
            while let Some(part) = parts.next() {
                let t = item.take().expect("section");
                match t.get(part) {
                    Some(toml::Value::Table(sub)) if parts.peek().is_some() => item = Some(sub),
                    Some(_) if parts.peek().is_none() => found = true,
                    _ => break,
                }
            }
            assert!(found, "example does not set {}", k.toml);
            assert!(
                text.contains(k.sysctl),
                "example does not mention {}",
                k.sysctl
            );
            assert!(text.contains(k.env), "example does not mention {}", k.env);
        }
    }
}
