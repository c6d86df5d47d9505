//! Runs the report's measurement code at a tiny scale so CI exercises it: every JSON key
//! is present and every figure finite and positive. No timing assertions.

use netdma_bench::report::{self, Scale};

const KEYS: &[&str] = &[
    "cross_core_rtt_ns",
    "recv_below_copybreak_ratio",
    "auto_throughput_ratio",
    "recv_dma_throughput_ratio",
    "nocopy_floor_ratio",
    "app_cpu_per_mib_ratio",
    "find_channel_ns",
    "submit_ns_per_desc",
    "submit_ns_per_desc_unbatched",
    "completion_p50_ns",
    "completion_p99_ns",
    "dsa_submit_ns_per_desc",
    "dsa_submit_ns_per_desc_unbatched",
    "dsa_completion_p50_ns",
    "dsa_completion_p99_ns",
    "handoff_write_ratio",
    "handoff_thread_ratio",
];

#[test]
fn tiny_report_has_every_key_and_renders() {
    let report = report::run(&Scale::tiny(), &mut |_| {}).expect("report runs");
    let json = report.to_json();
    for key in KEYS {
        let v = json
            .get(*key)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("missing or non-numeric key {key}: {json}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    for table in ["copy_table", "recv_table", "targets"] {
        let rows = json[table].as_array().expect(table);
        assert!(!rows.is_empty(), "{table} is empty");
    }
    for row in json["recv_table"].as_array().unwrap() {
        for k in ["mib_per_s", "cpu_us_per_mib"] {
            let v = row[k].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{row}");
        }
    }
    for row in json["copy_table"].as_array().unwrap() {
        let v = row["gb_per_s"].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{row}");
    }
    let md = report.to_markdown("bench/throughput.svg");
    for section in ["## Machine", "## Cross-core round trip", "## Ring hand-off"] {
        assert!(md.contains(section), "BENCHMARKS.md misses {section:?}");
    }
    assert!(
        md.contains("cross_core_rtt_ns"),
        "BENCHMARKS.md misses the rtt key"
    );
    for key in [
        "recv_dma_throughput_ratio",
        "find_channel_ns",
        "completion_p50_ns",
    ] {
        assert!(md.contains(key), "BENCHMARKS.md misses {key}");
    }
    let svg = report.svg().expect("plot renders");
    let svg_text = svg.trim();
    assert!(
        svg_text.starts_with("<svg") && svg_text.ends_with("</svg>"),
        "not one SVG document: {:?}...",
        &svg_text[..svg_text.len().min(80)]
    );
    assert_eq!(
        svg_text.matches("<svg").count(),
        1,
        "nested or repeated SVG"
    );
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no lines drawn"
    );
}
