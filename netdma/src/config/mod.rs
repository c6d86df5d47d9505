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
//! The file is read by serde: [`NetDmaConfig`] and its sections derive `Deserialize`
//! (a key they do not have is refused), then [`NetDmaConfig::validate`] checks every range.
//! One table ([`NetDmaConfig::keys`]) holds each key's TOML, sysctl and environment names,
//! range and whether it can change at run time, and nothing else in the code repeats
//! them: it drives the environment, `get`/`set` and `validate`, and names the key of a
//! file's error. The README's configuration reference and `netdma.example.toml` list the
//! same keys, and tests check both against the table.
//!
//! `engine.provider = "dsa"` drives an Intel DSA work queue (`engine.dsa.wq`) and fails
//! to start when none is usable, saying why; `"auto"` uses DSA when a usable WQ is found
//! and the software device otherwise, logging which and why. `engine.dsa.emulate` runs
//! the DSA provider over its software portal instead of hardware (for tests and for
//! trying the provider on any machine).
//!
//! Value syntax per source:
//! - TOML: booleans are `true`/`false`; integers must not be negative; `cpu_fraction`
//!   accepts an integer or a float; `tcp_dma_copybreak` is an integer or the string `"auto"`;
//!   `engine.provider` is `"software"`, `"dsa"` or `"auto"` (strings exactly so, in lower
//!   case); `[wait]`, `[engine]` and `[engine.dsa]` are tables.
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

mod file;
mod keys;
#[cfg(test)]
mod tests;
mod value;

pub use keys::KeyInfo;
pub use value::{Copybreak, ProviderKind};

use self::keys::{key_by_env, key_by_sysctl, Source, ENV_PREFIX, KEYS};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The text is not valid TOML (a syntax error, a key defined twice), or `toml` refused
    /// it for a reason tied to no key. The message carries line and column.
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
    /// wrong type or form (a negative integer, a string other than `"auto"` for the
    /// copybreak, a value where a table belongs) gives [`ConfigError::InvalidValue`] with
    /// the value as written; a value outside its range gives [`ConfigError::OutOfRange`].
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        file::from_toml(text, None)
    }

    /// Reads and parses a TOML file (see [`NetDmaConfig::from_toml_str`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        file::from_toml(&text, Some(path))
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
