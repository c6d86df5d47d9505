//! The configuration's tests: every source, every key, every error.

use super::keys::WQ_EXPECTED;
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
    // Plain serde (which does not name keys in errors nor check ranges) reads it the same.
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

/// Checks that `from_toml_str(text)` fails with exactly `want`. (`ConfigError` holds an
/// `io::Error` and so has no `PartialEq`: the `Debug` forms are compared, every field.)
#[track_caller]
fn assert_file_error(text: &str, want: ConfigError) {
    match NetDmaConfig::from_toml_str(text) {
        Ok(c) => panic!("{text:?} was accepted: {c:?}"),
        Err(got) => assert_eq!(format!("{got:?}"), format!("{want:?}"), "{text:?}"),
    }
}

fn invalid(key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn out_of_range(key: &str, value: &str, range: &str) -> ConfigError {
    ConfigError::OutOfRange {
        key: key.to_owned(),
        value: value.to_owned(),
        range: range.to_owned(),
    }
}

#[test]
fn toml_unknown_key() {
    let unknown = |k: &str| ConfigError::UnknownKey(k.to_owned());
    assert_file_error("chunk_sise = 4096", unknown("chunk_sise"));
    assert_file_error("\"chunk_sise\" = 4096", unknown("chunk_sise"));
    assert_file_error("[engine]\nthreads = 4", unknown("engine.threads"));
    assert_file_error("engine.threads = 4", unknown("engine.threads"));
    assert_file_error("[wait]\nspin = 4", unknown("wait.spin"));
    assert_file_error("[engine.dsa]\nqueue = 1", unknown("engine.dsa.queue"));
    assert_file_error("[dma]\nx = 1", unknown("dma"));
    // Next to good keys, and after a good table.
    assert_file_error(
        "enabled = true\n[wait]\ntimeout_ms = 10\n[engine]\nchannels = 2\nthreds = 1",
        unknown("engine.threds"),
    );
    // The message lists the known keys, in TOML form.
    let e = NetDmaConfig::from_toml_str("[engine]\nthreads = 4").unwrap_err();
    assert!(e.to_string().contains("engine.channels"), "{e}");
    // Plain serde (no key naming) refuses it too.
    assert!(toml::from_str::<NetDmaConfig>("chunk_sise = 4096").is_err());
}

#[test]
fn toml_wrong_type() {
    let boolean = "a boolean (true or false)";
    let chunk = "an integer in 64..=16777216";
    let copybreak = format!("an integer in 0..={} or \"auto\"", usize::MAX);
    let provider = "a string, one of \"software\", \"dsa\", \"auto\"";
    let cases = [
        ("enabled = 1", invalid("enabled", "1", boolean)),
        (
            "enabled = \"true\"",
            invalid("enabled", "\"true\"", boolean),
        ),
        (
            "enabled = 1979-05-27",
            invalid("enabled", "1979-05-27", boolean),
        ),
        (
            "chunk_size = \"big\"",
            invalid("chunk_size", "\"big\"", chunk),
        ),
        (
            "chunk_size = 4096.0",
            invalid("chunk_size", "4096.0", chunk),
        ),
        ("chunk_size = [64]", invalid("chunk_size", "[64]", chunk)),
        (
            "[engine]\nchannels = 2.5",
            invalid("engine.channels", "2.5", "an integer in 1..=64"),
        ),
        // Dotted keys and inline tables name the key the same way.
        (
            "engine.channels = 2.5",
            invalid("engine.channels", "2.5", "an integer in 1..=64"),
        ),
        (
            "wait = { timeout_ms = \"x\" }",
            invalid("wait.timeout_ms", "\"x\"", "an integer in 1..=600000"),
        ),
        (
            "tcp_dma_copybreak = 1.5",
            invalid("tcp_dma_copybreak", "1.5", &copybreak),
        ),
        (
            "cpu_fraction = \"0.5\"",
            invalid("cpu_fraction", "\"0.5\"", "a number in 0.0..=0.9"),
        ),
        (
            "[engine]\nprovider = 1",
            invalid("engine.provider", "1", provider),
        ),
        (
            "[engine.dsa]\nwq = 3",
            invalid(
                "engine.dsa.wq",
                "3",
                "a string, \"any\", a work queue name (wq0.0) or its path (/dev/dsa/wq0.0)",
            ),
        ),
        // A table where a value belongs: the value is the table as written.
        ("[enabled]\nx = 1", invalid("enabled", "[enabled]", boolean)),
    ];
    for (text, want) in cases {
        assert_file_error(text, want);
    }
}

#[test]
fn toml_negative_integer() {
    let copybreak = format!("an integer in 0..={} or \"auto\"", usize::MAX);
    assert_file_error(
        "chunk_size = -1",
        invalid("chunk_size", "-1", "an integer in 64..=16777216"),
    );
    assert_file_error(
        "idle_release_ms = -1000",
        invalid("idle_release_ms", "-1000", "an integer in 0..=86400000"),
    );
    assert_file_error(
        "[wait]\nspin_us = -5",
        invalid("wait.spin_us", "-5", "an integer in 0..=10000"),
    );
    assert_file_error(
        "tcp_dma_copybreak = -5",
        invalid("tcp_dma_copybreak", "-5", &copybreak),
    );
    // A float is well formed, just below the range.
    assert_file_error(
        "cpu_fraction = -1",
        out_of_range("cpu_fraction", "-1", "0.0..=0.9"),
    );
}

#[test]
fn toml_bad_copybreak_and_provider_strings() {
    let copybreak = format!("an integer in 0..={} or \"auto\"", usize::MAX);
    // Exactly an integer or "auto": no other string, not even a number or another case.
    for bad in ["\"fast\"", "\"AUTO\"", "\"4096\"", "\" auto\"", "\"\""] {
        assert_file_error(
            &format!("tcp_dma_copybreak = {bad}"),
            invalid("tcp_dma_copybreak", bad, &copybreak),
        );
    }
    let provider = "a string, one of \"software\", \"dsa\", \"auto\"";
    for bad in ["\"ioat\"", "\"DSA\"", "\"Software\""] {
        assert_file_error(
            &format!("[engine]\nprovider = {bad}"),
            invalid("engine.provider", bad, provider),
        );
    }
    let e = NetDmaConfig::from_toml_str("[engine]\nprovider = \"ioat\"").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid value `\"ioat\"` for `engine.provider`: expected a string, one of \
         \"software\", \"dsa\", \"auto\""
    );
    // The text forms (environment, sysctl) stay lenient about case.
    let mut c = NetDmaConfig::default();
    c.apply_env_from([("NETDMA_TCP_DMA_COPYBREAK", "AUTO")])
        .unwrap();
    assert_eq!(c.tcp_dma_copybreak, Copybreak::Auto);
}

