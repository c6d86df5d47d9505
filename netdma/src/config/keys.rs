//! The key table: every key's names in TOML, sysctl and the environment, its kind and
//! range, whether it changes at run time, and how the environment and sysctl read and
//! write it. The file is read by the serde derive; the table names the keys of its
//! errors and checks its ranges.

use std::fmt;

use super::*;

pub(super) const ENV_PREFIX: &str = "NETDMA_";

/// The kind of a key's value: how it is parsed and which range it accepts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
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

/// Where a value came from: decides the boolean syntax of text and what an error says
/// is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The TOML file, read through serde: values are typed TOML values.
    File,
    /// A `NETDMA_*` variable.
    Env,
    /// A sysctl name given to `set`.
    Sysctl,
}

/// A typed value moved between the table and the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
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
    pub(super) fn range(self) -> String {
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

    /// What `source` accepts, as shown in [`ConfigError::InvalidValue`].
    pub(super) fn expected(self, source: Source) -> String {
        match (self, source) {
            (Kind::Bool, Source::File) => "a boolean (true or false)".to_owned(),
            (Kind::Provider, Source::File) => format!("a string, {}", ProviderKind::expected()),
            (Kind::Wq, Source::File) => format!("a string, {WQ_EXPECTED}"),
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

    /// Whether a well-formed value lies in the accepted range.
    pub(super) fn in_range(self, v: &Val) -> bool {
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

    /// Parses the text form (environment or sysctl; surrounding whitespace is ignored).
    /// `Err(())` means malformed.
    pub(super) fn parse_text(self, s: &str, source: Source) -> Result<Val, ()> {
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
}

pub(super) const WQ_EXPECTED: &str =
    "\"any\", a work queue name (wq0.0) or its path (/dev/dsa/wq0.0)";

/// Whether `t` can name a work queue: non-empty, without control characters or
/// surrounding whitespace.
pub(super) fn wq_ok(t: &str) -> bool {
    !t.is_empty() && t.trim() == t && !t.chars().any(char::is_control)
}

/// One configuration key and its names in every source.
///
/// The table is [`NetDmaConfig::keys`](super::NetDmaConfig::keys); the README's
/// configuration reference lists it.
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
    pub(super) kind: Kind,
    pub(super) get: fn(&NetDmaConfig) -> Val,
    pub(super) put: fn(&mut NetDmaConfig, Val),
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

    /// The error for a well-formed value that `validate` or `set` refuses: out of its
    /// range, or for a work queue (which has no range), not a usable name.
    pub(super) fn out_of_range(&self, key: &str, value: impl Into<String>) -> ConfigError {
        match self.kind {
            Kind::Wq => ConfigError::InvalidValue {
                key: key.to_owned(),
                value: value.into(),
                expected: WQ_EXPECTED.to_owned(),
            },
            kind => ConfigError::OutOfRange {
                key: key.to_owned(),
                value: value.into(),
                range: kind.range(),
            },
        }
    }

    /// Parses `text`, checks its range and stores it in `cfg`.
    pub(super) fn apply_text(
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
                expected: self.kind.expected(source),
            })?;
        if !self.kind.in_range(&v) {
            return Err(self.out_of_range(key, text.trim()));
        }
        (self.put)(cfg, v);
        Ok(())
    }
}

pub(super) fn to_usize(v: u64) -> usize {
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

pub(super) const RW: bool = true;
pub(super) const RO: bool = false;

pub(super) static KEYS: [KeyInfo; 15] = [
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

pub(super) fn key_by_sysctl(name: &str) -> Option<&'static KeyInfo> {
    let name = name.trim();
    if name.contains('/') {
        let dotted = name.trim_matches('/').replace('/', ".");
        KEYS.iter().find(|k| k.sysctl == dotted)
    } else {
        KEYS.iter().find(|k| k.sysctl == name)
    }
}

pub(super) fn key_by_toml(path: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.toml == path)
}

pub(super) fn key_by_env(name: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.env == name)
}

/// Whether `path` is a table of the configuration file (`wait`, `engine`, `engine.dsa`).
pub(super) fn is_section(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.toml
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}