#[test]
fn toml_bad_section_type() {
    for (text, value) in [
        ("engine = 5", "5"),
        ("engine = \"software\"", "\"software\""),
        ("engine = [1]", "[1]"),
        ("[[engine]]\nchannels = 1", "[[engine]]"),
    ] {
        assert_file_error(text, invalid("engine", value, "a table ([engine])"));
    }
    assert_file_error("wait = 5", invalid("wait", "5", "a table ([wait])"));
    assert_file_error(
        "[engine]\ndsa = true",
        invalid("engine.dsa", "true", "a table ([engine.dsa])"),
    );
    // A multi-line array where a table belongs is named by its type.
    assert_file_error(
        "engine = [\n  1,\n]",
        invalid("engine", "an array", "a table ([engine])"),
    );
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
        ("cpu_fraction = 1", "cpu_fraction", "1", "0.0..=0.9"),
        ("cpu_fraction = nan", "cpu_fraction", "NaN", "0.0..=0.9"),
        ("cpu_fraction = inf", "cpu_fraction", "inf", "0.0..=0.9"),
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
            "a power of two in 2..=65536",
        ),
        (
            "[engine]\nring_size = 131072",
            "engine.ring_size",
            "131072",
            "a power of two in 2..=65536",
        ),
    ];
    for (text, key, value, range) in cases {
        assert_file_error(text, out_of_range(key, value, range));
    }
    let e = NetDmaConfig::from_toml_str("[engine]\nchannels = 65").unwrap_err();
    assert_eq!(
        e.to_string(),
        "value `65` for `engine.channels` is out of range: accepted 1..=64"
    );
    // Larger than any integer: refused as a value, not as TOML syntax.
    assert_file_error(
        "chunk_size = 99999999999999999999",
        invalid(
            "chunk_size",
            "99999999999999999999",
            "an integer in 64..=16777216",
        ),
    );
}

#[test]
fn toml_duplicate_key_is_a_parse_error() {
    match NetDmaConfig::from_toml_str("[wait]\nspin_us = 1\n[wait]\n") {
        Err(ConfigError::Parse {
            path: None,
            message,
        }) => {
            assert!(message.contains("line 3"), "{message}");
            assert!(message.contains("duplicate key"), "{message}");
        }
        other => panic!("{other:?}"),
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
    // A work queue has no range: a name it cannot be is an invalid value.
    let mut c = NetDmaConfig::default();
    c.engine.dsa.wq = "wq0.0 ".to_owned();
    assert!(matches!(
        c.validate(),
        Err(ConfigError::InvalidValue { ref key, ref value, ref expected })
            if key == "engine.dsa.wq" && value == "wq0.0 " && expected == WQ_EXPECTED
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
    // Not a usable name: empty, or with whitespace around it.
    for bad in ["", " wq0.0", "wq0.0\n"] {
        let text = format!("[engine.dsa]\nwq = {}\n", toml::Value::from(bad));
        assert_file_error(&text, invalid("engine.dsa.wq", bad, WQ_EXPECTED));
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
    let readme = include_str!("../../../README.md");
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
    let text = include_str!("../../../netdma.example.toml");
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
